"""The kiosk's state machine: what the screen shows, when to send, when to give up waiting.

Pure: no I/O, no clock, no randomness. ``step(state, event, config, now_ms)`` returns the next
state, the effects the shell must carry out (create a request, publish one, drive the
indicators) and, for commands from the local page, a reply. ``now_ms`` comes from a monotonic
clock: timers must not jump when NTP sets the wall clock. The shell (device/kiosk.py) owns the
outbox, the MQTT link and the reader and feeds their outcomes back in as events.

Rules that matter for money:
- An order is consumed by the first card read: it becomes exactly one request, stored in the
  outbox before it is published. Nothing here ever makes a second request for the same order.
- A request that gets no result in time stays pending (screen ``timed_out``); it is resent with
  the same bytes and its late result is shown when it arrives.
- When the outbox is full the kiosk refuses new orders and taps, and says so.
- (1.1) Offline sales: a bar kiosk that knows it is offline **before** the request is created
  (the link is down, or the broker has not acknowledged a publish for ``offline_after_ms``)
  approves a bar order itself when its config's offline policy allows it (``offline_refusal``);
  the request is then signed with ``offline: true``, stored, and only then the screen turns
  amber (``APPROVED_OFFLINE``). Otherwise the order is refused on the spot with the reason. A
  request created online never becomes an offline sale, whatever happens to it afterwards. The
  running totals are those of the offline sales in ``pending`` (the outbox): nothing else to
  keep, so they survive a reboot with the outbox.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import TypeAlias

from device.limits import LATE_RESULTS_MAX, OFFLINE_AFTER_S_DEFAULT, RESULTS_AWAITED_MAX
from protocol.models import BarItem, OfflinePolicy, PaymentMethod
from protocol.models import CardSun as CardSun  # (1.1) genuine wristbands
from protocol.redaction import mask_card_uid


class Mode(StrEnum):
    BAR = "bar"
    CHECKPOINT = "checkpoint"


class Screen(StrEnum):
    IDLE = "idle"
    ORDER_PENDING = "order_pending"  # an order waits for a card
    CARD_READ = "card_read"  # the card was read; the request is being stored
    WAITING = "waiting"  # the request is stored and sent; waiting for the signed result
    APPROVED = "approved"
    # (1.1) The kiosk approved this sale itself, offline: stored, the cloud will apply it.
    APPROVED_OFFLINE = "approved_offline"
    DECLINED = "declined"  # declined or rejected by the cloud
    TIMED_OUT = "timed_out"  # no result in time; the request stays pending
    OFFLINE = "offline"  # the request is stored but the link is down


class Signal(StrEnum):
    """What the indicators (LEDs, buzzer) should play."""

    CARD_READ = "card_read"
    APPROVED = "approved"
    APPROVED_OFFLINE = "approved_offline"
    DECLINED = "declined"
    OFFLINE = "offline"
    ERROR = "error"


# --- what an order is before it is signed -------------------------------------------------------
# A draft's fields are its request's body, by the same names: device/kiosk.py's build_request
# copies them into a BarOrder or a CheckpointRecharge. ``config_version`` is the config the kiosk
# ran when the order was entered (for a bar order: the config whose menu priced it), None when it
# never received one (PROTOCOL.md 1.1 "Menus").


@dataclass(frozen=True, slots=True)
class BarDraft:
    items: tuple[BarItem, ...]
    total_cents: int
    staff_id: str | None = None
    config_version: int | None = None


@dataclass(frozen=True, slots=True)
class RechargeDraft:
    amount_cents: int
    payment_method: PaymentMethod
    staff_id: str
    checkpoint_id: str | None = None
    config_version: int | None = None


@dataclass(frozen=True, slots=True)
class VoidDraft:
    """(1.1) Cancel an approved bar order of this kiosk (a ``void`` request). No tap: the card
    is the order's (``VoidEntered.card_uid``). ``amount_cents``: what the order charged, i.e.
    what comes back (kept by the kiosk for its screen, not sent: the cloud knows the order)."""

    original_request_id: str
    staff_id: str
    amount_cents: int
    config_version: int | None = None


@dataclass(frozen=True, slots=True)
class SwapDraft:
    """(1.1) "Replace a wristband" at a checkpoint (a ``card_swap`` request): the old band's UID
    typed, or read by a first tap (``old_card_uid`` None until then, ``old_card_sun`` the SUN it
    gave); the next tap is the new band, which becomes the request's ``card_uid``."""

    staff_id: str
    old_card_uid: str | None = None
    old_card_sun: CardSun | None = None
    config_version: int | None = None


@dataclass(frozen=True, slots=True)
class StaffLoginDraft:
    """(1.1) "Staff login" (a ``staff_login`` request): the staff member types their id and PIN,
    then taps their own staff band (the request's ``card_uid``). The PIN is a secret: hidden from
    ``repr`` (log lines of a failed event print the event) and never on the page."""

    staff_id: str
    pin: str = field(repr=False)
    config_version: int | None = None


@dataclass(frozen=True, slots=True)
class StaffLogoutDraft:
    """(1.1) "Log out" (a ``staff_logout`` request): no tap, the band is the one the login
    was made with (``LogoutEntered.card_uid``)."""

    staff_id: str
    config_version: int | None = None


@dataclass(frozen=True, slots=True)
class CashOutDraft:
    """(ours) "Cash out a wristband" at a checkpoint (a ``cash_out`` request): the first tap
    chooses the band (``band_uid``, ``band_sun``), ``ConfirmPressed`` sends it. The cloud pays
    the band's balance from this checkpoint's drawer (its Stripe part refunded) and blocks it."""

    staff_id: str
    band_uid: str | None = None
    band_sun: CardSun | None = None
    config_version: int | None = None


Draft: TypeAlias = (
    BarDraft
    | RechargeDraft
    | VoidDraft
    | SwapDraft
    | StaffLoginDraft
    | StaffLogoutDraft
    | CashOutDraft
)

