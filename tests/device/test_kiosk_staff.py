"""(1.1) Staff at the kiosk, in the shell with its real outbox and codec and the stand-in cloud
(tests/device/responder.py answers staff_login/staff_logout/cash_out like the cloud): a login
with the staff band and PIN, who is at the till, the staff_id of every later request, logout,
the 12-hour limit, a reboot, the PIN gone after the result; the cash-out at a checkpoint.
Driven synchronously (``process_pending``), like tests/device/test_kiosk_counter.py."""

from __future__ import annotations

import base64
import logging
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from device.kiosk import StaffActivePressed, StaffLogoutPressed, VoidPressed
from device.machine import (
    LOGIN_OFFLINE_TEXT,
    LOGIN_REFUSED_TEXT,
    CashOutDraft,
    ConfirmPressed,
    DismissPressed,
    Mode,
    OrderEntered,
    RechargeDraft,
    StaffLoginDraft,
    Tick,
)
from tests.device.responder import FakeLedger
from tests.device.test_kiosk_counter import LaterClock, command, sell, wire
from tests.device.test_kiosk_shell import BEER, CONFIG, UID, Rig, keys, make_rig

__all__ = ["keys"]  # the fixture, shared with tests/device/test_kiosk_shell.py

ANNA_BAND = "04C0C1C2C3C4C5"
BEN_BAND = "04D0D1D2D3D4D5"
ANNA_PIN = "482913"
BEN_PIN = "777123"
HOUR_MS = 3_600_000
BEER_FOR_BEN = replace(BEER, staff_id="ben")


def staff(rig: Rig) -> dict[str, Any]:
    document = rig.state()["staff"]
    assert isinstance(document, dict)
    return document


def logged_in(rig: Rig) -> list[str]:
    return [entry["staff_id"] for entry in staff(rig)["logged_in"]]


def log_in(rig: Rig, staff_id: str, pin: str, band: str) -> dict[str, object]:
    """Type id and PIN, tap the staff band; the screen's state once the result arrived."""
    assert command(rig, OrderEntered(StaffLoginDraft(staff_id=staff_id, pin=pin))).ok
    rig.tap(band)
    state = rig.state()
    assert command(rig, DismissPressed()).ok
    return state


def with_staff(ledger: FakeLedger) -> FakeLedger:
    ledger.add_staff("anna", band=ANNA_BAND, pin=ANNA_PIN, role="bartender")
    ledger.add_staff("ben", band=BEN_BAND, pin=BEN_PIN, role="supervisor")
    return ledger


@pytest.fixture
def staff_rig(tmp_path: Path, keys: tuple[object, FakeLedger]) -> Iterator[Rig]:
    kiosk_key, ledger = keys
    rig = make_rig(tmp_path, with_staff(ledger), kiosk_key=kiosk_key)
    rig.link.connect()
    rig.kiosk.process_pending()
    yield rig
    rig.kiosk.close()


def test_an_approved_login_is_held_and_names_every_later_request(staff_rig: Rig) -> None:
    rig = staff_rig
    state = log_in(rig, "anna", ANNA_PIN, ANNA_BAND)
    assert (state["screen"], state["message"]) == ("approved", "anna logged in")
    shown = staff(rig)
    assert shown["active"] == "anna"
    [entry] = shown["logged_in"]
    assert (entry["staff_id"], entry["card_uid"]) == ("anna", "****C4C5")
    assert entry["expires_at_ms"] - entry["logged_in_at_ms"] == 12 * HOUR_MS
    login = rig.ledger.requests[rig.kiosk.outbox.history()[0].request_id]
    assert (login.type, login.card_uid, login.staff_id) == ("staff_login", ANNA_BAND, "anna")
    # The bar order typed no staff id (or another one): it names anna, who is at the till.
    order_id = sell(rig)
    assert wire(rig, order_id)["staff_id"] == "anna"
    assert command(rig, OrderEntered(replace(BEER_FOR_BEN, staff_id="mallory"))).ok
    rig.tap()
    assert wire(rig, str(rig.state()["outcome"]["request_id"]))["staff_id"] == "anna"  # type: ignore[index]
    assert command(rig, DismissPressed()).ok
    assert command(rig, VoidPressed(order_id, "mallory")).ok
    void_id = str(rig.state()["outcome"]["request_id"])  # type: ignore[index]
    assert wire(rig, void_id)["staff_id"] == "anna"


