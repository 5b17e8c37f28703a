"""The portal's payout form in headless Chromium on a phone-sized viewport (390 x 844): a wrong
IBAN is refused on the page with nothing changed, the right one (with a donation, confirmed
first) pays the whole balance out; the page then lists the payout and its parts with their
states, hides the form and shows the band blocked, in English and in German. Saves
var/screenshots/portal-payout-form.png, portal-payout-error.png, portal-payout-confirm.png,
portal-payout-done.png, portal-payout-done-de.png for a human to look at."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from selenium.webdriver.common.by import By
from sqlalchemy import Engine

from cloud.api import create_app
from cloud.api.pages import STATIC_DIR
from cloud.ledger import Ledger
from cloud.payouts import PayoutStore
from tests.api.conftest import make_settings, scalar
from tests.api.live import serve
from tests.api.test_portal import PIN, UID, _seed_history, give_pin, portal_limits
from tests.api.test_portal_browser import (
    PHONE_HEIGHT,
    PHONE_WIDTH,
    _log_in,
    _text,
    _visible,
    choose_language,
    phone_viewport,
)
from tests.browser import headless_chromium, save_screenshot
from tests.waiting import wait_until

FEE_CENTS = 100


def _type(driver: object, element_id: str, value: str) -> None:
    field = driver.find_element(By.ID, element_id)  # type: ignore[attr-defined]
    field.clear()
    field.send_keys(value)


def test_every_language_has_every_message() -> None:
    catalogue = json.loads((STATIC_DIR / "portal_messages.json").read_text(encoding="utf-8"))
    assert set(catalogue) == {"en", "de", "fr"}
    keys = set(catalogue["en"])
    assert {key for key in keys if key.startswith(("payout", "part_", "state_"))} >= {
        "payout_submit",
        "payout_question",
        "part_bank",
        "part_stripe",
        "state_pending",
        "state_failed",
    }
    for language in ("de", "fr"):
        assert set(catalogue[language]) == keys, language
        assert all(catalogue[language].values()), language


@pytest.mark.slow
def test_a_payout_from_the_phone(
    client: TestClient,
    api_database_url: str,
    fake_stripe: object,
    api_ledger: Ledger,
    ledger: Ledger,
    engine: Engine,
) -> None:
    _seed_history(client)  # 30.00 in cash, 2 beers, fries: 16.00 left
    give_pin(engine)
    settings = make_settings(
        api_database_url,
        fake_stripe.base_url,  # type: ignore[attr-defined]
        festival_payout_fee_cents=FEE_CENTS,
    )
    portal_app = create_app(settings, ledger=api_ledger, limits=portal_limits())
    with (
        serve(portal_app) as base_url,
        headless_chromium(width=PHONE_WIDTH, height=PHONE_HEIGHT) as driver,
    ):
        phone_viewport(driver)
        driver.get(f"{base_url}/portal")
        wait_until(lambda: _visible(driver, "login-form"), timeout_s=15, what="the login form")
        _log_in(driver, UID, PIN)
        wait_until(lambda: _visible(driver, "payout-section"), timeout_s=15, what="the form")
        assert "fee of €1.00" in _text(driver, "payout-fee")
        assert not _visible(driver, "payout-pin-line")
        driver.find_element(By.ID, "payout-iban").location_once_scrolled_into_view  # noqa: B018
        save_screenshot(driver, "portal-payout-form")

        # A mistyped IBAN (one digit off): the page says so, nothing changes.
        _type(driver, "payout-iban", "DE89 3704 0044 0532 0130 01")
        _type(driver, "payout-holder", "Ada Lovelace")
        _type(driver, "payout-email", "ada@example.org")
        _type(driver, "payout-donation", "2,50")
        driver.find_element(By.ID, "payout-button").click()
        wait_until(lambda: _visible(driver, "payout-confirm"), timeout_s=10, what="the question")
        assert "€16.00" in _text(driver, "payout-question")
        driver.find_element(By.ID, "payout-yes").click()
        wait_until(lambda: _visible(driver, "payout-error"), timeout_s=15, what="the refusal")
        assert "IBAN" in _text(driver, "payout-error")
        save_screenshot(driver, "portal-payout-error")
        assert int(scalar(engine, "SELECT count(*) FROM payouts")) == 0
        assert _text(driver, "balance") == "€16.00"

        _type(driver, "payout-iban", "de89 3704 0044 0532 0130 00")
        driver.find_element(By.ID, "payout-button").click()
        wait_until(lambda: _visible(driver, "payout-confirm"), timeout_s=10, what="the question")
        save_screenshot(driver, "portal-payout-confirm")
        driver.find_element(By.ID, "payout-yes").click()
        wait_until(lambda: _visible(driver, "payouts-section"), timeout_s=15, what="the payout")
        assert not _visible(driver, "payout-section"), "a payout under way: no second form"
        assert not _visible(driver, "payout-error")
        assert _text(driver, "balance") == "€0.00"
        assert _text(driver, "status") == "blocked"
        [row] = driver.find_elements(By.CSS_SELECTOR, "#payouts li")
        text = row.text
        assert "Payout of €16.00" in text and "under way" in text
        assert "Donation" in text and "€2.50" in text and "Fee" in text and "€1.00" in text
        assert "Bank transfer to …3000" in text and "€12.50" in text
        assert driver.execute_script(
            "return document.documentElement.scrollWidth <= window.innerWidth"
        ), "nothing wider than the phone"
        row.location_once_scrolled_into_view  # noqa: B018
        save_screenshot(driver, "portal-payout-done")

        [bank] = [p for p in PayoutStore(engine).list(card_uid=UID) if p.kind == "bank"]
        assert (bank.amount_cents, bank.account_holder) == (1_250, "Ada Lovelace")
        shown = ledger.card(UID)
        assert shown is not None and shown.balance_cents == 0 and shown.status == "blocked"

        choose_language(driver, "de")
        wait_until(
            lambda: "Deine Auszahlungen" in driver.find_element(By.TAG_NAME, "body").text,
            timeout_s=10,
            what="the page in German",
        )
        row_de = driver.find_element(By.CSS_SELECTOR, "#payouts li").text
        assert "Auszahlung von 16,00" in row_de and "Überweisung an …3000" in row_de
        assert "in Bearbeitung" in row_de
        save_screenshot(driver, "portal-payout-done-de")
