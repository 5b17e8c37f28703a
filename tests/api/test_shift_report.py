"""The shift report and the dashboard's shift close (issue 17 section 4) against real PostgreSQL
and the real app: GET /api/reports/shifts.csv (and its JSON twin, and `festival-cloud shift
report`), one row per (shift, staff member) and the shift's total row, with cash and card top-ups,
a voided bar order (no cash) and a close in between; POST /api/shifts/close, the CLI's function,
its admin token and its 400s."""

from __future__ import annotations

import csv
import io
from typing import Any

import pytest
from fastapi.testclient import TestClient

from cloud import reports as reports_module
from cloud.ledger import Ledger
from cloud.ledger_records import LedgerRequest
from cloud.shifts import ShiftStore
from protocol.models import BarItem
from tests.api.conftest import admin_headers
from tests.ledger.helpers import PUBLIC_KEY, bar_order, recharge, void
from tests.ledger.test_cli import cli

HEADER = [
    "checkpoint_id",
    "shift_no",
    "close_id",
    "opened_at",
    "closed_at",
    "row",
    "staff_id",
    "cash_topups",
    "cash_topups_cents",
    "card_topups",
    "card_topups_cents",
    "cash_paid_out_cents",
    "expected_cents",
    "counted_cents",
    "variance_cents",
    "cash_topups_amount",
    "card_topups_amount",
    "cash_paid_out",
    "expected",
    "counted",
    "variance",
]
# The columns compared whole (the ids and times are checked on their own).
FIGURES = slice(5, None)


def apply(ledger: Ledger, item: LedgerRequest) -> None:
    outcome = ledger.apply(item)
    assert outcome.approved, outcome


def parse_csv(body: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(body)))


def get_csv(client: TestClient, **params: str) -> list[list[str]]:
    response = client.get("/api/reports/shifts.csv", params=params, headers=admin_headers())
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "text/csv; charset=utf-8"
    assert response.headers["content-disposition"] == 'attachment; filename="shifts-EUR.csv"'
    return parse_csv(response.text)


def close(client: TestClient, body: Any, **headers: str) -> Any:
    return client.post("/api/shifts/close", json=body, headers={**admin_headers(), **headers})


@pytest.fixture
def shift_day(client: TestClient, ledger: Ledger) -> dict[str, Any]:
    """checkpoint-1: anna 20.00 cash and 50.00 card, ben 30.00 cash; a bar order paid from
    anna's top-up and voided; the drawer counted 49.90 from the dashboard (shift 1, 0.10
    short); then ben 15.00 cash (shift 2, open). checkpoint-2: carl 7.00 cash (open)."""
    for kiosk_id, role in (("checkpoint-1", "checkpoint"), ("checkpoint-2", "checkpoint")):
        ledger.add_kiosk(kiosk_id, PUBLIC_KEY, role)
    ledger.add_kiosk("bar-1", PUBLIC_KEY, "bar")
    apply(ledger, recharge("04AA0001", 2_000, staff_id="anna"))
    apply(ledger, recharge("04AA0002", 3_000, staff_id="ben"))
    apply(ledger, recharge("04AA0003", 5_000, method="card", staff_id="anna"))
    order = bar_order("04AA0001", BarItem("Beer", 2, 500, sku="beer"), kiosk_id="bar-1")
    apply(ledger, order)
    apply(ledger, void(order))
    response = close(client, {"checkpoint_id": "checkpoint-1", "counted_cents": 4_990})
    assert response.status_code == 200, response.text
    closed = response.json()
    apply(ledger, recharge("04AA0004", 1_500, staff_id="ben"))
    apply(ledger, recharge("04AA0005", 700, kiosk_id="checkpoint-2", staff_id="carl"))
    return closed


def test_the_close_answers_expected_counted_variance_from_the_cli_function(
    client: TestClient, ledger: Ledger, shift_day: dict[str, Any]
) -> None:
    assert {
        key: shift_day[key]
        for key in ("checkpoint_id", "shift_no", "expected_cents", "counted_cents")
    } == {
        "checkpoint_id": "checkpoint-1",
        "shift_no": 1,
        "expected_cents": 5_000,
        "counted_cents": 4_990,
    }
    assert (shift_day["variance_cents"], shift_day["closed_by"]) == (-10, "dashboard")
    assert shift_day["transaction_id"] is not None  # the variance is booked
    closes = ShiftStore(ledger.engine).closes(checkpoint_id="checkpoint-1")
    assert [(c.close_id, c.variance_cents) for c in closes] == [(shift_day["close_id"], -10)]
    assert ledger.check() == []


