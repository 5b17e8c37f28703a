"""The kiosk's pure state machine: screens, effects, timeouts, resends, late results."""

from __future__ import annotations

import json
from dataclasses import replace

from device.machine import (
    BarDraft,
    CancelPressed,
    CardFailed,
    CardTapped,
    CreateRequest,
    DismissPressed,
    Event,
    Indicate,
    KioskState,
    LinkDown,
    LinkUp,
    MachineConfig,
    MenuChanged,
    Mode,
    OrderEntered,
    OutboxLoaded,
    Outcome,
    PendingRequest,
    Publish,
    PublishAcked,
    RechargeDraft,
    RequestRefused,
    RequestStored,
    ResultArrived,
    Screen,
    Signal,
    Tick,
    Transition,
    step,
    view,
)
from protocol.models import BarItem

CONFIG = MachineConfig(
    mode=Mode.BAR,
    outbox_max=3,
    result_timeout_ms=5_000,
    resend_after_ms=10_000,
    resend_after_ms_max=40_000,
    outcome_display_ms=6_000,
)
BEER = BarDraft(items=(BarItem("Beer", 2, 550, sku="beer"),), total_cents=1100)
UID = "04A1B2C3D4E5F6"


class Driver:
    """Feeds events with a manual clock and remembers the last transition."""

    def __init__(self, config: MachineConfig = CONFIG, online: bool = True) -> None:
        self.config = config
        self.state = KioskState(online=online)
        self.now_ms = 1_000_000
        self.next_seq = 1

    def send(self, event: Event, advance_ms: int = 0) -> Transition:
        self.now_ms += advance_ms
        transition = step(self.state, event, self.config, self.now_ms)
        self.state = transition.state
        return transition

    def screen(self) -> Screen:
        return self.state.screen

    def stored(self, card_uid: str = UID, amount_cents: int = 1100) -> PendingRequest:
        request = PendingRequest(
            request_id=f"req-{self.next_seq}",
            seq=self.next_seq,
            created_at_ms=self.now_ms,
            card_uid=card_uid,
            amount_cents=amount_cents,
        )
        self.next_seq += 1
        return request

    def sell(self, draft: BarDraft = BEER) -> PendingRequest:
        """Order, tap, store: returns the stored request."""
        assert self.send(OrderEntered(draft)).reply is not None
        transition = self.send(CardTapped(UID))
        assert any(isinstance(effect, CreateRequest) for effect in transition.effects)
        request = self.stored()
        self.send(RequestStored(request))
        return request


def outcome(request: PendingRequest, approved: bool = True, new_balance: int = 900) -> Outcome:
    return Outcome(
        request_id=request.request_id,
        seq=request.seq,
        card_uid=request.card_uid,
        approved=approved,
        status="approved" if approved else "declined",
        error_code=None if approved else "INSUFFICIENT_FUNDS",
        message="ok" if approved else "insufficient funds",
        amount_cents=request.amount_cents,
        previous_balance_cents=2000,
        new_balance_cents=new_balance if approved else 2000,
        replayed=False,
        at_ms=0,
    )


def test_a_sale_from_order_to_approved_and_back_to_idle() -> None:
    kiosk = Driver()
    entered = kiosk.send(OrderEntered(BEER))
    assert entered.reply is not None and entered.reply.ok
    assert kiosk.screen() is Screen.ORDER_PENDING
    tapped = kiosk.send(CardTapped(UID))
    assert kiosk.screen() is Screen.CARD_READ
    assert tapped.effects == (
        Indicate(Signal.CARD_READ),
        CreateRequest(BEER, UID),
    )
    request = kiosk.stored()
    stored = kiosk.send(RequestStored(request))
    assert stored.effects == (Publish(request.request_id),)
    assert kiosk.screen() is Screen.WAITING
    assert kiosk.state.current_request_id == request.request_id
    arrived = kiosk.send(ResultArrived(outcome(request)), advance_ms=40)
    assert arrived.effects == (Indicate(Signal.APPROVED),)
    assert kiosk.screen() is Screen.APPROVED
    assert kiosk.state.outcome is not None and kiosk.state.outcome.new_balance_cents == 900
    assert kiosk.state.pending == ()
    kiosk.send(Tick(), advance_ms=5_999)
    assert kiosk.screen() is Screen.APPROVED
    kiosk.send(Tick(), advance_ms=1)
    assert kiosk.screen() is Screen.IDLE


def test_declined_shows_the_reason_and_plays_declined() -> None:
    kiosk = Driver()
    request = kiosk.sell()
    arrived = kiosk.send(ResultArrived(outcome(request, approved=False)))
    assert arrived.effects == (Indicate(Signal.DECLINED),)
    assert kiosk.screen() is Screen.DECLINED
    assert view(kiosk.state, CONFIG)["message"] == "insufficient funds"


