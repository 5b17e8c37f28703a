"""The touchscreen page in headless Chromium against a real kiosk process and broker."""

from __future__ import annotations

from collections.abc import Callable

from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from cloud.sandbox import MosquittoBroker
from tests.browser import headless_chromium, save_screenshot
from tests.device.cloud_messages import config_message, kiosk_config_topic, publish_retained
from tests.device.conftest import CARD, CARD_BALANCE_CENTS
from tests.device.kiosk_process import KioskProcess
from tests.device.responder import FakeLedger, MqttResponder
from tests.waiting import wait_until

CONFIG_TOPIC = kiosk_config_topic("bar-1")


def screen(driver: WebDriver) -> str:
    return str(driver.find_element(By.ID, "screen").get_attribute("data-screen"))


def wait_for_screen(driver: WebDriver, name: str) -> None:
    wait_until(lambda: screen(driver) == name, timeout_s=15, what=f"the {name} screen")


def text(driver: WebDriver, element_id: str) -> str:
    return str(driver.find_element(By.ID, element_id).text)


def test_bar_page_order_tap_and_approved(
    kiosk_broker: MosquittoBroker,
    responder: MqttResponder,
    ledger: FakeLedger,
    make_kiosk: Callable[..., KioskProcess],
) -> None:
    kiosk = make_kiosk(kiosk_broker).start()
    kiosk.wait_for(lambda s: s["online"], "the kiosk to connect")
    with headless_chromium() as driver:
        driver.get(f"http://127.0.0.1:{kiosk.http_port}/")
        wait_until(
            lambda: driver.find_elements(By.CSS_SELECTOR, "button[data-sku='beer']"),
            timeout_s=15,
            what="the menu buttons",
        )
        assert text(driver, "link") == "online"
        beer = driver.find_element(By.CSS_SELECTOR, "button[data-sku='beer']")
        beer.click()
        beer.click()
        driver.find_element(By.CSS_SELECTOR, "button[data-sku='shot']").click()
        driver.find_element(By.CSS_SELECTOR, "button[data-return-sku='cup']").click()
        # 2 x 5.50 + 3.50 + 2 cup deposits x 2.00 - 1 cup return x 2.00
        expected_cents = 1100 + 350 + 400 - 200
        assert text(driver, "total") == "16.50 EUR"
        lines = driver.find_elements(By.CSS_SELECTOR, "#cart-lines li")
        assert [line.get_attribute("data-kind") for line in lines] == [
            "item",
            "item",
            "deposit",
            "return",
        ]
        save_screenshot(driver, "kiosk-bar-order")
        driver.find_element(By.ID, "charge").click()
        wait_for_screen(driver, "order_pending")
        assert text(driver, "tap-title") == "Tap your wristband"
        assert text(driver, "tap-amount") == "16.50 EUR"
        save_screenshot(driver, "kiosk-bar-tap")
        driver.find_element(By.ID, "sim-tap").click()
        wait_for_screen(driver, "approved")
        assert text(driver, "outcome-title") == "Approved"
        balance_cents = CARD_BALANCE_CENTS - expected_cents
        euros, cents = divmod(balance_cents, 100)
        assert text(driver, "new-balance") == f"{euros}.{cents:02d} EUR"
        assert ledger.balances[CARD] == balance_cents
        path = save_screenshot(driver, "kiosk-bar")
        assert path.stat().st_size > 10_000
        driver.find_element(By.ID, "dismiss").click()
        wait_for_screen(driver, "idle")
        assert driver.find_element(By.ID, "charge").get_attribute("disabled") is not None


