"""End-to-end consumer benchmark: simulated kiosks -> Mosquitto -> consumer(s) -> PostgreSQL.

    .venv/bin/python bench/bench_consumer.py            # about 3 minutes
    .venv/bin/python bench/bench_consumer.py --quick    # about 1 minute, shorter phases

Starts its own durable PostgreSQL (fsync on, synchronous_commit on) and its own Mosquitto,
migrates a fresh ledger, registers N bar kiosks and funds M cards, then runs the real
`festival-cloud consumer` as child processes and measures, with signed bar orders over MQTT:

1. latency from publish to verified result at fixed offered loads (open loop: 50, 200 and
   1,000 orders/s by default), one consumer;
2. sustained approved orders/s with one consumer, then with two consumer processes on the
   shared subscription (closed loop: every kiosk keeps a window of requests in flight);
3. the raw procedure rate of the same ledger, in the same run, on the same server: the
   function of bench/bench_ledger.py (stored procedures called directly, no MQTT).

With --menus, phases 1 and 2 give way to the price check's end-to-end cost (revision 0011):
sustained approved orders/s with one consumer, the same orders (MENU_LINES lines, each with its
SKU) first from kiosks without a menu, then - in the same run, after every kiosk was assigned a
menu - citing the menu's config version, so every line is checked; results to
bench/results/consumer_menus.json.

With --sun, phases 1 and 2 give way to genuine wristbands' end-to-end cost (issue 15): sustained
approved orders/s with one consumer on 7-byte-UID cards, every order carrying a fresh SUN message
(protocol/sun.py, as a genuine band gives it), the consumer restarted with FESTIVAL_CARD_AUTH=uid
(card_sun ignored) and =sun (verified in the consumer, counter rule in the ledger) in
alternation, in the same run; results to bench/results/consumer_sun.json.

Every result is verified under the cloud key; `festival-cloud check` must pass at the end.
Writes bench/results/consumer.json and prints a summary; the figures go to the
"Consumer (end to end)" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.bench_consumer_load import CpuMeter, LoadGenerator, RunStats  # noqa: E402
from cloud import database  # noqa: E402
from cloud.database import make_engine  # noqa: E402
from cloud.keys import (  # noqa: E402
    generate_card_master_key,
    save_card_master_key,
    save_private_key,
)
from cloud.ledger import Ledger  # noqa: E402
from cloud.ledger_records import LedgerRequest  # noqa: E402
from cloud.sandbox import MosquittoBroker, PostgresServer, free_port  # noqa: E402
from protocol.keys import generate_private_key, public_key_b64  # noqa: E402
from protocol.models import (  # noqa: E402
    BarItem,
    CardSun,
    CheckpointRecharge,
    Menu,
    MenuItem,
    request_to_dict,
)
from protocol.strict_json import dumps_canonical  # noqa: E402
from protocol.sun import CardKeyDerivation, sun_message  # noqa: E402

RESULTS = REPO / "bench" / "results" / "consumer.json"
SUN_RESULTS = REPO / "bench" / "results" / "consumer_sun.json"
SUN_ROUNDS = 3
MENUS_RESULTS = REPO / "bench" / "results" / "consumer_menus.json"
# --menus: the orders' lines (distinct SKUs of a 20-item menu), the same with menus off and on.
MENU = Menu(
    "bench",
    tuple(MenuItem(f"sku-{n:02d}", f"Item {n}", 10 + n, vat_rate_bp=1900) for n in range(20)),
)
MENU_ROUNDS = 2
MENU_LINES = tuple(BarItem(f"Item {n}", 1, 10 + n, sku=f"sku-{n:02d}") for n in range(0, 20, 4))
FESTIVAL_CLOUD = REPO / ".venv" / "bin" / "festival-cloud"
CARD_OPENING_CENTS = 100_000
PRICE_CENTS = 100
READY_TIMEOUT_S = 30.0


def card_uids(count: int, *, seven_bytes: bool = False) -> list[str]:
    """Card UIDs; 7-byte ones (14 hex digits) for --sun: only those can be genuine."""
    if seven_bytes:
        return [f"0C{number:012X}" for number in range(1, count + 1)]
    return [f"0C{number:06X}" for number in range(1, count + 1)]


class Bands:
    """Genuine wristbands' SUN messages: one fresh counter per card per order (what a band
    gives at each tap). Computed before signing, so the load generator's cost is not measured."""

    def __init__(self, master_key: bytes) -> None:
        self._keys = CardKeyDerivation(master_key)
        self._counters: dict[str, int] = {}

    def tap(self, card_uid: str) -> CardSun:
        counter = self._counters.get(card_uid, 1) + 1
        self._counters[card_uid] = counter
        message = sun_message(
            self._keys.meta_key, self._keys.file_key(card_uid), bytes.fromhex(card_uid), counter
        )
        return CardSun(message.picc_data, message.cmac)


