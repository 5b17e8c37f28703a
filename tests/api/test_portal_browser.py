"""The attendee's portal in headless Chromium on a phone-sized viewport (390 x 844): a wrong PIN,
the login, balance and history in the deployment's currency, the language switch (remembered
across a reload), blocking the band with its confirmation, logging out. Saves
var/screenshots/portal-login.png, portal-card.png, portal-card-de.png, portal-block-confirm.png,
portal-blocked-fr.png for a human to look at."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from selenium import webdriver
from selenium.webdriver.common.by import By
from sqlalchemy import Engine

from cloud.api import create_app
from cloud.ledger import Ledger
from cloud.settings import CloudSettings
from tests.api.live import serve
from tests.api.test_portal import PIN, UID, _seed_history, give_pin, portal_limits
from tests.browser import headless_chromium, save_screenshot
from tests.waiting import wait_until

PHONE_WIDTH, PHONE_HEIGHT = 390, 844


def phone_viewport(driver: webdriver.Chrome) -> None:
    """A phone's viewport (Chromium's windows are at least 500 px wide): its width, height and
    pixel density, touch, and a mobile layout, through the DevTools protocol."""
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": PHONE_WIDTH, "height": PHONE_HEIGHT, "deviceScaleFactor": 2, "mobile": True},
    )
    driver.execute_cdp_cmd("Emulation.setTouchEmulationEnabled", {"enabled": True})


def choose_language(driver: webdriver.Chrome, code: str) -> None:
    """Pick a language as a phone's native picker does: the value changes, `change` fires (in
    mobile emulation Chromium opens no picker that WebDriver could click)."""
    driver.execute_script(
        "var select = document.getElementById('language'); select.value = arguments[0];"
        "select.dispatchEvent(new Event('change', {bubbles: true}));",
        code,
    )


def _visible(driver: webdriver.Chrome, element_id: str) -> bool:
    elements = driver.find_elements(By.ID, element_id)
    return bool(elements) and elements[0].is_displayed()


def _text(driver: webdriver.Chrome, element_id: str) -> str:
    return str(driver.find_element(By.ID, element_id).text)


def _log_in(driver: webdriver.Chrome, uid: str, pin: str) -> None:
    for element_id, value in (("card_uid", uid), ("pin", pin)):
        field = driver.find_element(By.ID, element_id)
        field.clear()
        field.send_keys(value)
    driver.find_element(By.ID, "login-button").click()


@pytest.mark.slow
def test_the_portal_on_a_phone(
    app: FastAPI,
    client: TestClient,
    settings: CloudSettings,
    api_ledger: Ledger,
    ledger: Ledger,
    engine: Engine,
) -> None:
    _seed_history(client)  # 30.00 in cash, 2 beers, fries: 16.00 left
    give_pin(engine)
    portal_app = create_app(settings, ledger=api_ledger, limits=portal_limits())
    with (
        serve(portal_app) as base_url,
        headless_chromium(width=PHONE_WIDTH, height=PHONE_HEIGHT) as driver,
    ):
        phone_viewport(driver)
        driver.get(f"{base_url}/portal")
        wait_until(lambda: _visible(driver, "login-form"), timeout_s=15, what="the login form")
        assert driver.execute_script("return window.innerWidth") <= PHONE_WIDTH
        save_screenshot(driver, "portal-login")

        _log_in(driver, UID.lower(), "WRONGPIN")
        wait_until(lambda: _visible(driver, "login-error"), timeout_s=15, what="the refusal")
        assert "Wrong wristband number or PIN" in _text(driver, "login-error")

        _log_in(driver, UID, PIN.lower())
        wait_until(lambda: _visible(driver, "account"), timeout_s=15, what="the account")
        assert _text(driver, "balance") == "€16.00"
        assert _text(driver, "status") == "active"
        assert not _visible(driver, "debt-line"), "no debt: no debt line"
        rows = driver.find_elements(By.CSS_SELECTOR, "#history li")
        assert len(rows) == 3
        assert "1 \u00d7 Fries" in rows[0].text and "-€5.00" in rows[0].text
        assert "2 \u00d7 Beer" in rows[1].text and "-€9.00" in rows[1].text
        assert "Top-up" in rows[2].text and "+€30.00" in rows[2].text and "cash" in rows[2].text
        assert _visible(driver, "payout-section"), "a balance, no debt: the payout form"
        assert not _visible(driver, "payouts-section"), "no payout yet"
        assert not _visible(driver, "payout-pin-line"), "a PIN session gives no PIN again"
        # Nothing wider than the phone: no sideways scrolling in a field.
        assert driver.execute_script(
            "return document.documentElement.scrollWidth <= window.innerWidth"
        )
        save_screenshot(driver, "portal-card")

        # German, remembered across a reload.
        choose_language(driver, "de")
        wait_until(
            lambda: "Verlauf" in driver.find_element(By.TAG_NAME, "body").text,
            timeout_s=10,
            what="the page in German",
        )
        driver.refresh()
        wait_until(lambda: _visible(driver, "account"), timeout_s=15, what="the account again")
        body = driver.find_element(By.TAG_NAME, "body").text
        assert "GUTHABEN" in body and "Verlauf" in body and "Mein Armband sperren" in body
        assert _text(driver, "balance").replace("\u00a0", " ") == "16,00 €"
        assert "Einkauf" in driver.find_elements(By.CSS_SELECTOR, "#history li")[0].text
        save_screenshot(driver, "portal-card-de")

        # Block: a confirmation first; cancelling changes nothing.
        driver.find_element(By.ID, "block-button").click()
        assert _visible(driver, "block-confirm")
        save_screenshot(driver, "portal-block-confirm")
        driver.find_element(By.ID, "block-no").click()
        assert not _visible(driver, "block-confirm")
        shown = ledger.card(UID)
        assert shown is not None and shown.status == "active"
        choose_language(driver, "fr")
        driver.find_element(By.ID, "block-button").click()
        driver.find_element(By.ID, "block-yes").click()
        wait_until(lambda: _visible(driver, "blocked-note"), timeout_s=15, what="blocked")
        assert _text(driver, "status") == "bloqué"
        assert not _visible(driver, "block-section")
        shown = ledger.card(UID)
        assert shown is not None and shown.status == "blocked"
        save_screenshot(driver, "portal-blocked-fr")

        driver.find_element(By.ID, "logout").click()
        wait_until(lambda: _visible(driver, "login-form"), timeout_s=15, what="logged out")
        driver.refresh()
        wait_until(lambda: _visible(driver, "login-form"), timeout_s=15, what="still logged out")
        assert "Se connecter" in _text(driver, "login-button"), "French is remembered"