def test_a_price_mismatch_shows_the_clouds_reason() -> None:
    """(1.1) The cloud refused the prices (the kiosk sold from a menu it no longer may): the
    screen says which line and why, as the cloud wrote it, and the page shows the code."""
    kiosk = Driver()
    request = kiosk.sell()
    message = (
        "Price mismatch: line 1: sku 'beer' costs 6.00 on the menu of config version 2, not 5.50"
    )
    rejected = replace(
        outcome(request, approved=False),
        status="rejected",
        error_code="PRICE_MISMATCH",
        message=message,
        previous_balance_cents=None,
        new_balance_cents=None,
    )
    arrived = kiosk.send(ResultArrived(rejected))
    assert arrived.effects == (Indicate(Signal.DECLINED),)
    assert kiosk.screen() is Screen.DECLINED
    shown = view(kiosk.state, CONFIG)
    assert shown["message"] == message
    assert shown["outcome"]["error_code"] == "PRICE_MISMATCH"  # type: ignore[index]


def test_tap_without_an_order_makes_no_request() -> None:
    kiosk = Driver()
    transition = kiosk.send(CardTapped(UID))
    assert transition.effects == ()
    assert kiosk.screen() is Screen.IDLE


def test_second_tap_of_the_same_order_makes_no_second_request() -> None:
    kiosk = Driver()
    kiosk.sell()
    for _ in range(3):
        assert kiosk.send(CardTapped(UID)).effects == ()
    assert len(kiosk.state.pending) == 1


def test_timed_out_request_stays_pending_and_its_late_result_is_shown() -> None:
    kiosk = Driver()
    request = kiosk.sell()
    timed_out = kiosk.send(Tick(), advance_ms=5_000)
    assert kiosk.screen() is Screen.TIMED_OUT
    assert timed_out.effects == (Indicate(Signal.ERROR),)
    assert [p.request_id for p in kiosk.state.pending] == [request.request_id]
    # Tapping again does not replace the request.
    assert kiosk.send(CardTapped(UID)).effects == ()
    kiosk.send(ResultArrived(outcome(request)), advance_ms=20_000)
    assert kiosk.screen() is Screen.APPROVED
    assert kiosk.state.pending == ()


def test_late_result_after_a_new_order_goes_to_late_results() -> None:
    kiosk = Driver()
    first = kiosk.sell()
    kiosk.send(Tick(), advance_ms=5_000)
    entered = kiosk.send(OrderEntered(BEER))
    assert entered.reply is not None and entered.reply.ok
    assert kiosk.screen() is Screen.ORDER_PENDING
    arrived = kiosk.send(ResultArrived(outcome(first)))
    assert arrived.effects == ()
    assert kiosk.screen() is Screen.ORDER_PENDING
    assert [late.request_id for late in kiosk.state.late_results] == [first.request_id]


def test_duplicate_result_is_ignored() -> None:
    kiosk = Driver()
    request = kiosk.sell()
    kiosk.send(ResultArrived(outcome(request)))
    state = kiosk.state
    again = kiosk.send(ResultArrived(outcome(request, approved=False)))
    assert again.effects == ()
    assert kiosk.state == state


def test_busy_kiosk_refuses_a_new_order_and_cancel() -> None:
    kiosk = Driver()
    kiosk.sell()
    order = kiosk.send(OrderEntered(BEER))
    assert order.reply is not None and not order.reply.ok
    cancel = kiosk.send(CancelPressed())
    assert cancel.reply is not None and not cancel.reply.ok
    assert kiosk.screen() is Screen.WAITING


def test_cancel_and_dismiss() -> None:
    kiosk = Driver()
    kiosk.send(OrderEntered(BEER))
    cancel = kiosk.send(CancelPressed())
    assert cancel.reply is not None and cancel.reply.ok
    assert kiosk.screen() is Screen.IDLE and kiosk.state.draft is None
    request = kiosk.sell()
    kiosk.send(ResultArrived(outcome(request)))
    dismissed = kiosk.send(DismissPressed())
    assert dismissed.reply is not None and dismissed.reply.ok
    assert kiosk.screen() is Screen.IDLE


def test_wrong_mode_order_is_refused() -> None:
    kiosk = Driver()
    reply = kiosk.send(OrderEntered(RechargeDraft(1000, "cash", "anna"))).reply
    assert reply is not None and not reply.ok
    checkpoint = Driver(replace(CONFIG, mode=Mode.CHECKPOINT))
    reply = checkpoint.send(OrderEntered(RechargeDraft(1000, "cash", "anna"))).reply
    assert reply is not None and reply.ok


