"""(1.1) The state machine for staff: a login (id and PIN typed, then the staff band; online
only; the PIN never on the page nor in a repr), a logout (no tap), and (ours) the cash-out of a
wristband at a checkpoint (tap chooses the band, Confirm sends it)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from device.machine import (
    CASH_OUT_CONFIRM_FIRST_TEXT,
    LOGIN_OFFLINE_TEXT,
    CancelPressed,
    CardTapped,
    CashOutDraft,
    ConfirmPressed,
    CreateRequest,
    Indicate,
    LinkDown,
    LogoutEntered,
    Mode,
    OrderEntered,
    Screen,
    Signal,
    StaffLoginDraft,
    StaffLogoutDraft,
    view,
)
from device.recharge import RechargeError, parse_staff_login
from protocol.models import CardSun
from tests.device.test_machine import CONFIG, UID, Driver

CHECKPOINT = replace(CONFIG, mode=Mode.CHECKPOINT)
BAND = "04C0C1C2C3C4C5"
LOGIN = StaffLoginDraft(staff_id="anna", pin="482913")
SUN = CardSun(picc_data="A" * 32, cmac="B" * 16)


def test_a_login_waits_for_the_staff_band_and_never_shows_the_pin() -> None:
    driver = Driver()
    transition = driver.send(OrderEntered(LOGIN))
    assert transition.reply is not None and transition.reply.ok
    document = view(driver.state, driver.config)
    assert document["message"] == "staff login anna: tap YOUR staff band"
    assert document["order"] == {"type": "staff_login", "staff_id": "anna"}
    assert "482913" not in repr(driver.state) and "482913" not in repr(document)
    tapped = driver.send(CardTapped(BAND, SUN))
    assert tapped.effects[-1] == CreateRequest(LOGIN, BAND, SUN)
    assert driver.screen() is Screen.CARD_READ


def test_a_login_is_refused_offline_before_and_after_it_was_entered() -> None:
    offline = Driver(online=False)
    transition = offline.send(OrderEntered(LOGIN))
    assert transition.reply is not None
    assert (transition.reply.ok, transition.reply.message) == (False, LOGIN_OFFLINE_TEXT)
    assert offline.screen() is Screen.IDLE
    driver = Driver()
    driver.send(OrderEntered(LOGIN))
    driver.send(LinkDown())
    tapped = driver.send(CardTapped(BAND))
    assert not any(isinstance(effect, CreateRequest) for effect in tapped.effects)
    assert (driver.screen(), driver.state.notice) == (Screen.ORDER_PENDING, LOGIN_OFFLINE_TEXT)


def test_a_logout_is_sent_at_once_on_the_logins_band_even_offline() -> None:
    driver = Driver(online=False)
    logout = StaffLogoutDraft(staff_id="anna")
    transition = driver.send(LogoutEntered(logout, BAND))
    assert transition.effects == (CreateRequest(logout, BAND),)
    assert driver.screen() is Screen.CARD_READ


def test_a_cash_out_taps_the_band_then_confirm_sends_it() -> None:
    driver = Driver(CHECKPOINT)
    assert driver.send(OrderEntered(CashOutDraft(staff_id="ben"))).reply.ok  # type: ignore[union-attr]
    early = driver.send(ConfirmPressed())
    assert early.reply is not None
    assert (early.reply.ok, early.reply.message) == (False, CASH_OUT_CONFIRM_FIRST_TEXT)
    first = driver.send(CardTapped("04000000000001"))
    assert first.effects == (Indicate(Signal.CARD_READ),)  # chosen, nothing created
    driver.send(CardTapped(UID, SUN))  # another band: that one is chosen instead
    document = view(driver.state, driver.config)
    assert document["message"] == "cash out ****E5F6: press Confirm to pay out its balance"
    confirmed = driver.send(ConfirmPressed())
    chosen = CashOutDraft(staff_id="ben", band_uid=UID, band_sun=SUN)
    assert confirmed.effects == (Indicate(Signal.CARD_READ), CreateRequest(chosen, UID, SUN))
    assert driver.screen() is Screen.CARD_READ


def test_a_cash_out_can_be_cancelled_before_confirm_and_only_at_a_checkpoint() -> None:
    driver = Driver(CHECKPOINT)
    driver.send(OrderEntered(CashOutDraft(staff_id="ben")))
    driver.send(CardTapped(UID))
    driver.send(CancelPressed())
    assert driver.screen() is Screen.IDLE
    bar = Driver()
    refused = bar.send(OrderEntered(CashOutDraft(staff_id="ben")))
    assert refused.reply is not None and not refused.reply.ok


@pytest.mark.parametrize(
    "document",
    [
        {"staff_id": "anna", "pin": "12a4"},
        {"staff_id": "anna", "pin": "123"},
        {"staff_id": "anna", "pin": 482913},
        {"staff_id": "anna"},
        {"staff_id": "anna", "pin": "482913", "role": "supervisor"},
    ],
)
def test_a_bad_login_from_the_page_is_refused_without_echoing_the_pin(document: object) -> None:
    with pytest.raises(RechargeError) as raised:
        parse_staff_login(document)
    assert "12a4" not in str(raised.value) and "482913" not in str(raised.value)
