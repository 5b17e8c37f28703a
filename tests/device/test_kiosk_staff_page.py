"""(1.1) Staff at a real kiosk process and broker, with the stand-in cloud answering staff_login,
staff_logout and cash_out (tests/device/responder.py): the demo's ``device.staff_client.log_in``,
a restart keeping the login, the PIN in neither the kiosk's log nor its outbox files; and the
touchscreen page in headless Chromium: staff login, a refused login, logout, the cash-out of a
wristband at a checkpoint with its receipt line."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable

import pytest
from selenium.webdriver.common.by import By

from cloud.sandbox import MosquittoBroker
from device.staff_client import StaffClientError, log_in, log_out
from tests.browser import headless_chromium, save_screenshot
from tests.device.conftest import CARD, CARD_BALANCE_CENTS
from tests.device.kiosk_process import KioskProcess
from tests.device.responder import FakeLedger, MqttResponder
from tests.device.test_kiosk_page import text, wait_for_screen
from tests.waiting import wait_until

BEER = [{"sku": "beer", "quantity": 1}]
ANNA_BAND = "04C0C1C2C3C4C5"
BEN_BAND = "04D0D1D2D3D4D5"
ANNA_PIN = "482913"
BEN_PIN = "777123"


def test_the_demo_logs_a_staff_member_in_and_a_restart_keeps_the_login(
    kiosk_broker: MosquittoBroker,
    responder: MqttResponder,
    ledger: FakeLedger,
    make_kiosk: Callable[..., KioskProcess],
) -> None:
    ledger.add_staff("anna", band=ANNA_BAND, pin=ANNA_PIN, role="bartender")
    kiosk = make_kiosk(kiosk_broker).start()
    kiosk.wait_for(lambda s: s["online"], "the kiosk to connect")
    base_url = f"http://127.0.0.1:{kiosk.http_port}"
    with pytest.raises(StaffClientError, match="login refused"):
        log_in(base_url, staff_id="anna", pin="000000", band_uid=ANNA_BAND)
    staff = log_in(base_url, staff_id="anna", pin=ANNA_PIN, band_uid=ANNA_BAND)
    assert staff["active"] == "anna"
    assert [entry["staff_id"] for entry in staff["logged_in"]] == ["anna"]
    kiosk.sell(BEER, CARD)
    sold = kiosk.wait_for(lambda s: s["screen"] == "approved", "the sale to be approved")
    assert ledger.requests[sold["outcome"]["request_id"]].staff_id == "anna"  # type: ignore[union-attr]

    kiosk.stop()
    kiosk.start()
    restarted = kiosk.wait_for(lambda s: s["online"], "the kiosk to connect again")
    assert restarted["staff"]["active"] == "anna"
    log_out(base_url, staff_id="anna")
    kiosk.wait_for(lambda s: s["staff"]["logged_in"] == [], "anna's logout")
    wait_until(
        lambda: "anna" not in ledger.logged_in.get("bar-1", {"anna"}),
        timeout_s=15,
        what="the cloud to receive the logout",
    )
    assert ANNA_PIN not in kiosk.log_file.read_text(errors="replace")
    assert ANNA_PIN.encode() not in b"".join(
        path.read_bytes() for path in kiosk.state_dir.iterdir() if path.is_file()
    )


def test_festival_kiosk_staff_login_reads_the_pin_from_stdin(
    kiosk_broker: MosquittoBroker,
    responder: MqttResponder,
    ledger: FakeLedger,
    make_kiosk: Callable[..., KioskProcess],
) -> None:
    """What the demo runs for a simulated kiosk (cloud/ never imports device/)."""
    ledger.add_staff("ben", band=BEN_BAND, pin=BEN_PIN, role="supervisor")
    kiosk = make_kiosk(kiosk_broker, "checkpoint-1", mode="checkpoint").start()
    kiosk.wait_for(lambda s: s["online"], "the kiosk to connect")
    command = [sys.executable, "-m", "device.cli", "staff-login", "--port", str(kiosk.http_port)]
    command += ["--staff-id", "ben", "--band", BEN_BAND.lower()]

    def run(pin: str, *extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            command + list(extra), input=pin + "\n", capture_output=True, text=True, timeout=60
        )

    refused = run("000000")
    assert refused.returncode == 1
    assert "login refused" in refused.stderr and "000000" not in refused.stderr
    approved = run(BEN_PIN)
    assert approved.returncode == 0, approved.stderr
    assert json.loads(approved.stdout)["active"] == "ben"
    assert BEN_PIN not in approved.stdout
    logout = [sys.executable, "-m", "device.cli", "staff-logout", "--port", str(kiosk.http_port)]
    done = subprocess.run(
        [*logout, "--staff-id", "ben"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    kiosk.wait_for(lambda s: s["staff"]["logged_in"] == [], "ben's logout")


def test_bar_page_staff_login_refused_then_approved_then_logout(
    kiosk_broker: MosquittoBroker,
    responder: MqttResponder,
    ledger: FakeLedger,
    make_kiosk: Callable[..., KioskProcess],
) -> None:
    ledger.add_staff("anna", band=ANNA_BAND, pin=ANNA_PIN, role="bartender")
    kiosk = make_kiosk(kiosk_broker).start()
    kiosk.wait_for(lambda s: s["online"], "the kiosk to connect")
    with headless_chromium() as driver:
        driver.get(f"http://127.0.0.1:{kiosk.http_port}/")
        wait_until(
            lambda: driver.find_element(By.ID, "staff").is_displayed(),
            timeout_s=15,
            what="the staff bar",
        )
        assert text(driver, "staff-active") == "Nobody logged in"

        def login(pin: str) -> None:
            driver.find_element(By.ID, "staff-login-open").click()
            driver.find_element(By.ID, "login-staff").send_keys("anna")
            driver.find_element(By.ID, "login-pin").send_keys(pin)
            driver.find_element(By.ID, "staff-login").click()
            wait_for_screen(driver, "order_pending")
            assert text(driver, "tap-title") == "staff login anna: tap YOUR staff band"
            assert pin not in driver.find_element(By.TAG_NAME, "body").text
            uid = driver.find_element(By.ID, "sim-uid")
            uid.clear()
            uid.send_keys(ANNA_BAND)
            driver.find_element(By.ID, "sim-tap").click()

        login("000000")
        wait_for_screen(driver, "declined")
        assert text(driver, "outcome-title") == "Login refused"
        assert text(driver, "outcome-message").startswith("login refused: staff id, PIN and")
        save_screenshot(driver, "kiosk-staff-login-refused")
        driver.find_element(By.ID, "dismiss").click()
        wait_for_screen(driver, "idle")

        login(ANNA_PIN)
        wait_for_screen(driver, "approved")
        assert text(driver, "outcome-title") == "Logged in"
        assert text(driver, "outcome-message") == "anna logged in"
        driver.find_element(By.ID, "dismiss").click()
        wait_for_screen(driver, "idle")
        wait_until(
            lambda: text(driver, "staff-active") == "At the till: anna",
            timeout_s=15,
            what="anna at the till",
        )
        assert driver.find_elements(By.CSS_SELECTOR, "button[data-staff-id='anna']")
        save_screenshot(driver, "kiosk-staff-logged-in")
        driver.find_element(By.CSS_SELECTOR, "button[data-logout-id='anna']").click()
        wait_for_screen(driver, "approved")
        assert text(driver, "outcome-title") == "Logged out"
        driver.find_element(By.ID, "dismiss").click()
        wait_for_screen(driver, "idle")
        wait_until(
            lambda: text(driver, "staff-active") == "Nobody logged in",
            timeout_s=15,
            what="nobody logged in",
        )
    assert "anna" not in ledger.logged_in["bar-1"]


def test_checkpoint_page_cashes_out_a_wristband_with_a_receipt_line(
    kiosk_broker: MosquittoBroker,
    responder: MqttResponder,
    ledger: FakeLedger,
    make_kiosk: Callable[..., KioskProcess],
) -> None:
    ledger.add_staff("ben", band=BEN_BAND, pin=BEN_PIN, role="supervisor")
    ledger.staff_required = True
    kiosk = make_kiosk(kiosk_broker, "checkpoint-1", mode="checkpoint").start()
    kiosk.wait_for(lambda s: s["online"], "the kiosk to connect")
    base_url = f"http://127.0.0.1:{kiosk.http_port}"
    log_in(base_url, staff_id="ben", pin=BEN_PIN, band_uid=BEN_BAND)
    with headless_chromium() as driver:
        driver.get(base_url + "/")
        wait_until(
            lambda: driver.find_element(By.ID, "cashout").is_displayed(),
            timeout_s=15,
            what="the cash-out button",
        )
        wait_until(
            lambda: text(driver, "staff-active") == "At the till: ben",
            timeout_s=15,
            what="ben at the till",
        )
        driver.find_element(By.ID, "cashout").click()  # no staff id typed: ben is at the till
        wait_for_screen(driver, "order_pending")
        assert text(driver, "tap-title") == "cash out: tap the wristband"
        assert not driver.find_element(By.ID, "confirm").is_displayed()
        driver.find_element(By.ID, "sim-tap").click()  # the attendee's band (sim-uid: CARD)
        wait_until(
            lambda: driver.find_element(By.ID, "confirm").is_displayed(),
            timeout_s=15,
            what="Confirm",
        )
        assert text(driver, "tap-title") == (
            "cash out ****E5F6: press Confirm to pay out its balance"
        )
        assert ledger.balances[CARD] == CARD_BALANCE_CENTS  # nothing sent before Confirm
        save_screenshot(driver, "kiosk-cash-out-confirm")
        driver.find_element(By.ID, "confirm").click()
        wait_for_screen(driver, "approved")
        assert text(driver, "outcome-title") == "Cashed out"
        euros = f"{CARD_BALANCE_CENTS // 100}.00"
        assert text(driver, "outcome-amount") == f"{euros} EUR"
        cash = f"pay out {euros} EUR in cash; the wristband is blocked"
        assert text(driver, "outcome-message") == cash
        assert text(driver, "receipt") == f"Receipt: cash-out of ****E5F6 by ben: {cash}"
        assert text(driver, "new-balance") == "0.00 EUR"
        save_screenshot(driver, "kiosk-cashed-out")
    assert ledger.cash_outs == {CARD: CARD_BALANCE_CENTS}
    [cash_out] = [r for r in ledger.requests.values() if r.type == "cash_out"]
    assert (cash_out.card_uid, cash_out.staff_id) == (CARD, "ben")  # type: ignore[union-attr]
