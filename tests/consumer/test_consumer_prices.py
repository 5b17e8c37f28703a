"""(1.1) Price enforcement through the real `festival-cloud consumer`: signed bar orders over
Mosquitto, checked in PostgreSQL against the menu of the config they cite (PROTOCOL.md "Menus"),
answered with signed results; PRICE_MISMATCH charges nothing and replays alike."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy

from cloud.ledger import Ledger
from cloud.sandbox import MosquittoBroker
from protocol.errors import ErrorCode, Status
from protocol.models import BarItem, BarOrder, Menu, MenuItem, Result
from tests.consumer.conftest import CloudKey, LedgerDatabase
from tests.consumer.kiosk_client import KioskClient, now_ms
from tests.consumer.site import consumer_site
from tests.waiting import wait_until

ROLES = {"bar-menu": "bar", "bar-plain": "bar", "top-1": "checkpoint"}
MENU = Menu(
    "festival",
    (
        MenuItem("pils", "Pils", 450, vat_rate_bp=1900, category="beer"),
        MenuItem("cup", "Cup", 200, is_deposit=True, vat_rate_bp=0, category="cups"),
    ),
)
PILS = BarItem("Pils", 2, 450, sku="pils")
CUP = BarItem("Cup", 2, 200, sku="cup", is_deposit=True)
HOUR_MS = 3_600_000
_cards = itertools.count(1)


@dataclass
class Prices:
    ledger: Ledger
    engine: sqlalchemy.Engine
    kiosks: dict[str, KioskClient]

    def scalar(self, sql: str, **params: object) -> Any:
        with self.engine.begin() as connection:
            return connection.execute(sqlalchemy.text(sql), params).scalar()

    def balance(self, card_uid: str) -> int:
        card = self.ledger.card(card_uid)
        assert card is not None
        return card.balance_cents

    def fund(self, card_uid: str, amount_cents: int) -> None:
        top = self.kiosks["top-1"]
        request = top.recharge(card_uid, amount_cents)
        top.send(request)
        assert top.wait_result(request.request_id).status is Status.APPROVED

    def order(self, kiosk_id: str, card_uid: str, *items: BarItem, **fields: Any) -> BarOrder:
        client = self.kiosks[kiosk_id]
        total = sum(item.signed_cents for item in items)
        return replace(client.bar_order(card_uid, total, items=items), **fields)

    def postings(self) -> int:
        return int(self.scalar("SELECT count(*) FROM postings"))


@pytest.fixture(scope="module")
def prices(
    ledger_database: LedgerDatabase,
    cloud_key: CloudKey,
    mosquitto_broker: MosquittoBroker,
    service_dirs: Callable[[str], Path],
) -> Iterator[Prices]:
    def menu(ledger: Ledger) -> None:
        assert ledger.issue_kiosk_config("bar-menu", menu=MENU) == 1

    with consumer_site(
        "prices",
        ROLES,
        ledger_database=ledger_database,
        cloud_key=cloud_key,
        broker=mosquitto_broker,
        service_dirs=service_dirs,
        prepare=menu,
    ) as site:
        yield Prices(site.ledger, site.ledger.engine, site.kiosks)


def test_the_menu_price_is_approved_and_the_lines_keep_vat_and_category(prices: Prices) -> None:
    prices.fund("B1000001", 5_000)
    bar = prices.kiosks["bar-menu"]
    order = prices.order("bar-menu", "B1000001", PILS, CUP, config_version=1)
    bar.send(order)
    result = bar.wait_result(order.request_id)
    assert result.status is Status.APPROVED, result.message
    assert result.new_balance_cents == 5_000 - 1_300
    assert (
        prices.scalar(
            "SELECT string_agg(sku || ':' || coalesce(vat_rate_bp::text, '-') || ':' || category,"
            " ',' ORDER BY line_no) FROM bar_order_items i JOIN bar_orders o USING (order_id)"
            " WHERE o.client_request_id = :r",
            r=order.request_id,
        )
        == "pils:1900:beer,cup:0:cups"
    )
    assert prices.scalar("SELECT config_version FROM kiosks WHERE kiosk_id = 'bar-menu'") == 1


@pytest.mark.parametrize(
    ("items", "fields", "message_start"),
    [
        ((BarItem("Pils", 2, 400, sku="pils"),), {"config_version": 1}, "Price mismatch: line 1"),
        ((BarItem("Pils", 1, 450, sku="lager"),), {"config_version": 1}, "Price mismatch: line 1"),
        (
            (BarItem("Cup", 1, 200, sku="cup", is_deposit=True, is_return=True),),
            {"config_version": 1},
            "Price mismatch: line 1",
        ),
        ((PILS,), {}, "Price mismatch: this kiosk sells from a menu"),
        ((PILS,), {"config_version": 5}, "Price mismatch: config version 5 was never sent"),
    ],
    ids=["changed-price", "unknown-sku", "flipped-is-return", "no-config-version", "never-sent"],
)
def test_an_order_off_the_menu_is_a_signed_price_mismatch_that_charges_nothing(
    prices: Prices, items: tuple[BarItem, ...], fields: dict[str, Any], message_start: str
) -> None:
    card = f"B2{next(_cards):06d}"
    prices.fund(card, 5_000)
    postings = prices.postings()
    bar = prices.kiosks["bar-menu"]
    order = prices.order("bar-menu", card, *items, **fields)
    raw = bar.send(order)
    result = bar.wait_result(order.request_id)
    assert (result.status, result.error_code) == (Status.REJECTED, ErrorCode.PRICE_MISMATCH)
    assert result.message.startswith(message_start), result.message
    assert (result.kiosk_id, result.seq, result.card_uid) == ("bar-menu", order.seq, card)
    assert (result.previous_balance_cents, result.new_balance_cents) == (None, None)
    assert prices.balance(card) == 5_000 and prices.postings() == postings
    bar.send(raw)  # the very same bytes again

    def replays() -> list[Result]:
        return [r for r in bar.results_for(order.request_id) if r.replayed]

    wait_until(lambda: bool(replays()), timeout_s=15)
    assert replays()[0].error_code is ErrorCode.PRICE_MISMATCH
    assert replays()[0].message == result.message
    assert prices.balance(card) == 5_000


def test_a_superseded_menu_counts_for_the_grace_period_only(prices: Prices) -> None:
    prices.fund("B3000001", 5_000)
    dearer = Menu("festival", (MenuItem("pils", "Pils", 500),))
    assert prices.ledger.issue_kiosk_config("bar-menu", menu=dearer) == 2
    # Version 2 was issued an hour ago (the config's clock moved back in the database).
    prices.scalar(
        "UPDATE kiosk_configs SET issued_at_ms = issued_at_ms - :hour,"
        " document = jsonb_set(document, '{issued_at_ms}', to_jsonb(issued_at_ms - :hour))"
        " WHERE kiosk_id = 'bar-menu' AND version = 2 RETURNING version",
        hour=HOUR_MS,
    )
    bar = prices.kiosks["bar-menu"]
    within = prices.order(
        "bar-menu", "B3000001", PILS, config_version=1, created_at_ms=now_ms() - HOUR_MS + 60_000
    )
    late = prices.order("bar-menu", "B3000001", PILS, config_version=1)
    current = prices.order(
        "bar-menu", "B3000001", BarItem("Pils", 1, 500, sku="pils"), config_version=2
    )
    for request in (within, late, current):
        bar.send(request)
    assert bar.wait_result(within.request_id).status is Status.APPROVED
    refused = bar.wait_result(late.request_id)
    assert refused.error_code is ErrorCode.PRICE_MISMATCH
    assert "replaced more than 600 s" in refused.message
    assert bar.wait_result(current.request_id).status is Status.APPROVED
    assert prices.balance("B3000001") == 5_000 - 900 - 500
    assert prices.scalar("SELECT config_version FROM kiosks WHERE kiosk_id = 'bar-menu'") == 2


def test_a_kiosk_without_a_menu_is_unaffected(prices: Prices) -> None:
    prices.fund("B4000001", 1_000)
    bar = prices.kiosks["bar-plain"]
    order = prices.order("bar-plain", "B4000001", BarItem("Anything", 1, 777))
    bar.send(order)
    result = bar.wait_result(order.request_id)
    assert (result.status, result.new_balance_cents) == (Status.APPROVED, 223)
