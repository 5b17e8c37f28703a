"""GET /api/monitoring/offline, its metrics and debt_cents on cards (issue 14 §2): kiosks offline
now and the worst-case exposure (their kiosk_max_cents summed), the offline sales applied today
(count, amount, shortfall), the open debts, and the kiosks past the 24-hour bound."""

from __future__ import annotations

import time

from fastapi.testclient import TestClient

from cloud.ledger import Ledger
from protocol.models import KioskStatus, OfflinePolicy
from tests.api.conftest import LOOPBACK_PEER, admin_headers
from tests.ledger.helpers import PUBLIC_KEY, bar_order, recharge

CARD = "04A1B2C3D4E5F6"
OTHER = "04A1B2C3D4E5F7"
POLICY = OfflinePolicy(sale_max_cents=2_000, card_max_cents=4_000, kiosk_max_cents=1_500)


def _kiosk(ledger: Ledger, kiosk_id: str, role: str, policy: OfflinePolicy | None) -> int | None:
    ledger.add_kiosk(kiosk_id, PUBLIC_KEY, role)
    if policy is None:
        return None
    version = ledger.issue_kiosk_config(kiosk_id, offline=policy)
    assert version is not None
    ledger.mark_config_published(kiosk_id, version)
    return version


def _state(ledger: Ledger, kiosk_id: str, state: str) -> None:
    now_ms = int(time.time() * 1000)
    status = KioskStatus(kiosk_id, state, now_ms, "test")  # type: ignore[arg-type]
    ledger.record_kiosk_status(status, received_at_ms=now_ms)


def test_the_offline_overview_counts_exposure_sales_debts_and_the_bound(
    client: TestClient, ledger: Ledger
) -> None:
    bar1 = _kiosk(ledger, "bar-1", "bar", POLICY)
    _kiosk(ledger, "bar-2", "bar", POLICY)
    _kiosk(ledger, "bar-3", "bar", None)
    _kiosk(ledger, "checkpoint-1", "checkpoint", None)
    empty = client.get("/api/monitoring/offline", headers=admin_headers())
    assert empty.status_code == 200
    assert empty.json() == {
        "kiosks_offline": {"count": 0, "kiosks": []},
        "exposure_cents": 0,
        "synced_today": {"count": 0, "amount_cents": 0, "shortfall_cents": 0},
        "open_debts": {"cards": 0, "total_cents": 0},
        "over_bound": [],
    }
    _state(ledger, "bar-1", "offline")
    _state(ledger, "bar-2", "offline")
    _state(ledger, "bar-3", "offline")  # no offline policy: exposure 0
    _state(ledger, "checkpoint-1", "online")
    ledger.apply(recharge(CARD, 500))
    # 1800 + 1800 of sales, 1300 + 1800 of shortfall: 3100 > 2 x 1500, the bound is passed.
    for card in (CARD, OTHER):
        outcome = ledger.apply(bar_order(card, ("Beer", 3, 600), config_version=bar1, offline=True))
        assert outcome.status.value == "approved"
    body = client.get("/api/monitoring/offline", headers=admin_headers()).json()
    assert [row["kiosk_id"] for row in body["kiosks_offline"]["kiosks"]] == [
        "bar-1",
        "bar-2",
        "bar-3",
    ]
    assert [row["kiosk_max_cents"] for row in body["kiosks_offline"]["kiosks"]] == [
        1_500,
        1_500,
        None,
    ]
    assert body["exposure_cents"] == 3_000
    assert body["synced_today"] == {"count": 2, "amount_cents": 3_600, "shortfall_cents": 3_100}
    assert body["open_debts"] == {"cards": 2, "total_cents": 3_100}
    assert body["over_bound"] == [
        {"kiosk_id": "bar-1", "created_cents": 3_100, "kiosk_max_cents": 1_500}
    ]
    card = client.get(f"/api/cards/{CARD}", headers=admin_headers()).json()
    assert (card["balance_cents"], card["debt_cents"]) == (0, 1_300)
    dashboard = client.get("/api/monitoring/dashboard", headers=admin_headers()).json()
    assert dashboard["offline"]["open_debts"] == body["open_debts"]

    metrics = TestClient(client.app, client=LOOPBACK_PEER).get("/metrics").text
    for line in (
        "festival_ledger_offline_kiosks 3.0",
        "festival_ledger_offline_exposure_cents 3000.0",
        "festival_ledger_offline_sales_today 2.0",
        "festival_ledger_offline_sales_today_cents 3600.0",
        "festival_ledger_offline_shortfall_today_cents 3100.0",
        "festival_ledger_debt_cards 2.0",
        "festival_ledger_debt_cents 3100.0",
        "festival_ledger_offline_kiosks_over_bound 1.0",
    ):
        assert line in metrics, line

    # A top-up pays the debt: the card's debt is gone from the overview.
    ledger.apply(recharge(CARD, 2_000))
    after = client.get("/api/monitoring/offline", headers=admin_headers()).json()
    assert after["open_debts"] == {"cards": 1, "total_cents": 1_800}
    card = client.get(f"/api/cards/{CARD}", headers=admin_headers()).json()
    assert (card["balance_cents"], card["debt_cents"]) == (700, 0)


def test_the_offline_overview_needs_the_admin_token(client: TestClient) -> None:
    assert client.get("/api/monitoring/offline").status_code == 401
