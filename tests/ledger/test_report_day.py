"""`festival-cloud report day --date D` (issue 17 section 4): the Z-report of a UTC day, per bar
the orders and sales, per checkpoint the cash and card top-ups and the shift closes with their
variance, against real PostgreSQL. The ledger stamps everything with the time it applied it (and
a bar order with its request's created_at_ms, its sale's time); the rows are then moved (as the
owner) to a July day and the evening before, so the day is known."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from cloud.ledger import Ledger
from cloud.reports import ReportError, Reports, parse_day
from cloud.shifts import ShiftStore
from protocol.models import BarItem
from tests.ledger.helpers import bar_order, execute, recharge
from tests.ledger.test_cli import cli

DAY = "2026-07-04"
DAY_START = datetime(2026, 7, 4, tzinfo=UTC)


def _move(url: str, table: str, request_ids: list[str], moment: str) -> None:
    # A bar order's sale time is its created_at_ms (cloud/reports.py SOLD_AT_SQL): moved too,
    # as made and applied at that moment.
    made = (
        ", created_at_ms = (extract(epoch FROM CAST(:moment AS timestamptz)) * 1000)::bigint"
        if table == "bar_orders"
        else ""
    )
    execute(
        url,
        f"UPDATE {table} SET created_at = CAST(:moment AS timestamptz){made}"
        " WHERE client_request_id = ANY(:ids)",
        moment=moment,
        ids=request_ids,
    )


def test_the_z_report_of_a_day(ledger: Ledger, database_url: str) -> None:
    cash, card, other = (
        recharge("04BA0001", 2_000),
        recharge("04BA0002", 1_500, method="card"),
        recharge("04BA0003", 700, kiosk_id="checkpoint-2"),
    )
    beers = [bar_order("04BA0001"), bar_order("04BA0001")]
    wine = bar_order("04BA0002", BarItem("Wine", 1, 700), kiosk_id="bar-2")
    for item in (cash, card, other, *beers, wine):
        assert ledger.apply(item).status.value == "approved"
    ShiftStore(ledger.engine).close("checkpoint-1", 1_990, "staff-3")
    # the evening before: a top-up and a sale that are not the day's
    late_cash, late_beer = recharge("04BA0004", 300), bar_order("04BA0001")
    assert ledger.apply(late_cash).status.value == "approved"
    assert ledger.apply(late_beer).status.value == "approved"

    day_ids = [item.request.request_id for item in (cash, card, other, *beers, wine)]
    _move(database_url, "recharges", day_ids, f"{DAY}T12:00:00Z")
    _move(database_url, "bar_orders", day_ids, f"{DAY}T12:00:00Z")
    late_ids = [late_cash.request.request_id, late_beer.request.request_id]
    _move(database_url, "recharges", late_ids, "2026-07-03T23:59:59.999Z")
    _move(database_url, "bar_orders", late_ids, "2026-07-03T23:59:59.999Z")
    # shift_closes is append-only: moved with the triggers off, as the owner
    execute(
        database_url,
        "SET LOCAL session_replication_role = replica;"
        f" UPDATE shift_closes SET closed_at = '{DAY}T20:00:00Z'",
    )

    reports = Reports(ledger.engine, currency="EUR")
    report = reports.day(parse_day(DAY))
    assert report["date"] == DAY
    assert (report["from"], report["to"]) == ("2026-07-04T00:00:00Z", "2026-07-05T00:00:00Z")
    assert report["bars"] == [
        {"kiosk_id": "bar-1", "orders": 2, "amount_cents": 1_000, "amount": "10.00"},
        {"kiosk_id": "bar-2", "orders": 1, "amount_cents": 700, "amount": "7.00"},
    ]
    assert report["checkpoints"] == [
        {
            "checkpoint_id": "checkpoint-1",
            "cash_topups": 1,
            "cash_cents": 2_000,
            "card_topups": 1,
            "card_cents": 1_500,
            "cash_outs": 0,
            "cash_out_cents": 0,
            "shift_closes": [
                {
                    "shift_no": 1,
                    "opened_at": None,
                    "closed_at": f"{DAY}T20:00:00Z",
                    "expected_cents": 2_000,
                    "counted_cents": 1_990,
                    "variance_cents": -10,
                    "closed_by": "staff-3",
                }
            ],
            "variance_cents": -10,
        },
        {
            "checkpoint_id": "checkpoint-2",
            "cash_topups": 1,
            "cash_cents": 700,
            "card_topups": 0,
            "card_cents": 0,
            "cash_outs": 0,
            "cash_out_cents": 0,
            "shift_closes": [],
            "variance_cents": 0,
        },
    ]
    assert report["total"] == {
        "orders": 3,
        "sales_cents": 1_700,
        "cash_cents": 2_700,
        "card_cents": 1_500,
        "cash_out_cents": 0,
        "variance_cents": -10,
    }

    before = reports.day(parse_day("2026-07-03"))
    assert [(bar["kiosk_id"], bar["orders"]) for bar in before["bars"]] == [("bar-1", 1)]
    assert [
        (c["checkpoint_id"], c["cash_cents"], c["shift_closes"]) for c in before["checkpoints"]
    ] == [("checkpoint-1", 300, [])]
    assert reports.day(parse_day("2026-07-05"))["checkpoints"] == []

    printed = cli(database_url, "report", "day", "--date", DAY, "--json")
    assert printed.returncode == 0, printed.stderr
    assert json.loads(printed.stdout) == report
    human = cli(database_url, "report", "day", "--date", DAY)
    assert human.returncode == 0, human.stderr
    assert f"Z-report {DAY}" in human.stdout
    assert "expected 20.00, counted 19.90, variance -0.10" in human.stdout
    assert "total: 3 orders, sales 17.00, cash 27.00, card 15.00, variance -0.10" in human.stdout


@pytest.mark.parametrize("value", ["2026-13-01", "2026-07-04T00:00:00Z", "yesterday", ""])
def test_a_bad_date_is_refused(value: str) -> None:
    with pytest.raises(ReportError):
        parse_day(value)


def test_the_cli_refuses_a_bad_date_with_exit_2(database_url: str) -> None:
    refused = cli(database_url, "report", "day", "--date", "2026-02-30")
    assert refused.returncode == 2
    assert "not a valid date" in refused.stderr and refused.stdout == ""