# What the page may enter at each kind of kiosk (a void and a logout come with their card:
# ``VoidEntered``, ``LogoutEntered``).
_DRAFTS_BY_MODE: dict[str, tuple[type, ...]] = {
    "bar": (BarDraft, StaffLoginDraft),
    "checkpoint": (RechargeDraft, SwapDraft, CashOutDraft, StaffLoginDraft),
}


def draft_amount_cents(draft: Draft) -> int:
    """What the card is charged (bar, negative for returns only) or credited (checkpoint, and
    a void: the order's amount back); 0 for a swap (it moves what the old card holds)."""
    if isinstance(draft, BarDraft):
        return draft.total_cents
    if isinstance(draft, SwapDraft | StaffLoginDraft | StaffLogoutDraft | CashOutDraft):
        return 0  # a cash-out pays what the card holds: only the cloud knows how much
    return draft.amount_cents


# --- state -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MachineConfig:
    mode: Mode
    outbox_max: int
    result_timeout_ms: int
    resend_after_ms: int
    resend_after_ms_max: int
    outcome_display_ms: int
    # (1.1) A publish the broker has not acknowledged for this long means the link is dead
    # even if TCP has not noticed yet: new bar orders are then judged as offline sales.
    offline_after_ms: int = int(OFFLINE_AFTER_S_DEFAULT * 1000)
    # (1.1) At most this many requests handed to MQTT await their result; the rest wait their
    # turn in seq order (a backlog drains in a window: device/limits.py).
    results_awaited_max: int = RESULTS_AWAITED_MAX


@dataclass(frozen=True, slots=True)
class PendingRequest:
    """A request in the outbox, waiting for its signed result."""

    request_id: str
    seq: int
    created_at_ms: int
    card_uid: str
    amount_cents: int
    # Publishes handed to the MQTT client by this process (0: never, e.g. loaded at start).
    sends: int = 0
    # The broker acknowledged the last publish (PUBACK); only then do we count towards a resend.
    acked: bool = False
    resend_at_ms: int | None = None
    # (1.1) An offline sale (signed with ``offline: true``): counts towards the running totals.
    offline: bool = False
    # Since when a publish of it waits for the broker's acknowledgement (None: none waits).
    unacked_since_ms: int | None = None


@dataclass(frozen=True, slots=True)
class Outcome:
    """A verified result, as the screen shows it (``at_ms``: wall clock when it arrived)."""

    request_id: str
    seq: int
    card_uid: str
    approved: bool
    status: str
    error_code: str | None
    message: str
    amount_cents: int
    previous_balance_cents: int | None
    new_balance_cents: int | None
    replayed: bool
    at_ms: int
    # (1.1) What the card owes after this outcome (an offline sale it could not cover).
    debt_cents: int | None = None
    offline: bool = False


@dataclass(frozen=True, slots=True)
class KioskState:
    screen: Screen = Screen.IDLE
    online: bool = False
    # The order on screen: waiting for a card, or the order of the current request.
    draft: Draft | None = None
    current_request_id: str | None = None
    card_uid: str | None = None
    deadline_ms: int | None = None
    outcome: Outcome | None = None
    pending: tuple[PendingRequest, ...] = ()
    notice: str | None = None
    late_results: tuple[Outcome, ...] = ()
    version: int = 0
    # (1.1) The offline policy of the config the kiosk runs, and that config's version (None:
    # no config, or a config that forbids offline sales).
    offline_policy: OfflinePolicy | None = None
    policy_version: int | None = None
    # Online, but a publish has waited longer than ``offline_after_ms`` for the broker (the
    # page shows it; decisions compute it afresh from the clock).
    link_stale: bool = False

    @property
    def outstanding_ids(self) -> frozenset[str]:
        return frozenset(request.request_id for request in self.pending)

    @property
    def offline_pending(self) -> tuple[int, int]:
        """How many offline sales wait for their result, and their sum in cents."""
        sales = [request.amount_cents for request in self.pending if request.offline]
        return len(sales), sum(sales)

    def card_offline_cents(self, card_uid: str) -> int:
        """This kiosk's unanswered offline sales to ``card_uid``, in cents."""
        return sum(
            request.amount_cents
            for request in self.pending
            if request.offline and request.card_uid == card_uid
        )

    def pending_request(self, request_id: str | None) -> PendingRequest | None:
        return next((p for p in self.pending if p.request_id == request_id), None)


# --- events ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OrderEntered:
    draft: Draft


@dataclass(frozen=True, slots=True)
class VoidEntered:
    """(1.1) Cancel an approved order of this kiosk: the shell found it among its completed
    requests (approved, within the void window, not yet voided) and gives its card."""

    draft: VoidDraft
    card_uid: str


@dataclass(frozen=True, slots=True)
class LogoutEntered:
    """(1.1) A logged-in staff member logs out: the shell dropped the login already and gives
    the band it was made with."""

    draft: StaffLogoutDraft
    card_uid: str


@dataclass(frozen=True, slots=True)
class ConfirmPressed:
    """(ours) The cash-out of the band on screen is confirmed: send it."""


@dataclass(frozen=True, slots=True)
class CancelPressed:
    pass


@dataclass(frozen=True, slots=True)
class DismissPressed:
    pass


@dataclass(frozen=True, slots=True)
class CardTapped:
    card_uid: str
    card_sun: CardSun | None = None  # (1.1) the band's SUN message, when it gave one
    # (1.1) The card is on the deny-list the kiosk holds (the shell looks it up).
    denied: bool = False


@dataclass(frozen=True, slots=True)
class CardFailed:
    """A read that produced no usable UID (unsupported card, read error, removed too early)."""

    status: str


@dataclass(frozen=True, slots=True)
class RequestStored:
    request: PendingRequest


@dataclass(frozen=True, slots=True)
class RequestRefused:
    reason: str


@dataclass(frozen=True, slots=True)
class OutboxLoaded:
    requests: tuple[PendingRequest, ...]


@dataclass(frozen=True, slots=True)
class LinkUp:
    pass


@dataclass(frozen=True, slots=True)
class LinkDown:
    pass


