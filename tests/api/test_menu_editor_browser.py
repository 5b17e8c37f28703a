"""(1.1, issue 13 §2 and §4) The dashboard's kiosks-and-configs table and its menu editor in
headless Chromium, against the real API on real PostgreSQL (the app connects as festival_api):
the version each kiosk runs against the latest issued, a price edited and saved as exactly that
many cents, bad prices refused next to their field with nothing issued, a role targeted.
Screenshots: var/screenshots/dashboard-kiosk-configs.png, menu-editor.png,
menu-editor-error.png, menu-editor-saved.png."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi import FastAPI
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import Select
from sqlalchemy import Engine, text

from cloud.ledger import Ledger
from protocol.keys import generate_private_key, public_key_b64
from protocol.models import parse_menu
from tests.api.conftest import ADMIN_TOKEN, scalar
from tests.api.live import serve
from tests.browser import attribute_now, headless_chromium, save_screenshot
from tests.waiting import wait_until

MENU: dict[str, Any] = {
    "menu_id": "summer-2026",
    "items": [
        {"sku": "beer", "name": "Beer 0.5 l", "unit_price_cents": 450, "vat_rate_bp": 1900},
        {"sku": "water", "name": "Water", "unit_price_cents": 250, "category": "soft"},
        {"sku": "cup", "name": "Cup deposit", "unit_price_cents": 200, "is_deposit": True},
    ],
}


def log_in(driver: webdriver.Chrome, base_url: str) -> None:
    driver.get(f"{base_url}/dashboard")
    wait_until(
        lambda: driver.find_element(By.ID, "token").is_displayed(),
        timeout_s=15,
        what="the token prompt",
    )
    driver.find_element(By.ID, "token").send_keys(ADMIN_TOKEN)
    driver.find_element(By.CSS_SELECTOR, "#login-form button").click()
    wait_until(
        lambda: driver.find_element(By.TAG_NAME, "body").get_attribute("data-loaded") == "true",
        timeout_s=20,
        what="the dashboard's first data",
    )


def kiosk_row(driver: webdriver.Chrome, kiosk_id: str) -> WebElement:
    return driver.find_element(
        By.CSS_SELECTOR, f'#kiosk-config-table tr[data-kiosk-id="{kiosk_id}"]'
    )


def editor_rows(driver: webdriver.Chrome) -> list[WebElement]:
    return driver.find_elements(By.CSS_SELECTOR, "#menu-items tbody tr")


def field_error(driver: webdriver.Chrome, field: str) -> str:
    return driver.find_element(
        By.CSS_SELECTOR, f'#menu-editor .field-error[data-field="{field}"]'
    ).text


def set_text(element: WebElement, value: str) -> None:
    element.clear()
    element.send_keys(value)


def configs_issued(engine: Engine) -> int:
    return int(scalar(engine, "SELECT count(*) FROM kiosk_configs"))


def load(driver: webdriver.Chrome, target: str, source: str) -> None:
    Select(driver.find_element(By.ID, "menu-target")).select_by_value(target)
    driver.execute_script("document.getElementById('menu-editor').removeAttribute('data-loaded')")
    driver.find_element(By.ID, "menu-load").click()
    wait_until(
        lambda: driver.find_element(By.ID, "menu-editor").get_attribute("data-loaded") == source,
        timeout_s=15,
        what=f"the menu of {source} in the editor",
    )


def save(driver: webdriver.Chrome) -> None:
    driver.execute_script("document.getElementById('menu-editor').removeAttribute('data-saved')")
    driver.find_element(By.ID, "menu-save").click()


@pytest.mark.slow
def test_kiosk_versions_and_the_menu_editor_in_chromium(
    app: FastAPI, ledger: Ledger, engine: Engine, owner_engine: Engine
) -> None:
    key = public_key_b64(generate_private_key())
    for kiosk_id, role in (("bar-1", "bar"), ("bar-2", "bar"), ("checkpoint-1", "checkpoint")):
        ledger.add_kiosk(kiosk_id, key, role)
    checkpoint_config = ledger.latest_config("checkpoint-1")
    menu = parse_menu(MENU)
    first = ledger.issue_kiosk_configs(["bar-1", "bar-2"], menu=menu)
    assert first is not None
    # bar-1's config was published and its requests cite it; bar-2's is still pending.
    ledger.mark_config_published("bar-1", first["bar-1"])
    with owner_engine.begin() as connection:
        connection.execute(
            text("SELECT sp_note_kiosk_config_version('bar-1', :version)"),
            {"version": first["bar-1"]},
        )

    with serve(app) as base_url, headless_chromium(width=1400, height=2400) as driver:
        log_in(driver, base_url)

        # The kiosks table: what each runs against the latest issued, published or pending.
        wait_until(
            lambda: len(driver.find_elements(By.CSS_SELECTOR, "#kiosk-config-table tbody tr")) == 3,
            timeout_s=15,
            what="the kiosks' config rows",
        )
        bar_1, bar_2 = kiosk_row(driver, "bar-1"), kiosk_row(driver, "bar-2")
        assert bar_1.get_attribute("data-runs") == str(first["bar-1"])
        assert bar_1.get_attribute("data-latest") == str(first["bar-1"])
        assert bar_1.get_attribute("data-published") == "true"
        cells = [cell.text for cell in bar_1.find_elements(By.TAG_NAME, "td")]
        assert cells[:6] == [
            "bar-1",
            "bar",
            f"v{first['bar-1']}",
            f"v{first['bar-1']}",
            "published",
            "up to date",
        ]
        assert cells[6] == "summer-2026"
        assert bar_2.get_attribute("data-runs") == ""
        assert bar_2.get_attribute("data-published") == "false"
        assert "pending" in bar_2.text
        checkpoint = kiosk_row(driver, "checkpoint-1")
        assert "no menu" in checkpoint.text
        driver.execute_script("document.getElementById('kiosk-configs').scrollIntoView()")
        save_screenshot(driver, "dashboard-kiosk-configs")

        # The editor loads bar-1's menu: prices in the deployment's currency, VAT in percent.
        load(driver, "kiosk:bar-1", "bar-1")
        rows = editor_rows(driver)
        assert len(rows) == 3
        first_row = rows[0]
        assert first_row.find_element(By.CSS_SELECTOR, "input.sku").get_attribute("value") == "beer"
        assert (
            first_row.find_element(By.CSS_SELECTOR, "input.price").get_attribute("value") == "4.50"
        )
        assert first_row.find_element(By.CSS_SELECTOR, "input.vat").get_attribute("value") == "19"
        assert rows[2].find_element(By.CSS_SELECTOR, "input.deposit").is_selected()
        assert driver.find_element(By.ID, "menu-id").get_attribute("value") == "summer-2026"
        assert "EUR" in driver.find_element(By.CSS_SELECTOR, "#menu-items thead").text
        driver.execute_script("document.getElementById('menu-editor').scrollIntoView()")
        save_screenshot(driver, "menu-editor")

        # A price with three decimals: refused in the page, next to the field; nothing issued.
        before = configs_issued(engine)
        price = first_row.find_element(By.CSS_SELECTOR, "input.price")
        set_text(price, "4.555")
        save(driver)
        wait_until(
            lambda: field_error(driver, "menu.items[0].unit_price_cents") != "",
            timeout_s=10,
            what="the page's own price error",
        )
        assert "4.50" in field_error(driver, "menu.items[0].unit_price_cents")
        assert "Nothing was saved" in driver.find_element(By.ID, "menu-message").text
        # A duplicate SKU likewise.
        set_text(price, "4.50")
        set_text(rows[1].find_element(By.CSS_SELECTOR, "input.sku"), "beer")
        save(driver)
        wait_until(
            lambda: "already row 1" in field_error(driver, "menu.items[1].sku"),
            timeout_s=10,
            what="the duplicate SKU marked",
        )
        set_text(rows[1].find_element(By.CSS_SELECTOR, "input.sku"), "water")
        # A price above the protocol's 1000.00: the API refuses it (400 naming the field) and
        # the page shows that next to the price, in money.
        set_text(price, "1000.01")
        save(driver)
        wait_until(
            lambda: field_error(driver, "menu.items[0].unit_price_cents") != "",
            timeout_s=15,
            what="the API's price error next to the field",
        )
        assert field_error(driver, "menu.items[0].unit_price_cents") == (
            "must be between €0.00 and €1,000.00"
        )
        assert "INVALID" not in driver.find_element(By.ID, "menu-message").text
        assert "Nothing was saved" in driver.find_element(By.ID, "menu-message").text
        save_screenshot(driver, "menu-editor-error")
        assert configs_issued(engine) == before

        # The price edited and saved: a new config for bar-1 with exactly 3.95 as 395 cents.
        set_text(price, "3.95")
        save(driver)
        wait_until(
            lambda: driver.find_element(By.ID, "menu-editor").get_attribute("data-saved"),
            timeout_s=15,
            what="the menu saved",
        )
        assert driver.find_element(By.ID, "menu-editor").get_attribute("data-saved") == (
            f'{{"bar-1":{first["bar-1"] + 1}}}'
        )
        assert configs_issued(engine) == before + 1
        latest = ledger.latest_config("bar-1")
        assert latest is not None and latest.version == first["bar-1"] + 1
        saved = latest.document["menu"]
        assert [item["unit_price_cents"] for item in saved["items"]] == [395, 250, 200]
        assert saved["items"][0] == {
            "sku": "beer",
            "name": "Beer 0.5 l",
            "unit_price_cents": 395,
            "vat_rate_bp": 1900,
        }
        assert saved["items"][2]["is_deposit"] is True
        assert "saved" in driver.find_element(By.ID, "menu-message").text
        # The kiosks table follows: bar-1's latest is the new version, pending, not yet run.
        # The table is redrawn on every poll: read it as it is now (a replaced row is "not yet").
        bar_1_row = '#kiosk-config-table tr[data-kiosk-id="bar-1"]'
        wait_until(
            lambda: attribute_now(driver, bar_1_row, "data-latest") == str(first["bar-1"] + 1),
            timeout_s=15,
            what="the new version in the kiosks table",
        )
        wait_until(
            lambda: "behind" in (attribute_now(driver, bar_1_row, "textContent") or ""),
            timeout_s=15,
            what="bar-1 shown behind its latest config",
        )
        save_screenshot(driver, "menu-editor-saved")

        # Every bar at once: a row added (VAT 7.5 % is 750 bp), another removed.
        load(driver, "role:bar", "bar-1")
        row = driver.find_element(By.ID, "menu-add-row")
        row.click()
        added = editor_rows(driver)[-1]
        set_text(added.find_element(By.CSS_SELECTOR, "input.sku"), "nachos")
        set_text(added.find_element(By.CSS_SELECTOR, "input.name"), "Nachos")
        set_text(added.find_element(By.CSS_SELECTOR, "input.price"), "6")
        set_text(added.find_element(By.CSS_SELECTOR, "input.vat"), "7.5")
        set_text(added.find_element(By.CSS_SELECTOR, "input.category"), "food")
        editor_rows(driver)[1].find_element(By.CSS_SELECTOR, "button.remove-row").click()
        assert len(editor_rows(driver)) == 3
        save(driver)
        wait_until(
            lambda: driver.find_element(By.ID, "menu-editor").get_attribute("data-saved"),
            timeout_s=15,
            what="the menu saved to every bar",
        )
        for kiosk_id in ("bar-1", "bar-2"):
            config = ledger.latest_config(kiosk_id)
            assert config is not None
            assert [item["sku"] for item in config.document["menu"]["items"]] == [
                "beer",
                "cup",
                "nachos",
            ]
            assert config.document["menu"]["items"][2] == {
                "sku": "nachos",
                "name": "Nachos",
                "unit_price_cents": 600,
                "vat_rate_bp": 750,
                "category": "food",
            }
        assert ledger.latest_config("checkpoint-1") == checkpoint_config  # not a bar
