"""The staff report (issue 17 section 3) against real PostgreSQL and the real app: GET
/api/reports/staff (JSON) and /api/reports/staff.csv, and `festival-cloud report staff`. Per staff
member: bar orders with the voided ones of them and the net (numbers that add up), the voids they
made, cash and card top-ups, cash-outs paid and the kiosks they worked at; the events without a
staff id as one "(none)" row; today (UTC) by default, from/to select; the admin token; the row
limit."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from cloud import reports as reports_module
from cloud.database import Engine
from cloud.ledger import Ledger
from cloud.ledger_records import LedgerRequest
from cloud.reports import ReportError, Reports, SalesWindow, iso_utc, staff_report, staff_window
from cloud.staff import hash_pin, verify_pin
from protocol.models import BarItem, StaffLogin
from tests.api.conftest import admin_headers, scalar
from tests.ledger.helpers import PUBLIC_KEY, bar_order, recharge, void
from tests.ledger.test_cash_out import cash_out
from tests.ledger.test_cli import cli

HEADER = [
    "staff_id",
    "name",
    "role",
    "orders",
    "orders_cents",
    "voided_orders",
    "voided_cents",
    "net_orders",
    "net_cents",
    "voids_made",
    "voids_made_cents",
    "cash_topups",
    "cash_topups_cents",
    "card_topups",
    "card_topups_cents",
    "topups_cents",
    "cash_outs",
    "cash_out_cents",
    "kiosks",
    "logged_in_at",
    "orders_amount",
    "voided_amount",
    "net_amount",
    "voids_made_amount",
    "cash_topups_amount",
    "card_topups_amount",
    "topups_amount",
    "cash_out_amount",
]
ZERO: dict[str, int] = {name: 0 for name in HEADER[3:18]}


def apply(ledger: Ledger, item: LedgerRequest) -> None:
    outcome = ledger.apply(item)
    assert outcome.approved, outcome


def figures(**nonzero: int) -> dict[str, int]:
    return {**ZERO, **nonzero}


def get(client: TestClient, path: str = "/api/reports/staff", **params: str) -> Any:
    response = client.get(path, params=params, headers=admin_headers())
    assert response.status_code == 200, response.text
    return response


def line(staff: str, figures: dict[str, int], kiosks: str, *amounts: str) -> list[str]:
    """A CSV row: the staff id, name and role (anna is registered), the figures, the kiosks,
    the decimals (the amounts given, then the top-ups' total and the cash-outs' from the
    figures)."""
    totals = (figures["topups_cents"], figures["cash_out_cents"])
    return [
        staff,
        *(("Anna K", "cashier") if staff == "anna" else ("", "")),
        *map(str, figures.values()),
        kiosks,
        "",  # logged in nowhere now
        *amounts,
        *(reports_module.decimal_amount(cents) for cents in totals),
    ]


def parse_csv(body: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(body)))


@pytest.fixture
def staff_day(ledger: Ledger) -> None:
    """anna (cashier, checkpoint-1): 20.00 and 9.00 cash, 30.00 card. ben (bartender): 10.00 of
    beer plus a 2.00 cup deposit at bar-1, 7.00 at bar-2, and 3.00 at bar-1 that super-1 voids.
    super-1 also cashes out the 9.00 band at checkpoint-1. A 4.00 order at bar-2 came without a
    staff id (the "(none)" row)."""
    for kiosk_id, role in (("bar-1", "bar"), ("bar-2", "bar"), ("checkpoint-1", "checkpoint")):
        ledger.add_kiosk(kiosk_id, PUBLIC_KEY, role)
    # (revision 0024) anna is a registered staff member: the report names her
    ledger.add_staff(
        staff_id="anna",
        name="Anna K",
        role="cashier",
        card_uid="04AA00FF",
        pin_hash=hash_pin("1234"),
    )
    apply(ledger, recharge("04AA0001", 2_000, staff_id="anna"))
    apply(ledger, recharge("04AA0002", 3_000, method="card", staff_id="anna"))
    apply(ledger, recharge("04AA0003", 900, staff_id="anna"))
    beers = BarItem("Beer", 2, 500, sku="beer")
    cup = BarItem("Cup", 1, 200, sku="cup", is_deposit=True)
    apply(ledger, bar_order("04AA0001", beers, cup, kiosk_id="bar-1", staff_id="ben"))
    apply(ledger, bar_order("04AA0002", ("Wine", 1, 700), kiosk_id="bar-2", staff_id="ben"))
    mistaken = bar_order("04AA0002", ("Shot", 1, 300), kiosk_id="bar-1", seq=2, staff_id="ben")
    apply(ledger, mistaken)
    apply(ledger, void(mistaken, seq=3, staff_id="super-1"))
    apply(ledger, cash_out("04AA0003"))  # staff super-1, at checkpoint-1
    apply(ledger, bar_order("04AA0001", ("Water", 1, 400), kiosk_id="bar-2", staff_id=None))


ANNA = figures(
    cash_topups=2,
    cash_topups_cents=2_900,
    card_topups=1,
    card_topups_cents=3_000,
    topups_cents=5_900,
)
BEN = figures(
    orders=3,
    orders_cents=2_200,
    voided_orders=1,
    voided_cents=300,
    net_orders=2,
    net_cents=1_900,
)
SUPER = figures(voids_made=1, voids_made_cents=300, cash_outs=1, cash_out_cents=900)
NONE = figures(orders=1, orders_cents=400, net_orders=1, net_cents=400)


def test_each_staff_member_has_their_figures_and_the_none_row_comes_last(
    client: TestClient, staff_day: None
) -> None:
    body = get(client).json()
    rows = body["rows"]
    assert [row["staff_id"] for row in rows] == ["anna", "ben", "super-1", None]
    for row, expected, kiosks in zip(
        rows,
        (ANNA, BEN, SUPER, NONE),
        (["checkpoint-1"], ["bar-1", "bar-2"], ["bar-1", "checkpoint-1"], ["bar-2"]),
        strict=True,
    ):
        assert {name: row[name] for name in ZERO} == expected, row["staff_id"]
        assert row["kiosks"] == kiosks
    # the decimal twins of the cents
    assert (rows[1]["orders_amount"], rows[1]["voided_amount"], rows[1]["net_amount"]) == (
        "22.00",
        "3.00",
        "19.00",
    )
    assert body["currency"] == "EUR"
    total = body["total"]
    assert {name: total[name] for name in ZERO} == {
        name: ANNA[name] + BEN[name] + SUPER[name] + NONE[name] for name in ZERO
    }
    assert (total["net_cents"], total["net_amount"]) == (2_300, "23.00")


def test_the_numbers_add_up_with_the_sales_report_and_the_drawer(
    client: TestClient, staff_day: None
) -> None:
    """Net orders and net cents are the orders less the voided ones; what the cards paid for
    sales lines (the sales report, net of voids) is the net less the cup deposit; the top-ups
    equal the Z-report's."""
    rows = get(client).json()["rows"]
    for row in rows:
        assert row["net_orders"] == row["orders"] - row["voided_orders"]
        assert row["net_cents"] == row["orders_cents"] - row["voided_cents"]
        assert row["topups_cents"] == row["cash_topups_cents"] + row["card_topups_cents"]
    sales = get(client, "/api/reports/sales", group="kiosk").json()["total"]
    net = sum(row["net_cents"] for row in rows)
    assert (sales["orders"], sales["amount_cents"]) == (3, net - 200)
    today = datetime.now(UTC).date().isoformat()
    day = client.get(f"/api/reports/staff?from={today}T00:00:00Z", headers=admin_headers())
    assert day.json()["rows"] == rows


