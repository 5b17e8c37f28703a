"""The live dashboard in headless Chromium (Debian's chromium + chromium-driver), with data:
sales from several bars, top-ups, kiosks online and offline, declines. Saves
var/screenshots/dashboard.png (and topup.png) for a human to look at."""

from __future__ import annotations

import json
import time
from typing import Literal

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from selenium.webdriver.common.by import By
from sqlalchemy import Engine, text

from cloud.ledger import Ledger
from cloud.stripe_fake import checkout_session_completed_event
from protocol.keys import generate_private_key, public_key_b64
from protocol.models import KioskStatus
from tests.api.conftest import ADMIN_TOKEN, PostEvent, pos_headers
from tests.api.live import serve
from tests.api.stripe_helpers import our_paid_session
from tests.browser import headless_chromium, save_screenshot
from tests.waiting import wait_until

CARDS = ["04A1B2C3", "04B1B2C3", "04C1B2C3", "04D1B2C3D4E5F6"]


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
