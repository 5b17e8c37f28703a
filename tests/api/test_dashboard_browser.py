"""The live dashboard in headless Chromium (Debian's chromium + chromium-driver), with data:
sales from several bars, top-ups, kiosks online and offline, declines; and (issue 13) the
deployment's currency, sales per bar and per product, the uPlot sales-per-15-minutes chart, a card
looked up, blocked and unblocked, a card's debt. Saves var/screenshots/dashboard.png,
dashboard-reports.png, dashboard-card.png, dashboard-card-blocked.png, dashboard-card-debt.png
(and topup.png) for a human to look at."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from typing import Literal

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from selenium import webdriver
from selenium.webdriver.common.by import By
from sqlalchemy import Engine, text

from cloud.api import create_app
from cloud.ledger import Ledger
from cloud.stripe_fake import FakeStripe, checkout_session_completed_event
from protocol.keys import generate_private_key, public_key_b64
from protocol.models import KioskStatus, OfflinePolicy
from tests.api.conftest import (
    ADMIN_TOKEN,
    LOOPBACK_PEER,
    POS_DEVICE_ID,
    TEST_LIMITS,
    PostEvent,
    make_settings,
    pos_headers,
)
from tests.api.live import serve
from tests.api.stripe_helpers import our_paid_session
from tests.api.test_reports import CARD_A, seed_sales
from tests.browser import headless_chromium, save_screenshot
from tests.ledger.helpers import bar_order, recharge
from tests.waiting import wait_until

CARDS = ["04A1B2C3", "04B1B2C3", "04C1B2C3", "04D1B2C3D4E5F6"]
DEBTOR = "04CC0003"  # owes what an offline sale did not find on it


def seed_festival(client: TestClient, ledger: Ledger, post_event: PostEvent) -> None:
    key = public_key_b64(generate_private_key())
    for kiosk_id, role in (
        ("bar-1", "bar"),
        ("bar-2", "bar"),
        ("checkpoint-1", "checkpoint"),
        ("gate-b", "all"),
    ):
        ledger.add_kiosk(kiosk_id, key, role)
    now_ms = int(time.time() * 1000)
    states: tuple[tuple[str, Literal["online", "offline"]], ...] = (
        ("bar-1", "online"),
        ("bar-2", "offline"),
    )
    for kiosk_id, state in states:
        status = KioskStatus(kiosk_id=kiosk_id, state=state, at_ms=now_ms, firmware="1.0.0")
        ledger.record_kiosk_status(status, received_at_ms=now_ms)
    ledger.disable_kiosk("gate-b")
    for index, card in enumerate(CARDS):
        body = {
            "card_id": card,
            "amount": 250 + 20 * index,
            "payment_method": "cash" if index % 2 else "card",
            "staff_id": "anna",
            "client_request_id": f"topup-{card}",
        }
        response = client.post(
            "/functions/v1/process-checkpoint-recharge", json=body, headers=pos_headers()
        )
        assert response.status_code == 200
    # A session this API created (issue 11: only those are credited).
    session = our_paid_session(ledger, CARDS[0], 4000, payment_intent="pi_3Dashboard")
    assert post_event(checkout_session_completed_event(session)).status_code == 200
    for number in range(60):
        card = CARDS[number % len(CARDS)]
        price = [4.5, 6.0, 3.5, 12.0][number % 4]
        body = {
            "card_id": card,
            "items": [{"name": "Beer", "quantity": 1 + number % 3, "unit_price": price}],
            "total_amount": price * (1 + number % 3),
            "client_request_id": f"order-{number}",
        }
        client.post("/functions/v1/process-bar-order", json=body, headers=pos_headers())
    # Declines: an unknown card and an order that is too expensive.
    for request_id, card, price in (("decline-1", "04EEEEEE", 5.0), ("decline-2", CARDS[1], 900.0)):
        body = {
            "card_id": card,
            "items": [{"name": "Champagne", "quantity": 1, "unit_price": price}],
            "total_amount": price,
            "client_request_id": request_id,
        }
        assert client.post(
            "/functions/v1/process-bar-order", json=body, headers=pos_headers()
        ).status_code in (402, 404)


@pytest.mark.slow
def test_dashboard_renders_live_data_in_chromium(
    app: FastAPI, client: TestClient, ledger: Ledger, post_event: PostEvent, owner_engine: Engine
) -> None:
    seed_festival(client, ledger, post_event)
    # The orders were all taken within a second; spread them over the last 40 minutes, as an
    # evening at the bar would (bar_orders.created_at is only read by the dashboard's chart).
    with owner_engine.begin() as connection:
        connection.execute(
            text(
                "UPDATE bar_orders SET created_at = created_at - make_interval("
                "mins => abs(hashtext(client_request_id)) % 40)"
            )
        )
    with serve(app) as base_url, headless_chromium(width=1400, height=1100) as driver:
        driver.get(f"{base_url}/dashboard")
        wait_until(
            lambda: driver.find_element(By.ID, "token").is_displayed(),
            timeout_s=15,
            what="the token prompt",
        )
        driver.find_element(By.ID, "token").send_keys("wrong-token")
        driver.find_element(By.CSS_SELECTOR, "#login-form button").click()
        wait_until(
            lambda: "refused" in driver.find_element(By.ID, "login-error").text,
            timeout_s=15,
            what="the refusal of a wrong token",
        )
        driver.find_element(By.ID, "token").send_keys(ADMIN_TOKEN)
        driver.find_element(By.CSS_SELECTOR, "#login-form button").click()
        wait_until(
            lambda: driver.find_element(By.TAG_NAME, "body").get_attribute("data-loaded") == "true",
            timeout_s=15,
            what="the dashboard's first data",
        )
        wait_until(
            lambda: driver.find_element(By.ID, "ledger-state").text == "OK",
            timeout_s=15,
            what="the ledger check",
        )
        stored = driver.execute_script(
            "return window.sessionStorage.getItem('festival.adminToken')"
        )
        assert stored == ADMIN_TOKEN

        assert driver.find_element(By.ID, "sales-amount").text.startswith("€")
        assert driver.find_element(By.ID, "sales-orders").text != "0 orders"
        assert driver.find_element(By.ID, "kiosks-online").text == "1 online"
        # (1.1) the offline block: no offline sale and no debt in this festival yet
        assert driver.find_element(By.ID, "offline-debt-cards").text == "0 cards owing"
        assert driver.find_element(By.ID, "offline-debts").text.startswith("€")
        assert driver.find_element(By.ID, "offline-bound").text == "ok"
        # (1.1) the payouts block: none requested during the festival
        assert driver.find_element(By.ID, "payouts-pending").text == "€0.00"
        assert (
            driver.find_element(By.ID, "payouts-pending-sub").text
            == "0 parts to pay, of 0 requests"
        )
        assert "No failed payout" in driver.find_element(By.ID, "payout-failures-table").text
        bars = driver.find_elements(By.CSS_SELECTOR, "#chart-svg rect.bar")
        assert len(bars) == 60
        assert any(float(bar.get_attribute("height") or 0) > 0 for bar in bars)
        kiosk_rows = driver.find_elements(By.CSS_SELECTOR, "#kiosks tbody tr")
        assert len(kiosk_rows) == 4
        kiosk_text = driver.find_element(By.ID, "kiosks").text
        assert "online" in kiosk_text and "offline" in kiosk_text and "disabled" in kiosk_text
        declines = driver.find_element(By.ID, "declines").text
        assert "CARD_NOT_FOUND" in declines and "INSUFFICIENT_FUNDS" in declines
        topups = driver.find_element(By.ID, "topups").text
        assert "stripe" in topups and "cash" in topups
        assert "%" in driver.find_element(By.ID, "error-rate").text
        path = save_screenshot(driver, "dashboard")
        assert path.stat().st_size > 10_000

        # It refreshes by itself: a new sale shows up without reloading the page.
        before = driver.find_element(By.ID, "sales-orders").text
        body = {
            "card_id": CARDS[2],
            "items": [{"name": "Water", "quantity": 1, "unit_price": 2.0}],
            "total_amount": 2.0,
            "client_request_id": "order-live",
        }
        assert (
            client.post(
                "/functions/v1/process-bar-order", json=body, headers=pos_headers()
            ).status_code
            == 200
        )
        wait_until(
            lambda: driver.find_element(By.ID, "sales-orders").text != before,
            timeout_s=15,
            what="the dashboard's own refresh",
        )

        # The top-up page renders too (no scripts, own stylesheet).
        driver.get(f"{base_url}/topup")
        assert driver.find_element(By.NAME, "card_uid").is_displayed()
        save_screenshot(driver, "topup")
        assert (
            json.loads(driver.execute_script("return JSON.stringify(document.title)"))
            == "Top up your wristband"
        )


# --- issue 13: the deployment's currency, sales per bar and product, the uPlot chart, cards ----

BAR_COLOUR = (0x4F, 0x8C, 0xFF)  # festival.css --bar: what uPlot fills the bars with
COUNT_BAR_PIXELS = """
const canvas = document.querySelector('#quarter-chart-plot canvas');
if (!canvas) { return null; }
const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
let count = 0;
for (let index = 0; index < data.length; index += 4) {
  if (Math.abs(data[index] - arguments[0]) < 12 && Math.abs(data[index + 1] - arguments[1]) < 12
      && Math.abs(data[index + 2] - arguments[2]) < 12 && data[index + 3] > 200) { count += 1; }
}
return [canvas.width, canvas.height, count];
"""


def table_rows(driver: webdriver.Chrome, table_id: str) -> list[list[str]]:
    return [
        [cell.text for cell in row.find_elements(By.TAG_NAME, "td")]
        for row in driver.find_elements(By.CSS_SELECTOR, f"#{table_id} tbody tr")
    ]


@pytest.fixture
def franc_app(api_database_url: str, fake_stripe: FakeStripe, api_ledger: Ledger) -> FastAPI:
    """A deployment in Swiss francs: nothing on the page may say euro."""
    settings = make_settings(api_database_url, fake_stripe.base_url, festival_currency="CHF")
    return create_app(settings, ledger=api_ledger, limits=TEST_LIMITS)


@pytest.mark.slow
def test_dashboard_reports_chart_and_card_lookup_in_chromium(
    franc_app: FastAPI, ledger: Ledger, owner_engine: Engine
) -> None:
    # Five hours ago: inside the page's last 24 hours, outside its last 60 minutes.
    evening = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=5)
    with TestClient(franc_app, client=LOOPBACK_PEER) as client:
        seed_sales(client, ledger, owner_engine, evening)
    with serve(franc_app) as base_url, headless_chromium(width=1400, height=2600) as driver:
        driver.get(f"{base_url}/dashboard")
        wait_until(
            lambda: driver.find_element(By.ID, "token").is_displayed(),
            timeout_s=15,
            what="the token prompt",
        )
        driver.find_element(By.ID, "token").send_keys(ADMIN_TOKEN)
        driver.find_element(By.CSS_SELECTOR, "#login-form button").click()
        wait_until(
            lambda: (
                driver.find_element(By.ID, "sales-tables").get_attribute("data-loaded") == "true"
            ),
            timeout_s=20,
            what="the sales reports",
        )

        # The deployment's currency everywhere, no euro anywhere.
        currency_labels = driver.find_elements(By.CSS_SELECTOR, ".currency")
        assert len(currency_labels) >= 2 and {label.text for label in currency_labels} == {"CHF"}
        assert driver.find_element(By.ID, "sales-amount").text == "CHF 0.00"
        assert "€" not in driver.find_element(By.TAG_NAME, "body").text

        # Sales per bar and per product: sales lines only (cups are deposits, not sales).
        assert table_rows(driver, "sales-per-bar") == [
            ["bar-1", "2", "CHF 12.50"],
            ["bar-2", "1", "CHF 15.00"],
            [POS_DEVICE_ID, "1", "CHF 6.00"],
        ]
        assert driver.find_element(By.ID, "sales-per-bar-total").text == "CHF 33.50"
        assert driver.find_element(By.ID, "sales-per-bar-orders").text == "4"
        assert table_rows(driver, "sales-per-product") == [
            ["beer", "Beer", "5", "CHF 25.00"],
            ["water", "Water", "1", "CHF 2.50"],
            ["—", "Nachos", "1", "CHF 6.00"],
        ]
        assert driver.find_element(By.ID, "sales-per-product-total").text == "CHF 33.50"

        # The uPlot chart: 96 quarters of the last 24 hours, the evening's sales, bars drawn.
        plot = driver.find_element(By.ID, "quarter-chart-plot")
        assert plot.get_attribute("data-points") == "96"
        assert plot.get_attribute("data-amount-cents") == "3350"
        assert driver.find_elements(By.CSS_SELECTOR, "#quarter-chart-plot .uplot canvas")
        width, height, bar_pixels = driver.execute_script(COUNT_BAR_PIXELS, *BAR_COLOUR)
        assert width > 300 and height > 100
        assert bar_pixels > 50, "no bar drawn on the chart's canvas"
        save_screenshot(driver, "dashboard-reports")

        # A card looked up (lower case accepted), then blocked and unblocked through the page.
        uid_input = driver.find_element(By.ID, "card-uid")
        uid_input.send_keys("04ffffff")
        driver.find_element(By.CSS_SELECTOR, "#card-form button").click()
        wait_until(
            lambda: driver.find_element(By.ID, "card-message").text == "unknown card",
            timeout_s=15,
            what="an unknown card said so",
        )
        uid_input.clear()
        uid_input.send_keys(CARD_A.lower())
        driver.find_element(By.CSS_SELECTOR, "#card-form button").click()
        result = driver.find_element(By.ID, "card-result")
        wait_until(
            lambda: result.get_attribute("data-status") == "active",
            timeout_s=15,
            what="the card lookup",
        )
        assert driver.find_element(By.ID, "card-result-uid").text == CARD_A
        assert driver.find_element(By.ID, "card-balance").text == "CHF 33.50"
        history = table_rows(driver, "card-history")
        assert len(history) == 3  # the top-up and two orders
        assert {row[1] for row in history} == {"checkpoint_recharge", "bar_order"}
        assert "CHF 50.00" in {row[2] for row in history}
        assert not driver.find_element(By.ID, "card-debt-row").is_displayed()
        assert not driver.find_element(By.ID, "card-unblock").is_enabled()
        save_screenshot(driver, "dashboard-card")

        driver.find_element(By.ID, "card-block").click()
        wait_until(
            lambda: result.get_attribute("data-status") == "blocked",
            timeout_s=15,
            what="the card blocked through the page",
        )
        card = ledger.card(CARD_A)
        assert card is not None and card.status == "blocked"
        assert driver.find_element(By.ID, "card-message").text == f"card {CARD_A} blocked"
        save_screenshot(driver, "dashboard-card-blocked")

        driver.find_element(By.ID, "card-unblock").click()
        wait_until(
            lambda: result.get_attribute("data-status") == "active",
            timeout_s=15,
            what="the card unblocked through the page",
        )
        card = ledger.card(CARD_A)
        assert card is not None and card.status == "active"
        assert driver.find_element(By.ID, "card-balance").text == "CHF 33.50"

        # (1.1) A card an offline sale left owing: the lookup shows its debt (and no balance).
        policy = OfflinePolicy(sale_max_cents=2_000, card_max_cents=5_000, kiosk_max_cents=10_000)
        version = ledger.issue_kiosk_config("bar-1", offline=policy)
        assert version is not None
        ledger.mark_config_published("bar-1", version)
        assert ledger.apply(recharge(DEBTOR, 300)).approved
        sold = ledger.apply(
            bar_order(DEBTOR, ("Beer", 2, 500), config_version=version, offline=True)
        )
        assert sold.approved and sold.debt_cents == 700, sold
        uid_input.clear()
        uid_input.send_keys(DEBTOR)
        driver.find_element(By.CSS_SELECTOR, "#card-form button").click()
        wait_until(
            lambda: driver.find_element(By.ID, "card-result-uid").text == DEBTOR,
            timeout_s=15,
            what="the indebted card looked up",
        )
        assert driver.find_element(By.ID, "card-debt-row").is_displayed()
        assert driver.find_element(By.ID, "card-debt").text == "CHF 7.00"
        assert driver.find_element(By.ID, "card-balance").text == "CHF 0.00"
        save_screenshot(driver, "dashboard-card-debt")