def test_several_staff_log_in_and_the_one_at_the_till_picks_themselves(staff_rig: Rig) -> None:
    rig = staff_rig
    log_in(rig, "anna", ANNA_PIN, ANNA_BAND)
    log_in(rig, "ben", BEN_PIN, BEN_BAND)
    assert logged_in(rig) == ["anna", "ben"]
    assert staff(rig)["active"] == "ben"  # the latest login is at the till
    assert command(rig, StaffActivePressed("anna")).ok
    assert staff(rig)["active"] == "anna"
    refused = command(rig, StaffActivePressed("mallory"))
    assert (refused.ok, refused.message) == (False, "mallory is not logged in at this kiosk")
    assert staff(rig)["active"] == "anna"
    assert wire(rig, sell(rig))["staff_id"] == "anna"


def test_a_refused_login_says_so_and_holds_nothing(staff_rig: Rig) -> None:
    rig = staff_rig
    state = log_in(rig, "anna", "000000", ANNA_BAND)
    assert state["screen"] == "declined"
    assert state["message"] == LOGIN_REFUSED_TEXT
    assert state["outcome"]["error_code"] == "STAFF_NOT_ALLOWED"  # type: ignore[index]
    # Anna's id and PIN on someone else's band: refused too (a typed id proves nothing).
    assert log_in(rig, "anna", ANNA_PIN, BEN_BAND)["screen"] == "declined"
    assert staff(rig) == {"active": None, "login_max_s": 43_200, "logged_in": []}
    assert "staff_id" not in wire(rig, sell(rig))  # a bar order names nobody


def test_logout_ends_the_login_here_at_once_and_sends_staff_logout(staff_rig: Rig) -> None:
    rig = staff_rig
    log_in(rig, "anna", ANNA_PIN, ANNA_BAND)
    reply = command(rig, StaffLogoutPressed("anna"))
    assert (reply.ok, reply.message) == (True, "anna logged out")
    state = rig.state()
    assert (state["screen"], state["message"]) == ("approved", "anna logged out")
    assert staff(rig)["logged_in"] == [] and staff(rig)["active"] is None
    logout = rig.kiosk.outbox.history()[0]
    body = wire(rig, logout.request_id)
    assert (body["type"], body["card_uid"], body["staff_id"]) == ("staff_logout", ANNA_BAND, "anna")
    assert "anna" not in rig.ledger.logged_in["bar-1"]
    again = command(rig, StaffLogoutPressed("anna"))
    assert (again.ok, again.message) == (False, "anna is not logged in at this kiosk")


def test_a_login_is_dropped_12_hours_after_its_tap(
    tmp_path: Path, keys: tuple[object, FakeLedger]
) -> None:
    kiosk_key, ledger = keys
    clock = LaterClock()
    rig = make_rig(tmp_path, with_staff(ledger), kiosk_key=kiosk_key, clock=clock)
    try:
        rig.link.connect()
        rig.kiosk.process_pending()
        log_in(rig, "anna", ANNA_PIN, ANNA_BAND)
        [entry] = staff(rig)["logged_in"]
        clock.ahead_ms = entry["expires_at_ms"] - clock.wall_ms() - 1000  # a second before
        rig.kiosk.handle(Tick())
        assert logged_in(rig) == ["anna"]
        clock.ahead_ms += 1000
        rig.kiosk.handle(Tick())
        assert logged_in(rig) == [] and staff(rig)["active"] is None
        assert rig.kiosk.outbox.staff_sessions() == []  # dropped on disk too
        assert rig.kiosk.active_staff_id is None  # later requests name nobody logged in
    finally:
        rig.kiosk.close()


def test_a_reboot_keeps_the_logins_and_who_is_at_the_till(
    tmp_path: Path, keys: tuple[object, FakeLedger], staff_rig: Rig
) -> None:
    rig = staff_rig
    log_in(rig, "anna", ANNA_PIN, ANNA_BAND)
    log_in(rig, "ben", BEN_PIN, BEN_BAND)
    assert command(rig, StaffActivePressed("anna")).ok
    before = staff(rig)
    rig.kiosk.close()
    kiosk_key, ledger = keys
    again = make_rig(tmp_path, ledger, kiosk_key=kiosk_key)
    try:
        assert staff(again) == before
        # Still offline after the reboot: a sale approved offline carries the login that held.
        assert again.kiosk.active_staff_id == "anna"
    finally:
        again.kiosk.close()


def test_a_login_cannot_be_made_offline(staff_rig: Rig) -> None:
    rig = staff_rig
    rig.link.disconnect()
    rig.kiosk.process_pending()
    reply = command(rig, OrderEntered(StaffLoginDraft(staff_id="anna", pin=ANNA_PIN)))
    assert (reply.ok, reply.message) == (False, LOGIN_OFFLINE_TEXT)
    assert len(rig.kiosk.outbox) == 0