def test_checkpoint_page_top_up_creates_the_card(
    kiosk_broker: MosquittoBroker,
    responder: MqttResponder,
    ledger: FakeLedger,
    make_kiosk: Callable[..., KioskProcess],
) -> None:
    kiosk = make_kiosk(kiosk_broker, "checkpoint-1", mode="checkpoint").start()
    kiosk.wait_for(lambda s: s["online"], "the kiosk to connect")
    new_card = "0A0B0C0D"
    with headless_chromium() as driver:
        driver.get(f"http://127.0.0.1:{kiosk.http_port}/")
        wait_until(
            lambda: driver.find_element(By.ID, "panel-checkpoint").is_displayed(),
            timeout_s=15,
            what="the top-up form",
        )
        driver.find_element(By.ID, "amount").send_keys("12,50")
        driver.find_element(By.ID, "method-card").click()
        driver.find_element(By.ID, "staff-id").send_keys("anna")
        driver.find_element(By.ID, "recharge").click()
        wait_for_screen(driver, "order_pending")
        assert text(driver, "tap-amount") == "12.50 EUR"
        uid = driver.find_element(By.ID, "sim-uid")
        uid.clear()
        uid.send_keys(new_card)
        driver.find_element(By.ID, "sim-tap").click()
        wait_for_screen(driver, "approved")
        assert text(driver, "new-balance") == "12.50 EUR"
        save_screenshot(driver, "kiosk-checkpoint")
    [request_id] = ledger.received_ids()
    recharge = ledger.requests[request_id]
    assert (recharge.card_uid, recharge.amount_cents, recharge.payment_method) == (  # type: ignore[union-attr]
        new_card,
        1250,
        "card",
    )


def test_bar_page_bounds_cup_returns(
    kiosk_broker: MosquittoBroker,
    responder: MqttResponder,
    ledger: FakeLedger,
    make_kiosk: Callable[..., KioskProcess],
) -> None:
    """Issue 11 item 1: the return button cannot go past FESTIVAL_RETURN_MAX_CENTS (default
    2000 cents = 10 cups of 2.00) and says why; what it allows is charged (credited) normally."""
    kiosk = make_kiosk(kiosk_broker).start()
    kiosk.wait_for(lambda s: s["online"], "the kiosk to connect")
    with headless_chromium() as driver:
        driver.get(f"http://127.0.0.1:{kiosk.http_port}/")
        wait_until(
            lambda: driver.find_elements(By.CSS_SELECTOR, "button[data-return-sku='cup']"),
            timeout_s=15,
            what="the return button",
        )
        assert text(driver, "returns-limit") == "At most 20.00 EUR per order"
        cup = driver.find_element(By.CSS_SELECTOR, "button[data-return-sku='cup']")
        for _ in range(10):
            cup.click()
        assert cup.get_attribute("disabled") is not None  # an 11th cup cannot be entered
        driver.execute_script("arguments[0].disabled = false; arguments[0].click();", cup)
        error = driver.find_element(By.ID, "order-error")
        assert error.is_displayed() and error.text == "Returns of one order: at most 20.00 EUR"
        [line] = driver.find_elements(By.CSS_SELECTOR, "#cart-lines li")
        assert line.get_attribute("data-kind") == "return"
        assert line.text.startswith("10 x Cup return")
        assert text(driver, "total") == "-20.00 EUR"
        save_screenshot(driver, "kiosk-returns-capped")
        # One less, and the button is back.
        line.find_element(By.CSS_SELECTOR, "button.line-remove").click()
        assert cup.get_attribute("disabled") is None
        driver.find_element(By.ID, "charge").click()
        wait_for_screen(driver, "order_pending")
        driver.find_element(By.ID, "sim-tap").click()
        wait_for_screen(driver, "approved")
        assert text(driver, "outcome-amount") == "-18.00 EUR"
    assert ledger.balances[CARD] == CARD_BALANCE_CENTS + 1800


