"""Bar-order throughput of the ledger's stored procedures, called directly (no MQTT).

    .venv/bin/python bench/bench_ledger.py [--duration-s 5] [--batch-size 50]

Starts its own durable PostgreSQL (default durability: fsync on, synchronous_commit on), migrates
a fresh database, funds many cards, then for 1, 4 and 16 connections measures bar orders per
second through `Ledger.apply` (one request per transaction: sp_process_bar_order) and through
`Ledger.apply_batch` (one transaction and one round trip per batch: sp_process_batch). Each
connection is one kiosk; cards are drawn at random from a large set, as at a festival.
This is the raw limit the consumer is measured against (DESIGN.md "Targets").
Each configuration runs twice, side by side: plain orders (2 beers, 1 water) and the same order
with its cup deposit line (revision 0005: every such order updates the one deposit account's row,
so they serialise on it; DESIGN.md 1.1 asks for their rate apart).
Writes bench/results/ledger.json and prints a table; `festival-cloud check` must pass at the end.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from cloud import database  # noqa: E402
from cloud.database import TransientDatabaseError, make_engine  # noqa: E402
from cloud.ledger import Ledger  # noqa: E402
from cloud.ledger_records import LedgerRequest  # noqa: E402
from cloud.sandbox import PostgresServer  # noqa: E402
from protocol.models import BarItem, BarOrder  # noqa: E402
from tests.ledger.helpers import PUBLIC_KEY, recharge  # noqa: E402

CONNECTIONS = (1, 4, 16)
CARD_OPENING_CENTS = 100_000
ORDER_ITEMS = (BarItem("Beer", 2, 450), BarItem("Water", 1, 250))
CUP_ORDER_ITEMS = (*ORDER_ITEMS, BarItem("Cup deposit", 3, 200, sku="cup", is_deposit=True))
ORDER_KINDS = {"plain": ORDER_ITEMS, "with cup deposit": CUP_ORDER_ITEMS}
RESULTS = REPO / "bench" / "results" / "ledger.json"
WARMUP_S = 1.0
TRANSIENT_RETRIES_MAX = 10


def _order(
    card_uid: str, kiosk_id: str, seq: int, items: tuple[BarItem, ...] = ORDER_ITEMS
) -> LedgerRequest:
    """A bar order, built cheaply: the client shares the machine's two cores with PostgreSQL,
    so it fingerprints the request id instead of hashing a canonical JSON payload."""
    request_id = f"{kiosk_id}-{seq}"
    request = BarOrder(
        request_id=request_id,
        kiosk_id=kiosk_id,
        seq=seq,
        created_at_ms=int(time.time() * 1000),
        card_uid=card_uid,
        currency="EUR",
        items=items,
        total_cents=sum(item.signed_cents for item in items),
    )
    return LedgerRequest(request, hashlib.sha256(request_id.encode()).hexdigest())


def _cards(count: int) -> list[str]:
    return [f"0B{number:06X}" for number in range(1, count + 1)]


def _fund(ledger: Ledger, cards: list[str]) -> None:
    ledger.add_kiosk("bench-checkpoint", PUBLIC_KEY, "checkpoint")
    for start in range(0, len(cards), 200):
        chunk = [
            recharge(card, CARD_OPENING_CENTS, kiosk_id="bench-checkpoint", seq=start + n + 1)
            for n, card in enumerate(cards[start : start + 200])
        ]
        outcomes = ledger.apply_batch(chunk)
        assert all(outcome.approved for outcome in outcomes)


def _run(
    ledger: Ledger,
    cards: list[str],
    connections: int,
    batch_size: int,
    duration_s: float,
    seqs: dict[str, int],
    order_kind: str = "plain",
) -> dict[str, object]:
    """One configuration: `connections` threads, each its own kiosk and pooled connection."""
    stop_at = time.monotonic() + WARMUP_S + duration_s
    measure_from = time.monotonic() + WARMUP_S
    counts = [0] * connections
    latencies: list[list[float]] = [[] for _ in range(connections)]
    errors: list[BaseException] = []

    def worker(number: int) -> None:
        kiosk_id = f"bench-bar-{number + 1}"
        rng = random.Random(number * 7919 + batch_size)
        try:
            while True:
                started = time.monotonic()
                if started >= stop_at:
                    return
                items: list[LedgerRequest] = []
                for _ in range(batch_size):
                    seqs[kiosk_id] += 1
                    card = cards[rng.randrange(len(cards))]
                    items.append(_order(card, kiosk_id, seqs[kiosk_id], ORDER_KINDS[order_kind]))
                call_started = time.monotonic()
                for _attempt in range(TRANSIENT_RETRIES_MAX):
                    try:
                        if batch_size == 1:
                            outcomes = [ledger.apply(items[0])]
                        else:
                            outcomes = ledger.apply_batch(items)
                        break
                    except TransientDatabaseError:
                        continue
                else:
                    raise RuntimeError("still transient after retries")
                finished = time.monotonic()
                assert all(outcome.approved for outcome in outcomes), outcomes[0]
                if call_started >= measure_from:
                    counts[number] += len(outcomes)
                    latencies[number].append((finished - call_started) * 1000)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=WARMUP_S + duration_s + 120)
    if errors:
        raise errors[0]
    all_latencies = sorted(value for per_thread in latencies for value in per_thread)
    orders = sum(counts)
    return {
        "order_kind": order_kind,
        "connections": connections,
        "mode": "one per transaction" if batch_size == 1 else f"batches of {batch_size}",
        "batch_size": batch_size,
        "orders": orders,
        "orders_per_s": round(orders / duration_s),
        "transactions_per_s": round(len(all_latencies) / duration_s),
        "call_p50_ms": round(statistics.median(all_latencies), 2) if all_latencies else None,
        "call_p99_ms": round(all_latencies[int(len(all_latencies) * 0.99) - 1], 2)
        if all_latencies
        else None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration-s", type=float, default=5.0)
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--cards", type=int, default=10_000)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="festival-bench-ledger-"))
    root.chmod(0o755)
    server = PostgresServer(root / "postgres", durable=True)
    server.start()
    try:
        url = server.create_database("bench")
        database.upgrade(url)
        engine = make_engine(url, pool_size=max(CONNECTIONS), application_name="bench-ledger")
        ledger = Ledger(engine)
        for number in range(max(CONNECTIONS)):
            ledger.add_kiosk(f"bench-bar-{number + 1}", PUBLIC_KEY, "bar")
        cards = _cards(args.cards)
        _fund(ledger, cards)
        version = server.psql("SHOW server_version").strip()
        fsync = server.psql("SHOW fsync").strip()
        synchronous_commit = server.psql("SHOW synchronous_commit").strip()
        seqs = {f"bench-bar-{n + 1}": 0 for n in range(max(CONNECTIONS))}
        runs = []
        for batch_size in (1, args.batch_size):
            for connections in CONNECTIONS:
                for order_kind in ORDER_KINDS:
                    result = _run(
                        ledger, cards, connections, batch_size, args.duration_s, seqs, order_kind
                    )
                    runs.append(result)
                    print(
                        f"{connections:>3} connection(s), {result['mode']:<20} "
                        f"{order_kind:<17} {result['orders_per_s']:>7} orders/s  "
                        f"(p50 {result['call_p50_ms']} ms, p99 {result['call_p99_ms']} ms)",
                        flush=True,
                    )
        violations = ledger.check()
        engine.dispose()
        if violations:
            print("ledger check FAILED:", *violations, sep="\n  ")
            return 1
        report = {
            "benchmark": "ledger bar-order procedure throughput",
            "command": "python bench/bench_ledger.py " + " ".join(sys.argv[1:]),
            "machine": {
                "cpus": os.cpu_count(),
                "platform": platform.platform(),
                "python": platform.python_version(),
            },
            "postgres": {
                "version": version,
                "fsync": fsync,
                "synchronous_commit": synchronous_commit,
            },
            "duration_s": args.duration_s,
            "cards": args.cards,
            "items_per_order": {kind: len(items) for kind, items in ORDER_KINDS.items()},
            "load_average_after": os.getloadavg(),
            "runs": runs,
            "ledger_check": "passed",
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.out}")
        return 0
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