def test_the_csv_has_a_row_per_staff_member_and_a_total_per_shift(
    client: TestClient, shift_day: dict[str, Any]
) -> None:
    rows = get_csv(client)
    assert rows[0] == HEADER
    assert [row[:2] + row[FIGURES] for row in rows[1:]] == [
        # checkpoint-1, shift 1: the void gave the beer back to the card, not to the drawer
        [
            "checkpoint-1",
            "1",
            "staff",
            "anna",
            "1",
            "2000",
            "1",
            "5000",
            "",
            "",
            "",
            "",
            "20.00",
            "50.00",
            "",
            "",
            "",
            "",
        ],
        [
            "checkpoint-1",
            "1",
            "staff",
            "ben",
            "1",
            "3000",
            "0",
            "0",
            "",
            "",
            "",
            "",
            "30.00",
            "0.00",
            "",
            "",
            "",
            "",
        ],
        [
            "checkpoint-1",
            "1",
            "total",
            "",
            "2",
            "5000",
            "1",
            "5000",
            "0",
            "5000",
            "4990",
            "-10",
            "50.00",
            "50.00",
            "0.00",
            "50.00",
            "49.90",
            "-0.10",
        ],
        # shift 2, open: expected so far, not counted yet
        [
            "checkpoint-1",
            "2",
            "staff",
            "ben",
            "1",
            "1500",
            "0",
            "0",
            "",
            "",
            "",
            "",
            "15.00",
            "0.00",
            "",
            "",
            "",
            "",
        ],
        [
            "checkpoint-1",
            "2",
            "total",
            "",
            "1",
            "1500",
            "0",
            "0",
            "0",
            "1500",
            "",
            "",
            "15.00",
            "0.00",
            "0.00",
            "15.00",
            "",
            "",
        ],
        [
            "checkpoint-2",
            "1",
            "staff",
            "carl",
            "1",
            "700",
            "0",
            "0",
            "",
            "",
            "",
            "",
            "7.00",
            "0.00",
            "",
            "",
            "",
            "",
        ],
        [
            "checkpoint-2",
            "1",
            "total",
            "",
            "1",
            "700",
            "0",
            "0",
            "0",
            "700",
            "",
            "",
            "7.00",
            "0.00",
            "0.00",
            "7.00",
            "",
            "",
        ],
    ]
    # the closed shift names its close and its times; the next one opened when it closed
    first, open_ = rows[3], rows[5]
    assert first[2:5] == [shift_day["close_id"], "", shift_day["closed_at"]]
    assert open_[2:5] == ["", shift_day["closed_at"], ""]


def test_checkpoint_and_window_select_shifts_and_the_cli_prints_the_same(
    client: TestClient, shift_day: dict[str, Any], database_url: str
) -> None:
    only = get_csv(client, checkpoint="checkpoint-2")
    assert [row[0] for row in only[1:]] == ["checkpoint-2", "checkpoint-2"]
    # a window with an end: the shifts closed in it, no open shift
    window = {"from": "2000-01-01T00:00:00Z", "to": "9999-01-01T00:00:00Z"}
    closed = get_csv(client, **window)
    assert [(row[0], row[1], row[5]) for row in closed[1:]] == [
        ("checkpoint-1", "1", "staff"),
        ("checkpoint-1", "1", "staff"),
        ("checkpoint-1", "1", "total"),
    ]
    assert get_csv(client, to="2000-01-01T00:00:00Z") == [HEADER]
    printed = cli(database_url, "shift", "report", "--checkpoint", "checkpoint-1")
    assert printed.returncode == 0, printed.stderr
    assert parse_csv(printed.stdout) == get_csv(client, checkpoint="checkpoint-1")
    bad = cli(database_url, "shift", "report", "--from", "yesterday")
    assert bad.returncode == 2 and "RFC 3339" in bad.stderr and bad.stdout == ""


def test_the_json_rows_are_the_csv_rows(client: TestClient, shift_day: dict[str, Any]) -> None:
    response = client.get("/api/reports/shifts", headers=admin_headers())
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["currency"] == "EUR"
    totals = [row for row in body["rows"] if row["row"] == "total"]
    assert [
        (r["checkpoint_id"], r["shift_no"], r["expected_cents"], r["counted_cents"]) for r in totals
    ] == [
        ("checkpoint-1", 1, 5_000, 4_990),
        ("checkpoint-1", 2, 1_500, None),
        ("checkpoint-2", 1, 700, None),
    ]


