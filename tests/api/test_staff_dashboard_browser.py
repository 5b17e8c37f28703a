"""The dashboard's Staff table (issue 17 section 3) in headless Chromium: a row per staff member
with today's orders, sales, voided orders, net, voids made, cash and card top-ups, cash-outs paid
and kiosks, in the currency's format; the events without a staff id as "(none)", last; the
totals. Saves var/screenshots/dashboard-staff.png."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from cloud.ledger import Ledger
from protocol.models import BarItem
from tests.api.conftest import ADMIN_TOKEN
from tests.api.live import serve
from tests.browser import headless_chromium, save_screenshot
from tests.ledger.helpers import PUBLIC_KEY, bar_order, recharge, void
from tests.ledger.test_cash_out import cash_out
from tests.waiting import wait_until

WAIT_S = 15
# The dashboard reloads its reports every 30 s (dashboard.js REPORTS_REFRESH_MS), and more.
REFRESH_WAIT_S = 45
NONE = "\N{EN DASH}"  # a cell with nothing to count


def staff_rows(driver: WebDriver) -> list[list[str]]:
    """The Staff table's rows, as the cells' texts ([] until the report is shown), read in one
    script: a refresh rebuilds the table between two WebDriver calls."""
    rows = driver.execute_script(
        """
        if (document.getElementById("staff").getAttribute("data-loaded") !== "true") {
          return [];
        }
        return Array.prototype.map.call(
          document.querySelectorAll("#staff-table tbody tr"),
          function (tr) {
            return Array.prototype.map.call(tr.cells, function (td) { return td.innerText; });
          });
        """
    )
    assert isinstance(rows, list)
    return rows


@pytest.mark.slow
def test_the_staff_table_shows_who_sold_and_topped_up_what(app: FastAPI, ledger: Ledger) -> None:
    for kiosk_id, role in (("bar-1", "bar"), ("bar-2", "bar"), ("checkpoint-1", "checkpoint")):
        ledger.add_kiosk(kiosk_id, PUBLIC_KEY, role)
    for item in (
        recharge("04AA0001", 2_000, staff_id="anna"),
        recharge("04AA0002", 3_000, method="card", staff_id="anna"),
        recharge("04AA0003", 900, staff_id="anna"),
        bar_order("04AA0001", BarItem("Beer", 2, 500), kiosk_id="bar-1", staff_id="ben"),
        bar_order("04AA0002", ("Wine", 1, 700), kiosk_id="bar-2", staff_id="ben"),
        bar_order("04AA0001", ("Water", 1, 400), kiosk_id="bar-2", staff_id=None),
    ):
        assert ledger.apply(item).approved
    mistaken = bar_order("04AA0002", ("Shot", 1, 300), kiosk_id="bar-1", seq=2, staff_id="ben")
    assert ledger.apply(mistaken).approved
    assert ledger.apply(void(mistaken, seq=3, staff_id="super-1")).approved
    assert ledger.apply(cash_out("04AA0003")).approved  # super-1 at checkpoint-1
    with serve(app) as base_url, headless_chromium(width=1600, height=1400) as driver:
        driver.get(f"{base_url}/dashboard")
        wait_until(
            lambda: driver.find_element(By.ID, "token").is_displayed(),
            timeout_s=WAIT_S,
            what="the token prompt",
        )
        driver.find_element(By.ID, "token").send_keys(ADMIN_TOKEN)
        driver.find_element(By.CSS_SELECTOR, "#login-form button").click()
        rows = wait_until(
            lambda: staff_rows(driver), timeout_s=WAIT_S, what="the Staff table's rows"
        )
        driver.execute_script("document.getElementById('staff').scrollIntoView()")
        assert rows == [
            [
                "anna",
                "0",
                "€0.00",
                NONE,
                "€0.00",
                NONE,
                "2 top-ups, €29.00",
                "1 top-up, €30.00",
                NONE,
                "checkpoint-1",
            ],
            [
                "ben",
                "3",
                "€20.00",
                "1 order, €3.00",
                "€17.00",
                NONE,
                NONE,
                NONE,
                NONE,
                "bar-1, bar-2",
            ],
            [
                "super-1",
                "0",
                "€0.00",
                NONE,
                "€0.00",
                "1 void, €3.00",
                NONE,
                NONE,
                "1 cash-out, €9.00",
                "bar-1, checkpoint-1",
            ],
            ["(none)", "1", "€4.00", NONE, "€4.00", NONE, NONE, NONE, NONE, "bar-2"],
        ]
        named = driver.find_elements(By.CSS_SELECTOR, "#staff-table tbody tr[data-staff-id]")
        assert [tr.get_attribute("data-staff-id") for tr in named] == ["anna", "ben", "super-1"]
        totals = [
            driver.find_element(By.ID, f"staff-total-{name}").text
            for name in ("orders", "sales", "voided", "net", "voids-made", "cash", "card")
        ]
        assert totals == ["4", "€24.00", "€3.00", "€21.00", "€3.00", "€29.00", "€30.00"]
        assert driver.find_element(By.ID, "staff-total-cash-outs").text == "€9.00"
        assert not driver.find_element(By.ID, "staff-message").is_displayed()
        path = save_screenshot(driver, "dashboard-staff")
        assert path.stat().st_size > 10_000
        # refreshed with the other reports (every 30 s): a new cashier's top-up appears
        assert ledger.apply(recharge("04AA0004", 1_500, staff_id="carl", seq=2)).approved
        wait_until(
            lambda: any(row[:1] == ["carl"] for row in staff_rows(driver)),
            timeout_s=REFRESH_WAIT_S,
            what="carl's row after the reports' refresh",
        )
        carl = next(row for row in staff_rows(driver) if row[0] == "carl")
        assert carl[6] == "1 top-up, €15.00", carl
        assert driver.find_element(By.ID, "staff-total-cash").text == "€44.00"
