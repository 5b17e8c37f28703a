"""Revision 0011: a bar order is checked against the menu of the config it cites (PROTOCOL.md
1.1 "Menus"): PRICE_MISMATCH is a rejection that charges nothing; matching lines keep the menu
line's VAT rate and category; the kiosk's config version is recorded; the downgrade gives back
exactly what 0010 had."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from cloud import database
from cloud.ledger import Ledger
from cloud.ledger_records import LedgerRequest
from protocol.errors import ErrorCode, Status
from protocol.limits import MENU_GRACE_S_DEFAULT
from protocol.models import BarItem, Menu, MenuItem
from tests.ledger.helpers import bar_order, execute, recharge, scalar
from tests.ledger.test_r0009_migration import _differences, _schema

CARD = "04A1B2C3D4E5F6"
MENU = Menu(
    "bar-menu",
    (
        MenuItem("beer", "Beer", 550, vat_rate_bp=2000, category="drinks"),
        MenuItem("water", "Water", 300),
        MenuItem("cup", "Cup deposit", 200, is_deposit=True, vat_rate_bp=0, category="cups"),
        MenuItem("cup-back", "Cup returned", 200, is_deposit=True, is_return=True),
    ),
)
BEER = BarItem("Beer", 2, 550, sku="beer")
WATER = BarItem("Water", 1, 300, sku="water")
CUP = BarItem("Cup deposit", 1, 200, sku="cup", is_deposit=True)


def _state(url: str) -> tuple[object, ...]:
    """What a rejected order must leave as it was: balances, postings, orders, order lines."""
    return (
        scalar(url, "SELECT balance_cents FROM cards WHERE card_uid = :card", card=CARD),
        scalar(url, "SELECT count(*) FROM postings"),
        scalar(url, "SELECT count(*) FROM bar_orders"),
        scalar(url, "SELECT count(*) FROM bar_order_items"),
        scalar(url, "SELECT count(*) FROM transactions"),
    )


def _issued_at_ms(url: str, kiosk_id: str, version: int) -> int:
    return int(
        scalar(
            url,
            "SELECT issued_at_ms FROM kiosk_configs WHERE kiosk_id = :k AND version = :v",
            k=kiosk_id,
            v=version,
        )
    )


@pytest.fixture
def menu_version(ledger: Ledger) -> int:
    """bar-1 has the menu assigned (its first config); CARD holds 100.00."""
    ledger.apply(recharge(CARD, 10_000))
    version = ledger.issue_kiosk_config("bar-1", menu=MENU)
    assert version == 1
    return version


def _rejected(ledger: Ledger, url: str, item: LedgerRequest, message: str) -> None:
    before = _state(url)
    outcome = ledger.apply(item)
    assert (outcome.status, outcome.error_code) == (Status.REJECTED, ErrorCode.PRICE_MISMATCH)
    assert outcome.message == message
    assert outcome.transaction_id is None and outcome.order_id is None
    assert (outcome.previous_balance_cents, outcome.new_balance_cents) == (None, None)
    assert outcome.card_uid == CARD
    assert _state(url) == before, "nothing charged"
    stored = execute(
        url,
        "SELECT status, error_code FROM processed_requests WHERE request_id = :r",
        r=item.request.request_id,
    )
    assert stored == [("rejected", "PRICE_MISMATCH")], "stored like other rejections"
    replay = ledger.apply(item)
    assert replay.replayed and replay.error_code is ErrorCode.PRICE_MISMATCH
    assert replay.message == message and _state(url) == before


def test_the_right_prices_are_approved_and_keep_vat_and_category(
    ledger: Ledger, menu_version: int, service_database_url: str
) -> None:
    url = service_database_url
    renamed = BarItem("Pint of lager", 1, 550, sku="beer")  # the name may differ
    outcome = ledger.apply(
        bar_order(CARD, BEER, WATER, CUP, renamed, config_version=menu_version, seq=7)
    )
    assert outcome.status is Status.APPROVED, outcome.message
    assert outcome.new_balance_cents == 10_000 - 1100 - 300 - 200 - 550
    lines = execute(
        url,
        "SELECT line_no, name, sku, vat_rate_bp, category FROM bar_order_items"
        " WHERE order_id = CAST(:order AS uuid) ORDER BY line_no",
        order=outcome.order_id,
    )
    assert lines == [
        (1, "Beer", "beer", 2000, "drinks"),
        (2, "Water", "water", None, None),
        (3, "Cup deposit", "cup", 0, "cups"),
        (4, "Pint of lager", "beer", 2000, "drinks"),
    ]
    assert scalar(url, "SELECT config_version FROM kiosks WHERE kiosk_id = 'bar-1'") == 1


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (
            BarItem("Beer", 2, 500, sku="beer"),
            "Price mismatch: line 1: sku 'beer' costs 5.50 on the menu of config version 1,"
            " not 5.00",
        ),
        (
            BarItem("Beer", 1, 550, sku="champagne"),
            "Price mismatch: line 1: sku 'champagne' is not on the menu of config version 1",
        ),
        (
            BarItem("Beer", 1, 550),
            "Price mismatch: line 1 has no sku, and config version 1 has a menu",
        ),
        (
            BarItem("Cup deposit", 1, 200, sku="cup", is_deposit=True, is_return=True),
            "Price mismatch: line 1: sku 'cup' is_deposit/is_return differ from the menu of"
            " config version 1",
        ),
        (
            BarItem("Beer", 1, 550, sku="beer", is_deposit=True),
            "Price mismatch: line 1: sku 'beer' is_deposit/is_return differ from the menu of"
            " config version 1",
        ),
    ],
    ids=["changed-price", "unknown-sku", "no-sku", "flipped-is-return", "flipped-is-deposit"],
)
def test_a_line_off_the_menu_is_price_mismatch_and_charges_nothing(
    ledger: Ledger, menu_version: int, service_database_url: str, line: BarItem, message: str
) -> None:
    _rejected(
        ledger, service_database_url, bar_order(CARD, line, config_version=menu_version), message
    )


def test_the_first_bad_line_is_named(
    ledger: Ledger, menu_version: int, service_database_url: str
) -> None:
    cheap = BarItem("Water", 1, 1, sku="water")
    _rejected(
        ledger,
        service_database_url,
        bar_order(CARD, BEER, cheap, BarItem("X", 1, 1, sku="nope"), config_version=1),
        "Price mismatch: line 2: sku 'water' costs 3.00 on the menu of config version 1, not 0.01",
    )


def test_versions_missing_never_sent_or_out_of_range_are_price_mismatch(
    ledger: Ledger, menu_version: int, service_database_url: str
) -> None:
    url = service_database_url
    _rejected(
        ledger,
        url,
        bar_order(CARD, BEER),
        "Price mismatch: this kiosk sells from a menu the cloud sent it, and the order cites"
        " no config_version",
    )
    _rejected(
        ledger,
        url,
        bar_order(CARD, BEER, config_version=2),
        "Price mismatch: config version 2 was never sent to this kiosk",
    )
    # bar-2's version 1 is not bar-1's: the version is the kiosk's own
    assert ledger.issue_kiosk_config("bar-2", menu=MENU) == 1
    _rejected(
        ledger,
        url,
        bar_order(CARD, BEER, kiosk_id="bar-2", config_version=3),
        "Price mismatch: config version 3 was never sent to this kiosk",
    )
    # A version no config can have (the wire allows up to 2**63 - 1) is not an error.
    _rejected(
        ledger,
        url,
        bar_order(CARD, BEER, config_version=2**62),
        f"Price mismatch: config version {2**62} was never sent to this kiosk",
    )


def test_a_superseded_version_is_accepted_within_the_grace_only(
    ledger: Ledger, menu_version: int, service_database_url: str
) -> None:
    url = service_database_url
    dearer = Menu("bar-menu", (MenuItem("beer", "Beer", 600, vat_rate_bp=2000),))
    assert ledger.issue_kiosk_config("bar-1", menu=dearer) == 2
    replaced_at_ms = _issued_at_ms(url, "bar-1", 2)
    grace_ms = MENU_GRACE_S_DEFAULT * 1000
    # Made before version 2 existed, or within the grace after: the old price stands.
    for created_at_ms in (replaced_at_ms - 60_000, replaced_at_ms + grace_ms):
        outcome = ledger.apply(bar_order(CARD, BEER, config_version=1, created_at_ms=created_at_ms))
        assert outcome.status is Status.APPROVED, outcome.message
    _rejected(
        ledger,
        url,
        bar_order(CARD, BEER, config_version=1, created_at_ms=replaced_at_ms + grace_ms + 1),
        "Price mismatch: config version 1 was replaced more than 600 s before the order was made",
    )
    # The current version prices the same line at its own price only.
    assert ledger.apply(bar_order(CARD, BarItem("Beer", 1, 600, sku="beer"), config_version=2))
    _rejected(
        ledger,
        url,
        bar_order(CARD, BEER, config_version=2),
        "Price mismatch: line 1: sku 'beer' costs 6.00 on the menu of config version 2, not 5.50",
    )


def test_the_grace_is_the_ledgers_setting(
    ledger: Ledger, menu_version: int, service_database_url: str
) -> None:
    strict = Ledger(ledger.engine, menu_grace_s=0)
    assert ledger.issue_kiosk_config("bar-1", menu=MENU) == 2
    replaced_at_ms = _issued_at_ms(service_database_url, "bar-1", 2)
    late = bar_order(CARD, BEER, config_version=1, created_at_ms=replaced_at_ms + 1)
    outcome = strict.apply(late)
    assert outcome.error_code is ErrorCode.PRICE_MISMATCH
    assert "more than 0 s" in outcome.message


def test_a_config_without_a_menu_checks_nothing(
    ledger: Ledger, menu_version: int, service_database_url: str
) -> None:
    url = service_database_url
    assert ledger.issue_kiosk_config("bar-1", menu=None) == 2
    anything = BarItem("Whatever", 1, 123)
    outcome = ledger.apply(bar_order(CARD, anything, config_version=2))
    assert outcome.status is Status.APPROVED
    assert execute(
        url,
        "SELECT vat_rate_bp, category FROM bar_order_items WHERE order_id = CAST(:o AS uuid)",
        o=outcome.order_id,
    ) == [(None, None)]
    # No menu is assigned any more: an order may omit the version.
    assert ledger.apply(bar_order(CARD, anything)).status is Status.APPROVED
    # The old version with a menu is still checked while it may be cited (within the grace).
    bad = ledger.apply(bar_order(CARD, anything, config_version=1))
    assert bad.error_code is ErrorCode.PRICE_MISMATCH


def test_a_kiosk_without_a_menu_is_unaffected(ledger: Ledger, menu_version: int) -> None:
    # bar-2 never had a menu (nor a config): its orders are what they were.
    for item in (
        bar_order(CARD, BarItem("Beer", 1, 999), kiosk_id="bar-2"),
        bar_order(CARD, BarItem("Beer", 1, 999, sku="beer"), kiosk_id="bar-2"),
    ):
        assert ledger.apply(item).status is Status.APPROVED
    # a top-up is never checked, whatever it cites
    assert ledger.apply(recharge(CARD, 100, config_version=99)).status is Status.APPROVED


def test_pos_orders_carry_no_sku_and_are_not_checked(
    ledger: Ledger, menu_version: int, service_database_url: str
) -> None:
    # The seed-compatible POS endpoint (source http): even under a kiosk's id that has a menu.
    item = bar_order(CARD, BarItem("Beer", 1, 999), kiosk_id="bar-1", source="http")
    outcome = ledger.apply(item)
    assert outcome.status is Status.APPROVED
    # and the seed's own procedure keeps its signature and its behaviour over HTTP
    document = scalar(
        service_database_url,
        "SELECT sp_process_bar_order(p_request_id => 'seed-1', p_card_uid => :card,"
        " p_items => CAST(:items AS jsonb), p_total_cents => 999,"
        " p_payload_sha256 => repeat('a', 64), p_kiosk_id => 'pos-1', p_source => 'http')",
        card=CARD,
        items='[{"name": "Beer", "quantity": 1, "unit_price_cents": 999}]',
    )
    assert document["status"] == "approved"


def test_one_batch_decides_each_order_on_its_own(
    ledger: Ledger, menu_version: int, service_database_url: str
) -> None:
    items = [
        bar_order(CARD, BEER, config_version=1, seq=1),
        bar_order(CARD, BarItem("Beer", 1, 1, sku="beer"), config_version=1, seq=2),
        bar_order(CARD, WATER, config_version=1, seq=3),
        bar_order(CARD, WATER, kiosk_id="bar-2", seq=1),
    ]
    outcomes = ledger.apply_batch(items)
    assert [o.error_code for o in outcomes] == [None, ErrorCode.PRICE_MISMATCH, None, None]
    assert outcomes[2].previous_balance_cents == 10_000 - 1100
    assert outcomes[2].new_balance_cents == 10_000 - 1100 - 300


def test_the_config_version_a_kiosk_runs_is_recorded_when_it_changes(
    ledger: Ledger, menu_version: int, service_database_url: str
) -> None:
    url = service_database_url

    def running() -> tuple[object, object]:
        rows = execute(
            url, "SELECT config_version, config_version_at FROM kiosks WHERE kiosk_id = 'bar-1'"
        )
        return rows[0]

    assert running() == (None, None)
    ledger.apply(bar_order(CARD, BEER, config_version=1, seq=1))
    version, at = running()
    assert version == 1 and at is not None
    ledger.apply(bar_order(CARD, WATER, config_version=1, seq=2))
    assert running() == (1, at), "unchanged: not written again"
    assert ledger.issue_kiosk_config("bar-1", menu=MENU) == 2
    # a rejected order counts too: the kiosk still runs version 2
    ledger.apply(bar_order(CARD, BarItem("Beer", 1, 1, sku="beer"), config_version=2, seq=3))
    assert running()[0] == 2
    # the latest new request of a batch decides
    ledger.apply_batch(
        [
            bar_order(CARD, WATER, config_version=1, seq=4),
            bar_order(CARD, WATER, config_version=2, seq=5),
        ]
    )
    assert running()[0] == 2


def test_configs_issued_before_0011_are_checked_too(
    make_database: Callable[..., str],
) -> None:
    url = make_database()
    database.upgrade(url, "0010")
    execute(url, "SELECT sp_add_kiosk('bar-9', :key, 'bar')", key="x" * 43)
    execute(
        url,
        "SELECT sp_issue_kiosk_config('bar-9', 'EUR', true, CAST(:menu AS jsonb))",
        menu='{"menu_id": "m", "items": [{"sku": "beer", "name": "Beer",'
        ' "unit_price_cents": 550, "vat_rate_bp": 700}]}',
    )
    database.upgrade(url, "0011")
    assert execute(
        url, "SELECT kiosk_id, version, sku, unit_price_cents, vat_rate_bp FROM kiosk_config_items"
    ) == [("bar-9", 1, "beer", 550, 700)]


def test_downgrade_of_0011_restores_revision_0010_exactly(
    make_database: Callable[..., str],
) -> None:
    url = make_database()
    database.upgrade(url, "0010")
    at_0010 = _schema(url)
    database.upgrade(url, "0011")
    assert any("kiosk_config_items" in line for line in _schema(url))
    database.downgrade(url, "0010")
    assert _schema(url) == at_0010, _differences(at_0010, _schema(url))