def test_the_window_defaults_to_today_in_utc_and_from_to_select(
    client: TestClient, ledger: Ledger, staff_day: None, engine: Engine
) -> None:
    body = get(client).json()
    midnight = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    assert (body["from"], body["to"]) == (iso_utc(midnight), iso_utc(midnight + timedelta(1)))
    # a moment between the day's events and a later top-up: the window's bounds hold
    between = scalar(engine, "SELECT clock_timestamp()")  # after every event so far
    apply(ledger, recharge("04AA0009", 1_000, staff_id="carl"))
    before = get(client, to=iso_utc(between)).json()["rows"]
    after = get(client, **{"from": iso_utc(between)}).json()["rows"]
    assert [row["staff_id"] for row in before] == ["anna", "ben", "super-1", None]
    assert [(row["staff_id"], row["cash_topups_cents"]) for row in after] == [("carl", 1_000)]
    assert get(client, to="2000-01-01T00:00:00Z").json()["rows"] == []
    # an empty window (from at or after to) is empty, not an error
    empty = {"from": iso_utc(between), "to": iso_utc(between)}
    assert get(client, **empty).json()["rows"] == []
    # yesterday's report (the read model's default with another clock) has none of today's
    reports = Reports(ledger.engine, currency="EUR")
    yesterday = staff_report(reports, staff_window(None, None, now=midnight - timedelta(1)))
    assert yesterday["rows"] == [] and yesterday["to"] == iso_utc(midnight)
    assert staff_window(None, None, "2026-07-04") == SalesWindow.day(
        datetime(2026, 7, 4, tzinfo=UTC)
    )
    with pytest.raises(ReportError, match="not both"):
        staff_window("2026-07-04T00:00:00Z", None, "2026-07-04")