def test_a_report_beyond_the_row_limit_is_refused_not_cut_short(
    client: TestClient, shift_day: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(reports_module, "REPORT_ROWS_MAX", 6)
    response = client.get("/api/reports/shifts.csv", headers=admin_headers())
    assert response.status_code == 400
    assert "more than 6 rows" in response.json()["error"]
    assert len(get_csv(client, checkpoint="checkpoint-1")) == 6  # header + 5 rows: fine


def test_the_routes_need_the_admin_token(client: TestClient, ledger: Ledger) -> None:
    ledger.add_kiosk("checkpoint-1", PUBLIC_KEY, "checkpoint")
    for path in ("/api/reports/shifts.csv", "/api/reports/shifts"):
        assert client.get(path).status_code == 401
        assert client.get(path, headers={"Authorization": "Bearer wrong"}).status_code == 401
    body = {"checkpoint_id": "checkpoint-1", "counted_cents": 0}
    assert client.post("/api/shifts/close", json=body).status_code == 401
    wrong = client.post("/api/shifts/close", json=body, headers={"Authorization": "Bearer no"})
    assert wrong.status_code == 401
    assert ShiftStore(ledger.engine).closes() == []  # nothing was closed


@pytest.mark.parametrize(
    ("body", "status", "field", "message"),
    [
        (
            {"checkpoint_id": "gate-404", "counted_cents": 100},
            404,
            "checkpoint_id",
            "unknown checkpoint gate-404",
        ),
        # a bar has no drawer
        (
            {"checkpoint_id": "bar-1", "counted_cents": 100},
            404,
            "checkpoint_id",
            "unknown checkpoint bar-1",
        ),
        ({"checkpoint_id": "checkpoint-1", "counted_cents": -1}, 400, "counted_cents", "integer"),
        ({"checkpoint_id": "checkpoint-1", "counted_cents": 49.9}, 400, "counted_cents", "integer"),
        (
            {"checkpoint_id": "checkpoint-1", "counted_cents": 4990.0},
            400,
            "counted_cents",
            "integer",
        ),
        (
            {"checkpoint_id": "checkpoint-1", "counted_cents": "4990"},
            400,
            "counted_cents",
            "integer",
        ),
        ({"checkpoint_id": "checkpoint-1", "counted_cents": True}, 400, "counted_cents", "integer"),
        (
            {"checkpoint_id": "checkpoint-1", "counted_cents": 10**12},
            400,
            "counted_cents",
            "integer",
        ),
        ({"checkpoint_id": "checkpoint-1"}, 400, "counted_cents", "integer"),
        ({"counted_cents": 0}, 400, "checkpoint_id", "checkpoint_id must be"),
        ({"checkpoint_id": "", "counted_cents": 0}, 400, "checkpoint_id", "checkpoint_id must be"),
        (
            {"checkpoint_id": "c\n1", "counted_cents": 0},
            400,
            "checkpoint_id",
            "checkpoint_id must be",
        ),
        (
            {"checkpoint_id": "c" * 65, "counted_cents": 0},
            400,
            "checkpoint_id",
            "checkpoint_id must be",
        ),
        ({"checkpoint_id": "checkpoint-1", "counted_cents": 0, "by": "x"}, 400, "by", "unknown"),
        ([1], 400, None, "JSON object"),
    ],
)
def test_a_refused_close_names_the_field_and_books_nothing(
    client: TestClient, ledger: Ledger, body: Any, status: int, field: str | None, message: str
) -> None:
    ledger.add_kiosk("checkpoint-1", PUBLIC_KEY, "checkpoint")
    ledger.add_kiosk("bar-1", PUBLIC_KEY, "bar")
    response = close(client, body)
    assert response.status_code == status, response.text
    error = response.json()
    assert message in error["error"] and error.get("field") == field, error
    assert ShiftStore(ledger.engine).closes() == []


def test_a_close_that_is_not_json_is_refused(client: TestClient) -> None:
    response = client.post(
        "/api/shifts/close",
        content=b"checkpoint_id=checkpoint-1",
        headers={**admin_headers(), "Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 415
    broken = client.post(
        "/api/shifts/close",
        content=b"{",
        headers={**admin_headers(), "Content-Type": "application/json"},
    )
    assert broken.status_code == 400


@pytest.mark.parametrize("query", ["from=tonight", "to=2026-07-04", "checkpoint="])
def test_bad_report_parameters_are_answered_400(client: TestClient, query: str) -> None:
    response = client.get(f"/api/reports/shifts.csv?{query}", headers=admin_headers())
    assert response.status_code == 400, response.text
