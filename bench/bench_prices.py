"""The price check's cost per order line (revision 0011; target <= 10 us per line).

    .venv/bin/python bench/bench_prices.py [--repeats 200] [--orders 20] [--lines 20]

Starts its own PostgreSQL, migrates a fresh database, gives one bar kiosk a 200-item menu (the
largest a config may carry), `--other-kiosks` kiosks 5 such menus each (so the menu lines of many
configs are there to search), leaves another kiosk without one, funds the cards, then times in the
backend (clock_timestamp() around the call, inside the server, so neither the client nor the
commit's fsync is counted) one batch of `--orders` bar orders of `--lines` lines each:

- `menu`: the kiosk with a menu, every order citing its config version (every line checked and
  its VAT rate and category looked up for the write);
- `no menu`: the same orders from the kiosk without one (nothing checked);
- `check only`: ledger_price_problems over the `menu` batch, alone.

Each timed call runs in a transaction that is rolled back, so every repeat sees the same
database; the configurations alternate, so drift hits both alike. The cost per line is
(median `menu` - median `no menu`) / lines in the batch. Writes bench/results/prices.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import sqlalchemy  # noqa: E402

from cloud import database  # noqa: E402
from cloud.database import make_engine  # noqa: E402
from cloud.ledger import Ledger  # noqa: E402
from cloud.ledger_records import LedgerRequest, request_document  # noqa: E402
from cloud.sandbox import PostgresServer  # noqa: E402
from protocol.limits import MENU_ITEMS_MAX  # noqa: E402
from protocol.models import BarItem, BarOrder, Menu, MenuItem  # noqa: E402
from tests.ledger.helpers import PUBLIC_KEY, recharge  # noqa: E402

RESULTS = REPO / "bench" / "results" / "prices.json"
CARD_OPENING_CENTS = 1_000_000
TARGET_US_PER_LINE = 10.0
OTHER_VERSIONS = 5
# Backend time of one call, in seconds: the bench's own function, in its session only.
TIMED_FUNCTION_SQL = """
CREATE FUNCTION pg_temp.timed_batch(p_requests jsonb) RETURNS double precision
LANGUAGE plpgsql AS $$
DECLARE
    v_started timestamptz := clock_timestamp();
BEGIN
    PERFORM sp_process_batch(p_requests);
    RETURN extract(epoch FROM clock_timestamp() - v_started);
END
$$;
CREATE FUNCTION pg_temp.timed_check(p_requests jsonb) RETURNS double precision
LANGUAGE plpgsql AS $$
DECLARE
    v_started timestamptz := clock_timestamp();
BEGIN
    PERFORM ledger_price_problems(p_requests, 600);
    RETURN extract(epoch FROM clock_timestamp() - v_started);
