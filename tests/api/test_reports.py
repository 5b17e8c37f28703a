"""The reports (issue 13 section 3, DESIGN.md "reports") against real PostgreSQL, with real orders
applied through the ledger: sales per product, kiosk and hour as CSV (parsed back with the csv
module), deposits and returns excluded, from/to, the decimal column; the liability, reconciled
with `festival-cloud check`; the same from `festival-cloud report`.

The ledger stamps an order with the time it applied it (created_at) and the request's
created_at_ms, the time a sale is reported at; the orders are then moved to a July evening (both
times, as the owner) so the hours are known."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text

from cloud import reports as reports_module
from cloud.api import create_app
from cloud.ledger import Ledger
from cloud.ledger_records import LedgerRequest
from cloud.reports import ReportError, decimal_amount, parse_moment, vat_included_cents
from cloud.settings import CloudSettings
from cloud.stripe_fake import FakeStripe
from protocol.models import BarItem, Menu, MenuItem, OfflinePolicy
from tests.api.conftest import (
    LOOPBACK_PEER,
    POS_DEVICE_ID,
    TEST_LIMITS,
    admin_headers,
    make_settings,
    pos_headers,
)
from tests.ledger.helpers import PUBLIC_KEY, bar_order, recharge, void
from tests.ledger.test_cli import cli

CARD_A = "04AA0001"
CARD_B = "04BB0002"
TOPUP_CENTS = 5000
BEER = BarItem("Beer", 2, 500, sku="beer")
WATER = BarItem("Water", 1, 250, sku="water")


# DESIGN.md's `sku,name,quantity,amount_cents` first, in its order; this project's extras after.
PRODUCT_HEADER = [
    "sku",
    "name",
    "quantity",
    "amount_cents",
    "unit_price_cents",
    "vat_rate_bp",
    "vat_cents",
    "amount",
    "vat",
]


def cups(quantity: int) -> BarItem:
    return BarItem("Cup", quantity, 200, sku="cup", is_deposit=True)


def cup_back(quantity: int) -> BarItem:
    return BarItem("Cup back", quantity, 200, sku="cup", is_deposit=True, is_return=True)


def at(text_value: str) -> datetime:
    return datetime.fromisoformat(text_value.replace("Z", "+00:00"))


def apply(ledger: Ledger, item: LedgerRequest) -> str:
    outcome = ledger.apply(item)
    assert outcome.approved, outcome
    return item.request.request_id


EVENING = at("2026-07-04T20:00:00Z")


def seed_sales(
    client: TestClient, ledger: Ledger, owner_engine: Engine, evening: datetime = EVENING
) -> dict[str, datetime]:
    """Two bars and the POS till, one evening from `evening` (default 2026-07-04 20:00 UTC):

    | order | where       | when   | lines                               | sales |
    | A     | bar-1       | 20:10  | 2 beer, 3 cups deposited            | 1000  |
    | B     | bar-1       | 20:50  | 1 water, 1 cup back                 | 250   |
    | C     | bar-2       | 21:05  | 2 beer, then 1 more beer            | 1500  |
    | D     | bar-2       | 21:20  | 1 cup back only (not a sale)        | 0     |
    | E     | pos-till-1  | 22:30  | 1 "Nachos" at 6.00 (seed POS, no SKU)| 600  |

    Each is made and applied at its time (created_at_ms and created_at), except B, stored as
    before revision 0016 without created_at_ms: reported at its applied time.
    """
    for kiosk_id, role in (("bar-1", "bar"), ("bar-2", "bar"), ("checkpoint-1", "checkpoint")):
        ledger.add_kiosk(kiosk_id, PUBLIC_KEY, role)
    for card in (CARD_A, CARD_B):
        apply(ledger, recharge(card, TOPUP_CENTS))
    minutes = {
        apply(ledger, bar_order(CARD_A, BEER, cups(3), kiosk_id="bar-1")): 10,
        apply(ledger, bar_order(CARD_A, WATER, cup_back(1), kiosk_id="bar-1")): 50,
        apply(
            ledger,
            bar_order(CARD_B, BEER, BarItem("Beer", 1, 500, sku="beer"), kiosk_id="bar-2"),
        ): 65,
        apply(ledger, bar_order(CARD_B, cup_back(1), kiosk_id="bar-2")): 80,
    }
    body = {
        "card_id": CARD_B,
        "items": [{"name": "Nachos", "quantity": 1, "unit_price": 6.0}],
        "total_amount": 6.0,
        "client_request_id": "pos-nachos-1",
    }
    response = client.post("/functions/v1/process-bar-order", json=body, headers=pos_headers())
    assert response.status_code == 200, response.text
    minutes["pos-nachos-1"] = 150
    moments = {request_id: evening + timedelta(minutes=m) for request_id, m in minutes.items()}
    without_created_at_ms = next(request_id for request_id, m in minutes.items() if m == 50)
    with owner_engine.begin() as connection:
        for request_id, moment in moments.items():
            made_ms = None if request_id == without_created_at_ms else moment.timestamp() * 1000
            moved = connection.execute(
                text(
                    "UPDATE bar_orders SET created_at = :at, created_at_ms = :at_ms"
                    " WHERE client_request_id = :id"
                ),
                {
                    "at": moment,
                    "at_ms": None if made_ms is None else int(made_ms),
                    "id": request_id,
                },
            )
            assert moved.rowcount == 1
    return moments


def parse_csv(body: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(body)))


def get_csv(client: TestClient, **params: str) -> list[list[str]]:
    response = client.get("/api/reports/sales.csv", params=params, headers=admin_headers())
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "text/csv; charset=utf-8"
    return parse_csv(response.text)


@pytest.fixture
def seeded(client: TestClient, ledger: Ledger, owner_engine: Engine) -> dict[str, datetime]:
    return seed_sales(client, ledger, owner_engine)


def test_sales_per_product_are_sales_lines_only(client: TestClient, seeded: object) -> None:
    assert get_csv(client, group="product") == [
        PRODUCT_HEADER,
        ["beer", "Beer", "5", "2500", "500", "", "", "25.00", ""],
        ["water", "Water", "1", "250", "250", "", "", "2.50", ""],
        # the seed POS endpoint's lines carry no SKU
        ["", "Nachos", "1", "600", "600", "", "", "6.00", ""],
    ]
    response = client.get("/api/reports/sales.csv?group=product", headers=admin_headers())
    assert response.headers["content-disposition"] == (
        'attachment; filename="sales-product-EUR.csv"'
    )
    assert response.text.endswith("\r\n")


def test_sales_per_kiosk_count_orders_with_a_sale(
    client: TestClient, ledger: Ledger, seeded: object
) -> None:
    assert get_csv(client, group="kiosk") == [
        ["kiosk_id", "orders", "amount_cents", "amount"],
        ["bar-1", "2", "1250", "12.50"],
        ["bar-2", "1", "1500", "15.00"],  # its return-only order D is not a sale
        [POS_DEVICE_ID, "1", "600", "6.00"],
    ]
    # The same figures as the monitoring's per-bar sales (which count every order).
    bars = {row["kiosk_id"]: row["sales_cents"] for row in ledger.sales_report()["bars"]}  # type: ignore[index]
    assert bars == {"bar-1": 1250, "bar-2": 1500, POS_DEVICE_ID: 600}


def test_sales_per_hour_in_utc_with_z(client: TestClient, seeded: object) -> None:
    assert get_csv(client, group="hour") == [
        ["hour", "orders", "amount_cents", "amount"],
        ["2026-07-04T20:00:00Z", "2", "1250", "12.50"],
        ["2026-07-04T21:00:00Z", "1", "1500", "15.00"],
        ["2026-07-04T22:00:00Z", "1", "600", "6.00"],
    ]
    quarters = client.get(
        "/api/reports/sales", params={"group": "quarter_hour"}, headers=admin_headers()
    ).json()
    assert [(row["quarter_hour"], row["amount_cents"]) for row in quarters["rows"]] == [
        ("2026-07-04T20:00:00Z", 1000),
        ("2026-07-04T20:45:00Z", 250),
        ("2026-07-04T21:00:00Z", 1500),
        ("2026-07-04T22:30:00Z", 600),
    ]


def test_from_is_inclusive_to_exclusive_and_offsets_are_honoured(
    client: TestClient, seeded: object
) -> None:
    nine_to_ten = get_csv(
        client, group="kiosk", **{"from": "2026-07-04T21:00:00Z", "to": "2026-07-04T22:00:00Z"}
    )
    assert nine_to_ten[1:] == [["bar-2", "1", "1500", "15.00"]]
    # 23:05 in UTC+2 is 21:05Z, order C's time: `to` excludes it, `from` includes it.
    assert get_csv(client, group="kiosk", to="2026-07-04T23:05:00+02:00")[1:] == [
        ["bar-1", "2", "1250", "12.50"]
    ]
    assert get_csv(client, group="kiosk", **{"from": "2026-07-04T23:05:00+02:00"})[1:] == [
        ["bar-2", "1", "1500", "15.00"],
        [POS_DEVICE_ID, "1", "600", "6.00"],
    ]
    # An empty window (to before from) is an empty report, not an error.
    empty = get_csv(
        client, group="hour", **{"from": "2026-07-05T00:00:00Z", "to": "2026-07-04T00:00:00Z"}
    )
    assert empty == [["hour", "orders", "amount_cents", "amount"]]


def test_every_grouping_begins_with_the_columns_of_design_md(
    client: TestClient, seeded: object
) -> None:
    """DESIGN.md's header of each grouping, in its order; this project's extras after them."""
    design = {
        "product": ["sku", "name", "quantity", "amount_cents"],
        "kiosk": ["kiosk_id", "orders", "amount_cents"],
        "hour": ["hour", "orders", "amount_cents"],
    }
    for group, columns in design.items():
        header = get_csv(client, group=group)[0]
        assert header[: len(columns)] == columns, (group, header)


def hour_of(moment: datetime) -> str:
    return moment.replace(minute=0, second=0, microsecond=0).strftime("%Y-%m-%dT%H:00:00Z")


def test_an_offline_sale_is_reported_at_the_hour_it_was_made_not_when_it_was_drained(
    client: TestClient, ledger: Ledger, owner_engine: Engine
) -> None:
    """DESIGN.md: the hour "of the sale's created_at_ms". An offline sale made two hours ago and
    applied (drained) now is in its own hour, in every grouping by time and in from/to."""
    ledger.add_kiosk("bar-1", PUBLIC_KEY, "bar")
    ledger.add_kiosk("checkpoint-1", PUBLIC_KEY, "checkpoint")
    policy = OfflinePolicy(sale_max_cents=2_000, card_max_cents=5_000, kiosk_max_cents=10_000)
    version = ledger.issue_kiosk_config("bar-1", offline=policy)
    assert version is not None
    ledger.mark_config_published("bar-1", version)
    apply(ledger, recharge(CARD_A, TOPUP_CENTS))
    now = datetime.now(UTC)
    made = now - timedelta(hours=2)
    offline_sale = bar_order(
        CARD_A,
        BEER,
        kiosk_id="bar-1",
        config_version=version,
        offline=True,
        created_at_ms=int(made.timestamp() * 1000),
    )
    drained_id = apply(ledger, offline_sale)
    online_id = apply(
        ledger,
        bar_order(
            CARD_A,
            WATER,
            kiosk_id="bar-1",
            config_version=version,
            created_at_ms=int(now.timestamp() * 1000),
        ),
    )
    with owner_engine.connect() as connection:
        applied_at = connection.execute(
            text("SELECT created_at FROM bar_orders WHERE client_request_id = :id"),
            {"id": drained_id},
        ).scalar_one()
    made_hour = made.replace(minute=0, second=0, microsecond=0)
    assert applied_at >= made_hour + timedelta(hours=1)  # drained in a later hour
    assert get_csv(client, group="hour")[1:] == [
        [hour_of(made), "1", "1000", "10.00"],
        [hour_of(now), "1", "250", "2.50"],
    ]
    quarters = client.get(
        "/api/reports/sales", params={"group": "quarter_hour"}, headers=admin_headers()
    ).json()["rows"]
    assert [row["amount_cents"] for row in quarters] == [1000, 250]
    assert quarters[0]["quarter_hour"] <= made.strftime("%Y-%m-%dT%H:%M:%SZ")
    # from/to are on the sale's time too.
    boundary = (made_hour + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert get_csv(client, group="kiosk", to=boundary)[1:] == [["bar-1", "1", "1000", "10.00"]]
    assert get_csv(client, group="kiosk", **{"from": boundary})[1:] == [
        ["bar-1", "1", "250", "2.50"]
    ]
    staff = client.get(
        "/api/reports/staff", params={"to": boundary}, headers=admin_headers()
    ).json()
    assert sum(row["orders"] for row in staff["rows"]) == 1, staff
    assert online_id != drained_id


def test_the_json_rows_and_total_for_the_dashboard(client: TestClient, seeded: object) -> None:
    body = client.get(
        "/api/reports/sales",
        params={"group": "product", "from": "2026-07-04T20:00:00.000Z"},
        headers=admin_headers(),
    ).json()
    assert body["group"] == "product" and body["currency"] == "EUR"
    assert body["from"] == "2026-07-04T20:00:00Z" and body["to"] is None
    assert body["total"] == {
        "amount_cents": 3350,
        "quantity": 7,
        "vat_cents": 0,
        "amount": "33.50",
        "vat": "0.00",
    }
    assert body["rows"][0] == {
        "sku": "beer",
        "name": "Beer",
        "unit_price_cents": 500,
        "vat_rate_bp": None,
        "quantity": 5,
        "amount_cents": 2500,
        "vat_cents": None,
        "amount": "25.00",
        "vat": None,
    }


@pytest.mark.parametrize(
    "query",
    [
        "group=everything",
        "",
        "group=hour&from=yesterday",
        "group=hour&from=2026-07-04T21:00:00",  # no offset: which day would depend on the server
        "group=hour&to=2026-07-04",
        "group=hour&from=2026-13-04T21:00:00Z",
        "group=hour&from=1783198800000",  # Unix ms are not accepted: one form, RFC 3339
        "group=hour&from=" + "2026-07-04T21:00:00." + "0" * 40 + "Z",
    ],
)
def test_bad_parameters_are_answered_400(client: TestClient, query: str) -> None:
    for path in ("/api/reports/sales.csv", "/api/reports/sales"):
        response = client.get(f"{path}?{query}", headers=admin_headers())
        assert response.status_code == 400, (path, query, response.text)
        assert response.json()["error_code"] == "INVALID_REQUEST"


def test_the_reports_need_the_admin_token(client: TestClient) -> None:
    for path in (
        "/api/reports/sales.csv?group=product",
        "/api/reports/sales?group=kiosk",
        "/api/reports/liability",
    ):
        assert client.get(path).status_code == 401
        assert client.get(path, headers={"Authorization": "Bearer nope"}).status_code == 401


def test_a_report_beyond_the_row_limit_is_refused_not_cut_short(
    client: TestClient, seeded: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(reports_module, "REPORT_ROWS_MAX", 2)
    response = client.get("/api/reports/sales.csv?group=product", headers=admin_headers())
    assert response.status_code == 400
    assert "more than 2 rows" in response.json()["error"]
    assert len(get_csv(client, group="kiosk", to="2026-07-04T22:00:00Z")) == 3  # 2 rows: fine


@pytest.fixture
def franc_client(
    api_database_url: str, fake_stripe: FakeStripe, api_ledger: Ledger
) -> Iterator[TestClient]:
    settings: CloudSettings = make_settings(
        api_database_url, fake_stripe.base_url, festival_currency="CHF"
    )
    with TestClient(
        create_app(settings, ledger=api_ledger, limits=TEST_LIMITS), client=LOOPBACK_PEER
    ) as franc:
        yield franc


def test_the_deployment_currency_names_the_file_and_the_json(
    franc_client: TestClient, client: TestClient, ledger: Ledger, owner_engine: Engine
) -> None:
    seed_sales(client, ledger, owner_engine)
    response = franc_client.get("/api/reports/sales.csv?group=kiosk", headers=admin_headers())
    assert 'filename="sales-kiosk-CHF.csv"' in response.headers["content-disposition"]
    assert parse_csv(response.text)[1] == ["bar-1", "2", "1250", "12.50"]
    assert franc_client.get("/api/reports/liability", headers=admin_headers()).json()[
        "currency"
    ] == ("CHF")
    dashboard = franc_client.get("/api/monitoring/dashboard", headers=admin_headers()).json()
    assert dashboard["currency"] == "CHF"


def card_postings_cents(owner_engine: Engine) -> int:
    """Computed here, independently of the report: every posting on a card account."""
    with owner_engine.connect() as connection:
        return int(
            connection.execute(
                text(
                    "SELECT coalesce(sum(p.amount_cents), 0) FROM postings p"
                    " JOIN cards c ON c.account_id = p.account_id"
                )
            ).scalar_one()
        )


def test_liability_is_balances_plus_deposits_and_reconciles_with_check(
    client: TestClient, ledger: Ledger, owner_engine: Engine, seeded: object
) -> None:
    report = client.get("/api/reports/liability", headers=admin_headers()).json()
    # CARD_A: 5000 - 1600 (A: beer + 3 cups) - 50 (B: water - 1 cup) = 3350;
    # CARD_B: 5000 - 1500 (C) + 200 (D: a cup back) - 600 (E) = 3100.
    assert report["card_balances_cents"] == 3350 + 3100
    assert report["deposits_cents"] == 3 * 200 - 2 * 200  # cups still out
    assert report["payouts_pending_cents"] == 0 and report["debts_cents"] == 0
    assert report["liability_cents"] == 6650 and report["liability"] == "66.50"
    # Money taken in minus sales: what is not revenue is owed.
    assert report["liability_cents"] == 2 * TOPUP_CENTS - (1250 + 1500 + 600)
    assert report["cards"] == 2 and report["currency"] == "EUR"
    assert report["card_postings_cents"] == card_postings_cents(owner_engine)
    assert report["reconciled"] is True and ledger.check() == []
    # Everything that came in, and where it is now (issue 16 §2): the two top-ups are on cards,
    # sold, or held as cup deposits; nothing is paid out, owed or lost yet.
    assert report["money"] == {
        "in_cents": 2 * TOPUP_CENTS,
        "on_cards_cents": 3350 + 3100,
        "payouts_account_cents": 0,
        "paid_by_bank_cents": 0,
        "sales_cents": 1250 + 1500 + 600,
        "deposits_cents": 3 * 200 - 2 * 200,
        "owed_by_cards_cents": 0,
        "losses_cents": 0,
        "other_cents": 0,
        "balanced": True,
    }

    # A cached balance that no longer equals its postings: `check` and the report both say so.
    with owner_engine.begin() as connection:
        connection.execute(
            text("UPDATE cards SET balance_cents = balance_cents + 1 WHERE card_uid = :uid"),
            {"uid": CARD_A},
        )
    broken = client.get("/api/reports/liability", headers=admin_headers()).json()
    assert broken["reconciled"] is False
    assert broken["card_balances_cents"] - broken["card_postings_cents"] == 1
    assert broken["card_postings_cents"] == card_postings_cents(owner_engine)
    assert any(CARD_A in line for line in ledger.check())


def test_decimal_amounts_are_exact_integer_arithmetic() -> None:
    assert [decimal_amount(cents) for cents in (0, 5, 99, 100, 1250, -5, -1250)] == [
        "0.00",
        "0.05",
        "0.99",
        "1.00",
        "12.50",
        "-0.05",
        "-12.50",
    ]
    large = 9_007_199_254_740_993  # beyond a float's exact integers
    assert decimal_amount(large) == "90071992547409.93"


# --- menus: a price change and VAT (revision 0011 keeps each line's rate) -----------------------


def test_a_price_change_shows_both_prices_with_their_vat_and_a_vat_summary(
    client: TestClient, ledger: Ledger
) -> None:
    ledger.add_kiosk("bar-1", PUBLIC_KEY, "bar")
    ledger.add_kiosk("checkpoint-1", PUBLIC_KEY, "checkpoint")
    apply(ledger, recharge(CARD_A, TOPUP_CENTS))
    first = Menu(
        "summer",
        (
            MenuItem("beer", "Beer", 500, vat_rate_bp=2000, category="drinks"),
            MenuItem("water", "Water", 250, vat_rate_bp=700),
            MenuItem("chips", "Chips", 300),
            MenuItem("cup", "Cup", 200, is_deposit=True, vat_rate_bp=0),
        ),
    )
    assert ledger.issue_kiosk_config("bar-1", menu=first) == 1
    apply(ledger, bar_order(CARD_A, BEER, WATER, cups(2), config_version=1))
    apply(ledger, bar_order(CARD_A, BarItem("Chips", 1, 300, sku="chips"), config_version=1))
    dearer = replace(first, items=(replace(first.items[0], unit_price_cents=617), *first.items[1:]))
    assert ledger.issue_kiosk_config("bar-1", menu=dearer) == 2
    apply(ledger, bar_order(CARD_A, BarItem("Beer", 1, 617, sku="beer"), config_version=2))
    assert get_csv(client, group="product") == [
        PRODUCT_HEADER,
        # 1000 at 20 %: 166.67 -> 167; 617 at 20 %: 102.83 -> 103 (half away from zero)
        ["beer", "Beer", "2", "1000", "500", "2000", "167", "10.00", "1.67"],
        ["beer", "Beer", "1", "617", "617", "2000", "103", "6.17", "1.03"],
        ["chips", "Chips", "1", "300", "300", "", "", "3.00", ""],
        ["water", "Water", "1", "250", "250", "700", "16", "2.50", "0.16"],  # 16.36 -> 16
    ]
    assert get_csv(client, group="vat") == [
        ["vat_rate_bp", "quantity", "amount_cents", "vat_cents", "amount", "vat"],
        # the rate's whole gross, rounded once: 1617 at 20 % = 269.5 -> 270
        ["700", "1", "250", "16", "2.50", "0.16"],
        ["2000", "3", "1617", "270", "16.17", "2.70"],
        ["", "1", "300", "", "3.00", ""],  # sold without a rate
    ]
    vat = client.get("/api/reports/sales", params={"group": "vat"}, headers=admin_headers()).json()
    assert vat["total"] == {
        "amount_cents": 2167,
        "quantity": 5,
        "vat_cents": 286,
        "amount": "21.67",
        "vat": "2.86",
    }


def test_vat_included_is_integer_arithmetic_rounded_half_away_from_zero() -> None:
    assert vat_included_cents(1200, 2000) == 200
    assert vat_included_cents(1234, 2000) == 206  # 205.67
    assert vat_included_cents(1617, 2000) == 270  # 269.5 exactly
    assert vat_included_cents(-1617, 2000) == -270
    assert vat_included_cents(999, 0) == 0
    assert vat_included_cents(10_000, 10_000) == 5_000
    huge = 9_007_199_254_740_993
    assert vat_included_cents(huge, 1900) == (2 * huge * 1900 + 11_900) // 23_800


def test_moments_parse_as_utc_and_clamp_to_what_can_hold_a_sale() -> None:
    assert parse_moment("2026-07-04T23:00:00.5+02:00") == datetime(
        2026, 7, 4, 21, 0, 0, 500_000, tzinfo=UTC
    )
    assert parse_moment("2026-07-04t21:00:00z") == datetime(2026, 7, 4, 21, tzinfo=UTC)
    assert parse_moment("0001-01-01T00:00:00+23:59") == datetime(1970, 1, 1, tzinfo=UTC)
    assert parse_moment("9999-12-31T23:59:59-23:59").year == 9999
    for bad in ("2026-07-04", "2026-07-04 21:00:00Z", "2026-02-30T00:00:00Z", "now"):
        with pytest.raises(ReportError):
            parse_moment(bad)


# --- `festival-cloud report` ------------------------------------------------------------------


def test_cli_report_sales_prints_the_csv(
    database_url: str, client: TestClient, ledger: Ledger, owner_engine: Engine
) -> None:
    seed_sales(client, ledger, owner_engine)
    products = cli(database_url, "report", "sales", "--group", "product")
    assert products.returncode == 0, products.stderr
    assert parse_csv(products.stdout)[:2] == [
        PRODUCT_HEADER,
        ["beer", "Beer", "5", "2500", "500", "", "", "25.00", ""],
    ]
    hours = cli(
        database_url,
        "report",
        "sales",
        "--group",
        "hour",
        "--from",
        "2026-07-04T21:00:00Z",
        "--to",
        "2026-07-04T23:00:00Z",
    )
    assert hours.returncode == 0, hours.stderr
    assert parse_csv(hours.stdout)[1:] == [
        ["2026-07-04T21:00:00Z", "1", "1500", "15.00"],
        ["2026-07-04T22:00:00Z", "1", "600", "6.00"],
    ]
    bad = cli(database_url, "report", "sales", "--group", "hour", "--from", "tonight")
    assert bad.returncode == 2 and "RFC 3339" in bad.stderr and bad.stdout == ""
    assert cli(database_url, "report", "sales", "--group", "bar").returncode == 2  # argparse


def test_cli_report_liability_text_json_and_a_broken_balance(
    database_url: str, client: TestClient, ledger: Ledger, owner_engine: Engine
) -> None:
    seed_sales(client, ledger, owner_engine)
    as_json = cli(database_url, "report", "liability", "--json")
    assert as_json.returncode == 0, as_json.stderr
    report = json.loads(as_json.stdout)
    assert report["liability_cents"] == 6650 and report["reconciled"] is True
    assert cli(database_url, "check").returncode == 0
    as_text = cli(database_url, "report", "liability")
    assert as_text.returncode == 0
    assert as_text.stdout.startswith("liability 66.50 EUR at ")
    assert "card balances (2 cards)" in as_text.stdout and "64.50" in as_text.stdout
    assert "deposit account (cups not returned)" in as_text.stdout and "2.00" in as_text.stdout

    with owner_engine.begin() as connection:
        connection.execute(text("UPDATE cards SET balance_cents = balance_cents + 1"))
    broken = cli(database_url, "report", "liability", "--json")
    assert broken.returncode == 1 and "run festival-cloud check" in broken.stderr
    assert json.loads(broken.stdout)["reconciled"] is False
    assert cli(database_url, "check").returncode == 1


def test_the_sales_are_net_of_voids(
    client: TestClient, ledger: Ledger, seeded: dict[str, datetime]
) -> None:
    """(1.1, revision 0016) A voided order is no sale: its lines leave every grouping."""
    order = bar_order(CARD_A, BarItem("Water", 2, 250, sku="water"), kiosk_id="bar-1")
    apply(ledger, order)
    assert get_csv(client, group="kiosk")[1] == ["bar-1", "3", "1750", "17.50"]
    voided = ledger.apply(void(order))
    assert voided.approved, voided
    assert get_csv(client, group="kiosk")[1] == ["bar-1", "2", "1250", "12.50"]
    assert ["water", "Water", "1", "250", "250", "", "", "2.50", ""] in get_csv(
        client, group="product"
    )
    bars = {row["kiosk_id"]: row["sales_cents"] for row in ledger.sales_report()["bars"]}  # type: ignore[index]
    assert bars["bar-1"] == 1250