class Consumers:
    """`festival-cloud consumer` children, stopped by pid."""

    def __init__(self, root: Path, env: dict[str, str], profile_dir: Path | None = None) -> None:
        self.root = root
        self.env = env
        self.profile_dir = profile_dir
        self.processes: list[subprocess.Popen[bytes]] = []
        self.runs = 0

    def start(self, count: int, broker: MosquittoBroker) -> None:
        for number in range(1, count + 1):
            user = f"cloud-consumer-{number}"
            log = (self.root / f"{user}.log").open("ab")
            env = {
                **self.env,
                "MQTT_URL": broker.url(user),
                "CONSUMER_ID": f"bench-{user}",
                "CONSUMER_METRICS_PORT": str(free_port()),
            }
            command = [str(FESTIVAL_CLOUD), "consumer"]
            if self.profile_dir is not None:
                self.runs += 1
                profile = self.profile_dir / f"consumer-{self.runs}.prof"
                command = [sys.executable, "-m", "cProfile", "-o", str(profile), *command]
            self.processes.append(
                subprocess.Popen(
                    command,
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                )
            )
            log.close()
            self._wait_ready(self.root / f"{user}.log")

    def _wait_ready(self, log: Path) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if '"subscribed; ready"' in log.read_text(errors="replace"):
                return
            if any(process.poll() is not None for process in self.processes):
                raise RuntimeError(f"a consumer exited:\n{log.read_text()[-2000:]}")
            time.sleep(0.05)
        raise TimeoutError("consumer not ready")

    def stop(self) -> list[int]:
        codes = []
        for process in self.processes:
            process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                codes.append(process.wait(timeout=30))
            except subprocess.TimeoutExpired:
                process.kill()
                codes.append(process.wait(timeout=30))
        self.processes = []
        return codes


def fund(ledger: Ledger, cards: list[str]) -> None:
    """Open every card with one top-up (direct ledger calls: setup, not measured)."""
    now_ms = time.time_ns() // 1_000_000
    for start in range(0, len(cards), 500):
        items = []
        for offset, card in enumerate(cards[start : start + 500]):
            recharge = CheckpointRecharge(
                request_id=f"fund-{card}",
                kiosk_id="bench-checkpoint",
                seq=start + offset + 1,
                created_at_ms=now_ms,
                card_uid=card,
                currency="EUR",
                amount_cents=CARD_OPENING_CENTS,
                payment_method="cash",
                staff_id="bench",
            )
            # The payload a kiosk would sign is the canonical JSON of the request.
            digest = hashlib.sha256(dumps_canonical(request_to_dict(recharge))).hexdigest()
            items.append(LedgerRequest(request=recharge, payload_sha256=digest))
        outcomes = ledger.apply_batch(items)
        assert all(outcome.approved for outcome in outcomes), outcomes[0]


def latency_row(stats: RunStats) -> dict[str, Any]:
    summary = stats.summary()
    return {
        "offered_per_s": summary["offered_per_s"],
        "sent": summary["sent"],
        "answered": summary["answered"],
        "approved": summary["approved"],
        "approved_per_s": summary["approved_per_s"],
        **summary["latency_ms"],  # type: ignore[dict-item]
        "duplicate_results": summary["duplicate_results"],
        "invalid_results": summary["invalid_results"],
    }