@dataclass(frozen=True, slots=True)
class PublishAcked:
    request_id: str
    refused_reason: str | None = None


@dataclass(frozen=True, slots=True)
class ResultArrived:
    outcome: Outcome


@dataclass(frozen=True, slots=True)
class Tick:
    pass


@dataclass(frozen=True, slots=True)
class MenuChanged:
    """The kiosk now sells from another menu (a config with a new menu was applied)."""


@dataclass(frozen=True, slots=True)
class PolicyChanged:
    """(1.1) A config was applied: its version and offline policy (None: no offline sales)."""

    config_version: int
    offline: OfflinePolicy | None


Event: TypeAlias = (
    OrderEntered
    | VoidEntered
    | LogoutEntered
    | ConfirmPressed
    | CancelPressed
    | DismissPressed
    | CardTapped
    | CardFailed
    | RequestStored
    | RequestRefused
    | OutboxLoaded
    | LinkUp
    | LinkDown
    | PublishAcked
    | ResultArrived
    | Tick
    | MenuChanged
    | PolicyChanged
)


# --- effects ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CreateRequest:
    """Allocate seq and request_id, stamp the wall clock, sign, store in the outbox; answer
    RequestStored or RequestRefused."""

    draft: Draft
    card_uid: str
    card_sun: CardSun | None = None  # (1.1) passed on into the request as card_sun
    # (1.1) Sign it as an offline sale (``offline: true``): the machine approved it itself.
    offline: bool = False


@dataclass(frozen=True, slots=True)
class Publish:
    """Publish the stored bytes of this request (QoS 1)."""

    request_id: str


@dataclass(frozen=True, slots=True)
class Indicate:
    signal: Signal


Effect: TypeAlias = CreateRequest | Publish | Indicate


@dataclass(frozen=True, slots=True)
class Reply:
    ok: bool
    message: str = ""


@dataclass(frozen=True, slots=True)
class Transition:
    state: KioskState
    effects: tuple[Effect, ...] = ()
    reply: Reply | None = None


# --- the transition function --------------------------------------------------------------------

_BUSY_SCREENS = frozenset({Screen.CARD_READ, Screen.WAITING})
_DISMISSABLE_SCREENS = frozenset(
    {Screen.APPROVED, Screen.APPROVED_OFFLINE, Screen.DECLINED, Screen.TIMED_OUT, Screen.OFFLINE}
)
_OUTCOME_SCREENS = frozenset({Screen.APPROVED, Screen.APPROVED_OFFLINE, Screen.DECLINED})
_AWAITING_SCREENS = frozenset({Screen.CARD_READ, Screen.WAITING, Screen.TIMED_OUT, Screen.OFFLINE})


def step(state: KioskState, event: Event, config: MachineConfig, now_ms: int) -> Transition:
    """The next state, effects and reply for one event."""
    transition = _step(state, event, config, now_ms)
    if transition.state != state:
        transition = replace(transition, state=replace(transition.state, version=state.version + 1))
    return transition


def _step(state: KioskState, event: Event, config: MachineConfig, now_ms: int) -> Transition:
    if isinstance(event, Tick):
        return _tick(state, config, now_ms)
    if isinstance(event, OrderEntered):
        return _order_entered(state, event.draft, config, now_ms)
    if isinstance(event, VoidEntered):
        return _void_entered(state, event, config, now_ms)
    if isinstance(event, LogoutEntered):
        return _logout_entered(state, event, config)
    if isinstance(event, ConfirmPressed):
        return _confirm_pressed(state, config, now_ms)
    if isinstance(event, CancelPressed):
        if state.screen is Screen.ORDER_PENDING:
            return Transition(_idle(state), reply=Reply(True, "order cancelled"))
        if state.screen is Screen.IDLE:
            return Transition(state, reply=Reply(True, "nothing to cancel"))
        if state.screen in _BUSY_SCREENS or state.screen in _DISMISSABLE_SCREENS:
            return Transition(
                state,
                reply=Reply(False, "the card was already read: this payment cannot be cancelled"),
            )
    if isinstance(event, DismissPressed):
        if state.screen in _DISMISSABLE_SCREENS or state.screen is Screen.IDLE:
            return Transition(_idle(state), reply=Reply(True, "ready"))
        return Transition(state, reply=Reply(False, f"cannot dismiss while {state.screen}"))
    if isinstance(event, CardTapped):
        return _card_tapped(state, event, config, now_ms)
    if isinstance(event, CardFailed):
        if state.screen is Screen.ORDER_PENDING:
            notice = _card_failure_text(event.status)
            return Transition(replace(state, notice=notice), (Indicate(Signal.ERROR),))
        return Transition(state)
    if isinstance(event, RequestStored):
        return _request_stored(state, event.request, config, now_ms)
    if isinstance(event, RequestRefused):
        if state.screen is Screen.CARD_READ and isinstance(
            state.draft, VoidDraft | StaffLogoutDraft
        ):
            # A void has no order to go back to (and must never wait for a tap).
            return Transition(replace(_idle(state), notice=event.reason), (Indicate(Signal.ERROR),))
        if state.screen is Screen.CARD_READ:
            refused = replace(
                state, screen=Screen.ORDER_PENDING, card_uid=None, notice=event.reason
            )
            return Transition(refused, (Indicate(Signal.ERROR),))
        return Transition(replace(state, notice=event.reason))
    if isinstance(event, OutboxLoaded):
        known = state.outstanding_ids
        added = tuple(request for request in event.requests if request.request_id not in known)
        pending = tuple(sorted(state.pending + added, key=lambda request: request.seq))
        return _send_unsent(replace(state, pending=pending), config, now_ms)
    if isinstance(event, LinkUp):
        return _link_up(state, config, now_ms)
    if isinstance(event, LinkDown):
        return _link_down(state)
    if isinstance(event, PublishAcked):
        return _publish_acked(state, event, config, now_ms)
    if isinstance(event, ResultArrived):
        return _result_arrived(state, event.outcome, config, now_ms)
    if isinstance(event, MenuChanged):
        return _menu_changed(state)
    if isinstance(event, PolicyChanged):
        return Transition(
            replace(state, offline_policy=event.offline, policy_version=event.config_version)
        )
    raise AssertionError(f"unhandled event {event!r}")


