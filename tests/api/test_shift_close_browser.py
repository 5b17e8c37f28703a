"""The dashboard's cash drawers (issue 17 section 4) in headless Chromium: the open shift of each
checkpoint with the cash expected so far, a shift closed from the form (the amount typed in the
currency's units, sent as integer cents) showing expected, counted and variance, and the errors
(an unknown checkpoint, a bad amount) on the page. Saves var/screenshots/dashboard-shift-close.png
and dashboard-shift-error.png."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from cloud.ledger import Ledger
from cloud.shifts import ShiftStore
from protocol.models import BarItem
from tests.api.conftest import ADMIN_TOKEN
from tests.api.live import serve
from tests.browser import headless_chromium, save_screenshot
from tests.ledger.helpers import PUBLIC_KEY, bar_order, recharge, void
from tests.waiting import wait_until

WAIT_S = 15


def open_shift_text(driver: WebDriver, checkpoint_id: str) -> str:
    rows = driver.find_elements(
        By.CSS_SELECTOR, f'#open-shifts tbody tr[data-checkpoint-id="{checkpoint_id}"]'
    )
    return rows[0].text if rows else ""


def submit_close(driver: WebDriver, checkpoint_id: str, counted: str) -> None:
    for element_id, value in (("shift-checkpoint", checkpoint_id), ("shift-counted", counted)):
        field = driver.find_element(By.ID, element_id)
        field.clear()
        field.send_keys(value)
    driver.find_element(By.ID, "shift-close").click()


def message(driver: WebDriver) -> str:
    return driver.find_element(By.ID, "shift-message").text


@pytest.mark.slow
def test_a_shift_closed_from_the_dashboard(app: FastAPI, ledger: Ledger) -> None:
    for kiosk_id, role in (("checkpoint-1", "checkpoint"), ("bar-1", "bar")):
        ledger.add_kiosk(kiosk_id, PUBLIC_KEY, role)
    for card, cents, method, staff in (
        ("04AA0001", 2_000, "cash", "anna"),
        ("04AA0002", 3_000, "cash", "ben"),
        ("04AA0003", 5_000, "card", "anna"),
    ):
        assert ledger.apply(recharge(card, cents, method=method, staff_id=staff)).approved
    order = bar_order("04AA0001", BarItem("Beer", 2, 500, sku="beer"), kiosk_id="bar-1")
    assert ledger.apply(order).approved
    assert ledger.apply(void(order)).approved  # back on the card: no cash moves
    store = ShiftStore(ledger.engine)
    with serve(app) as base_url, headless_chromium(width=1400, height=1400) as driver:
        driver.get(f"{base_url}/dashboard")
        wait_until(
            lambda: driver.find_element(By.ID, "token").is_displayed(),
            timeout_s=WAIT_S,
            what="the token prompt",
        )
        driver.find_element(By.ID, "token").send_keys(ADMIN_TOKEN)
        driver.find_element(By.CSS_SELECTOR, "#login-form button").click()
        wait_until(
            lambda: "€50.00" in open_shift_text(driver, "checkpoint-1"),
            timeout_s=WAIT_S,
            what="the open shift of checkpoint-1 with 50.00 expected",
        )
        row = open_shift_text(driver, "checkpoint-1")
        assert "2 top-ups, €50.00" in row and "1 top-up, €50.00" in row, row
        driver.execute_script("document.getElementById('shifts').scrollIntoView()")

        submit_close(driver, "gate-404", "49.90")
        wait_until(
            lambda: "unknown checkpoint gate-404" in message(driver),
            timeout_s=WAIT_S,
            what="the unknown checkpoint's refusal",
        )
        submit_close(driver, "checkpoint-1", "49.9x")
        wait_until(
            lambda: "two decimals at most" in message(driver),
            timeout_s=WAIT_S,
            what="the bad amount's refusal",
        )
        assert not driver.find_element(By.ID, "shift-result").is_displayed()
        save_screenshot(driver, "dashboard-shift-error")
        assert store.closes() == []  # nothing was booked

        submit_close(driver, "checkpoint-1", "49,9")
        wait_until(
            lambda: "closed" in message(driver),
            timeout_s=WAIT_S,
            what="the close",
        )
        assert message(driver) == "shift 1 of checkpoint-1 closed; shift 2 started"
        result = driver.find_element(By.ID, "shift-result")
        assert result.get_attribute("data-variance-cents") == "-10"
        assert driver.find_element(By.ID, "shift-result-expected").text == "€50.00"
        assert driver.find_element(By.ID, "shift-result-counted").text == "€49.90"
        assert driver.find_element(By.ID, "shift-result-variance").text == "-€0.10 (short)"
        wait_until(
            lambda: open_shift_text(driver, "checkpoint-1").startswith("checkpoint-1 2"),
            timeout_s=WAIT_S,
            what="shift 2 open",
        )
        assert "€0.00" in open_shift_text(driver, "checkpoint-1")
        path = save_screenshot(driver, "dashboard-shift-close")
        assert path.stat().st_size > 10_000
    closes = store.closes()
    assert [(c.counted_cents, c.expected_cents, c.variance_cents) for c in closes] == [
        (4_990, 5_000, -10)
    ]
    assert ledger.check() == []