def raw_procedure_rate(ledger: Ledger, duration_s: float) -> list[dict[str, object]]:
    """bench/bench_ledger.py's measurement, on this server, after the consumer phases."""
    from bench.bench_ledger import _cards, _run

    cards = [f"0D{card[2:]}" for card in _cards(4000)]
    for number in range(16):
        ledger.add_kiosk(f"bench-bar-{number + 1}", public_key_b64(generate_private_key()), "bar")
    fund(ledger, cards)
    seqs = {f"bench-bar-{n + 1}": 0 for n in range(16)}
    runs = []
    for connections, batch_size in ((1, 1), (16, 1), (1, 50), (4, 50)):
        result = _run(ledger, cards, connections, batch_size, duration_s, seqs)
        runs.append(result)
        print(
            f"  raw: {connections:>2} connection(s), {result['mode']:<20}"
            f" {result['orders_per_s']:>6} orders/s",
            flush=True,
        )
    return runs


def menus_comparison(
    generator: LoadGenerator,
    consumers: Consumers,
    ledger: Ledger,
    kiosk_ids: list[str],
    cards: list[str],
    args: argparse.Namespace,
) -> list[dict[str, Any]]:
    """Sustained approved orders/s, one consumer, menus off and on in alternation (off, on,
    off, on: drift and warm-up hit both alike), in this run, on this server. On: every kiosk is
    assigned MENU and every order cites that config; off: the menus are cleared again (a config
    without a menu) and the same orders cite none, so nothing is checked."""
    rows: list[dict[str, Any]] = []
    generator.run_open_loop(generator.presign(200, cards, PRICE_CENTS, items=MENU_LINES), 200)
    assigned = False
    for menus in ("off", "on") * MENU_ROUNDS:
        version = None
        if menus == "on" or assigned:
            menu = MENU if menus == "on" else None
            versions = {ledger.issue_kiosk_config(kiosk_id, menu=menu) for kiosk_id in kiosk_ids}
            assert len(versions) == 1, versions
            assigned = menus == "on"
            version = versions.pop() if assigned else None
        budget = int(6000 * args.sustained_s) + 10_000
        requests = generator.presign(
            budget, cards, PRICE_CENTS, items=MENU_LINES, config_version=version
        )
        stats, _, _ = generator.run_closed_loop(requests, args.window, args.sustained_s)
        summary = stats.summary()
        rows.append(
            {
                "menus": menus,
                "config_version": version,
                "lines_per_order": len(MENU_LINES),
                "window_per_kiosk": args.window,
                "duration_s": args.sustained_s,
                "approved_per_s": summary["approved_per_s"],
                "sent": summary["sent"],
                "answered": summary["answered"],
                "unanswered": summary["unanswered"],
                "latency_ms": summary["latency_ms"],
                "load_average": os.getloadavg(),
            }
        )
        print(
            f"  menus {menus}: {summary['approved_per_s']} approved orders/s"
            f" ({len(MENU_LINES)} lines each; p50 {summary['latency_ms']['p50']} ms;"  # type: ignore[index]
            f" load {os.getloadavg()[0]:.1f})",
            flush=True,
        )
    return rows


def side_by_side(
    rows: list[dict[str, Any]], key: str, base: str, other: str
) -> tuple[dict[str, float], dict[str, Any]]:
    """The mean rate of each mode, and other / base: of the means and of each adjacent pair of
    rounds (base, other), which ran minutes apart on the same machine, so the pairs show how
    much of a difference is drift."""
    rates = {
        mode: [float(row["approved_per_s"]) for row in rows if row[key] == mode]
        for mode in (base, other)
    }
    means = {mode: round(statistics.mean(values), 1) for mode, values in rates.items()}
    ratio = {
        "of_means": round(means[other] / means[base], 3),
        "per_round": [
            round(second / first, 3)
            for first, second in zip(rates[base], rates[other], strict=True)
        ],
    }
    return means, ratio