def test_offline_top_up_is_stored_not_published_and_sent_on_link_up() -> None:
    # A checkpoint's top-up made offline waits in the outbox (the cashier took the money); a bar
    # order offline is an offline sale or refused (tests/device/test_machine_offline.py).
    kiosk = Driver(replace(CONFIG, mode=Mode.CHECKPOINT), online=False)
    top_up = RechargeDraft(2000, "cash", "anna")
    kiosk.send(OrderEntered(top_up))
    kiosk.send(CardTapped(UID))
    request = kiosk.stored()
    stored = kiosk.send(RequestStored(request))
    assert stored.effects == (Indicate(Signal.OFFLINE),)
    assert kiosk.screen() is Screen.OFFLINE
    second_order = kiosk.send(OrderEntered(top_up))
    assert second_order.reply is not None and second_order.reply.ok
    kiosk.send(CardTapped(UID))
    second = kiosk.stored()
    kiosk.send(RequestStored(second))
    up = kiosk.send(LinkUp())
    assert up.effects == (Publish(request.request_id), Publish(second.request_id))
    assert kiosk.screen() is Screen.WAITING
    assert all(p.sends == 1 for p in kiosk.state.pending)


def test_link_down_while_waiting_shows_offline_and_link_up_does_not_duplicate() -> None:
    kiosk = Driver()
    request = kiosk.sell()
    down = kiosk.send(LinkDown())
    assert down.effects == (Indicate(Signal.OFFLINE),)
    assert kiosk.screen() is Screen.OFFLINE
    up = kiosk.send(LinkUp(), advance_ms=30_000)
    # The MQTT client resends its own unacknowledged publish; we must not add another.
    assert up.effects == ()
    assert kiosk.screen() is Screen.WAITING
    assert kiosk.state.deadline_ms == kiosk.now_ms + CONFIG.result_timeout_ms
    assert kiosk.state.pending_request(request.request_id) is not None


def test_acked_request_without_result_is_resent_with_backoff() -> None:
    kiosk = Driver()
    request = kiosk.sell()
    kiosk.send(PublishAcked(request.request_id), advance_ms=5)
    assert kiosk.send(Tick(), advance_ms=9_999).effects.count(Publish(request.request_id)) == 0
    first = kiosk.send(Tick(), advance_ms=1)
    assert Publish(request.request_id) in first.effects
    # Acknowledged: again after twice the pause.
    kiosk.send(PublishAcked(request.request_id))
    assert Publish(request.request_id) not in kiosk.send(Tick(), advance_ms=19_999).effects
    assert Publish(request.request_id) in kiosk.send(Tick(), advance_ms=1).effects
    kiosk.send(PublishAcked(request.request_id))
    kiosk.send(PublishAcked(request.request_id))
    pending = kiosk.state.pending_request(request.request_id)
    assert pending is not None and pending.sends == 3
    assert pending.resend_at_ms == kiosk.now_ms + 40_000  # capped


def test_unacknowledged_publish_is_resent_after_the_longest_pause() -> None:
    kiosk = Driver()
    request = kiosk.sell()
    # The broker's acknowledgement never reaches the machine (a dropped event).
    assert Publish(request.request_id) not in kiosk.send(Tick(), advance_ms=39_999).effects
    assert Publish(request.request_id) in kiosk.send(Tick(), advance_ms=1).effects


def test_no_resend_while_offline() -> None:
    kiosk = Driver()
    request = kiosk.sell()
    kiosk.send(PublishAcked(request.request_id))
    kiosk.send(LinkDown())
    assert kiosk.send(Tick(), advance_ms=100_000).effects == ()


def test_outbox_full_refuses_orders_and_taps_visibly() -> None:
    kiosk = Driver()
    for _ in range(3):
        request = kiosk.sell()
        kiosk.send(PublishAcked(request.request_id))
        kiosk.send(Tick(), advance_ms=CONFIG.result_timeout_ms)  # no answer: "timed out"
    refused = kiosk.send(OrderEntered(BEER))
    assert refused.reply is not None and not refused.reply.ok
    assert "outbox full" in refused.reply.message
    assert refused.effects == (Indicate(Signal.ERROR),)
    assert view(kiosk.state, CONFIG)["outbox"] == {
        "pending": 3,
        "max": 3,
        "full": True,
        "oldest_seq": 1,
    }


def test_request_refused_by_the_outbox_returns_to_the_order() -> None:
    kiosk = Driver()
    kiosk.send(OrderEntered(BEER))
    kiosk.send(CardTapped(UID))
    refused = kiosk.send(RequestRefused("outbox full"))
    assert refused.effects == (Indicate(Signal.ERROR),)
    assert kiosk.screen() is Screen.ORDER_PENDING
    assert kiosk.state.draft == BEER
    assert kiosk.state.notice == "outbox full"