def test_the_pin_is_not_in_the_logs_nor_left_in_the_outbox_after_the_result(
    staff_rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    rig = staff_rig
    caplog.set_level(logging.DEBUG)
    rig.link.responder = None  # hold the result: the signed login waits in the outbox
    assert command(rig, OrderEntered(StaffLoginDraft(staff_id="anna", pin=ANNA_PIN))).ok
    assert ANNA_PIN not in rig.state().__repr__()  # nor on the page
    rig.tap(ANNA_BAND)
    [stored] = rig.kiosk.outbox.outstanding()
    assert stored.kind == "staff_login" and stored.login_staff_id == "anna"
    signed = stored.payload
    body = signed.split(b".")[1]
    assert ANNA_PIN.encode() in base64.urlsafe_b64decode(body + b"=" * (-len(body) % 4))

    def on_disk() -> bytes:
        return b"".join(p.read_bytes() for p in rig.outbox_path.parent.iterdir() if p.is_file())

    assert body in on_disk()  # until the result, the signed login is in the outbox (WAL)
    # The cloud answers the stored bytes.
    answer = rig.ledger.answer("bar-1", signed)
    assert answer is not None
    rig.link.deliver(answer)
    rig.kiosk.process_pending()
    assert staff(rig)["active"] == "anna"
    assert len(rig.kiosk.outbox) == 0
    assert body not in on_disk()
    assert signed.split(b".")[2] not in on_disk()  # nor its signature
    for record in caplog.records:
        assert ANNA_PIN not in f"{record.getMessage()} {record.__dict__}", record


@pytest.fixture
def checkpoint_rig(tmp_path: Path, keys: tuple[object, FakeLedger]) -> Iterator[Rig]:
    kiosk_key, ledger = keys
    rig = make_rig(
        tmp_path,
        with_staff(ledger),
        kiosk_key=kiosk_key,
        config=replace(CONFIG, mode=Mode.CHECKPOINT),
    )
    rig.link.connect()
    rig.kiosk.process_pending()
    yield rig
    rig.kiosk.close()


def test_cash_out_tap_confirm_shows_the_cash_to_hand_out(checkpoint_rig: Rig) -> None:
    rig = checkpoint_rig
    log_in(rig, "ben", BEN_PIN, BEN_BAND)
    assert command(rig, OrderEntered(CashOutDraft(staff_id="ben"))).ok
    assert rig.state()["message"] == "cash out: tap the wristband"
    early = command(rig, ConfirmPressed())
    assert (early.ok, early.message) == (False, "cash out: tap the wristband first")
    rig.tap(UID)
    state = rig.state()
    assert state["message"] == "cash out ****E5F6: press Confirm to pay out its balance"
    assert len(rig.link.requests()) == 1  # the login only: nothing sent before Confirm
    assert rig.ledger.balances[UID] == 5_000
    assert command(rig, ConfirmPressed()).ok
    state = rig.state()
    assert state["screen"] == "approved", state
    assert state["message"] == "pay out 50.00 EUR in cash; the wristband is blocked"
    outcome = state["outcome"]
    assert isinstance(outcome, dict)
    assert (outcome["previous_balance_cents"], outcome["new_balance_cents"]) == (5_000, 0)
    body = wire(rig, str(outcome["request_id"]))
    assert (body["type"], body["card_uid"], body["staff_id"]) == ("cash_out", UID, "ben")
    assert rig.ledger.cash_outs == {UID: 5_000}


def test_cash_out_by_someone_whose_role_does_not_allow_it_is_refused(
    checkpoint_rig: Rig,
) -> None:
    rig = checkpoint_rig
    rig.ledger.staff_required = True
    log_in(rig, "anna", ANNA_PIN, ANNA_BAND)  # a bartender
    assert command(rig, OrderEntered(CashOutDraft(staff_id="anna"))).ok
    rig.tap(UID)
    assert command(rig, ConfirmPressed()).ok
    state = rig.state()
    assert state["screen"] == "declined"
    assert str(state["message"]).startswith("not allowed for this staff member")
    assert state["outcome"]["error_code"] == "STAFF_NOT_ALLOWED"  # type: ignore[index]
    assert rig.ledger.balances[UID] == 5_000 and not rig.ledger.cash_outs


def test_a_top_up_names_the_logged_in_cashier_instead_of_the_typed_id(
    checkpoint_rig: Rig,
) -> None:
    rig = checkpoint_rig
    log_in(rig, "ben", BEN_PIN, BEN_BAND)
    assert command(rig, OrderEntered(RechargeDraft(1000, "cash", staff_id="fixed-id"))).ok
    rig.tap(UID)
    outcome = rig.state()["outcome"]
    assert isinstance(outcome, dict) and outcome["approved"]
    assert wire(rig, str(outcome["request_id"]))["staff_id"] == "ben"