def sun_comparison(
    generator: LoadGenerator,
    consumers: Consumers,
    broker: MosquittoBroker,
    bands: Bands,
    key_file: Path,
    cards: list[str],
    args: argparse.Namespace,
) -> list[dict[str, Any]]:
    """Sustained approved orders/s, one consumer, FESTIVAL_CARD_AUTH uid and sun in alternation
    (uid, sun, uid, sun: drift and warm-up hit both alike), the consumer restarted for each.
    Every order carries a fresh SUN message in both modes, so the messages are the same size;
    uid mode ignores it, sun mode verifies it and the ledger checks and stores its counter."""
    rows: list[dict[str, Any]] = []
    base_env = dict(consumers.env)
    for mode in ("uid", "sun") * SUN_ROUNDS:
        consumers.stop()
        consumers.env = {
            **base_env,
            "FESTIVAL_CARD_AUTH": mode,
            "CARD_MASTER_KEY_FILE": str(key_file),
        }
        consumers.start(1, broker)
        warm = generator.presign(200, cards, PRICE_CENTS, card_sun=bands.tap)
        generator.run_open_loop(warm, 200)
        budget = int(6000 * args.sustained_s) + 10_000
        requests = generator.presign(budget, cards, PRICE_CENTS, card_sun=bands.tap)
        stats, _, _ = generator.run_closed_loop(requests, args.window, args.sustained_s)
        summary = stats.summary()
        rows.append(
            {
                "card_auth": mode,
                "window_per_kiosk": args.window,
                "duration_s": args.sustained_s,
                "approved_per_s": summary["approved_per_s"],
                "sent": summary["sent"],
                "answered": summary["answered"],
                "unanswered": summary["unanswered"],
                "latency_ms": summary["latency_ms"],
                "load_average": os.getloadavg(),
            }
        )
        print(
            f"  FESTIVAL_CARD_AUTH={mode}: {summary['approved_per_s']} approved orders/s"
            f" (p50 {summary['latency_ms']['p50']} ms;"  # type: ignore[index]
            f" load {os.getloadavg()[0]:.1f})",
            flush=True,
        )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kiosks", type=int, default=8, help="simulated bar kiosks (N)")
    parser.add_argument("--cards", type=int, default=2000, help="cards ordered on (M)")
    parser.add_argument("--rates", default="50,200,1000", help="offered loads, orders/s")
    parser.add_argument("--latency-s", type=float, default=10.0, help="seconds per offered load")
    parser.add_argument("--sustained-s", type=float, default=15.0, help="closed-loop seconds")
    parser.add_argument("--window", type=int, default=40, help="requests in flight per kiosk")
    parser.add_argument("--batch-max", type=int, default=64, help="CONSUMER_BATCH_MAX")
    parser.add_argument("--raw-s", type=float, default=5.0, help="seconds per raw configuration")
    parser.add_argument("--quick", action="store_true", help="short phases (smoke run)")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument(
        "--menus",
        action="store_true",
        help="measure menus off vs on (the price check) instead of phases 1 and 2",
    )
    parser.add_argument(
        "--sun",
        action="store_true",
        help="measure FESTIVAL_CARD_AUTH uid vs sun instead of phases 1 and 2",
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the temporary folder (logs) and print its path"
    )
    parser.add_argument(
        "--profile-dir", type=Path, help="run the consumers under cProfile, write .prof files here"
    )
    args = parser.parse_args()
    if args.quick:
        args.latency_s, args.sustained_s, args.raw_s = 4.0, 6.0, 2.0
    rates = [float(rate) for rate in args.rates.split(",")]
    if args.out is None:
        args.out = MENUS_RESULTS if args.menus else SUN_RESULTS if args.sun else RESULTS

    root = Path(tempfile.mkdtemp(prefix="festival-bench-consumer-"))
    root.chmod(0o755)
    server = PostgresServer(root / "postgres", durable=True)
    broker = MosquittoBroker(root / "mosquitto")
    consumers: Consumers | None = None
    generator: LoadGenerator | None = None
    started = time.time()
    try:
        server.start()
        url = server.create_database("bench")
        database.upgrade(url)
        kiosk_ids = [f"bar-{number}" for number in range(1, args.kiosks + 1)]
        for number in (1, 2):
            broker.add_user(f"cloud-consumer-{number}", role="cloud")
        for kiosk_id in kiosk_ids:
            broker.add_user(kiosk_id)
        broker.start()

        engine = make_engine(url, pool_size=16, application_name="bench-consumer")
        ledger = Ledger(engine)
        keys = {kiosk_id: generate_private_key() for kiosk_id in kiosk_ids}
        for kiosk_id, key in keys.items():
            ledger.add_kiosk(kiosk_id, public_key_b64(key), "bar")
        ledger.add_kiosk("bench-checkpoint", public_key_b64(generate_private_key()), "checkpoint")
        cards = card_uids(args.cards, seven_bytes=args.sun)
        fund(ledger, cards)
        cloud_key = generate_private_key()
        save_private_key(cloud_key, root / "cloud.pem")

        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("FESTIVAL_", "CONSUMER_", "NOTIFY_", "WATCHDOG_"))
        }
        env.update(
            {
                "DATABASE_URL": database.service_url(url),
                "CLOUD_SIGNING_KEY_FILE": str(root / "cloud.pem"),
                "CONSUMER_BATCH_MAX": str(args.batch_max),
            }
        )
        consumers = Consumers(root, env, args.profile_dir)
        generator = LoadGenerator(
            broker_urls={kiosk_id: broker.url(kiosk_id) for kiosk_id in kiosk_ids},
            keys=keys,
            cloud_public_key=cloud_key.public_key(),
        )
        generator.connect()

        report: dict[str, Any] = {"latency": [], "sustained": []}
        print(f"1 consumer, {args.kiosks} kiosks, {args.cards} cards", flush=True)
        consumers.start(1, broker)
        if args.sun:
            rates = []  # the sun comparison replaces phases 1 and 2
            master_key = generate_card_master_key()
            save_card_master_key(master_key, root / "card-master.key")
            report["sun"] = sun_comparison(
                generator,
                consumers,
                broker,
                Bands(master_key),
                root / "card-master.key",
                cards,
                args,
            )
            report["sun_approved_per_s_mean"], report["sun_to_uid_ratio"] = side_by_side(
                report["sun"], "card_auth", "uid", "sun"
            )
            print(
                f"  uid vs sun (mean): {report['sun_approved_per_s_mean']};"
                f" sun / uid: {report['sun_to_uid_ratio']}",
                flush=True,
            )
            report["sustained"] = [{"consumers": 1, **row} for row in report["sun"]]
        if args.menus:
            rates = []  # the menus comparison replaces phases 1 and 2
            report["menus"] = menus_comparison(generator, consumers, ledger, kiosk_ids, cards, args)
            report["menus_approved_per_s_mean"], report["menus_on_to_off_ratio"] = side_by_side(
                report["menus"], "menus", "off", "on"
            )
            print(
                f"  menus off vs on (mean): {report['menus_approved_per_s_mean']};"
                f" on / off: {report['menus_on_to_off_ratio']}",
                flush=True,
            )
            report["sustained"] = [{"consumers": 1, **row} for row in report["menus"]]
        # Warm-up: connections, caches, the first batches.
        generator.run_open_loop(generator.presign(200, cards, PRICE_CENTS), 200)
        for rate in rates:
            count = int(rate * args.latency_s)
            stats = generator.run_open_loop(generator.presign(count, cards, PRICE_CENTS), rate)
            row = latency_row(stats)
            report["latency"].append({"consumers": 1, **row})
            print(
                f"  offered {rate:>6.0f}/s: p50 {row['p50']} ms, p95 {row['p95']} ms,"
                f" p99 {row['p99']} ms, max {row['max']} ms"
                f" ({row['answered']}/{row['sent']} answered)",
                flush=True,
            )
        for count in () if args.menus or args.sun else (1, 2):
            if count == 2:
                consumers.stop()
                print("2 consumers on the shared subscription", flush=True)
                consumers.start(2, broker)
                generator.run_open_loop(generator.presign(200, cards, PRICE_CENTS), 200)
            budget = int(6000 * args.sustained_s) + 10_000
            requests = generator.presign(budget, cards, PRICE_CENTS)
            assert server.process is not None and broker.process is not None
            meter = CpuMeter(
                {
                    "consumers": [process.pid for process in consumers.processes],
                    "postgres": [server.process.pid],
                    "mosquitto": [broker.process.pid],
                }
            )
            stats, _, cpu = generator.run_closed_loop(
                requests, args.window, args.sustained_s, meter=meter
            )
            summary = stats.summary()
            report["sustained"].append(
                {
                    "consumers": count,
                    "window_per_kiosk": args.window,
                    "duration_s": args.sustained_s,
                    "approved_per_s": summary["approved_per_s"],
                    "sent": summary["sent"],
                    "answered": summary["answered"],
                    "unanswered": summary["unanswered"],
                    "duplicate_results": summary["duplicate_results"],
                    "invalid_results": summary["invalid_results"],
                    "latency_ms": summary["latency_ms"],
                    "cpu_s": cpu,
                    "cpu_ms_per_answer": {
                        name: round(seconds * 1000 / max(1, stats.answered), 3)
                        for name, seconds in cpu.items()
                        if name != "wall_s"
                    },
                }
            )
            print(
                f"  sustained: {summary['approved_per_s']} approved orders/s"
                f" (closed loop, {args.window} in flight per kiosk;"
                f" p50 {summary['latency_ms']['p50']} ms)",  # type: ignore[index]
                flush=True,
            )
            print(f"  CPU seconds over the window: {cpu}", flush=True)
        exit_codes = consumers.stop()
        generator.close()
        generator = None

        print("raw procedure rate (bench/bench_ledger.py, same server)", flush=True)
        raw_runs = raw_procedure_rate(ledger, args.raw_s)
        raw_best = max(int(run["orders_per_s"]) for run in raw_runs)  # type: ignore[call-overload]
        raw_per_call = max(
            int(run["orders_per_s"])  # type: ignore[call-overload]
            for run in raw_runs
            if run["batch_size"] == 1
        )
        violations = ledger.check()
        engine.dispose()
        best_end_to_end = max(float(row["approved_per_s"]) for row in report["sustained"])
        report.update(
            {
                "benchmark": "consumer end to end",
                "command": "python bench/bench_consumer.py " + " ".join(sys.argv[1:]),
                "machine": {
                    "cpus": os.cpu_count(),
                    "platform": platform.platform(),
                    "python": platform.python_version(),
                    "load_average_at_end": os.getloadavg(),
                },
                "postgres": {
                    "version": server.psql("SHOW server_version", "bench").strip(),
                    "fsync": server.psql("SHOW fsync", "bench").strip(),
                    "synchronous_commit": server.psql("SHOW synchronous_commit", "bench").strip(),
                },
                "kiosks": args.kiosks,
                "cards": args.cards,
                "batch_max": args.batch_max,
                "raw_procedure": raw_runs,
                "raw_best_orders_per_s": raw_best,
                "raw_one_per_call_best_orders_per_s": raw_per_call,
                "ratio_to_raw_best": round(best_end_to_end / raw_best, 3),
                "ratio_to_raw_one_per_call": round(best_end_to_end / raw_per_call, 3),
                "consumer_exit_codes": exit_codes,
                "ledger_check": "passed" if not violations else violations,
                "wall_s": round(time.time() - started, 1),
            }
        )
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        print(
            f"best sustained {best_end_to_end:.0f}/s = {report['ratio_to_raw_best']:.0%} of the"
            f" best raw rate ({raw_best}/s), {report['ratio_to_raw_one_per_call']:.0%} of the"
            f" best one-per-call raw rate ({raw_per_call}/s); ledger check"
            f" {'passed' if not violations else 'FAILED'}; wrote {args.out}",
            flush=True,
        )
        return 0 if not violations and all(code == 0 for code in exit_codes) else 1
    finally:
        if generator is not None:
            generator.close()
        if consumers is not None:
            consumers.stop()
        broker.stop()
        server.stop()
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