def test_card_failure_with_an_order_pending_asks_to_tap_again() -> None:
    kiosk = Driver()
    kiosk.send(OrderEntered(BEER))
    failed = kiosk.send(CardFailed("unsupported_card"))
    assert failed.effects == (Indicate(Signal.ERROR),)
    assert kiosk.screen() is Screen.ORDER_PENDING
    assert kiosk.state.notice is not None and "not supported" in kiosk.state.notice
    assert kiosk.send(CardFailed("read_error"), advance_ms=1).state.screen is Screen.ORDER_PENDING
    idle = Driver()
    assert idle.send(CardFailed("read_error")).effects == ()


def test_outbox_loaded_at_start_is_sent_in_seq_order_once_online() -> None:
    kiosk = Driver(online=False)
    loaded = (
        PendingRequest("b", 7, 1, UID, 100),
        PendingRequest("a", 5, 1, UID, 100),
    )
    assert kiosk.send(OutboxLoaded(loaded)).effects == ()
    up = kiosk.send(LinkUp())
    assert up.effects == (Publish("a"), Publish("b"))


def test_version_changes_only_with_the_state() -> None:
    kiosk = Driver()
    version = kiosk.state.version
    kiosk.send(Tick(), advance_ms=1)
    assert kiosk.state.version == version
    kiosk.send(OrderEntered(BEER))
    assert kiosk.state.version == version + 1


def test_view_of_an_order_lists_lines_and_total() -> None:
    kiosk = Driver()
    kiosk.send(OrderEntered(BEER))
    shown = view(kiosk.state, CONFIG)
    assert shown["screen"] == "order_pending"
    assert shown["order"] == {
        "type": "bar_order",
        "items": [
            {
                "name": "Beer",
                "sku": "beer",
                "quantity": 2,
                "unit_price_cents": 550,
                "is_deposit": False,
                "is_return": False,
                "line_cents": 1100,
            }
        ],
        "total_cents": 1100,
        "staff_id": None,
        "config_version": None,
    }


def test_the_view_shows_card_uids_masked_to_their_last_four_digits() -> None:
    """Issue 11 item 13: a bystander reading the screen (or the JSON the page reads) cannot copy
    a band's UID; four hex digits tell staff two bands apart."""
    other = "0A0B0C0D"
    outcome = Outcome(
        request_id="req-1",
        seq=1,
        card_uid=UID,
        approved=True,
        status="approved",
        error_code=None,
        message="approved",
        amount_cents=1100,
        previous_balance_cents=5000,
        new_balance_cents=3900,
        replayed=False,
        at_ms=1,
    )
    late = replace(outcome, request_id="req-0", seq=0, card_uid=other)
    state = KioskState(
        screen=Screen.APPROVED,
        online=True,
        draft=BEER,
        current_request_id="req-1",
        card_uid=UID,
        outcome=outcome,
        late_results=(late,),
    )
    shown = view(state, CONFIG)
    text = json.dumps(shown)
    assert UID not in text and other not in text
    assert UID[:-4] not in text and other[:-4] not in text
    assert shown["card_uid"] == "****E5F6"
    assert shown["request"]["card_uid"] == "****E5F6"  # type: ignore[index]
    assert shown["outcome"]["card_uid"] == "****E5F6"  # type: ignore[index]
    assert shown["late_results"] == [{**shown["late_results"][0], "card_uid": "****0C0D"}]  # type: ignore[index]
    assert view(KioskState(), CONFIG)["card_uid"] is None


def test_a_menu_change_keeps_an_order_waiting_for_its_band_and_says_so() -> None:
    """Issue 13: an order being entered is not silently repriced. The order that waits for a
    band keeps the prices it was entered with; the screen says the menu changed."""
    kiosk = Driver()
    assert kiosk.send(MenuChanged()).state == kiosk.state  # nothing on screen: nothing to say
    kiosk.send(OrderEntered(BEER))
    changed = kiosk.send(MenuChanged())
    assert changed.effects == ()
    assert kiosk.screen() is Screen.ORDER_PENDING
    assert kiosk.state.draft == BEER  # same lines, same prices
    assert view(kiosk.state, CONFIG)["message"].startswith("The menu changed")
    tapped = kiosk.send(CardTapped(UID))
    assert CreateRequest(BEER, UID) in tapped.effects
    assert kiosk.state.notice is None
    # A top-up has no menu: nothing to say.
    checkpoint = Driver(replace(CONFIG, mode=Mode.CHECKPOINT))
    checkpoint.send(OrderEntered(RechargeDraft(2000, "cash", "anna")))
    assert checkpoint.send(MenuChanged()).state.notice is None