def test_screen_shows_only_the_last_four_digits_of_a_band(
    kiosk_broker: MosquittoBroker,
    responder: MqttResponder,
    ledger: FakeLedger,
    make_kiosk: Callable[..., KioskProcess],
) -> None:
    """Issue 11 item 13: the list of recent (late) results showed whole UIDs; a bystander could
    copy them. Now the page shows ****E5F6, and the JSON it reads has nothing more."""
    responder.hold = True  # the cloud answers late: the outcome lands in "Late results"
    kiosk = make_kiosk(kiosk_broker).start()
    kiosk.wait_for(lambda s: s["online"], "the kiosk to connect")
    with headless_chromium() as driver:
        driver.get(f"http://127.0.0.1:{kiosk.http_port}/")
        wait_until(
            lambda: driver.find_elements(By.CSS_SELECTOR, "button[data-sku='beer']"),
            timeout_s=15,
            what="the menu buttons",
        )
        driver.find_element(By.CSS_SELECTOR, "button[data-sku='beer']").click()
        driver.find_element(By.ID, "charge").click()
        wait_for_screen(driver, "order_pending")
        driver.find_element(By.ID, "sim-tap").click()
        wait_for_screen(driver, "timed_out")
        driver.find_element(By.ID, "cancel").click()  # "Next customer"
        wait_for_screen(driver, "idle")
        responder.release()
        wait_until(
            lambda: driver.find_element(By.ID, "late").is_displayed(),
            timeout_s=15,
            what="the late results",
        )
        [line] = driver.find_elements(By.CSS_SELECTOR, "#late-lines li")
        assert "****E5F6" in line.text and "approved" in line.text
        save_screenshot(driver, "kiosk-late-results-masked")
        # Nothing on screen, in the page's script state or in what it fetched shows more.
        body = driver.find_element(By.TAG_NAME, "body").text
        assert CARD not in body and CARD[:-4] not in body
        fetched = driver.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "fetch('/api/state').then((r) => r.text()).then(done);"
        )
        assert "****E5F6" in fetched and CARD not in fetched
    assert ledger.balances[CARD] == CARD_BALANCE_CENTS - 550 - 200


def test_bar_page_shows_a_new_menu_within_a_second_and_says_the_order_changed(
    kiosk_broker: MosquittoBroker,
    responder: MqttResponder,
    ledger: FakeLedger,
    make_kiosk: Callable[..., KioskProcess],
) -> None:
    """Issue 13: the kiosk sells from the menu of its latest config; the page shows a new menu
    within a second of the kiosk receiving it, and an order being entered is not repriced
    silently: the page says the menu changed."""
    kiosk = make_kiosk(kiosk_broker).start()
    kiosk.wait_for(lambda s: s["online"], "the kiosk to connect")
    with headless_chromium() as driver:
        driver.get(f"http://127.0.0.1:{kiosk.http_port}/")
        wait_until(
            lambda: driver.find_elements(By.CSS_SELECTOR, "button[data-sku='beer']"),
            timeout_s=15,
            what="the menu buttons",
        )
        assert text(driver, "config") == "no config"
        driver.find_element(By.CSS_SELECTOR, "button[data-sku='beer']").click()
        assert text(driver, "total") == "7.50 EUR"  # the menu file: 5.50 and a 2.00 cup
        publish_retained(kiosk_broker, CONFIG_TOPIC, config_message(ledger.cloud_key, version=1))
        kiosk.wait_for(lambda s: s["config"]["version"] == 1, "the kiosk to apply the config")

        def beer_price() -> str:
            buttons = driver.find_elements(By.CSS_SELECTOR, "button[data-sku='beer'] .price")
            return str(buttons[0].text) if buttons else ""

        wait_until(lambda: beer_price() == "6.00 EUR", timeout_s=1.0, what="the new menu")
        banner = driver.find_element(By.ID, "menu-changed")
        assert banner.is_displayed()
        assert banner.text.startswith("The menu changed: the order now shows the new prices")
        assert text(driver, "config") == "config v1"
        assert text(driver, "menu-title") == "main-bar"
        # The order shows the central menu's prices: no automatic deposit line any more.
        lines = driver.find_elements(By.CSS_SELECTOR, "#cart-lines li")
        assert [line.get_attribute("data-kind") for line in lines] == ["item"]
        assert text(driver, "total") == "6.00 EUR"
        driver.find_element(By.CSS_SELECTOR, "button[data-sku='cup']").click()
        assert text(driver, "total") == "8.00 EUR"
        save_screenshot(driver, "kiosk-menu-changed")
        driver.find_element(By.ID, "charge").click()
        wait_for_screen(driver, "order_pending")
        assert not driver.find_element(By.ID, "menu-changed").is_displayed()
        driver.find_element(By.ID, "sim-tap").click()
        wait_for_screen(driver, "approved")
    [request_id] = ledger.received_ids()
    request = ledger.requests[request_id]
    assert request.config_version == 1
    assert [(item.sku, item.unit_price_cents, item.is_deposit) for item in request.items] == [  # type: ignore[union-attr]
        ("beer", 600, False),
        ("cup", 200, True),
    ]
    assert ledger.balances[CARD] == CARD_BALANCE_CENTS - 800


