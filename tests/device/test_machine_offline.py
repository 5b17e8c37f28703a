"""(1.1) The state machine's offline sales: when the kiosk is offline, what it approves itself,
what it refuses on the spot and why, and what the screen, lights and page show.

Pure: events in, state and effects out, with a manual clock (like test_machine.py).
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from device.machine import (
    BarDraft,
    CardTapped,
    CreateRequest,
    Indicate,
    KioskState,
    LinkDown,
    LinkUp,
    MachineConfig,
    Mode,
    OrderEntered,
    Outcome,
    PendingRequest,
    PolicyChanged,
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
    is_offline,
    offline_refusal,
    outcome_to_dict,
    step,
    view,
)
from protocol.models import BarItem, OfflinePolicy

CONFIG = MachineConfig(
    mode=Mode.BAR,
    outbox_max=20,
    result_timeout_ms=5_000,
    resend_after_ms=10_000,
    resend_after_ms_max=40_000,
    outcome_display_ms=6_000,
    offline_after_ms=3_000,
)
POLICY = OfflinePolicy(sale_max_cents=2_000, card_max_cents=3_000, kiosk_max_cents=5_000)
VERSION = 4
UID = "04A1B2C3D4E5F6"
OTHER = "04A1B2C3D4E5F7"


def beer(quantity: int = 1, price_cents: int = 500, version: int | None = VERSION) -> BarDraft:
    line = BarItem("Beer", quantity, price_cents, sku="beer")
    return BarDraft(items=(line,), total_cents=quantity * price_cents, config_version=version)


CUP_BACK = BarDraft(
    items=(
        BarItem("Beer", 1, 500, sku="beer"),
        BarItem("Cup return", 1, 200, sku="cup-return", is_deposit=True, is_return=True),
    ),
    total_cents=300,
    config_version=VERSION,
)


class Driver:
    def __init__(
        self,
        *,
        online: bool = False,
        policy: OfflinePolicy | None = POLICY,
        config: MachineConfig = CONFIG,
    ) -> None:
        self.config = config
        self.state = KioskState(online=online)
        self.now_ms = 1_000_000
        self.next_seq = 1
        self.send(PolicyChanged(VERSION, policy))

    def send(self, event: object, advance_ms: int = 0) -> Transition:
        self.now_ms += advance_ms
        transition = step(self.state, event, self.config, self.now_ms)  # type: ignore[arg-type]
        self.state = transition.state
        return transition

    def tap(self, draft: BarDraft, card_uid: str = UID, *, denied: bool = False) -> Transition:
        entered = self.send(OrderEntered(draft))
        assert entered.reply is not None and entered.reply.ok, entered.reply
        return self.send(CardTapped(card_uid, denied=denied))

    def store(self, effect: CreateRequest) -> Transition:
        """What the shell does with CreateRequest: sign, store, answer RequestStored."""
        request = PendingRequest(
            request_id=f"req-{self.next_seq}",
            seq=self.next_seq,
            created_at_ms=self.now_ms,
            card_uid=effect.card_uid,
            amount_cents=effect.draft.total_cents,  # type: ignore[union-attr]
            offline=effect.offline,
        )
        self.next_seq += 1
        return self.send(RequestStored(request))

    def sell_offline(self, draft: BarDraft, card_uid: str = UID) -> PendingRequest:
        tapped = self.tap(draft, card_uid)
        [create] = [e for e in tapped.effects if isinstance(e, CreateRequest)]
        assert create.offline, tapped
        self.store(create)
        assert self.state.screen is Screen.APPROVED_OFFLINE
        request = self.state.pending[-1]
        self.send(Tick(), advance_ms=CONFIG.outcome_display_ms)  # back to idle
        return request

    def refused(self, draft: BarDraft, card_uid: str = UID, *, denied: bool = False) -> str:
        tapped = self.tap(draft, card_uid, denied=denied)
        assert tapped.effects == (Indicate(Signal.DECLINED),), tapped.effects
        assert self.state.screen is Screen.ORDER_PENDING
        assert self.state.notice is not None
        notice = self.state.notice
        self.send(OrderEntered(draft))  # the same order stays; leave it on screen
        return notice


def test_offline_a_sale_within_the_policy_is_stored_first_then_shown_amber() -> None:
    kiosk = Driver()
    tapped = kiosk.tap(beer())
    # Only a request to create (sign with offline: true, store): no amber yet.
    assert tapped.effects == (Indicate(Signal.CARD_READ), CreateRequest(beer(), UID, offline=True))
    assert kiosk.state.screen is Screen.CARD_READ
    stored = kiosk.store(tapped.effects[1])  # type: ignore[arg-type]
    # Link down: nothing published; the screen turns amber with its own signal.
    assert stored.effects == (Indicate(Signal.APPROVED_OFFLINE),)
    assert kiosk.state.screen is Screen.APPROVED_OFFLINE
    document = view(kiosk.state, CONFIG)
    assert document["message"] == "Approved offline"
    assert document["outcome"] is None  # no balance: the kiosk does not know one
    assert document["order"]["total_cents"] == 500  # type: ignore[index]
    assert document["offline"] == {
        "active": True,
        "allowed": True,
        "policy": {
            "config_version": VERSION,
            "sale_max_cents": 2_000,
            "card_max_cents": 3_000,
            "kiosk_max_cents": 5_000,
        },
        "pending": 1,
        "pending_cents": 500,
    }
    # It cannot be cancelled; it leaves the screen by itself.
    kiosk.send(Tick(), advance_ms=CONFIG.outcome_display_ms)
    assert kiosk.state.screen is Screen.IDLE


def test_an_offline_sale_refused_by_the_outbox_stays_on_the_order() -> None:
    kiosk = Driver()
    kiosk.tap(beer())
    refused = kiosk.send(RequestRefused("outbox full: no new sales until the network is back"))
    assert refused.effects == (Indicate(Signal.ERROR),)
    assert kiosk.state.screen is Screen.ORDER_PENDING and kiosk.state.pending == ()


@pytest.mark.parametrize(
    ("price_cents", "allowed"),
    [(0, True), (1_999, True), (2_000, True), (2_001, False)],
)
def test_the_sale_limit(price_cents: int, allowed: bool) -> None:
    kiosk = Driver()
    draft = beer(price_cents=price_cents)
    if allowed:
        assert kiosk.sell_offline(draft).offline
    else:
        assert kiosk.refused(draft) == "offline: over the offline limit"


def test_the_card_limit_counts_this_kiosks_unanswered_offline_sales_to_that_card() -> None:
    kiosk = Driver()
    kiosk.sell_offline(beer(price_cents=1_500))
    kiosk.sell_offline(beer(price_cents=1_500))  # 3000: exactly the card's limit
    assert kiosk.refused(beer(price_cents=1)) == "offline: over the offline limit for this card"
    # Another card has its own limit.
    kiosk.send(OrderEntered(beer()))
    kiosk.send(Tick())
    kiosk.sell_offline(beer(price_cents=1_000), OTHER)


def test_the_kiosk_limit_counts_all_its_unanswered_offline_sales() -> None:
    kiosk = Driver()
    for index in range(5):
        kiosk.sell_offline(beer(price_cents=1_000), f"04A1B2C3D4E5{index:02X}")
    assert kiosk.state.offline_pending == (5, 5_000)
    assert kiosk.refused(beer(price_cents=1), OTHER) == "offline limit of this bar reached"


def test_a_card_on_the_denylist_is_refused() -> None:
    assert Driver().refused(beer(), denied=True) == "card blocked"


def test_without_a_policy_the_bar_cannot_sell_offline() -> None:
    assert Driver(policy=None).refused(beer()) == "offline: this bar cannot sell offline"
    never_configured = Driver()
    never_configured.state = KioskState(online=False)
    assert never_configured.refused(beer()) == "offline: this bar cannot sell offline"


def test_returns_need_the_network() -> None:
    assert Driver().refused(CUP_BACK) == "offline: returns need the network"


def test_an_order_priced_by_another_config_is_not_sold_offline() -> None:
    # The sale must cite the config whose policy allowed it: an order entered under version 3
    # cannot be approved by version 4's policy.
    kiosk = Driver()
    assert kiosk.refused(beer(version=3)).startswith("offline: the config changed")
    assert kiosk.refused(beer(version=None)).startswith("offline: the config changed")


def test_refusals_follow_the_documented_order() -> None:
    state = replace(KioskState(), offline_policy=POLICY, policy_version=VERSION)
    # Over the sale limit and blocked: the sale limit is named first.
    assert offline_refusal(state, beer(price_cents=5_000), UID, denied=True) == (
        "offline: over the offline limit"
    )
    assert offline_refusal(state, beer(), UID, denied=True) == "card blocked"
    assert offline_refusal(state, beer(), UID, denied=False) is None


def test_the_totals_reset_as_results_arrive() -> None:
    kiosk = Driver()
    first = kiosk.sell_offline(beer(price_cents=1_500))
    second = kiosk.sell_offline(beer(price_cents=1_500))
    kiosk.send(LinkUp())
    answered = Outcome(
        request_id=first.request_id,
        seq=first.seq,
        card_uid=UID,
        approved=True,
        status="approved",
        error_code=None,
        message="Offline sale applied, debt 700",
        amount_cents=1_500,
        previous_balance_cents=800,
        new_balance_cents=0,
        replayed=False,
        at_ms=0,
        debt_cents=700,
        offline=True,
    )
    kiosk.send(ResultArrived(answered))
    assert kiosk.state.offline_pending == (1, 1_500)
    assert kiosk.state.card_offline_cents(UID) == 1_500
    assert kiosk.state.pending_request(second.request_id) is not None
    # The result is in the page's history with the debt it created.
    [late] = view(kiosk.state, CONFIG)["late_results"]  # type: ignore[misc]
    assert late == outcome_to_dict(answered)
    assert (late["debt_cents"], late["offline"], late["card_uid"]) == (700, True, "****E5F6")


def test_offline_sales_are_sent_in_seq_order_when_the_link_is_back() -> None:
    kiosk = Driver()
    sales = [kiosk.sell_offline(beer(), f"04A1B2C3D4E5{index:02X}") for index in range(3)]
    up = kiosk.send(LinkUp())
    assert up.effects == tuple(Publish(sale.request_id) for sale in sales)
    assert kiosk.state.screen is Screen.IDLE


def result_for(request: PendingRequest) -> Outcome:
    return Outcome(
        request_id=request.request_id,
        seq=request.seq,
        card_uid=request.card_uid,
        approved=True,
        status="approved",
        error_code=None,
        message="Offline sale applied",
        amount_cents=request.amount_cents,
        previous_balance_cents=1_000,
        new_balance_cents=500,
        replayed=False,
        at_ms=0,
        debt_cents=0,
        offline=request.offline,
    )


def test_a_backlog_goes_out_in_a_window_the_next_one_as_each_result_arrives() -> None:
    kiosk = Driver(config=replace(CONFIG, results_awaited_max=2))
    sales = [kiosk.sell_offline(beer(), f"04A1B2C3D4E5{index:02X}") for index in range(4)]
    up = kiosk.send(LinkUp())
    # Two awaiting their result at most, in seq order; the others wait their turn.
    assert up.effects == (Publish(sales[0].request_id), Publish(sales[1].request_id))
    assert [p.sends for p in kiosk.state.pending] == [1, 1, 0, 0]
    # A result makes room for the next one in seq order (an acknowledgement does not).
    acked = kiosk.send(PublishAcked(sales[0].request_id))
    assert acked.effects == ()
    answered = kiosk.send(ResultArrived(result_for(sales[0])))
    assert answered.effects == (Publish(sales[2].request_id),)
    # A new sale made while the backlog drains waits behind it (requests go out in seq order).
    tapped = kiosk.tap(beer(), OTHER)
    [create] = [e for e in tapped.effects if isinstance(e, CreateRequest)]
    assert not create.offline
    stored = kiosk.store(create)
    fresh = kiosk.state.pending[-1]
    assert not any(isinstance(e, Publish) for e in stored.effects)
    assert kiosk.state.screen is Screen.WAITING
    assert kiosk.send(ResultArrived(result_for(sales[1]))).effects == (
        Publish(sales[3].request_id),
    )
    assert kiosk.send(ResultArrived(result_for(sales[2]))).effects == (Publish(fresh.request_id),)
    # Its result is shown as usual once it comes.
    shown = kiosk.send(ResultArrived(result_for(fresh)))
    assert shown.effects == (Indicate(Signal.APPROVED),)
    assert kiosk.state.screen is Screen.APPROVED


def test_the_window_holds_requests_awaiting_a_result_after_a_reconnect_too() -> None:
    kiosk = Driver(config=replace(CONFIG, results_awaited_max=2))
    sales = [kiosk.sell_offline(beer(), f"04A1B2C3D4E5{index:02X}") for index in range(3)]
    kiosk.send(LinkUp())
    kiosk.send(LinkDown(), advance_ms=10)
    # Back again: the two handed to MQTT are resent by the client itself; none is added.
    again = kiosk.send(LinkUp(), advance_ms=10)
    assert again.effects == ()
    assert kiosk.state.pending_request(sales[2].request_id).sends == 0  # type: ignore[union-attr]


def test_a_request_published_online_that_times_out_stays_online() -> None:
    kiosk = Driver(online=True)
    tapped = kiosk.tap(beer())
    [create] = [e for e in tapped.effects if isinstance(e, CreateRequest)]
    assert not create.offline
    stored = kiosk.store(create)
    request = kiosk.state.pending[-1]
    assert stored.effects == (Publish(request.request_id),)
    kiosk.send(LinkDown(), advance_ms=100)
    kiosk.send(Tick(), advance_ms=CONFIG.result_timeout_ms)
    assert kiosk.state.screen is Screen.OFFLINE
    assert not kiosk.state.pending_request(request.request_id).offline  # type: ignore[union-attr]
    # Its screen offers no way to turn it into an offline sale; the next customer is new.
    assert kiosk.state.offline_pending == (0, 0)


def test_no_acknowledgement_for_too_long_means_offline_before_signing() -> None:
    kiosk = Driver(online=True)
    first = kiosk.tap(beer())
    [create] = [e for e in first.effects if isinstance(e, CreateRequest)]
    kiosk.store(create)
    waiting = kiosk.state.pending[-1]
    assert not waiting.offline
    assert not is_offline(kiosk.state, CONFIG, kiosk.now_ms + 2_999)
    assert is_offline(kiosk.state, CONFIG, kiosk.now_ms + 3_000)
    kiosk.send(Tick(), advance_ms=3_000)
    assert kiosk.state.link_stale and view(kiosk.state, CONFIG)["offline"]["active"]  # type: ignore[index]
    kiosk.send(Tick(), advance_ms=CONFIG.result_timeout_ms)  # the first one times out
    assert kiosk.state.screen is Screen.TIMED_OUT
    # The next customer's order: the kiosk knows it is offline, so it is an offline sale.
    second = kiosk.tap(beer(), OTHER)
    assert CreateRequest(beer(), OTHER, offline=True) in second.effects
    # The first request stays what it was: online, waiting for its result.
    assert not kiosk.state.pending_request(waiting.request_id).offline  # type: ignore[union-attr]
    # The broker's acknowledgement: online again, no more offline sales.
    kiosk.store(second.effects[1])  # type: ignore[arg-type]
    for request in kiosk.state.pending:
        kiosk.send(PublishAcked(request.request_id))
    kiosk.send(Tick())
    assert not kiosk.state.link_stale
    assert not is_offline(kiosk.state, CONFIG, kiosk.now_ms)


def test_a_checkpoint_top_up_offline_is_queued_not_an_offline_sale() -> None:
    kiosk = Driver(config=replace(CONFIG, mode=Mode.CHECKPOINT))
    kiosk.send(OrderEntered(RechargeDraft(2_000, "cash", "anna", config_version=VERSION)))
    tapped = kiosk.send(CardTapped(UID))
    [create] = [e for e in tapped.effects if isinstance(e, CreateRequest)]
    assert not create.offline
    assert view(kiosk.state, kiosk.config)["offline"]["active"] is False  # type: ignore[index]


def test_pending_offline_sales_loaded_at_start_count_towards_the_limits() -> None:
    # After a reboot the outbox hands back its requests: the offline ones carry their mark.
    kiosk = Driver()
    loaded = tuple(
        PendingRequest(f"req-{seq}", seq, 0, UID, 1_000, offline=True) for seq in (1, 2, 3)
    )
    from device.machine import OutboxLoaded

    kiosk.send(OutboxLoaded(loaded))
    assert kiosk.state.offline_pending == (3, 3_000)
    assert kiosk.refused(beer(price_cents=1)) == "offline: over the offline limit for this card"