def _idle(state: KioskState) -> KioskState:
    return replace(
        state,
        screen=Screen.IDLE,
        draft=None,
        current_request_id=None,
        card_uid=None,
        deadline_ms=None,
        outcome=None,
        notice=None,
    )


def outbox_full(state: KioskState, config: MachineConfig) -> bool:
    return len(state.pending) >= config.outbox_max


def _outbox_full_text(state: KioskState) -> str:
    return (
        f"outbox full: {len(state.pending)} payments wait for the network;"
        " no new sales until they are confirmed"
    )


def _order_entered(
    state: KioskState, draft: Draft, config: MachineConfig, now_ms: int
) -> Transition:
    if not isinstance(draft, _DRAFTS_BY_MODE[config.mode]):
        return Transition(state, reply=Reply(False, f"this kiosk is a {config.mode} kiosk"))
    if state.screen in _BUSY_SCREENS:
        return Transition(state, reply=Reply(False, "busy: waiting for the current payment"))
    if outbox_full(state, config):
        notice = _outbox_full_text(state)
        return Transition(
            replace(state, notice=notice), (Indicate(Signal.ERROR),), Reply(False, notice)
        )
    if isinstance(draft, StaffLoginDraft) and is_offline(state, config, now_ms):
        # The cloud checks band, id and PIN: nothing to verify offline (and no PIN is stored).
        return Transition(
            replace(state, notice=LOGIN_OFFLINE_TEXT),
            (Indicate(Signal.ERROR),),
            Reply(False, LOGIN_OFFLINE_TEXT),
        )
    pending = replace(_idle(state), screen=Screen.ORDER_PENDING, draft=draft)
    if isinstance(draft, SwapDraft):
        return Transition(pending, reply=Reply(True, _swap_prompt(draft)))
    if isinstance(draft, StaffLoginDraft | CashOutDraft):
        return Transition(pending, reply=Reply(True, _pending_prompt(draft)))
    return Transition(pending, reply=Reply(True, "tap your wristband"))


LOGIN_OFFLINE_TEXT = "offline: a staff login needs the network (the cloud checks the PIN)"
CASH_OUT_CONFIRM_FIRST_TEXT = "cash out: tap the wristband first"


def _pending_prompt(draft: StaffLoginDraft | CashOutDraft) -> str:
    if isinstance(draft, StaffLoginDraft):
        return f"staff login {draft.staff_id}: tap YOUR staff band"
    if draft.band_uid is None:
        return "cash out: tap the wristband"
    return f"cash out {mask_card_uid(draft.band_uid)}: press Confirm to pay out its balance"


def _logout_entered(state: KioskState, event: LogoutEntered, config: MachineConfig) -> Transition:
    """A logout is sent at once (its band is the login's), online or not: it only ends a
    login, so it may wait in the outbox."""
    if state.screen in _BUSY_SCREENS:
        return Transition(state, reply=Reply(False, "busy: waiting for the current payment"))
    if state.screen is Screen.ORDER_PENDING:
        return Transition(
            state, reply=Reply(False, "an order waits for a wristband: cancel it first")
        )
    if outbox_full(state, config):
        notice = _outbox_full_text(state)
        return Transition(
            replace(state, notice=notice), (Indicate(Signal.ERROR),), Reply(False, notice)
        )
    read = replace(
        _idle(state), screen=Screen.CARD_READ, draft=event.draft, card_uid=event.card_uid
    )
    return Transition(
        read,
        (CreateRequest(event.draft, event.card_uid),),
        Reply(True, f"{event.draft.staff_id} logged out"),
    )


def _confirm_pressed(state: KioskState, config: MachineConfig, now_ms: int) -> Transition:
    draft = state.draft
    if state.screen is not Screen.ORDER_PENDING or not isinstance(draft, CashOutDraft):
        return Transition(state, reply=Reply(False, "nothing to confirm"))
    if draft.band_uid is None:
        return Transition(state, reply=Reply(False, CASH_OUT_CONFIRM_FIRST_TEXT))
    if outbox_full(state, config):
        notice = _outbox_full_text(state)
        return Transition(
            replace(state, notice=notice), (Indicate(Signal.ERROR),), Reply(False, notice)
        )
    read = replace(state, screen=Screen.CARD_READ, card_uid=draft.band_uid, notice=None)
    return Transition(
        read,
        (Indicate(Signal.CARD_READ), CreateRequest(draft, draft.band_uid, draft.band_sun)),
        Reply(True, "cashing out"),
    )


VOID_OFFLINE_TEXT = "offline: an order can only be cancelled online (the cloud must confirm it)"
SWAP_OLD_BAND_AGAIN_TEXT = "that is the old band: tap the NEW band"


def _swap_prompt(draft: SwapDraft) -> str:
    if draft.old_card_uid is None:
        return "replace a wristband: tap the OLD band (or type its UID)"
    return f"replace {mask_card_uid(draft.old_card_uid)}: tap the NEW band"


def _void_entered(
    state: KioskState, event: VoidEntered, config: MachineConfig, now_ms: int
) -> Transition:
    """A void is sent at once (no tap: its card is the order's), and only online: the kiosk
    never cancels a sale by itself (PROTOCOL.md 1.1 ``void``)."""
    if config.mode is not Mode.BAR:
        return Transition(state, reply=Reply(False, "only a bar kiosk cancels its orders"))
    if state.screen in _BUSY_SCREENS:
        return Transition(state, reply=Reply(False, "busy: waiting for the current payment"))
    if state.screen is Screen.ORDER_PENDING:
        return Transition(
            state, reply=Reply(False, "an order waits for a wristband: cancel it first")
        )
    if is_offline(state, config, now_ms):
        return Transition(
            replace(state, notice=VOID_OFFLINE_TEXT),
            (Indicate(Signal.ERROR),),
            Reply(False, VOID_OFFLINE_TEXT),
        )
    if outbox_full(state, config):
        notice = _outbox_full_text(state)
        return Transition(
            replace(state, notice=notice), (Indicate(Signal.ERROR),), Reply(False, notice)
        )
    read = replace(
        _idle(state), screen=Screen.CARD_READ, draft=event.draft, card_uid=event.card_uid
    )
    return Transition(
        read, (CreateRequest(event.draft, event.card_uid),), Reply(True, "cancelling the order")
    )