def test_an_offline_sale_is_amber_without_a_balance_and_its_debt_shows_later(
    kiosk_broker: MosquittoBroker,
    responder: MqttResponder,
    ledger: FakeLedger,
    make_kiosk: Callable[..., KioskProcess],
) -> None:
    """(1.1) Broker stopped: the page shows "Approved offline" in amber with the amount and no
    balance, and the offline sales pending with their total; once the cloud answered, the sale
    is in the history with the debt it created (a card the cloud did not know)."""
    from protocol.models import OfflinePolicy

    stranger = "04B1B2C3D4E5F6"
    policy = OfflinePolicy(sale_max_cents=2_000, card_max_cents=3_000, kiosk_max_cents=5_000)
    publish_retained(
        kiosk_broker, CONFIG_TOPIC, config_message(ledger.cloud_key, version=2, offline=policy)
    )
    kiosk = make_kiosk(kiosk_broker, KIOSK_RESEND_AFTER_S="0.5").start()
    kiosk.wait_for(lambda s: s["online"] and s["config"]["version"] == 2, "config 2")
    kiosk_broker.stop()
    kiosk.wait_for(lambda s: not s["online"], "the kiosk to go offline")
    with headless_chromium() as driver:
        driver.get(f"http://127.0.0.1:{kiosk.http_port}/")
        wait_until(
            lambda: driver.find_elements(By.CSS_SELECTOR, "button[data-sku='beer']"),
            timeout_s=15,
            what="the menu buttons",
        )
        beer = driver.find_element(By.CSS_SELECTOR, "button[data-sku='beer']")
        beer.click()
        beer.click()
        driver.find_element(By.ID, "charge").click()
        wait_for_screen(driver, "order_pending")
        driver.find_element(By.ID, "sim-uid").clear()
        driver.find_element(By.ID, "sim-uid").send_keys(stranger)
        driver.find_element(By.ID, "sim-tap").click()
        wait_for_screen(driver, "approved_offline")
        assert text(driver, "outcome-title") == "Approved offline"
        assert text(driver, "outcome-amount") == "12.00 EUR"
        assert not driver.find_element(By.ID, "balance-row").is_displayed()
        panel = driver.find_element(By.ID, "panel-outcome")
        assert panel.value_of_css_property("background-color") == "rgba(146, 64, 14, 1)"
        assert text(driver, "offline-sales") == "offline sales 1 (12.00 EUR)"
        save_screenshot(driver, "kiosk-approved-offline")
        driver.find_element(By.ID, "dismiss").click()
        wait_for_screen(driver, "idle")
        kiosk_broker.start()
        wait_until(
            lambda: driver.find_elements(By.CSS_SELECTOR, "#late-lines li"),
            timeout_s=30,
            what="the offline sale's result in the history",
        )
        [line] = driver.find_elements(By.CSS_SELECTOR, "#late-lines li")
        assert "(offline sale)" in line.text and "debt 12.00 EUR" in line.text
        assert not driver.find_element(By.ID, "offline-sales").is_displayed()
        save_screenshot(driver, "kiosk-offline-sale-synced")
    assert ledger.debts[stranger] == 1_200
