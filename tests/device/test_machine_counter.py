"""(1.1) The state machine at the counter: a void (no tap, online only) and a wristband swap
(old band typed or tapped, then the new band)."""

from __future__ import annotations

from dataclasses import replace

from device.machine import (
    CancelPressed,
    CardTapped,
    CreateRequest,
    DismissPressed,
    Indicate,
    Mode,
    OrderEntered,
    RequestRefused,
    RequestStored,
    ResultArrived,
    Screen,
    Signal,
    SwapDraft,
    Tick,
    VoidDraft,
    VoidEntered,
    view,
)
from protocol.models import CardSun
from tests.device.test_machine import BEER, CONFIG, UID, Driver, outcome

VOID = VoidDraft(original_request_id="req-0", staff_id="anna", amount_cents=1100)
CHECKPOINT = replace(CONFIG, mode=Mode.CHECKPOINT)
OLD = "04000000000001"
NEW = "04000000000002"
SUN = CardSun(picc_data="A" * 32, cmac="B" * 16)


def test_a_void_is_created_at_once_on_the_orders_card_and_shows_the_money_back() -> None:
    driver = Driver()
    transition = driver.send(VoidEntered(VOID, UID))
    assert transition.reply is not None and transition.reply.ok
    assert transition.effects == (CreateRequest(VOID, UID),)  # no tap, no card-read beep
    assert driver.screen() is Screen.CARD_READ
    request = driver.stored(amount_cents=1100)
    driver.send(RequestStored(request))
    assert driver.screen() is Screen.WAITING
    driver.send(ResultArrived(outcome(request, new_balance=3000)))
    assert driver.screen() is Screen.APPROVED
    document = view(driver.state, driver.config)
    assert document["message"] == "order cancelled, 11.00 back"
    assert document["order"] == {
        "type": "void",
        "original_request_id": "req-0",
        "amount_cents": 1100,
        "staff_id": "anna",
        "config_version": None,
    }


def test_a_void_is_refused_offline_and_nothing_is_created() -> None:
    driver = Driver(online=False)
    transition = driver.send(VoidEntered(VOID, UID))
    assert transition.reply is not None and not transition.reply.ok
    assert "offline" in transition.reply.message
    assert transition.effects == (Indicate(Signal.ERROR),)
    assert driver.screen() is Screen.IDLE


def test_a_void_is_refused_on_a_link_the_broker_stopped_acknowledging() -> None:
    driver = Driver()
    driver.sell()  # published, never acknowledged by the broker
    driver.send(Tick(), advance_ms=max(CONFIG.offline_after_ms, CONFIG.result_timeout_ms))
    driver.send(DismissPressed())
    assert driver.screen() is Screen.IDLE and driver.state.online
    transition = driver.send(VoidEntered(VOID, UID))
    assert transition.reply is not None and not transition.reply.ok
    assert not any(isinstance(effect, CreateRequest) for effect in transition.effects)


def test_a_void_waits_for_no_order_on_screen_and_is_refused_at_a_checkpoint() -> None:
    driver = Driver()
    driver.send(OrderEntered(BEER))
    transition = driver.send(VoidEntered(VOID, UID))
    assert transition.reply is not None and not transition.reply.ok
    assert driver.screen() is Screen.ORDER_PENDING and driver.state.draft == BEER
    checkpoint = Driver(CHECKPOINT)
    refused = checkpoint.send(VoidEntered(VOID, UID))
    assert refused.reply is not None and not refused.reply.ok
    assert refused.effects == ()


def test_a_refused_void_goes_back_to_idle_never_to_waiting_for_a_tap() -> None:
    driver = Driver()
    driver.send(VoidEntered(VOID, UID))
    driver.send(RequestRefused("outbox full"))
    assert driver.screen() is Screen.IDLE
    assert driver.state.notice == "outbox full"
    assert driver.send(CardTapped(UID)).effects == ()


def test_a_swap_with_the_old_uid_typed_takes_the_next_tap_as_the_new_band() -> None:
    driver = Driver(CHECKPOINT)
    draft = SwapDraft(staff_id="info-1", old_card_uid=OLD)
    reply = driver.send(OrderEntered(draft)).reply
    assert reply is not None and reply.ok and "NEW band" in reply.message
    again = driver.send(CardTapped(OLD))  # the old band tapped by mistake
    assert again.effects == (Indicate(Signal.ERROR),)
    assert driver.state.notice == "that is the old band: tap the NEW band"
    transition = driver.send(CardTapped(NEW, SUN))
    assert transition.effects[-1] == CreateRequest(draft, NEW, SUN)
    assert driver.screen() is Screen.CARD_READ


def test_a_swap_reads_the_old_band_first_when_its_uid_was_not_typed() -> None:
    driver = Driver(CHECKPOINT)
    driver.send(OrderEntered(SwapDraft(staff_id="info-1")))
    assert view(driver.state, driver.config)["message"].startswith(  # type: ignore[union-attr]
        "replace a wristband: tap the OLD band"
    )
    first = driver.send(CardTapped(OLD, SUN))
    assert first.effects == (Indicate(Signal.CARD_READ),)
    assert driver.screen() is Screen.ORDER_PENDING
    expected = SwapDraft(staff_id="info-1", old_card_uid=OLD, old_card_sun=SUN)
    assert driver.state.draft == expected
    assert view(driver.state, driver.config)["order"] == {
        "type": "card_swap",
        "old_card_uid": "****0001",
        "old_card_read": True,
        "staff_id": "info-1",
        "config_version": None,
    }
    second = driver.send(CardTapped(NEW))
    assert second.effects[-1] == CreateRequest(expected, NEW, None)


def test_a_swap_is_a_checkpoint_request_and_can_be_cancelled_before_the_new_tap() -> None:
    bar = Driver()
    refused = bar.send(OrderEntered(SwapDraft(staff_id="x", old_card_uid=OLD))).reply
    assert refused is not None and not refused.ok
    driver = Driver(CHECKPOINT)
    driver.send(OrderEntered(SwapDraft(staff_id="info-1", old_card_uid=OLD)))
    driver.send(CancelPressed())
    assert driver.screen() is Screen.IDLE
    assert driver.send(CardTapped(NEW)).effects == ()


def test_an_approved_swap_says_what_the_new_band_holds() -> None:
    driver = Driver(CHECKPOINT)
    driver.send(OrderEntered(SwapDraft(staff_id="info-1", old_card_uid=OLD)))
    driver.send(CardTapped(NEW))
    request = driver.stored(card_uid=NEW, amount_cents=0)
    driver.send(RequestStored(request))
    driver.send(ResultArrived(outcome(request, new_balance=2345)))
    assert view(driver.state, driver.config)["message"] == (
        "wristband replaced: the new band holds 23.45"
    )