def _card_tapped(
    state: KioskState, tap: CardTapped, config: MachineConfig, now_ms: int
) -> Transition:
    draft = state.draft
    if state.screen is not Screen.ORDER_PENDING or draft is None or isinstance(draft, VoidDraft):
        # A band tapped with no order (or held again after paying) never makes a request.
        return Transition(state)
    if isinstance(draft, CashOutDraft):
        # The tap chooses the band (another tap chooses another); Confirm sends it.
        chosen = replace(draft, band_uid=tap.card_uid, band_sun=tap.card_sun)
        return Transition(
            replace(state, draft=chosen, card_uid=tap.card_uid, notice=_pending_prompt(chosen)),
            (Indicate(Signal.CARD_READ),),
        )
    if isinstance(draft, StaffLoginDraft) and is_offline(state, config, now_ms):
        return Transition(replace(state, notice=LOGIN_OFFLINE_TEXT), (Indicate(Signal.ERROR),))
    if isinstance(draft, SwapDraft):
        if draft.old_card_uid is None:
            # The first tap of a swap whose old UID was not typed: that is the old band.
            old = replace(draft, old_card_uid=tap.card_uid, old_card_sun=tap.card_sun)
            return Transition(
                replace(state, draft=old, notice=_swap_prompt(old)), (Indicate(Signal.CARD_READ),)
            )
        if tap.card_uid == draft.old_card_uid:
            notice = SWAP_OLD_BAND_AGAIN_TEXT
            return Transition(replace(state, notice=notice), (Indicate(Signal.ERROR),))
    if outbox_full(state, config):
        notice = _outbox_full_text(state)
        return Transition(replace(state, notice=notice), (Indicate(Signal.ERROR),))
    card_uid = tap.card_uid
    offline = isinstance(draft, BarDraft) and is_offline(state, config, now_ms)
    if offline:
        assert isinstance(draft, BarDraft)
        refusal = offline_refusal(state, draft, card_uid, denied=tap.denied)
        if refusal is not None:
            # Refused on the spot: nothing is signed or stored; the order stays on screen.
            refused = replace(state, notice=refusal)
            return Transition(refused, (Indicate(Signal.DECLINED),))
    read = replace(state, screen=Screen.CARD_READ, card_uid=card_uid, notice=None)
    effects = (
        Indicate(Signal.CARD_READ),
        CreateRequest(draft, card_uid, tap.card_sun, offline=offline),
    )
    return Transition(read, effects)


def is_offline(state: KioskState, config: MachineConfig, now_ms: int) -> bool:
    """Whether the kiosk knows it is offline now: the link is down, or a publish has waited
    ``offline_after_ms`` or longer for the broker's acknowledgement (a link that died without
    TCP noticing; paho's keepalive would take far longer to say so)."""
    if not state.online:
        return True
    return any(
        request.unacked_since_ms is not None
        and now_ms - request.unacked_since_ms >= config.offline_after_ms
        for request in state.pending
    )


OFFLINE_NOT_ALLOWED_TEXT = "offline: this bar cannot sell offline"
OFFLINE_RETURNS_TEXT = "offline: returns need the network"
OFFLINE_CONFIG_CHANGED_TEXT = (
    "offline: the config changed since this order was entered: enter it again"
)
OFFLINE_SALE_LIMIT_TEXT = "offline: over the offline limit"
OFFLINE_CARD_LIMIT_TEXT = "offline: over the offline limit for this card"
OFFLINE_BLOCKED_TEXT = "card blocked"
OFFLINE_KIOSK_LIMIT_TEXT = "offline limit of this bar reached"


def offline_refusal(
    state: KioskState, draft: BarDraft, card_uid: str, *, denied: bool
) -> str | None:
    """Why the offline sale of ``draft`` to ``card_uid`` must be refused, or None when the
    policy of the config the kiosk runs allows it (PROTOCOL.md "Offline sales"), checked in
    this order: a policy at all; the order was priced by that config (the sale cites one
    config, whose policy must be the one that allowed it); no return lines; the total between
    0 and ``sale_max_cents``; the card not on the deny-list; this kiosk's unanswered offline
    sales to the card plus this one within ``card_max_cents``; all its unanswered offline
    sales plus this one within ``kiosk_max_cents``."""
    policy = state.offline_policy
    if policy is None or state.policy_version is None:
        return OFFLINE_NOT_ALLOWED_TEXT
    if draft.config_version != state.policy_version:
        return OFFLINE_CONFIG_CHANGED_TEXT
    if any(item.is_return for item in draft.items):
        return OFFLINE_RETURNS_TEXT
    total_cents = draft.total_cents
    if not 0 <= total_cents <= policy.sale_max_cents:
        return OFFLINE_SALE_LIMIT_TEXT
    if denied:
        return OFFLINE_BLOCKED_TEXT
    if state.card_offline_cents(card_uid) + total_cents > policy.card_max_cents:
        return OFFLINE_CARD_LIMIT_TEXT
    if state.offline_pending[1] + total_cents > policy.kiosk_max_cents:
        return OFFLINE_KIOSK_LIMIT_TEXT
    return None


