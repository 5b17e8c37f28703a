"""GET /api/monitoring/payouts and the dashboard data's "payouts" (issue 16 §2, the operator's
view) against real PostgreSQL: payout parts by state with count and total, the Stripe refund
queue, the bank transfers to export, what the festival keeps, and the failed parts with their
reason, after real payout requests (sp_payout_request) and a failed bank transfer; the same on
the dashboard in headless Chromium (var/screenshots/dashboard-payouts.png)."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from selenium.webdriver.common.by import By
from sqlalchemy import Engine

from cloud.ledger import Ledger
from cloud.payouts import PayoutPart, PayoutStore
from cloud.stripe_fake import checkout_session_completed_event
from tests.api.conftest import ADMIN_TOKEN, PostEvent, admin_headers
from tests.api.live import serve
from tests.api.stripe_helpers import our_paid_session
from tests.browser import headless_chromium, save_screenshot
from tests.ledger.helpers import recharge
from tests.waiting import wait_until

IBAN = "DE89370400440532013000"
CASH_CARD = "04A1B2C3D4E5F6"
STRIPE_CARD = "04B1B2C3"
FAILING_CARD = "04C1C2C3"


def _seed_payouts(post_event: PostEvent, ledger: Ledger, engine: Engine) -> PayoutPart:
    """Three payout requests through sp_payout_request; the third's bank part fails."""
    store = PayoutStore(engine)
    assert ledger.apply(recharge(CASH_CARD, 2_000)).approved
    store.request(
        CASH_CARD,
        iban=IBAN,
        account_holder="Ada",
        donate_cents=300,
        fee_cents=100,
        request_key="cash",
    )  # donation 3.00, fee 1.00, bank 16.00
    session = our_paid_session(ledger, STRIPE_CARD, 2_500)
    assert post_event(checkout_session_completed_event(session)).status_code == 200
    store.request(
        STRIPE_CARD,
        iban=None,
        account_holder=None,
        donate_cents=0,
        fee_cents=100,
        request_key="stripe",
    )  # fee 1.00, Stripe 24.00
    assert ledger.apply(recharge(FAILING_CARD, 900)).approved
    store.request(
        FAILING_CARD,
        iban=IBAN,
        account_holder="Bob",
        donate_cents=0,
        fee_cents=0,
        request_key="fails",
    )  # bank 9.00, then failed
    [failing] = store.list(card_uid=FAILING_CARD)
    assert store.fail(failing.payout_id, "account closed") is not None

    return failing


def test_the_payouts_by_state_the_refund_queue_and_the_failures(
    client: TestClient, post_event: PostEvent, ledger: Ledger, engine: Engine
) -> None:
    empty = client.get("/api/monitoring/payouts", headers=admin_headers())
    assert empty.status_code == 200
    zero = {"count": 0, "amount_cents": 0}
    assert empty.json() == {
        "requests": 0,
        "by_state": {"pending": zero, "exported": zero, "paid": zero, "failed": zero},
        "by_kind_and_state": [],
        "refund_queue": zero,
        "bank_transfers_to_export": zero,
        "kept": {"donation_cents": 0, "fee_cents": 0},
        "failures": [],
    }
    assert client.get("/api/monitoring/payouts").status_code == 401

    failing = _seed_payouts(post_event, ledger, engine)

    body = client.get("/api/monitoring/payouts", headers=admin_headers()).json()
    assert body["requests"] == 3
    assert body["by_state"] == {
        "pending": {"count": 2, "amount_cents": 1_600 + 2_400},
        "exported": zero,
        "paid": {"count": 3, "amount_cents": 300 + 100 + 100},
        "failed": {"count": 1, "amount_cents": 900},
    }
    assert body["by_kind_and_state"] == [
        {"kind": "bank", "state": "failed", "count": 1, "amount_cents": 900},
        {"kind": "bank", "state": "pending", "count": 1, "amount_cents": 1_600},
        {"kind": "donation", "state": "paid", "count": 1, "amount_cents": 300},
        {"kind": "fee", "state": "paid", "count": 2, "amount_cents": 200},
        {"kind": "stripe", "state": "pending", "count": 1, "amount_cents": 2_400},
    ]
    assert body["refund_queue"] == {"count": 1, "amount_cents": 2_400}
    assert body["bank_transfers_to_export"] == {"count": 1, "amount_cents": 1_600}
    assert body["kept"] == {"donation_cents": 300, "fee_cents": 200}
    [failure] = body["failures"]
    assert failure["payout_id"] == failing.payout_id and failure["card_uid"] == FAILING_CARD
    assert (failure["kind"], failure["amount_cents"], failure["reason"]) == (
        "bank",
        900,
        "account closed",
    )
    assert failure["failed_at"].endswith("Z")

    dashboard = client.get("/api/monitoring/dashboard", headers=admin_headers())
    assert dashboard.status_code == 200
    assert dashboard.json()["payouts"] == body


@pytest.mark.slow
def test_the_dashboard_shows_the_payouts(
    app: FastAPI, post_event: PostEvent, ledger: Ledger, engine: Engine
) -> None:
    _seed_payouts(post_event, ledger, engine)
    with serve(app) as base_url, headless_chromium(width=1400, height=1100) as driver:
        driver.get(f"{base_url}/dashboard")
        wait_until(
            lambda: driver.find_element(By.ID, "token").is_displayed(),
            timeout_s=15,
            what="the token prompt",
        )
        driver.find_element(By.ID, "token").send_keys(ADMIN_TOKEN)
        driver.find_element(By.CSS_SELECTOR, "#login-form button").click()
        wait_until(
            lambda: driver.find_element(By.ID, "payouts-pending").text == "€40.00",
            timeout_s=15,
            what="the payout tiles",
        )
        text_of = {
            element_id: driver.find_element(By.ID, element_id).text
            for element_id in (
                "payouts-pending-sub",
                "payouts-refunds",
                "payouts-refunds-sub",
                "payouts-exported",
                "payouts-paid",
                "payouts-paid-sub",
                "payouts-failed",
                "payouts-failed-sub",
            )
        }
        assert text_of == {
            "payouts-pending-sub": "2 parts to pay, of 3 requests",
            "payouts-refunds": "€24.00",
            "payouts-refunds-sub": "1 part to refund through Stripe",
            "payouts-exported": "€0.00",
            "payouts-paid": "€5.00",
            "payouts-paid-sub": "3 parts; kept: €3.00 donations, €2.00 fees",
            "payouts-failed": "€9.00",
            "payouts-failed-sub": "1 part (money back on the cards)",
        }
        tile = driver.find_element(By.ID, "payouts-failed").find_element(By.XPATH, "..")
        assert "alert" in (tile.get_attribute("class") or "")
        rows = driver.find_elements(By.CSS_SELECTOR, "#payout-failures-table tbody tr")
        assert len(rows) == 1
        assert FAILING_CARD in rows[0].text and "account closed" in rows[0].text
        assert "€9.00" in rows[0].text
        driver.find_element(By.ID, "payouts").location_once_scrolled_into_view  # noqa: B018
        save_screenshot(driver, "dashboard-payouts")