def test_the_csv_has_the_header_and_a_row_per_staff_member(
    client: TestClient, staff_day: None, database_url: str
) -> None:
    response = get(client, "/api/reports/staff.csv")
    assert response.headers["content-type"] == "text/csv; charset=utf-8"
    assert response.headers["content-disposition"] == 'attachment; filename="staff-EUR.csv"'
    rows = parse_csv(response.text)
    assert rows[0] == HEADER
    assert rows[1:] == [
        line("anna", ANNA, "checkpoint-1", "0.00", "0.00", "0.00", "0.00", "29.00", "30.00"),
        line("ben", BEN, "bar-1 bar-2", "22.00", "3.00", "19.00", "0.00", "0.00", "0.00"),
        line(
            "super-1", SUPER, "bar-1 checkpoint-1", "0.00", "0.00", "0.00", "3.00", "0.00", "0.00"
        ),
        line("(none)", NONE, "bar-2", "4.00", "0.00", "4.00", "0.00", "0.00", "0.00"),
    ]
    # the CLI prints the same CSV (today by default) and the same JSON
    printed = cli(database_url, "report", "staff")
    assert printed.returncode == 0, printed.stderr
    assert parse_csv(printed.stdout) == rows
    as_json = cli(database_url, "report", "staff", "--json")
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout) == get(client).json()
    bad = cli(database_url, "report", "staff", "--date", "2026-07-04", "--to", "2026-07-05")
    assert bad.returncode == 2 and "not both" in bad.stderr and bad.stdout == ""