END
$$;
"""


def _menu() -> Menu:
    return Menu(
        "bench",
        tuple(
            MenuItem(f"sku-{n:03d}", f"Item {n}", 100 + n, vat_rate_bp=1900, category="bench")
            for n in range(MENU_ITEMS_MAX)
        ),
    )


def _batch(kiosk_id: str, version: int | None, orders: int, lines: int) -> str:
    documents = []
    for number in range(orders):
        items = tuple(
            BarItem(f"Item {n}", 1, 100 + n, sku=f"sku-{n:03d}")
            for n in range(number % 10, number % 10 + lines * 7, 7)
        )
        request_id = f"{kiosk_id}-{number}"
        order = BarOrder(
            request_id=request_id,
            kiosk_id=kiosk_id,
            seq=number + 1,
            created_at_ms=int(time.time() * 1000),
            card_uid=f"0C{number:06X}",
            currency="EUR",
            items=items,
            total_cents=sum(item.signed_cents for item in items),
            config_version=version,
        )
        item = LedgerRequest(order, hashlib.sha256(request_id.encode()).hexdigest())
        documents.append(request_document(item))
    return json.dumps(documents, separators=(",", ":"))


def _timed(connection: sqlalchemy.Connection, function: str, batch: str) -> float:
    transaction = connection.begin()
    try:
        return float(
            connection.execute(
                sqlalchemy.text(f"SELECT pg_temp.{function}(CAST(:batch AS jsonb))"),
                {"batch": batch},
            ).scalar_one()
        )
    finally:
        transaction.rollback()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--orders", type=int, default=20, help="orders per batch")
    parser.add_argument("--lines", type=int, default=20, help="lines per order")
    parser.add_argument(
        "--other-kiosks", type=int, default=20, help=f"kiosks with {OTHER_VERSIONS} menus each"
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    assert 1 <= args.lines <= 28, "the bench's lines are distinct SKUs 7 apart in a 200-item menu"

    root = Path(tempfile.mkdtemp(prefix="festival-bench-prices-"))
    root.chmod(0o755)
    server = PostgresServer(root / "postgres", durable=True)
    server.start()
    try:
        url = server.create_database("bench")
        database.upgrade(url)
        engine = make_engine(url, pool_size=2, application_name="bench-prices")
        ledger = Ledger(engine)
        for kiosk_id in ("bench-menu", "bench-plain", "bench-checkpoint"):
            role = "checkpoint" if kiosk_id == "bench-checkpoint" else "bar"
            ledger.add_kiosk(kiosk_id, PUBLIC_KEY, role)
        # Other kiosks' menus, several versions each, so the check must find the cited one
        # among many (a festival's kiosk_config_items), not scan a table of one menu.
        for number in range(args.other_kiosks):
            kiosk_id = f"bench-other-{number}"
            ledger.add_kiosk(kiosk_id, PUBLIC_KEY, "bar")
            for _ in range(OTHER_VERSIONS):
                ledger.issue_kiosk_config(kiosk_id, menu=_menu())
        version = ledger.issue_kiosk_config("bench-menu", menu=_menu())
        cards = [f"0C{number:06X}" for number in range(args.orders)]
        funded = ledger.apply_batch(
            [
                recharge(card, 100_000, kiosk_id="bench-checkpoint", seq=n + 1)
                for n, card in enumerate(cards)
            ]
        )
        assert all(outcome.approved for outcome in funded)
        batches = {
            "menu": ("timed_batch", _batch("bench-menu", version, args.orders, args.lines)),
            "no menu": ("timed_batch", _batch("bench-plain", None, args.orders, args.lines)),
            "check only": ("timed_check", _batch("bench-menu", version, args.orders, args.lines)),
        }
        samples: dict[str, list[float]] = {name: [] for name in batches}
        with engine.connect() as connection:
            connection.execute(sqlalchemy.text(TIMED_FUNCTION_SQL))
            connection.commit()
            check = connection.execute(
                sqlalchemy.text(
                    "SELECT count(*) FROM unnest(ledger_price_problems(CAST(:b AS jsonb), 600))"
                    " AS p WHERE p IS NOT NULL"
                ),
                {"b": batches["menu"][1]},
            ).scalar_one()
            assert check == 0, "the bench's orders must match the menu"
            connection.rollback()
            for function, batch in batches.values():  # warm the plans
                for _ in range(5):
                    _timed(connection, function, batch)
            for _ in range(args.repeats):
                for name, (function, batch) in batches.items():
                    samples[name].append(_timed(connection, function, batch))
        engine.dispose()
        lines = args.orders * args.lines
        medians_us = {name: statistics.median(values) * 1e6 for name, values in samples.items()}
        per_line_us = (medians_us["menu"] - medians_us["no menu"]) / lines
        check_per_line_us = medians_us["check only"] / lines
        load = os.getloadavg()
        report: dict[str, Any] = {
            "benchmark": "price check per order line (revision 0011)",
            "command": "python bench/bench_prices.py " + " ".join(sys.argv[1:]),
            "machine": {
                "cpus": os.cpu_count(),
                "platform": platform.platform(),
                "python": platform.python_version(),
            },
            "postgres": server.psql("SHOW server_version").strip(),
            "orders_per_batch": args.orders,
            "lines_per_order": args.lines,
            "menu_items": MENU_ITEMS_MAX,
            "kiosk_config_items_rows": (args.other_kiosks * OTHER_VERSIONS + 1) * MENU_ITEMS_MAX,
            "repeats": args.repeats,
            "batch_backend_median_us": {
                name: round(value, 1) for name, value in medians_us.items()
            },
            "batch_backend_p90_us": {
                name: round(statistics.quantiles(values, n=10)[-1] * 1e6, 1)
                for name, values in samples.items()
            },
            "price_check_us_per_line": round(per_line_us, 2),
            "check_only_us_per_line": round(check_per_line_us, 2),
            "target_us_per_line": TARGET_US_PER_LINE,
            "load_average_after": load,
        }
        for name, value in medians_us.items():
            print(f"{name:<11} batch of {lines} lines: median {value:9.1f} us in the backend")
        print(
            f"price check: {per_line_us:.2f} us per line (menu - no menu),"
            f" {check_per_line_us:.2f} us per line (the check alone);"
            f" target {TARGET_US_PER_LINE} us; load {load}"
        )
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.out}")
        return 0 if per_line_us <= TARGET_US_PER_LINE else 1
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
