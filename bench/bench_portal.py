"""Attendee portal benchmark: authenticated reads of GET /api/portal/card, logins apart.

    .venv/bin/python bench/bench_portal.py                 # about 40 s
    .venv/bin/python bench/bench_portal.py --sessions 50 --rate 200 --duration-s 10

Starts its own durable PostgreSQL, migrates a fresh ledger, gives `--sessions` cards a history
(a top-up and `--orders` bar orders of three lines each, through the real procedures) and a PIN
(`card import`'s code path), then serves the real app with uvicorn in a child process, connected
as festival_api like production. The app's login rate limit is raised for the run (one client
address logs in every session; the per-card lockout stays as in production).

1. the PIN check alone: scrypt at the stored cost, in this process, one at a time (DESIGN.md:
   <= 100 ms per check);
2. logins (POST /api/portal/login, right PIN), one at a time and 4 at once: the slow hash is the
   point of them, so they are measured apart from the reads;
3. reads: every session logged in, each with its own keep-alive connection, all of them at once
   (`--sessions` threads), offering `--rate` requests per second in total (open loop: each
   session sends on its own schedule), for `--duration-s`; then the same sessions as fast as they
   can (closed loop) for the throughput. Latency is measured by the client from sending the
   request to reading the whole answer.

Every answer must be 200 with the card's full history. Writes bench/results/portal.json; the
figures go to docs/benchmarks.md ("Attendee portal"). Exit status 1 if the open-loop read p99 is
above 50 ms or a PIN check above 100 ms at the median.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from cloud import database  # noqa: E402
from cloud.database import make_engine  # noqa: E402
from cloud.ledger import Ledger  # noqa: E402
from cloud.portal import PortalStore, check_pin, hash_pin  # noqa: E402
from tests.ledger.helpers import PUBLIC_KEY, bar_order, recharge  # noqa: E402

RESULTS = REPO / "bench" / "results" / "portal.json"
READY_TIMEOUT_S = 30.0
READ_P99_TARGET_MS = 50.0
PIN_CHECK_TARGET_MS = 100.0
COOKIE = "festival_portal"


def card_uid(number: int) -> str:
    return f"0C{number:06X}"


def pin_of(number: int) -> str:
    return f"PIN{number:05d}"


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))]


def summary(latencies_ms: list[float]) -> dict[str, float]:
    return {
        "count": len(latencies_ms),
        "p50_ms": round(percentile(latencies_ms, 0.50), 3),
        "p90_ms": round(percentile(latencies_ms, 0.90), 3),
        "p99_ms": round(percentile(latencies_ms, 0.99), 3),
        "max_ms": round(max(latencies_ms), 3),
        "mean_ms": round(statistics.fmean(latencies_ms), 3),
    }


# --- the server (a child process: its own interpreter, its own GIL) -----------------------------


def serve(port: int) -> None:
    import uvicorn

    from cloud.api import create_app
    from cloud.api.limits import ApiLimits
    from cloud.settings import load_settings

    limits = ApiLimits(
        portal_login_burst=100_000,
        portal_login_refill_per_s=100_000.0,
        portal_login_global_burst=100_000,
        portal_login_global_refill_per_s=100_000.0,
    )
    app = create_app(load_settings(), limits=limits)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def wait_ready(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the API exited with {process.returncode}")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            connection.request("GET", "/readyz")
            ok = connection.getresponse().status == 200
            connection.close()
            if ok:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise TimeoutError("the API did not become ready")


# --- the client ---------------------------------------------------------------------------------


def log_in(port: int, number: int) -> tuple[str, float]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    body = json.dumps({"card_uid": card_uid(number), "pin": pin_of(number)})
    started = time.perf_counter()
    connection.request(
        "POST",
        "/api/portal/login",
        body=body,
        headers={"Content-Type": "application/json", "X-Festival-Portal": "1"},
    )
    response = connection.getresponse()
    response.read()
    elapsed_ms = (time.perf_counter() - started) * 1000
    connection.close()
    if response.status != 200:
        raise RuntimeError(f"login answered {response.status}")
    cookie = response.getheader("set-cookie") or ""
    token = cookie.split(";", 1)[0].split("=", 1)[1]
    return token, elapsed_ms


class Reader:
    """One session: one keep-alive connection reading its card."""

    def __init__(self, port: int, token: str, transactions: int) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self.headers = {"Cookie": f"{COOKIE}={token}"}
        self.transactions = transactions
        self.latencies_ms: list[float] = []

    def read(self) -> None:
        started = time.perf_counter()
        self.connection.request("GET", "/api/portal/card", headers=self.headers)
        response = self.connection.getresponse()
        body = response.read()
        self.latencies_ms.append((time.perf_counter() - started) * 1000)
        if response.status != 200:
            raise RuntimeError(f"card answered {response.status}: {body[:200]!r}")
        if len(json.loads(body)["transactions"]) != self.transactions:
            raise RuntimeError("the card's history is incomplete")


def run_readers(readers: list[Reader], *, rate: float | None, duration_s: float) -> dict[str, Any]:
    """All readers at once; `rate` requests/s in total spread over them (None: back to back)."""
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(readers) + 1)
    interval_s = None if rate is None else len(readers) / rate

    def work(index: int, reader: Reader) -> None:
        try:
            barrier.wait()
            started = time.perf_counter()
            # Each session starts at its own offset in the interval: the load is even.
            next_at = started + (0 if interval_s is None else interval_s * index / len(readers))
            while time.perf_counter() - started < duration_s:
                if interval_s is not None:
                    pause = next_at - time.perf_counter()
                    if pause > 0:
                        time.sleep(pause)
                    next_at += interval_s
                reader.read()
        except BaseException as error:  # reported after the join
            errors.append(error)

    for reader in readers:
        reader.latencies_ms.clear()
    threads = [
        threading.Thread(target=work, args=(index, reader)) for index, reader in enumerate(readers)
    ]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed_s = time.perf_counter() - started
    if errors:
        raise errors[0]
    latencies = [value for reader in readers for value in reader.latencies_ms]
    result: dict[str, Any] = summary(latencies)
    result["sessions"] = len(readers)
    result["offered_per_s"] = rate
    result["requests_per_s"] = round(len(latencies) / elapsed_s, 1)
    return result


# --- setup --------------------------------------------------------------------------------------


def seed(owner_url: str, sessions: int, orders: int) -> None:
    engine = make_engine(owner_url, pool_size=2, application_name="bench-portal-seed")
    try:
        ledger = Ledger(engine)
        ledger.add_kiosk("bar-1", PUBLIC_KEY, "bar")
        ledger.add_kiosk("checkpoint-1", PUBLIC_KEY, "checkpoint")
        batch = []
        for number in range(sessions):
            batch.append(recharge(card_uid(number), 100_000, kiosk_id="checkpoint-1"))
            for order in range(orders):
                batch.append(
                    bar_order(
                        card_uid(number),
                        ("Beer", 2, 450),
                        ("Water", 1, 250),
                        ("Fries", 1, 500),
                        kiosk_id="bar-1",
                        seq=number * orders + order + 1,
                    )
                )
        for start in range(0, len(batch), 200):
            ledger.apply_batch(batch[start : start + 200])
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            hashes = list(pool.map(hash_pin, [pin_of(number) for number in range(sessions)]))
        PortalStore(engine).import_pin_hashes(
            [(card_uid(number), hashes[number]) for number in range(sessions)]
        )
    finally:
        engine.dispose()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=50)
    parser.add_argument("--orders", type=int, default=20, help="bar orders per card")
    parser.add_argument(
        "--rate", type=float, default=50.0, help="reads/s offered in total (default: 1 per session)"
    )
    parser.add_argument("--duration-s", type=float, default=10.0)
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return 0

    from cloud.sandbox import PostgresServer, free_port

    if not os.environ.get("XDG_RUNTIME_DIR"):
        os.environ["XDG_RUNTIME_DIR"] = tempfile.mkdtemp(prefix="festival-xdg-")
    root = Path(tempfile.mkdtemp(prefix="festival-bench-portal-"))
    root.chmod(0o755)
    server = PostgresServer(root / "postgres", durable=True)
    api: subprocess.Popen[bytes] | None = None
    load_before = os.getloadavg()
    try:
        server.start()
        owner_url = server.create_database("bench_portal")
        database.upgrade(owner_url, "head")
        seed(owner_url, args.sessions, args.orders)

        stored = hash_pin("BENCH123")
        check_pin("BENCH123", stored)  # warm
        pin_checks = []
        for _ in range(20):
            started = time.perf_counter()
            assert check_pin("BENCH123", stored)
            pin_checks.append((time.perf_counter() - started) * 1000)

        port = free_port()
        environment = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("STRIPE_", "ADMIN_", "POS_", "DATABASE_", "FESTIVAL_"))
        }
        environment.update(
            {
                "DATABASE_URL": database.service_url(owner_url, "festival_api"),
                "FESTIVAL_ENVIRONMENT": "development",
            }
        )
        api_log = (root / "api.log").open("wb")
        api = subprocess.Popen(
            [sys.executable, __file__, "--serve", str(port)],
            env=environment,
            stdout=api_log,
            stderr=subprocess.STDOUT,
        )
        api_log.close()
        wait_ready(port, api)

        tokens = []
        one_at_a_time = []
        for number in range(args.sessions):
            token, elapsed_ms = log_in(port, number)
            tokens.append(token)
            one_at_a_time.append(elapsed_ms)
        with ThreadPoolExecutor(max_workers=4) as pool:
            parallel = [ms for _, ms in pool.map(lambda n: log_in(port, n), range(args.sessions))]

        readers = [Reader(port, token, args.orders + 1) for token in tokens]
        run_readers(readers, rate=args.rate, duration_s=2.0)  # warm-up
        open_loop = run_readers(readers, rate=args.rate, duration_s=args.duration_s)
        closed_loop = run_readers(readers, rate=None, duration_s=args.duration_s / 2)
        for reader in readers:
            reader.connection.close()
    finally:
        if api is not None and api.poll() is None:
            api.send_signal(signal.SIGTERM)
            try:
                api.wait(timeout=20)
            except subprocess.TimeoutExpired:
                api.kill()
                api.wait(timeout=10)
        server.stop()
        shutil.rmtree(root, ignore_errors=True)

    results = {
        "benchmark": "portal",
        "command": "python bench/bench_portal.py " + " ".join(sys.argv[1:]),
        "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "load_average_before": [round(value, 2) for value in load_before],
            "load_average_after": [round(value, 2) for value in os.getloadavg()],
        },
        "setup": {
            "postgres": "durable (fsync on, synchronous_commit on), loopback TCP",
            "api": "uvicorn, one process, festival_api role, JSON request logs",
            "sessions": args.sessions,
            "transactions_per_card": args.orders + 1,
        },
        "pin_check": summary(pin_checks),
        "login_one_at_a_time": summary(one_at_a_time),
        "login_4_at_once": summary(parallel),
        "reads_open_loop": open_loop,
        "reads_closed_loop": closed_loop,
        "target_read_p99_ms": READ_P99_TARGET_MS,
        "target_pin_check_ms": PIN_CHECK_TARGET_MS,
    }
    print(json.dumps(results, indent=2))
    if not args.no_write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    met = (
        open_loop["p99_ms"] <= READ_P99_TARGET_MS
        and results["pin_check"]["p50_ms"] <= PIN_CHECK_TARGET_MS  # type: ignore[index]
    )
    print(
        f"\nreads at {args.rate:g}/s over {args.sessions} sessions: p50 {open_loop['p50_ms']} ms,"
        f" p99 {open_loop['p99_ms']} ms; back to back: {closed_loop['requests_per_s']}/s,"
        f" p99 {closed_loop['p99_ms']} ms; PIN check p50 {results['pin_check']['p50_ms']} ms;"  # type: ignore[index]
        f" login p50 {results['login_one_at_a_time']['p50_ms']} ms: {'met' if met else 'MISSED'}"  # type: ignore[index]
    )
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