def test_a_report_beyond_the_row_limit_is_refused_not_cut_short(
    client: TestClient, staff_day: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(reports_module, "REPORT_ROWS_MAX", 3)
    for path in ("/api/reports/staff", "/api/reports/staff.csv"):
        response = client.get(path, headers=admin_headers())
        assert response.status_code == 400, response.text
        assert "more than 3 rows" in response.json()["error"]
    monkeypatch.setattr(reports_module, "REPORT_ROWS_MAX", 4)
    assert len(get(client).json()["rows"]) == 4


def test_the_routes_need_the_admin_token(client: TestClient, staff_day: None) -> None:
    for path in ("/api/reports/staff", "/api/reports/staff.csv"):
        assert client.get(path).status_code == 401
        assert client.get(path, headers={"Authorization": "Bearer wrong"}).status_code == 401
        refused = client.get(path, headers={"Authorization": "Basic " + "YWRtaW46YWRtaW4="})
        assert refused.status_code == 401
        assert "anna" not in refused.text


@pytest.mark.parametrize("query", ["from=tonight", "to=2026-07-04", "from=2026-07-04T25:00:00Z"])
def test_bad_window_parameters_are_answered_400(client: TestClient, query: str) -> None:
    for path in ("/api/reports/staff", "/api/reports/staff.csv"):
        response = client.get(f"{path}?{query}", headers=admin_headers())
        assert response.status_code == 400, response.text


def test_nothing_today_is_an_empty_report(client: TestClient, engine: Engine) -> None:
    body = get(client).json()
    assert body["rows"] == [] and body["total"]["net_cents"] == 0
    assert parse_csv(get(client, "/api/reports/staff.csv").text) == [HEADER]
    assert scalar(engine, "SELECT count(*) FROM bar_orders") == 0


def test_the_routes_are_in_the_openapi_document(client: TestClient) -> None:
    """Schemathesis (tests/api/test_schemathesis.py) reads them from there."""
    paths = client.get("/openapi.json").json()["paths"]
    for path, content_type in (
        ("/api/reports/staff", "application/json"),
        ("/api/reports/staff.csv", "text/csv"),
    ):
        operation = paths[path]["get"]
        assert [(p["name"], p["in"]) for p in operation["parameters"]] == [
            ("from", "query"),
            ("to", "query"),
        ]
        assert {"200", "400", "401"} <= set(operation["responses"]), path
        assert content_type in operation["responses"]["200"]["content"], path


def test_who_is_logged_in_now_is_shown_even_before_a_sale(
    client: TestClient, staff_day: None, ledger: Ledger, database_url: str
) -> None:
    """(revision 0024) anna logs in at checkpoint-1, sue (registered, nothing sold yet) at bar-2:
    today's report lists where each is logged in, sue with zeros; a past day does not list sue."""
    ledger.add_staff(
        staff_id="sue",
        name="Sue",
        role="supervisor",
        card_uid="04AA00FE",
        pin_hash=hash_pin("5678"),
    )
    for staff_id, kiosk_id, band, pin in (
        ("anna", "checkpoint-1", "04AA00FF", "1234"),
        ("sue", "bar-2", "04AA00FE", "5678"),
    ):
        request = StaffLogin(
            request_id=f"login-{staff_id}",
            kiosk_id=kiosk_id,
            seq=90,
            created_at_ms=int(time.time() * 1000),
            card_uid=band,
            currency="EUR",
            staff_id=staff_id,
            pin=pin,
        )
        stored = ledger.staff_pin_hashes([staff_id])[staff_id]
        item = LedgerRequest(
            request,
            hashlib.sha256(request.request_id.encode()).hexdigest(),
            pin_verified=verify_pin(pin, stored),
            pin_hash_checked=stored,
        )
        assert ledger.apply(item).approved
    rows = {row["staff_id"]: row for row in get(client).json()["rows"]}
    assert rows["anna"]["logged_in_at"] == ["checkpoint-1"]
    assert rows["sue"]["logged_in_at"] == ["bar-2"] and rows["sue"]["name"] == "Sue"
    assert {name: rows["sue"][name] for name in ZERO} == ZERO
    assert rows["ben"]["logged_in_at"] == [] and rows["ben"]["name"] is None
    csv_rows = parse_csv(get(client, "/api/reports/staff.csv").text)
    at = HEADER.index("logged_in_at")
    assert {row[0]: row[at] for row in csv_rows[1:]}["sue"] == "bar-2"
    past = client.get(
        "/api/reports/staff?from=2026-07-04T00:00:00Z&to=2026-07-05T00:00:00Z",
        headers=admin_headers(),
    )
    assert "sue" not in [row["staff_id"] for row in past.json()["rows"]]
