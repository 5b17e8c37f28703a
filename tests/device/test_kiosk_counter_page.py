"""(1.1) The touchscreen page at the counter, in headless Chromium against a real kiosk process
and broker: "Cancel" on a recent order (void) at a bar, "Replace a wristband" at a checkpoint."""

from __future__ import annotations

from collections.abc import Callable

from selenium.webdriver.common.by import By

from cloud.sandbox import MosquittoBroker
from tests.browser import headless_chromium, save_screenshot
from tests.device.conftest import CARD, CARD_BALANCE_CENTS
from tests.device.kiosk_process import KioskProcess
from tests.device.responder import FakeLedger, MqttResponder
from tests.device.test_kiosk_page import text, wait_for_screen
from tests.waiting import wait_until

BEER = [{"sku": "beer", "quantity": 1}]
BEER_CENTS = 550 + 200  # a beer and its cup deposit (default menu)
NEW_BAND = "04B0B1B2B3B4B5"


def test_bar_page_cancels_a_recent_order(
    kiosk_broker: MosquittoBroker,
    responder: MqttResponder,
    ledger: FakeLedger,
    make_kiosk: Callable[..., KioskProcess],
) -> None:
    kiosk = make_kiosk(kiosk_broker).start()
    kiosk.wait_for(lambda s: s["online"], "the kiosk to connect")
    kiosk.sell(BEER, CARD)
    sold = kiosk.wait_for(lambda s: s["screen"] == "approved", "the sale to be approved")
    order_id = sold["outcome"]["request_id"]
    assert kiosk.post("/api/dismiss", {})[0] == 200
    assert ledger.balances[CARD] == CARD_BALANCE_CENTS - BEER_CENTS
    with headless_chromium() as driver:
        driver.get(f"http://127.0.0.1:{kiosk.http_port}/")
        cancel_css = f"button[data-void-id='{order_id}']"
        wait_until(
            lambda: driver.find_elements(By.CSS_SELECTOR, cancel_css),
            timeout_s=15,
            what="the recent order's Cancel button",
        )
        [line] = driver.find_elements(By.CSS_SELECTOR, "#recent-lines li")
        assert "****E5F6" in line.text and "7.50 EUR" in line.text
        assert CARD not in driver.find_element(By.TAG_NAME, "body").text
        assert text(driver, "recent-hint") == "Cancel within 15 minutes"
        driver.find_element(By.CSS_SELECTOR, cancel_css).click()  # no staff id yet
        assert text(driver, "void-error") == "Enter your staff id to cancel an order"
        save_screenshot(driver, "kiosk-recent-orders")
        driver.find_element(By.ID, "void-staff").send_keys("anna")
        driver.find_element(By.CSS_SELECTOR, cancel_css).click()
        wait_for_screen(driver, "approved")
        assert text(driver, "outcome-title") == "Order cancelled"
        assert text(driver, "outcome-message") == "order cancelled, 7.50 back"
        assert text(driver, "new-balance") == f"{CARD_BALANCE_CENTS // 100}.00 EUR"
        save_screenshot(driver, "kiosk-order-cancelled")
        assert ledger.balances[CARD] == CARD_BALANCE_CENTS
        driver.find_element(By.ID, "dismiss").click()
        wait_for_screen(driver, "idle")
        wait_until(
            lambda: "cancelled" in driver.find_element(By.ID, "recent-lines").text,
            timeout_s=15,
            what="the order marked cancelled",
        )
        assert not driver.find_elements(By.CSS_SELECTOR, cancel_css)


def test_checkpoint_page_replaces_a_wristband(
    kiosk_broker: MosquittoBroker,
    responder: MqttResponder,
    ledger: FakeLedger,
    make_kiosk: Callable[..., KioskProcess],
) -> None:
    kiosk = make_kiosk(kiosk_broker, "checkpoint-1", mode="checkpoint").start()
    kiosk.wait_for(lambda s: s["online"], "the kiosk to connect")
    with headless_chromium() as driver:
        driver.get(f"http://127.0.0.1:{kiosk.http_port}/")
        wait_until(
            lambda: driver.find_element(By.ID, "panel-checkpoint").is_displayed(),
            timeout_s=15,
            what="the checkpoint's panel",
        )
        driver.find_element(By.ID, "staff-id").send_keys("info-1")
        driver.find_element(By.ID, "old-uid").send_keys(CARD.lower())
        driver.find_element(By.ID, "swap").click()
        wait_for_screen(driver, "order_pending")
        assert text(driver, "tap-title") == "replace ****E5F6: tap the NEW band"
        assert text(driver, "tap-amount") == ""
        save_screenshot(driver, "kiosk-replace-wristband")
        uid = driver.find_element(By.ID, "sim-uid")
        uid.clear()
        uid.send_keys(NEW_BAND)
        driver.find_element(By.ID, "sim-tap").click()
        wait_for_screen(driver, "approved")
        assert text(driver, "outcome-title") == "Wristband replaced"
        assert text(driver, "outcome-message") == (
            f"wristband replaced: the new band holds {CARD_BALANCE_CENTS // 100}.00"
        )
        assert text(driver, "new-balance") == f"{CARD_BALANCE_CENTS // 100}.00 EUR"
        save_screenshot(driver, "kiosk-wristband-replaced")
    assert ledger.balances[NEW_BAND] == CARD_BALANCE_CENTS
    [swap] = [request for request in ledger.requests.values() if request.type == "card_swap"]
    assert (swap.card_uid, swap.old_card_uid, swap.staff_id) == (NEW_BAND, CARD, "info-1")  # type: ignore[union-attr]