def _request_stored(
    state: KioskState, request: PendingRequest, config: MachineConfig, now_ms: int
) -> Transition:
    assert state.pending_request(request.request_id) is None, "request stored twice"
    # Sent now unless older ones still wait their turn in the window (seq order).
    sent = _send_unsent(replace(state, pending=(*state.pending, request)), config, now_ms)
    new_state = sent.state
    effects: list[Effect] = list(sent.effects)
    if request.offline and state.screen is Screen.CARD_READ:
        # Stored (durably, by the shell, before this event): now, and only now, amber.
        approved = replace(
            new_state,
            screen=Screen.APPROVED_OFFLINE,
            current_request_id=request.request_id,
            deadline_ms=now_ms + config.outcome_display_ms,
        )
        return Transition(approved, (*effects, Indicate(Signal.APPROVED_OFFLINE)))
    if state.screen is Screen.CARD_READ:
        screen = Screen.WAITING if state.online else Screen.OFFLINE
        new_state = replace(
            new_state,
            screen=screen,
            current_request_id=request.request_id,
            deadline_ms=now_ms + config.result_timeout_ms,
        )
        if not state.online:
            effects.append(Indicate(Signal.OFFLINE))
    return Transition(new_state, tuple(effects))


def _sent(request: PendingRequest, config: MachineConfig, now_ms: int) -> PendingRequest:
    """``request`` once handed to MQTT. Until the broker's acknowledgement sets the normal resend
    time, the longest pause applies: should the acknowledgement itself be lost, the request is
    still sent again, late, instead of never."""
    waiting = not request.acked and request.unacked_since_ms is not None
    return replace(
        request,
        sends=request.sends + 1,
        acked=False,
        resend_at_ms=now_ms + config.resend_after_ms_max,
        unacked_since_ms=request.unacked_since_ms if waiting else now_ms,
    )


def _send_unsent(state: KioskState, config: MachineConfig, now_ms: int) -> Transition:
    """Publish, in seq order, the pending requests this process never handed to MQTT, while
    fewer than ``results_awaited_max`` handed to it await their result (a backlog back online
    goes out in that window, the next one as each result arrives)."""
    if not state.online:
        return Transition(state)
    unsent = sum(1 for request in state.pending if request.sends == 0)
    room = config.results_awaited_max - (len(state.pending) - unsent)
    if not unsent or room <= 0:
        return Transition(state)
    effects: list[Effect] = []
    pending: list[PendingRequest] = []
    for request in state.pending:
        if request.sends == 0 and len(effects) < room:
            request = _sent(request, config, now_ms)
            effects.append(Publish(request.request_id))
        pending.append(request)
    return Transition(replace(state, pending=tuple(pending)), tuple(effects))


def _link_up(state: KioskState, config: MachineConfig, now_ms: int) -> Transition:
    # Requests the MQTT client already holds unacknowledged are resent by the client itself on
    # reconnect (same packet); publishing them again would only make duplicates.
    # What the client resends on reconnect gets a fresh window for its acknowledgement.
    pending = tuple(
        p if p.unacked_since_ms is None else replace(p, unacked_since_ms=now_ms)
        for p in state.pending
    )
    state = replace(state, online=True, pending=pending, link_stale=False)
    if state.screen is Screen.OFFLINE:
        state = replace(state, screen=Screen.WAITING, deadline_ms=now_ms + config.result_timeout_ms)
    return _send_unsent(state, config, now_ms)


def _link_down(state: KioskState) -> Transition:
    if not state.online:
        return Transition(state)
    offline = replace(state, online=False)
    if state.screen is Screen.WAITING:
        offline = replace(offline, screen=Screen.OFFLINE)
    return Transition(offline, (Indicate(Signal.OFFLINE),))


def _resend_delay_ms(config: MachineConfig, sends: int) -> int:
    exponent = min(max(sends - 1, 0), 20)
    return int(min(config.resend_after_ms * (2**exponent), config.resend_after_ms_max))


def _publish_acked(
    state: KioskState, event: PublishAcked, config: MachineConfig, now_ms: int
) -> Transition:
    request = state.pending_request(event.request_id)
    if request is None:
        return Transition(state)  # its result came first
    acked = replace(
        request,
        acked=True,
        resend_at_ms=now_ms + _resend_delay_ms(config, request.sends),
        unacked_since_ms=None,
    )
    pending = tuple(acked if p.request_id == request.request_id else p for p in state.pending)
    new_state = replace(state, pending=pending)
    if event.refused_reason is not None:
        notice = f"the broker refused a request: {event.refused_reason}"
        new_state = replace(new_state, notice=notice)
    return Transition(new_state)


def _result_arrived(
    state: KioskState, outcome: Outcome, config: MachineConfig, now_ms: int
) -> Transition:
    if state.pending_request(outcome.request_id) is None:
        return Transition(state)  # a duplicate (replayed) result: the first one was shown
    pending = tuple(p for p in state.pending if p.request_id != outcome.request_id)
    topped_up = _send_unsent(replace(state, pending=pending), config, now_ms)
    state, sent = topped_up.state, topped_up.effects
    if state.current_request_id == outcome.request_id and state.screen in _AWAITING_SCREENS:
        screen = Screen.APPROVED if outcome.approved else Screen.DECLINED
        shown = replace(
            state,
            screen=screen,
            outcome=outcome,
            deadline_ms=now_ms + config.outcome_display_ms,
            notice=None,
        )
        signal = Signal.APPROVED if outcome.approved else Signal.DECLINED
        return Transition(shown, (*sent, Indicate(signal)))
    late = (*state.late_results, outcome)[-LATE_RESULTS_MAX:]
    return Transition(replace(state, late_results=late), sent)


MENU_CHANGED_NOTICE = "The menu changed: this order keeps the prices shown. Tap your wristband"


def _menu_changed(state: KioskState) -> Transition:
    """An order waiting for its band keeps the prices it was entered with (and cites the config
    that priced them), but the screen says the menu changed: nothing is repriced silently."""
    if state.screen is Screen.ORDER_PENDING and isinstance(state.draft, BarDraft):
        return Transition(replace(state, notice=MENU_CHANGED_NOTICE))
    return Transition(state)


