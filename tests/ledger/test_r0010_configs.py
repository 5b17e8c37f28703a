"""Revision 0010 (the cloud talks back): config and deny-list versions are allocated and stored
before they are sent, never reused, and the downgrade gives back exactly what 0009 had."""

from __future__ import annotations

import json
from collections.abc import Callable

from cloud import database
from cloud.ledger import Ledger
from tests.ledger.helpers import PUBLIC_KEY, execute, recharge, scalar
from tests.ledger.test_r0009_migration import _differences, _schema

MENU = {"menu_id": "bar-menu", "items": [{"sku": "beer", "name": "Beer", "unit_price_cents": 500}]}
OFFLINE = {"sale_max_cents": 2000, "card_max_cents": 4000, "kiosk_max_cents": 50000}


def _issue(url: str, kiosk_id: str, **changes: object) -> int | None:
    menu = changes.get("menu")
    offline = changes.get("offline")
    return scalar(  # type: ignore[no-any-return]
        url,
        "SELECT sp_issue_kiosk_config(:kiosk_id, 'EUR', :set_menu, CAST(:menu AS jsonb),"
        " :set_offline, CAST(:offline AS jsonb))",
        kiosk_id=kiosk_id,
        set_menu="menu" in changes,
        menu=None if menu is None else json.dumps(menu),
        set_offline="offline" in changes,
        offline=None if offline is None else json.dumps(offline),
    )


def test_config_versions_increase_and_keep_every_document(
    ledger: Ledger, service_database_url: str
) -> None:
    url = service_database_url
    ledger.add_kiosk("bar-1", PUBLIC_KEY, "bar")
    assert _issue(url, "nobody") is None
    assert _issue(url, "bar-1", offline=OFFLINE) == 1
    assert _issue(url, "bar-1", menu=MENU) == 2
    assert _issue(url, "bar-1", menu=None) == 3
    rows = execute(
        url,
        "SELECT version, document, published_at FROM kiosk_configs WHERE kiosk_id = 'bar-1'"
        " ORDER BY version",
    )
    assert [row[0] for row in rows] == [1, 2, 3]
    assert all(row[2] is None for row in rows), "stored before it is sent"
    first, second, third = (row[1] for row in rows)
    assert first["menu"] is None and first["offline"] == OFFLINE
    assert second["menu"] == MENU and second["offline"] == OFFLINE, "the policy is kept"
    assert third["menu"] is None
    assert set(second) == {
        "v",
        "type",
        "kiosk_id",
        "version",
        "issued_at_ms",
        "currency",
        "menu",
        "offline",
    }
    assert first["issued_at_ms"] <= second["issued_at_ms"] <= third["issued_at_ms"]
    scalar(url, "SELECT sp_mark_kiosk_config_published('bar-1', 2)")
    published = execute(url, "SELECT version FROM kiosk_configs WHERE published_at IS NOT NULL")
    assert published == [(2,)]
    # A deleted history cannot happen (no privilege), so a version is never reused.
    assert _issue(url, "bar-1", menu=MENU) == 4


def test_the_deny_list_is_issued_only_when_it_changes(
    ledger: Ledger, service_database_url: str
) -> None:
    url = service_database_url
    ledger.add_kiosk("top-1", PUBLIC_KEY, "checkpoint")
    for uid in ("04AAAAAA", "04BBBBBB", "04CCCCCC"):
        ledger.apply(recharge(uid, 1_000, kiosk_id="top-1"))
    changes_before = scalar(url, "SELECT changes FROM denylist_state")
    assert scalar(url, "SELECT sp_issue_denylist()") == 1  # the first, empty
    assert scalar(url, "SELECT sp_issue_denylist()") is None
    assert ledger.block_card("04CCCCCC", "lost")
    assert ledger.block_card("04AAAAAA", "broken")
    assert scalar(url, "SELECT changes FROM denylist_state") == changes_before + 2
    assert scalar(url, "SELECT sp_issue_denylist()") == 2
    assert scalar(url, "SELECT card_uids::text FROM denylists WHERE version = 2") == (
        "{04AAAAAA,04CCCCCC}"
    )
    ledger.apply(recharge("04BBBBBB", 500, kiosk_id="top-1"))  # a payment changes nothing
    assert scalar(url, "SELECT changes FROM denylist_state") == changes_before + 2
    assert ledger.unblock_card("04AAAAAA")
    assert scalar(url, "SELECT sp_issue_denylist()") == 3
    assert scalar(url, "SELECT card_uids::text FROM denylists WHERE version = 3") == "{04CCCCCC}"
    assert scalar(url, "SELECT count(*) FROM denylists WHERE published_at IS NULL") == 3


def test_downgrade_of_0010_restores_revision_0009_exactly(
    make_database: Callable[..., str],
) -> None:
    url = make_database()
    database.upgrade(url, "0009")
    at_0009 = _schema(url)
    database.upgrade(url, "0010")
    assert any("kiosk_configs" in line for line in _schema(url))
    database.downgrade(url, "0009")
    assert _schema(url) == at_0009, _differences(at_0009, _schema(url))


def test_the_ledger_issues_and_marks_configs_and_deny_lists(ledger: Ledger) -> None:
    from cloud.ledger_records import UNCHANGED
    from protocol.models import OfflinePolicy, parse_config, parse_menu

    ledger.add_kiosk("bar-1", PUBLIC_KEY, "bar")
    ledger.add_kiosk("bar-2", PUBLIC_KEY, "bar")
    menu = parse_menu(MENU)
    assert ledger.issue_kiosk_config("ghost", menu=menu) is None
    assert ledger.issue_kiosk_config("bar-1", offline=OfflinePolicy(2000, 4000, 50000)) == 1
    assert ledger.issue_kiosk_config("bar-1", menu=menu, offline=UNCHANGED) == 2
    assert ledger.issue_kiosk_config("bar-2") == 1
    pending = ledger.unpublished_configs()
    assert [(c.kiosk_id, c.version) for c in pending] == [("bar-1", 2), ("bar-2", 1)]
    config = parse_config(pending[0].document)  # the stored document is the protocol's
    assert config.menu == menu and config.offline == OfflinePolicy(2000, 4000, 50000)
    ledger.mark_config_published("bar-1", 2)
    assert [(c.kiosk_id, c.version) for c in ledger.unpublished_configs()] == [("bar-2", 1)]
    latest = ledger.latest_config("bar-1")
    assert latest is not None and latest.version == 2 and latest.published
    assert ledger.latest_config("ghost") is None

    assert ledger.denylist_stale()
    assert ledger.issue_denylist() == 1
    assert not ledger.denylist_stale()
    issued = ledger.unpublished_denylist()
    assert issued is not None and issued.version == 1 and issued.card_uids == ()
    ledger.mark_denylist_published(1)
    assert ledger.unpublished_denylist() is None
