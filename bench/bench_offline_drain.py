"""Offline backlog drain benchmark (issue 14 §4, DESIGN.md's drain target): a kiosk returning with
2,000 offline sales is drained at >= 1,000/s while other kiosks send 200 online orders/s whose p99
stays <= 50 ms - both figures from one run.

    .venv/bin/python bench/bench_offline_drain.py             # about 1 minute
    .venv/bin/python bench/bench_offline_drain.py --backlog 2000 --online-rate 200

Starts its own durable PostgreSQL (fsync on) and Mosquitto, migrates a fresh ledger, registers
N online bar kiosks and one returning bar kiosk whose published config allows offline sales,
funds the cards, runs one real `festival-cloud consumer` (bench/bench_consumer.py's machinery)
and then:

1. the online kiosks send `--online-rate` signed orders/s (open loop) for `--duration-s`;
2. after `--backlog-after-s`, the returning kiosk - a process of its own, as it is another Pi
   on a festival site - sends its backlog of `--backlog` signed offline sales (`"offline":
   true`, citing its config) as the kiosk firmware does when its link comes back: in seq order,
   at most `--window` awaiting their result, the next one as each result arrives
   (device/machine.py; `--window 0`: all at once);
3. drain rate = backlog / (last offline result received - first offline sale published); the
   online orders' latency (publish to verified result) is measured over the whole run, so the
   drain falls inside it.

Half the backlog's cards are unknown to the cloud (opened by their first offline sale, holding
its debt), so the drain also creates debts. Every result is
verified under the cloud key; `festival-cloud check` must pass. Writes
bench/results/offline_drain.json; the figures go to docs/benchmarks.md ("Offline backlog drain").
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.bench_consumer import Consumers, card_uids, fund  # noqa: E402
from bench.bench_consumer_load import LoadGenerator, RunStats  # noqa: E402
from cloud import database  # noqa: E402
from cloud.database import make_engine  # noqa: E402
from cloud.keys import save_private_key  # noqa: E402
from cloud.ledger import Ledger  # noqa: E402
from cloud.sandbox import MosquittoBroker, PostgresServer  # noqa: E402
from device.limits import RESULTS_AWAITED_MAX  # noqa: E402
from protocol.keys import (  # noqa: E402
    generate_private_key,
    load_public_key_b64,
    private_key_from_pem,
    private_key_pem,
    public_key_b64,
)
from protocol.models import OfflinePolicy  # noqa: E402

RESULTS = REPO / "bench" / "results" / "offline_drain.json"
RETURNING = "bar-back"
PRICE_CENTS = 100
OFFLINE_PRICE_CENTS = 300
# The returning kiosk's policy: the backlog fits (its kiosk total is the kiosk's own business;
# the cloud's 24-hour bound counts debts, 2 x kiosk_max_cents).
POLICY = OfflinePolicy(sale_max_cents=2_000, card_max_cents=4_000, kiosk_max_cents=1_000_000)
DRAIN_TARGET_PER_S = 1_000
P99_TARGET_MS = 50.0


def returning_kiosk(
    connection: Any,
    broker_url: str,
    key_pem: bytes,
    cloud_public_b64: str,
    cards: list[str],
    count: int,
    config_version: int,
    window: int,
) -> None:
    """The returning kiosk, in a process of its own as on its own Pi: its paho thread (2,000
    publishes, acknowledgements and results in about a second) does not compete for the online
    kiosks' interpreter lock, whose clock measures the online latency. Signs the backlog, says
    "ready", publishes it all at once on "go", and sends back when each part happened
    (time.monotonic() is the machine's CLOCK_MONOTONIC, the same in every process)."""
    generator = LoadGenerator(
        broker_urls={RETURNING: broker_url},
        keys={RETURNING: private_key_from_pem(key_pem)},
        cloud_public_key=load_public_key_b64(cloud_public_b64),
    )
    try:
        generator.connect()
        backlog = generator.presign(
            count, cards, OFFLINE_PRICE_CENTS, config_version=config_version, offline=True
        )
        kiosk = generator.kiosks[0]
        kiosk.results = []
        connection.send("ready")
        if connection.recv() != "go":
            return
        first_sent = time.monotonic()
        for sent in backlog:
            sent.started_at = first_sent
        if window <= 0:
            for sent in backlog:
                kiosk.client.publish(kiosk.tx_topic, sent.raw, qos=1)
        else:
            # As the kiosk's firmware resends: at most `window` awaiting their result, the next
            # one sent as each result arrives (in seq order).
            waiting = list(reversed(backlog))
            lock = threading.Lock()

            def send_next(_: object = None) -> None:
                with lock:
                    if not waiting:
                        return
                    sent = waiting.pop()
                kiosk.client.publish(kiosk.tx_topic, sent.raw, qos=1)

            kiosk.on_result = send_next
            for _ in range(window):
                send_next()
        published = time.monotonic()
        deadline = first_sent + 60.0
        while len(kiosk.results) < len(backlog) and time.monotonic() < deadline:
            time.sleep(0.005)
        drained_at = kiosk.results[-1][0] if kiosk.results else time.monotonic()
        stats = generator._stats(backlog, None, drained_at - first_sent)
        connection.send(
            {
                "first_sent": first_sent,
                "published": published,
                "drained_at": drained_at,
                "answered": stats.answered,
                "approved": stats.approved,
                "latency_ms": stats.summary()["latency_ms"],
            }
        )
    finally:
        generator.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kiosks", type=int, default=8, help="online bar kiosks")
    parser.add_argument("--cards", type=int, default=2000, help="cards the online kiosks use")
    parser.add_argument("--backlog", type=int, default=2000, help="offline sales to drain")
    parser.add_argument("--online-rate", type=float, default=200.0, help="online orders/s")
    parser.add_argument("--duration-s", type=float, default=12.0, help="online phase seconds")
    parser.add_argument("--backlog-after-s", type=float, default=3.0, help="backlog sent at")
    parser.add_argument("--batch-max", type=int, default=64, help="CONSUMER_BATCH_MAX")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--keep", action="store_true", help="keep the logs and data directory")
    parser.add_argument(
        "--window",
        type=int,
        default=RESULTS_AWAITED_MAX,
        help="the returning kiosk keeps at most this many awaiting their result, as the kiosk"
        " firmware does (RESULTS_AWAITED_MAX); 0: all at once, as before revision 1.1's window",
    )
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="festival-bench-offline-"))
    root.chmod(0o755)
    server = PostgresServer(root / "postgres", durable=True)
    broker = MosquittoBroker(root / "mosquitto")
    consumers: Consumers | None = None
    generators: list[LoadGenerator] = []
    returner: multiprocessing.process.BaseProcess | None = None
    started = time.time()
    try:
        server.start()
        url = server.create_database("bench")
        database.upgrade(url)
        online_ids = [f"bar-{number}" for number in range(1, args.kiosks + 1)]
        broker.add_user("cloud-consumer-1", role="cloud")
        for kiosk_id in [*online_ids, RETURNING]:
            broker.add_user(kiosk_id)
        broker.start()

        engine = make_engine(url, pool_size=4, application_name="bench-offline")
        ledger = Ledger(engine)
        keys = {kiosk_id: generate_private_key() for kiosk_id in [*online_ids, RETURNING]}
        for kiosk_id, key in keys.items():
            ledger.add_kiosk(kiosk_id, public_key_b64(key), "bar")
        ledger.add_kiosk("bench-checkpoint", public_key_b64(generate_private_key()), "checkpoint")
        version = ledger.issue_kiosk_config(RETURNING, offline=POLICY)
        assert version is not None
        ledger.mark_config_published(RETURNING, version)
        cards = card_uids(args.cards)
        fund(ledger, cards)
        # The backlog's cards: its own, half of them nearly empty (debts), half funded.
        backlog_cards = [f"0E{number:06X}" for number in range(1, args.backlog // 4 + 2)]
        fund(ledger, backlog_cards[::2])  # the others are opened by their first offline sale
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
        consumers = Consumers(root, env)
        online = LoadGenerator(
            broker_urls={kiosk_id: broker.url(kiosk_id) for kiosk_id in online_ids},
            keys={kiosk_id: keys[kiosk_id] for kiosk_id in online_ids},
            cloud_public_key=cloud_key.public_key(),
        )
        generators = [online]
        online.connect()
        parent_end, child_end = multiprocessing.get_context("spawn").Pipe()
        returner = multiprocessing.get_context("spawn").Process(
            target=returning_kiosk,
            args=(
                child_end,
                broker.url(RETURNING),
                private_key_pem(keys[RETURNING]),
                public_key_b64(cloud_key),
                backlog_cards,
                args.backlog,
                version,
                args.window,
            ),
            name="returning-kiosk",
        )
        returner.start()
        if not parent_end.poll(60) or parent_end.recv() != "ready":
            raise RuntimeError("the returning kiosk did not get ready")
        consumers.start(1, broker)
        # Warm-up: connections, caches, the first batches.
        online.run_open_loop(online.presign(200, cards, PRICE_CENTS), 200)

        count = int(args.online_rate * args.duration_s)
        online_requests = online.presign(count, cards, PRICE_CENTS)
        load_average_before = os.getloadavg()
        online_stats: list[RunStats] = []
        runner = threading.Thread(
            target=lambda: online_stats.append(
                online.run_open_loop(online_requests, args.online_rate)
            )
        )
        runner.start()
        time.sleep(args.backlog_after_s)
        parent_end.send("go")
        if not parent_end.poll(90):
            raise RuntimeError("the returning kiosk did not report")
        drain: dict[str, Any] = parent_end.recv()
        returner.join(30)
        runner.join()
        load_average_after = os.getloadavg()
        stats = online_stats[0]
        online_summary = stats.summary()
        drain_s = drain["drained_at"] - drain["first_sent"]
        drain_per_s = drain["answered"] / drain_s if drain_s > 0 else 0.0
        exit_codes = consumers.stop()
        consumers = None
        debts = ledger.engine.connect().exec_driver_sql(
            "SELECT count(*), coalesce(sum(debt_cents), 0) FROM cards WHERE debt_cents > 0"
        )
        debt_cards, debt_cents = debts.one()
        applied = ledger.engine.connect().exec_driver_sql(
            "SELECT count(*), coalesce(sum(shortfall_cents), 0) FROM offline_sales"
        )
        offline_applied, shortfall_cents = applied.one()
        violations = ledger.check()
        engine.dispose()
        p99 = online_summary["latency_ms"]["p99"]  # type: ignore[index]
        report: dict[str, Any] = {
            "benchmark": "offline backlog drain with online load",
            "command": "python bench/bench_offline_drain.py " + " ".join(sys.argv[1:]),
            "window": args.window,
            "backlog": args.backlog,
            "backlog_answered": drain["answered"],
            "backlog_approved": drain["approved"],
            "backlog_publish_s": round(drain["published"] - drain["first_sent"], 3),
            "drain_s": round(drain_s, 3),
            "drain_per_s": round(drain_per_s, 1),
            "drain_target_per_s": DRAIN_TARGET_PER_S,
            "offline_sales_applied": int(offline_applied),
            "shortfall_cents": int(shortfall_cents),
            "debt_cards": int(debt_cards),
            "debt_cents": int(debt_cents),
            "online": online_summary,
            "online_p99_ms": p99,
            "online_p99_target_ms": P99_TARGET_MS,
            "backlog_latency_ms": drain["latency_ms"],
            "targets_met": bool(
                drain_per_s >= DRAIN_TARGET_PER_S
                and p99 is not None
                and p99 <= P99_TARGET_MS
                and drain["answered"] == args.backlog
            ),
            "machine": {
                "cpus": os.cpu_count(),
                "platform": platform.platform(),
                "python": platform.python_version(),
                "load_average_before": load_average_before,
                "load_average_after": load_average_after,
            },
            "postgres": {
                "version": server.psql("SHOW server_version", "bench").strip(),
                "fsync": server.psql("SHOW fsync", "bench").strip(),
                "synchronous_commit": server.psql("SHOW synchronous_commit", "bench").strip(),
            },
            "kiosks_online": args.kiosks,
            "batch_max": args.batch_max,
            "consumer_exit_codes": exit_codes,
            "ledger_check": "passed" if not violations else violations,
            "wall_s": round(time.time() - started, 1),
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        print(
            f"backlog {drain['answered']}/{args.backlog} drained in {drain_s:.2f} s ="
            f" {drain_per_s:.0f}/s (target {DRAIN_TARGET_PER_S}/s); online"
            f" {online_summary['answered']}/{online_summary['sent']} at {args.online_rate:.0f}/s:"
            f" p50 {online_summary['latency_ms']['p50']} ms, p99 {p99} ms"  # type: ignore[index]
            f" (target {P99_TARGET_MS:g} ms); {int(debt_cards)} debts, {int(debt_cents)} cents;"
            f" load {load_average_before[0]:.2f} -> {load_average_after[0]:.2f}; ledger check"
            f" {'passed' if not violations else 'FAILED'}; wrote {args.out}",
            flush=True,
        )
        return 0 if not violations and all(code == 0 for code in exit_codes) else 1
    finally:
        for generator in generators:
            generator.close()
        if returner is not None and returner.is_alive():
            returner.terminate()
            returner.join(10)
        if consumers is not None:
            consumers.stop()
        broker.stop()
        server.stop()
        if args.keep:
            print(f"kept {root}", flush=True)
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