def _tick(state: KioskState, config: MachineConfig, now_ms: int) -> Transition:
    effects: list[Effect] = []
    if state.deadline_ms is not None and now_ms >= state.deadline_ms:
        if state.screen is Screen.WAITING:
            state = replace(state, screen=Screen.TIMED_OUT, deadline_ms=None)
            effects.append(Indicate(Signal.ERROR))
        elif state.screen in _OUTCOME_SCREENS:
            state = _idle(state)
    stale = state.online and is_offline(state, config, now_ms)
    if stale != state.link_stale:
        state = replace(state, link_stale=stale)
    if state.online and any(_resend_due(p, now_ms) for p in state.pending):
        pending: list[PendingRequest] = []
        for request in state.pending:
            if _resend_due(request, now_ms):
                request = _sent(request, config, now_ms)
                effects.append(Publish(request.request_id))
            pending.append(request)
        state = replace(state, pending=tuple(pending))
    return Transition(state, tuple(effects))


def _resend_due(request: PendingRequest, now_ms: int) -> bool:
    return request.resend_at_ms is not None and request.resend_at_ms <= now_ms


def _card_failure_text(status: str) -> str:
    texts = {
        "unsupported_card": "this card is not supported: use a festival wristband",
        "removed_early": "the band was removed too early: tap again and hold it still",
        "read_error": "the band could not be read: tap again",
    }
    return texts.get(status, "the band could not be read: tap again")


# --- what the page shows -------------------------------------------------------------------------


def draft_to_dict(draft: Draft | None) -> dict[str, object] | None:
    if draft is None:
        return None
    if isinstance(draft, BarDraft):
        return {
            "type": "bar_order",
            "items": [
                {
                    "name": item.name,
                    "sku": item.sku,
                    "quantity": item.quantity,
                    "unit_price_cents": item.unit_price_cents,
                    "is_deposit": item.is_deposit,
                    "is_return": item.is_return,
                    "line_cents": item.signed_cents,
                }
                for item in draft.items
            ],
            "total_cents": draft.total_cents,
            "staff_id": draft.staff_id,
            "config_version": draft.config_version,
        }
    if isinstance(draft, VoidDraft):
        return {
            "type": "void",
            "original_request_id": draft.original_request_id,
            "amount_cents": draft.amount_cents,
            "staff_id": draft.staff_id,
            "config_version": draft.config_version,
        }
    if isinstance(draft, StaffLoginDraft):
        # Never the PIN: the page and anyone reading /api/state see only who logs in.
        return {"type": "staff_login", "staff_id": draft.staff_id}
    if isinstance(draft, StaffLogoutDraft):
        return {"type": "staff_logout", "staff_id": draft.staff_id}
    if isinstance(draft, CashOutDraft):
        return {
            "type": "cash_out",
            "card_uid": mask_card_uid(draft.band_uid),
            "staff_id": draft.staff_id,
            "config_version": draft.config_version,
        }
    if isinstance(draft, SwapDraft):
        return {
            "type": "card_swap",
            "old_card_uid": mask_card_uid(draft.old_card_uid),
            "old_card_read": draft.old_card_sun is not None,
            "staff_id": draft.staff_id,
            "config_version": draft.config_version,
        }
    return {
        "type": "checkpoint_recharge",
        "amount_cents": draft.amount_cents,
        "payment_method": draft.payment_method,
        "staff_id": draft.staff_id,
        "checkpoint_id": draft.checkpoint_id,
        "config_version": draft.config_version,
    }


def outcome_to_dict(outcome: Outcome | None) -> dict[str, object] | None:
    """An outcome as the page shows it: the card UID masked (``****E5F6``)."""
    if outcome is None:
        return None
    return {
        "request_id": outcome.request_id,
        "seq": outcome.seq,
        "card_uid": mask_card_uid(outcome.card_uid),
        "approved": outcome.approved,
        "status": outcome.status,
        "error_code": outcome.error_code,
        "message": outcome.message,
        "amount_cents": outcome.amount_cents,
        "previous_balance_cents": outcome.previous_balance_cents,
        "new_balance_cents": outcome.new_balance_cents,
        "replayed": outcome.replayed,
        "at_ms": outcome.at_ms,
        "debt_cents": outcome.debt_cents,
        "offline": outcome.offline,
    }


def _money(cents: int | None) -> str:
    """Cents as the screen shows them (integer arithmetic: 1234 -> "12.34")."""
    if cents is None:
        return "?"
    sign = "-" if cents < 0 else ""
    return f"{sign}{abs(cents) // 100}.{abs(cents) % 100:02d}"


LOGIN_REFUSED_TEXT = (
    "login refused: staff id, PIN and staff band do not match an enabled staff member"
    " (after 5 wrong PINs: wait 15 minutes)"
)


def screen_text(state: KioskState) -> str:
    """One line for the screen (the page may render more from the structured view)."""
    if state.screen is Screen.IDLE:
        if state.online and not state.link_stale:
            return "Ready"
        if state.offline_policy is not None:
            return "Ready (offline: sales are approved offline within the limits)"
        return "Ready (offline: payments are queued)"
    if state.screen is Screen.ORDER_PENDING:
        if state.notice is None and isinstance(state.draft, SwapDraft):
            return _swap_prompt(state.draft)
        if state.notice is None and isinstance(state.draft, StaffLoginDraft | CashOutDraft):
            return _pending_prompt(state.draft)
        return state.notice or "Tap your wristband"
    if state.screen is Screen.CARD_READ:
        return "Card read"
    if state.screen is Screen.WAITING:
        return "Processing..."
    if state.screen is Screen.APPROVED and state.outcome is not None:
        if isinstance(state.draft, VoidDraft):
            return f"order cancelled, {_money(state.outcome.amount_cents)} back"
        if isinstance(state.draft, SwapDraft):
            return (
                f"wristband replaced: the new band holds {_money(state.outcome.new_balance_cents)}"
            )
        if isinstance(state.draft, StaffLoginDraft):
            return f"{state.draft.staff_id} logged in"
        if isinstance(state.draft, StaffLogoutDraft):
            return f"{state.draft.staff_id} logged out"
        return state.outcome.message or "Approved"
    if state.screen is Screen.APPROVED_OFFLINE:
        return "Approved offline"
    if state.screen is Screen.DECLINED and state.outcome is not None:
        if isinstance(state.draft, StaffLoginDraft) and state.outcome.error_code == (
            "STAFF_NOT_ALLOWED"
        ):
            return LOGIN_REFUSED_TEXT
        return state.outcome.message or "Declined"
    if state.screen is Screen.TIMED_OUT:
        return "No answer yet: the payment is queued and will be applied once. Do not charge again."
    if state.screen is Screen.OFFLINE:
        return "Offline: the payment is stored and will be sent when the network is back."
    return str(state.screen)


@dataclass(frozen=True, slots=True)
class ReaderView:
    """What the page shows of the card reader."""

    available: bool
    name: str | None
    detail: str


@dataclass(frozen=True, slots=True)
class CloudView:
    """What the page shows of what the cloud told this kiosk: the config it runs (None: it never
    received one), where its menu comes from, and the deny-list it holds."""

    config_version: int | None = None
    menu_source: str = "none"  # "config", "file" (the local menu file) or "none"
    menu_tag: str | None = None
    menu_id: str | None = None
    offline_allowed: bool = False
    denylist_version: int | None = None
    denylist_cards: int = 0


@dataclass(frozen=True, slots=True)
class ShellView:
    """The shell's own facts on the page: identity, reader, link, alert and counters."""

    kiosk_id: str
    currency: str
    firmware: str
    # Grows with every snapshot the shell publishes (pages poll it); replaces state.version.
    snapshot_version: int
    reader: ReaderView | None
    link_reason: str | None
    alert: str | None
    counters: dict[str, int]
    cloud: CloudView = CloudView()
    # (1.1) A bar kiosk's recent orders for "cancel" (void); None at a checkpoint.
    orders: dict[str, object] | None = None
    # (1.1) Who is logged in at this kiosk and who is at the till (device/kiosk.py staff_view).
    staff: dict[str, object] | None = None


def _offline_view(state: KioskState, config: MachineConfig) -> dict[str, object]:
    """(1.1) What the page shows of offline sales: whether the kiosk sells offline now, the
    policy it runs, and the offline sales it holds unanswered."""
    count, cents = state.offline_pending
    policy = state.offline_policy
    return {
        "active": config.mode is Mode.BAR and (not state.online or state.link_stale),
        "allowed": policy is not None,
        "policy": None
        if policy is None
        else {
            "config_version": state.policy_version,
            "sale_max_cents": policy.sale_max_cents,
            "card_max_cents": policy.card_max_cents,
            "kiosk_max_cents": policy.kiosk_max_cents,
        },
        "pending": count,
        "pending_cents": cents,
    }


def view(
    state: KioskState, config: MachineConfig, shell: ShellView | None = None
) -> dict[str, object]:
    """The JSON the page polls (GET /api/state); without ``shell``, only the machine's fields.

    Card UIDs appear masked (``****E5F6``), here and in every outcome: whoever can read the
    screen or this JSON (the page, a bystander, a screenshot) cannot copy a band's UID.
    """
    current = state.pending_request(state.current_request_id)
    request: dict[str, object] | None = None
    if state.current_request_id is not None:
        request = {
            "request_id": state.current_request_id,
            "seq": current.seq if current else (state.outcome.seq if state.outcome else None),
            "card_uid": mask_card_uid(state.card_uid),
            "pending": current is not None,
        }
    document: dict[str, object] = {
        "mode": str(config.mode),
        "screen": str(state.screen),
        "online": state.online,
        "version": state.version,
        "message": screen_text(state),
        "notice": state.notice,
        "card_uid": mask_card_uid(state.card_uid),
        "order": draft_to_dict(state.draft),
        "request": request,
        "outcome": outcome_to_dict(state.outcome),
        "outbox": {
            "pending": len(state.pending),
            "max": config.outbox_max,
            "full": outbox_full(state, config),
            "oldest_seq": state.pending[0].seq if state.pending else None,
        },
        "late_results": [outcome_to_dict(outcome) for outcome in state.late_results],
        "offline": _offline_view(state, config),
    }
    if shell is None:
        return document
    reader = shell.reader
    document.update(
        {
            "kiosk_id": shell.kiosk_id,
            "currency": shell.currency,
            "firmware": shell.firmware,
            "version": shell.snapshot_version,
            "reader": None
            if reader is None
            else {"available": reader.available, "name": reader.name, "detail": reader.detail},
            "link": {"online": state.online, "reason": shell.link_reason},
            "alert": shell.alert,
            "config": {
                "version": shell.cloud.config_version,
                "menu": shell.cloud.menu_source,
                "menu_tag": shell.cloud.menu_tag,
                "menu_id": shell.cloud.menu_id,
                "offline_allowed": shell.cloud.offline_allowed,
            },
            "denylist": {
                "version": shell.cloud.denylist_version,
                "cards": shell.cloud.denylist_cards,
            },
            "counters": dict(shell.counters),
        }
    )
    if shell.orders is not None:
        document["orders"] = shell.orders
    if shell.staff is not None:
        document["staff"] = shell.staff
    return document


__all__ = [
    "MENU_CHANGED_NOTICE",
    "BarDraft",
    "CancelPressed",
    "CardFailed",
    "CardTapped",
    "CashOutDraft",
    "CloudView",
    "ConfirmPressed",
    "CreateRequest",
    "DismissPressed",
    "Draft",
    "Effect",
    "Event",
    "Indicate",
    "KioskState",
    "LinkDown",
    "LinkUp",
    "LogoutEntered",
    "MachineConfig",
    "MenuChanged",
    "Mode",
    "OrderEntered",
    "OutboxLoaded",
    "Outcome",
    "PendingRequest",
    "PolicyChanged",
    "Publish",
    "PublishAcked",
    "ReaderView",
    "RechargeDraft",
    "Reply",
    "RequestRefused",
    "RequestStored",
    "ResultArrived",
    "Screen",
    "ShellView",
    "Signal",
    "StaffLoginDraft",
    "StaffLogoutDraft",
    "SwapDraft",
    "Tick",
    "Transition",
    "VoidDraft",
    "VoidEntered",
    "is_offline",
    "offline_refusal",
    "step",
    "view",
]
