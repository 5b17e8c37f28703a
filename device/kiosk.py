"""The kiosk process: the imperative shell around the state machine.

``Kiosk`` owns one bounded event queue. The reader, MQTT and HTTP threads only put events on it;
the main loop (``run``) takes them one by one, feeds the pure state machine, and carries out
its effects: create a request (sign + store in the outbox, durably, before anything is sent),
publish stored bytes, drive the indicators. Results are verified against the pinned cloud key
and matched to an outstanding request (id, seq, card) before they touch the outbox or the screen.

(1.1) The cloud's config (menu, offline policy) and deny-list arrive on the kiosk's config topic
and the deny-list topic, retained. One is applied only when it verifies under the pinned cloud
key, names this kiosk (config) and this kiosk's currency, and carries a version higher than the
one held; it is kept in the outbox database before it is applied, and loaded (verified again) at
start, so a kiosk that reboots without a network still has both. Anything else is ignored and
logged with the reason; the retained copy the broker hands over again on every connect (same
version) is ignored quietly. The kiosk sells from its config's menu (the local menu file while
no config with a menu was applied) and writes that config's version into every request.

(1.1) Offline sales: the machine decides (device/machine.py ``offline_refusal``); the shell tells
it the policy of every config applied (``PolicyChanged``) and whether a tapped card is on the
deny-list (``CardTapped.denied``), signs an approved offline sale with ``offline: true`` and the
config version that allowed it, and stores it (marked as offline in the outbox) before the
machine turns the screen amber. The retained status carries ``offline_pending`` and
``offline_pending_cents``: on every connect, and again (at most once per loop tick) whenever they
change while the kiosk is online.

The composition root that builds a ``Kiosk`` from the environment is device/main.py.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, TypeAlias, TypeVar

from device import machine
from device.ids import UuidV7Generator
from device.indicators import Indicators
from device.limits import (
    EVENT_QUEUE_MAX,
    LOOP_TICK_S,
    STAFF_LOGIN_MAX_S,
    STAFF_SESSIONS_MAX,
    VOID_RECENT_ORDERS_MAX,
)
from device.link import (
    Link,
    LinkConnected,
    LinkDisconnected,
    LinkEvent,
    MessageReceived,
    PublishDone,
)
from device.machine import (
    BarDraft,
    CardFailed,
    CardTapped,
    CashOutDraft,
    CreateRequest,
    Draft,
    Indicate,
    KioskState,
    LinkDown,
    LinkUp,
    LogoutEntered,
    MachineConfig,
    MenuChanged,
    Mode,
    OutboxLoaded,
    Outcome,
    PendingRequest,
    PolicyChanged,
    Publish,
    PublishAcked,
    Reply,
    RequestRefused,
    RequestStored,
    ResultArrived,
    StaffLoginDraft,
    StaffLogoutDraft,
    SwapDraft,
    Tick,
    Transition,
    VoidDraft,
    VoidEntered,
)
from device.menu import Menu, SalesMenu, menu_from_config
from device.outbox import (
    CloudMessage,
    Outbox,
    OutboxError,
    OutboxFull,
    StaffSession,
    StoredRequest,
)
from device.reader import CardReader, CardRemoved, ReaderEvent, ReaderStatus, ScanEvent
from protocol.codec import (
    encode_request,
    encode_scan,
    verify_config,
    verify_denylist,
    verify_result,
)
from protocol.errors import ErrorCode, ProtocolError
from protocol.keys import Ed25519PrivateKey, Ed25519PublicKey
from protocol.limits import MESSAGE_BYTES_MAX, VOID_WINDOW_S_DEFAULT
from protocol.models import (
    BarOrder,
    CardSun,
    CardSwap,
    CashOut,
    CheckpointRecharge,
    DenyList,
    KioskConfig,
    OfflinePolicy,
    Request,
    Result,
    ScanRecord,
    StaffLogin,
    StaffLogout,
    Void,
)
from protocol.redaction import mask_card_uid

log = logging.getLogger("device.kiosk")


# (1.1) What the screen says for a decline the bartender must act on, whatever the cloud's
# detail (a clone must not learn which check it failed at the bar).
KIOSK_TEXT_BY_CODE: Final[dict[str, str]] = {
    ErrorCode.CARD_NOT_GENUINE.value: "wristband not genuine \u2014 see the info desk",
}


# (1.1) A request refused because of who sent it (FESTIVAL_STAFF_REQUIRED=true): the cloud says
# which rule; the screen says what to do (a refused login has its own text, device/machine.py).
STAFF_NOT_ALLOWED_TEXT: Final = (
    "not allowed for this staff member: log in at this kiosk as someone whose role allows it"
)


def kiosk_message(result: Result, kind: str | None = None) -> str:
    """The text the kiosk shows for a result: its own for the codes above, else the cloud's
    (``kind``: the request's type)."""
    if result.error_code is None:
        return result.message
    if result.error_code == ErrorCode.STAFF_NOT_ALLOWED and kind != StaffLogin.type:
        return f"{STAFF_NOT_ALLOWED_TEXT} ({result.message})"[:200]
    return KIOSK_TEXT_BY_CODE.get(str(result.error_code), result.message)


class SystemClock:
    """Wall clock for timestamps on the wire, monotonic clock for timers."""

    def wall_ms(self) -> int:
        return time.time_ns() // 1_000_000

    def monotonic_ms(self) -> int:
        return time.monotonic_ns() // 1_000_000


@dataclass(frozen=True)
class VoidPressed:
    """(1.1) From the page: cancel this kiosk's approved order ``request_id``. The shell looks
    the order up among its completed requests and hands the machine a ``VoidEntered``."""

    request_id: str
    staff_id: str


@dataclass(frozen=True)
class RecentOrder:
    """An approved bar order of this kiosk, as the page lists it for "cancel" (``void``: None,
    or the request_id of the void sent for it; ``voided``: the cloud approved that void)."""

    request_id: str
    seq: int
    card_uid: str
    amount_cents: int
    created_at_ms: int
    offline: bool = False
    void: str | None = None
    voided: bool = False


@dataclass(frozen=True)
class StaffLogoutPressed:
    """(1.1) From the page: ``staff_id`` logs out. The shell ends the login at once (nothing more
    is signed with that id) and hands the machine a ``LogoutEntered`` with the login's band."""

    staff_id: str


@dataclass(frozen=True)
class StaffActivePressed:
    """(1.1) From the page: the logged-in ``staff_id`` is the one at the till now; every request
    the kiosk creates from now on carries that id."""

    staff_id: str


# What the page may ask of the loop: a machine event, or a command the shell resolves first.
CommandEvent: TypeAlias = machine.Event | VoidPressed | StaffLogoutPressed | StaffActivePressed


@dataclass(frozen=True)
class Command:
    """An event from the HTTP interface that wants the machine's reply."""

    event: CommandEvent
    reply: queue.Queue[Reply]


QueueItem: TypeAlias = machine.Event | Command | ReaderEvent | LinkEvent
# A verified cloud message the kiosk keeps and applies: a config or a deny-list.
_CloudDocument = TypeVar("_CloudDocument", KioskConfig, DenyList)


@dataclass(frozen=True)
class KioskIdentity:
    kiosk_id: str
    currency: str
    private_key: Ed25519PrivateKey
    cloud_public_key: Ed25519PublicKey
    firmware: str
    topup_cents_max: int


def build_request(
    draft: Draft,
    *,
    request_id: str,
    seq: int,
    kiosk_id: str,
    created_at_ms: int,
    card_uid: str,
    currency: str,
    card_sun: CardSun | None = None,
    offline: bool = False,
) -> Request:
    """The protocol request for an order, once it has an id, a seq and a card.

    A draft's fields are its request's body (BarDraft: items, total_cents, staff_id;
    RechargeDraft: amount_cents, payment_method, staff_id, checkpoint_id; (1.1) VoidDraft:
    original_request_id, staff_id; SwapDraft: old_card_uid, old_card_sun, staff_id): the same
    names, so the body is copied field by field and the envelope is written once; a draft's
    field its request does not have (a void's ``amount_cents``) stays on the kiosk.
    ``offline`` (1.1): a bar order the kiosk approved itself."""
    request_type = _REQUEST_TYPES[type(draft)]
    names = {field.name for field in dataclasses.fields(request_type)}
    body = {
        field.name: getattr(draft, field.name)
        for field in dataclasses.fields(draft)
        if field.name in names
    }
    if offline:
        assert request_type is BarOrder, "only a bar order is ever an offline sale"
        body["offline"] = True
    return request_type(
        request_id=request_id,
        kiosk_id=kiosk_id,
        seq=seq,
        created_at_ms=created_at_ms,
        card_uid=card_uid,
        currency=currency,
        card_sun=card_sun,
        **body,
    )


_REQUEST_TYPES: Final[dict[type, type[Request]]] = {
    BarDraft: BarOrder,
    machine.RechargeDraft: CheckpointRecharge,
    VoidDraft: Void,
    SwapDraft: CardSwap,
    StaffLoginDraft: StaffLogin,
    StaffLogoutDraft: StaffLogout,
    CashOutDraft: CashOut,
}
# The outbox's ``kind`` of each request (its wire type).
_REQUEST_KINDS: Final[dict[type, str]] = {
    BarDraft: "bar_order",
    machine.RechargeDraft: "checkpoint_recharge",
    VoidDraft: "void",
    SwapDraft: "card_swap",
    StaffLoginDraft: "staff_login",
    StaffLogoutDraft: "staff_logout",
    CashOutDraft: "cash_out",
}
# (1.1) The drafts whose staff_id is who they are about, never replaced by the active one.
_OWN_STAFF_DRAFTS: Final = (StaffLoginDraft, StaffLogoutDraft)


def pending_request(stored: StoredRequest) -> PendingRequest:
    """What the machine tracks of a request the outbox holds."""
    return PendingRequest(
        request_id=stored.request_id,
        seq=stored.seq,
        created_at_ms=stored.created_at_ms,
        card_uid=stored.card_uid,
        amount_cents=stored.amount_cents,
        offline=stored.offline,
    )


def _config_log_fields(config: KioskConfig) -> dict[str, object]:
    menu = config.menu
    return {
        "version": config.version,
        "menu_id": None if menu is None else menu.menu_id,
        "menu_items": 0 if menu is None else len(menu.items),
        "offline": config.offline is not None,
    }


def _denylist_log_fields(denylist: DenyList) -> dict[str, object]:
    return {"version": denylist.version, "cards": len(denylist.card_uids)}


def request_log_fields(pending: PendingRequest) -> dict[str, object]:
    """The fields every log line about one request carries."""
    return {
        "request_id": pending.request_id,
        "seq": pending.seq,
        "card_uid": pending.card_uid,
        "amount_cents": pending.amount_cents,
        "offline": pending.offline,
    }


class Kiosk:
    def __init__(
        self,
        *,
        identity: KioskIdentity,
        config: MachineConfig,
        outbox: Outbox,
        link: Link,
        reader: CardReader,
        indicators: Indicators,
        result_topic: str,
        ids: UuidV7Generator | None = None,
        clock: SystemClock | None = None,
        fallback_menu: Menu | None = None,
        config_topic: str | None = None,
        denylist_topic: str | None = None,
        void_window_s: int = VOID_WINDOW_S_DEFAULT,
    ) -> None:
        self.identity = identity
        self.config = config
        self.outbox = outbox
        self.link = link
        self.reader = reader
        self.indicators = indicators
        self.result_topic = result_topic
        self.config_topic = config_topic
        self.denylist_topic = denylist_topic
        self.ids = ids or UuidV7Generator()
        self.clock = clock or SystemClock()
        self.state = KioskState()
        # (1.1) This kiosk's recent approved bar orders (newest last) that "cancel" may void,
        # and which original each void in flight cancels.
        self.void_window_s = void_window_s
        self._recent: dict[str, RecentOrder] = {}
        self._void_of: dict[str, str] = {}
        # (1.1) Who is logged in here (kept in the outbox database) and who is at the till.
        self._sessions: dict[str, StaffSession] = {}
        self._active_staff_id: str | None = None
        # The local menu file's menu: sold from while no config with a menu was applied.
        self.fallback_menu = fallback_menu
        self._sales_menu = SalesMenu(
            fallback_menu, "none" if fallback_menu is None else "file", config_version=None
        )
        # What the cloud told this kiosk (None: nothing yet), as applied, with its signed bytes.
        self._config: KioskConfig | None = None
        self._config_payload: bytes | None = None
        self._denylist: DenyList | None = None
        self._denylist_payload: bytes | None = None
        self._denied: frozenset[str] = frozenset()
        self.events: queue.Queue[QueueItem] = queue.Queue(maxsize=EVENT_QUEUE_MAX)
        self._message_ids: dict[int, str] = {}
        self._sent_at_ms: dict[str, int] = {}
        self._reader_status: ReaderStatus | None = None
        self._alert: str | None = None
        self._link_reason: str | None = None
        self.counters = {
            "events_dropped": 0,
            "results_ignored": 0,
            "results_accepted": 0,
            "scans": 0,
            "requests_stored": 0,
            "publishes": 0,
            "cloud_messages_applied": 0,
            "cloud_messages_ignored": 0,
        }
        # The offline_pending* last put in the retained status (None: not since connecting).
        self._status_offline: tuple[int, int] | None = None
        self._snapshot_version = (-1, -1)
        self._snapshot = b"{}"
        self._snapshots = 0
        self._refresh_snapshot()

    # --- thread-safe entry points -----------------------------------------------------------

    def submit(self, item: ReaderEvent | LinkEvent | machine.Event) -> None:
        """Called from the reader, MQTT and HTTP threads: enqueue only, never block."""
        try:
            self.events.put_nowait(item)
        except queue.Full:
            # Never silently: count it (visible in /api/state) and log it. A dropped result is
            # recovered by the resend (the cloud answers "replayed"); a dropped tap is re-tapped.
            self.counters["events_dropped"] += 1
            log.warning(
                "event queue full: event dropped",
                extra={"context": {"event": type(item).__name__}},
            )

    def command(self, event: CommandEvent, timeout_s: float) -> Reply:
        """From an HTTP thread: hand ``event`` to the loop and wait for the machine's reply."""
        reply: queue.Queue[Reply] = queue.Queue(maxsize=1)
        try:
            self.events.put(Command(event, reply), timeout=timeout_s)
            return reply.get(timeout=timeout_s)
        except (queue.Full, queue.Empty):
            return Reply(False, "the kiosk is busy: try again")

    def snapshot_json(self) -> bytes:
        return self._snapshot

    def sales_menu(self) -> SalesMenu:
        """The menu this kiosk sells from now (an immutable object: safe from any thread)."""
        return self._sales_menu

    # --- what the cloud told this kiosk (read by the main loop; offline sales use them) -------

    @property
    def config_version(self) -> int | None:
        """The version of the config this kiosk runs; None: it never received one."""
        return None if self._config is None else self._config.version

    @property
    def offline_policy(self) -> OfflinePolicy | None:
        """What this kiosk may approve by itself offline; None: it must not sell offline (also
        while it never received a config)."""
        return None if self._config is None else self._config.offline

    @property
    def denylist_version(self) -> int | None:
        return None if self._denylist is None else self._denylist.version

    def is_denied(self, card_uid: str) -> bool:
        """Whether ``card_uid`` is on the deny-list this kiosk holds (blocked, or with a debt).

        Online the cloud decides (a blocked card is declined CARD_BLOCKED): the list is for the
        kiosk's own decisions while it is offline (PROTOCOL.md "Offline sales")."""
        return card_uid in self._denied

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Load the kept config and deny-list and the outbox into the machine, then start the
        link and the reader."""
        self._load_cloud_messages()
        self._load_recent_orders()
        self._load_staff()
        loaded = tuple(pending_request(stored) for stored in self.outbox.outstanding())
        if loaded:
            log.info(
                "outbox loaded: requests will be resent with their stored bytes",
                extra={"context": {"pending": len(loaded), "oldest_seq": loaded[0].seq}},
            )
        self._step(OutboxLoaded(loaded))
        self.link.start(self.submit)
        self.reader.start(self.submit)

    def run(self, stop: threading.Event, on_tick: Callable[[], None] | None = None) -> None:
        """The main loop, until ``stop`` is set."""
        next_tick_s = time.monotonic()
        while not stop.is_set():
            timeout_s = max(0.0, next_tick_s - time.monotonic())
            try:
                item = self.events.get(timeout=timeout_s)
            except queue.Empty:
                item = None
            if item is not None:
                self.handle(item)
            if time.monotonic() >= next_tick_s:
                self.handle(Tick())
                if on_tick is not None:
                    on_tick()
                next_tick_s = time.monotonic() + LOOP_TICK_S

    def process_pending(self) -> int:
        """Handle everything queued now (tests and the benchmark drive the kiosk this way)."""
        handled = 0
        while True:
            try:
                item = self.events.get_nowait()
            except queue.Empty:
                return handled
            self.handle(item)
            handled += 1

    def close(self) -> None:
        self.reader.stop()
        self.link.stop()
        self.indicators.close()
        self.outbox.close()

    # --- one event ---------------------------------------------------------------------------

    def handle(self, item: QueueItem) -> None:
        reply = Reply(False, "the kiosk failed to handle this command")
        try:
            if isinstance(item, Command) and isinstance(item.event, VoidPressed):
                reply = self._void(item.event)
            elif isinstance(item, Command) and isinstance(item.event, StaffLogoutPressed):
                reply = self._logout(item.event)
            elif isinstance(item, Command) and isinstance(item.event, StaffActivePressed):
                reply = self._choose_active(item.event)
            elif isinstance(item, Command) and isinstance(item.event, machine.OrderEntered):
                entered = machine.OrderEntered(self._staffed(item.event.draft))
                reply = self._step(entered).reply or Reply(True)
            elif isinstance(item, Command):
                assert not isinstance(
                    item.event, VoidPressed | StaffLogoutPressed | StaffActivePressed
                )
                reply = self._step(item.event).reply or Reply(True)
            else:
                self._dispatch(item)
        except OutboxError:
            raise  # the disk is gone: stop (systemd restarts us) rather than take payments
        except Exception:
            # A bug in handling one event must not end the loop of a payment terminal.
            log.exception("event handling failed", extra={"context": {"event": repr(item)}})
        if self._snapshot_marker() != self._snapshot_version:
            self._refresh_snapshot()
        if isinstance(item, Command):
            # After the snapshot: the caller reads the state its command produced.
            try:
                item.reply.put_nowait(reply)
            except queue.Full:  # pragma: no cover - one reply per command
                pass

    def _dispatch(self, item: ReaderEvent | LinkEvent | machine.Event) -> None:
        if isinstance(item, ScanEvent):
            self._scanned(item)
        elif isinstance(item, CardRemoved):
            pass
        elif isinstance(item, ReaderStatus):
            self._reader_status = item
            self._changed()
        elif isinstance(item, LinkConnected):
            log.info("mqtt connected", extra={"context": {"session_present": item.session_present}})
            self._link_reason = None
            count, cents = self.state.offline_pending
            self.link.publish_online(offline_pending=count, offline_pending_cents=cents)
            self._status_offline = (count, cents)
            self._step(LinkUp())
        elif isinstance(item, LinkDisconnected):
            if self.state.online or self._link_reason is None:
                log.warning("mqtt disconnected", extra={"context": {"reason": item.reason}})
            changed = item.reason != self._link_reason
            self._link_reason = item.reason
            self._status_offline = None
            self._step(LinkDown())
            if changed:
                self._changed()
        elif isinstance(item, PublishDone):
            request_id = self._message_ids.pop(item.message_id, None)
            if request_id is not None:
                if item.refused_reason is not None:
                    log.error(
                        "broker refused a request publish",
                        extra={
                            "context": {"request_id": request_id, "reason": item.refused_reason}
                        },
                    )
                self._step(PublishAcked(request_id, item.refused_reason))
        elif isinstance(item, MessageReceived):
            self._message(item)
        else:
            self._step(item)
            if isinstance(item, Tick):
                self._refresh_status()
                self._expire_staff()

    def _refresh_status(self) -> None:
        """Republish the retained status when the offline sales held changed while online (at
        most once per tick: a backlog draining must not send one status per result)."""
        if not self.state.online or self._status_offline is None:
            return
        offline = self.state.offline_pending
        if offline != self._status_offline:
            self.link.publish_status(offline_pending=offline[0], offline_pending_cents=offline[1])
            self._status_offline = offline

    def _step(self, event: machine.Event) -> Transition:
        transition = machine.step(self.state, event, self.config, self.clock.monotonic_ms())
        self.state = transition.state
        for effect in transition.effects:
            if isinstance(effect, CreateRequest):
                self._create(effect)
            elif isinstance(effect, Publish):
                self._publish(effect.request_id)
            elif isinstance(effect, Indicate):
                self.indicators.signal(effect.signal)
        return transition

    def _changed(self) -> None:
        self._refresh_snapshot()

    # --- effects -----------------------------------------------------------------------------

    def _create(self, effect: CreateRequest) -> None:
        identity = self.identity
        created_at_ms = self.clock.wall_ms()
        draft = effect.draft

        def sign(request_id: str, seq: int) -> bytes:
            request = build_request(
                draft,
                request_id=request_id,
                seq=seq,
                kiosk_id=identity.kiosk_id,
                created_at_ms=created_at_ms,
                card_uid=effect.card_uid,
                currency=identity.currency,
                card_sun=effect.card_sun,
                offline=effect.offline,
            )
            return encode_request(
                request, identity.private_key, topup_cents_max=identity.topup_cents_max
            )

        card_uid = effect.card_uid
        amount_cents = machine.draft_amount_cents(draft)
        offline_config_version = None
        if effect.offline:
            # The machine allowed it by the policy of the config that priced it (a BarDraft).
            assert isinstance(draft, BarDraft) and draft.config_version is not None
            offline_config_version = draft.config_version
        try:
            stored = self.outbox.store(
                kind=_REQUEST_KINDS[type(draft)],
                created_at_ms=created_at_ms,
                card_uid=card_uid,
                amount_cents=amount_cents,
                new_request_id=lambda: self.ids.new(created_at_ms),
                sign=sign,
                offline_config_version=offline_config_version,
                original_request_id=draft.original_request_id
                if isinstance(draft, VoidDraft)
                else None,
                login_staff_id=draft.staff_id if isinstance(draft, StaffLoginDraft) else None,
            )
        except OutboxFull as error:
            log.warning("outbox full: sale refused", extra={"context": {"detail": str(error)}})
            self._step(RequestRefused("outbox full: no new sales until the network is back"))
            return
        except ProtocolError as error:
            log.warning("request refused before signing", extra={"context": {"error": str(error)}})
            self._step(RequestRefused(f"cannot send this order: {error.message}"))
            return
        self.counters["requests_stored"] += 1
        if isinstance(draft, VoidDraft):
            self._void_sent(draft.original_request_id, stored.request_id)
        pending = pending_request(stored)
        log.info("request stored", extra={"context": request_log_fields(pending)})
        self._step(RequestStored(pending))

    def _publish(self, request_id: str) -> None:
        payload = self.outbox.payload(request_id)
        if payload is None:  # pragma: no cover - the machine only publishes pending requests
            log.error(
                "publish of a request not in the outbox", extra={"context": {"id": request_id}}
            )
            return
        message_id = self.link.publish_request(payload)
        self._message_ids[message_id] = request_id
        self._sent_at_ms.setdefault(request_id, self.clock.monotonic_ms())
        self.counters["publishes"] += 1

    def _scanned(self, scan: ScanEvent) -> None:
        self.counters["scans"] += 1
        try:
            # The record checks itself when built (ProtocolError), as encode_scan did before.
            record = ScanRecord(
                kiosk_id=self.identity.kiosk_id,
                scanned_at_ms=scan.scanned_at_ms,
                card_uid=scan.card_uid,
                status=scan.status,
                reader=scan.reader,
                duration_ms=scan.duration_ms,
            )
            self.link.publish_scan(encode_scan(record, self.identity.private_key))
        except ProtocolError as error:  # pragma: no cover - the reader reports valid fields
            log.error("scan record not encodable", extra={"context": {"error": str(error)}})
        if scan.status == "ok" and scan.card_uid is not None:
            transition = self._step(
                CardTapped(scan.card_uid, scan.card_sun, denied=self.is_denied(scan.card_uid))
            )
            if machine.Indicate(machine.Signal.DECLINED) in transition.effects:
                count, cents = self.state.offline_pending
                log.info(
                    "offline sale refused",
                    extra={
                        "context": {
                            "card_uid": scan.card_uid,
                            "reason": transition.state.notice,
                            "offline_pending": count,
                            "offline_pending_cents": cents,
                        }
                    },
                )
        else:
            log.info(
                "card read failed",
                extra={"context": {"status": scan.status, "reader": scan.reader}},
            )
            self._step(CardFailed(scan.status))

    def _message(self, message: MessageReceived) -> None:
        """Every message from the broker: the cloud's config or deny-list, or a result."""
        if self.config_topic is not None and message.topic == self.config_topic:
            self._config_arrived(message.payload)
            return
        if self.denylist_topic is not None and message.topic == self.denylist_topic:
            self._denylist_arrived(message.payload)
            return
        self._result_message(message)

    def _result_message(self, message: MessageReceived) -> None:
        """The one path of every message on the result topic: verified once, then matched."""
        if message.topic != self.result_topic or len(message.payload) > MESSAGE_BYTES_MAX:
            self._ignore_result("not a result for this kiosk", message.topic)
            return
        try:
            result = verify_result(
                message.payload,
                cloud_public_key=self.identity.cloud_public_key,
                kiosk_id=self.identity.kiosk_id,
            )
        except ProtocolError as error:  # forged, wrongly signed, malformed, another kiosk's
            self._ignore_result(f"{error.code}: {error.message}", None)
            return
        if result.request_id is None:
            # The cloud could not attribute our request (unknown kiosk, bad signature): the
            # operator must act; the screen says so.
            self._alert = f"cloud rejected a request: {result.error_code} {result.message}"
            self._changed()
            self._ignore_result(self._alert, None)
            return
        pending = self.state.pending_request(result.request_id)
        if pending is None:
            # A second answer to a finished request (a resend's "replayed" result).
            log.debug(
                "duplicate result ignored", extra={"context": {"request_id": result.request_id}}
            )
            return
        if self.outbox.payload(result.request_id) is None:  # pragma: no cover - stored first
            self._ignore_result("result for a request not in the outbox", result.request_id)
            return
        if (result.seq is not None and result.seq != pending.seq) or (
            result.card_uid is not None and result.card_uid != pending.card_uid
        ):
            self._ignore_result("result does not match the stored request", result.request_id)
            return
        self._accept(result, pending)

    def _accept(self, result: Result, pending: PendingRequest) -> None:
        assert result.request_id is not None
        error_code = None if result.error_code is None else str(result.error_code)
        stored = self.outbox.complete(
            result.request_id,
            status=str(result.status),
            error_code=error_code,
            new_balance_cents=result.new_balance_cents,
            completed_at_ms=self.clock.wall_ms(),
            debt_cents=result.debt_cents if pending.offline else None,
        )
        self.counters["results_accepted"] += 1
        if stored is not None:
            self._recent_order_result(stored, result.approved)
            if stored.login_staff_id is not None and result.approved:
                self._logged_in(stored)
        sent_at_ms = self._sent_at_ms.pop(result.request_id, None)
        latency_ms = None if sent_at_ms is None else self.clock.monotonic_ms() - sent_at_ms
        # The canonical line of one payment.
        log.info(
            "payment",
            extra={
                "context": {
                    **request_log_fields(pending),
                    "status": str(result.status),
                    "error_code": error_code,
                    "new_balance_cents": result.new_balance_cents,
                    "debt_cents": result.debt_cents,
                    "replayed": result.replayed,
                    "latency_ms": latency_ms,
                }
            },
        )
        outcome = Outcome(
            request_id=result.request_id,
            seq=pending.seq,
            card_uid=pending.card_uid,
            approved=result.approved,
            status=str(result.status),
            error_code=error_code,
            message=kiosk_message(result, None if stored is None else stored.kind),
            amount_cents=pending.amount_cents,
            previous_balance_cents=result.previous_balance_cents,
            new_balance_cents=result.new_balance_cents,
            replayed=result.replayed,
            at_ms=self.clock.wall_ms(),
            debt_cents=result.debt_cents,
            offline=pending.offline,
        )
        self._step(ResultArrived(outcome))

    def _ignore_result(self, reason: str, detail: object) -> None:
        self.counters["results_ignored"] += 1
        log.warning("result ignored", extra={"context": {"reason": reason, "detail": detail}})

    # --- (1.1) voids: this kiosk's recent orders, "cancel" on one ------------------------------

    def _load_recent_orders(self) -> None:
        """The approved bar orders of the outbox's history, and what the voids the outbox holds
        did to them: a restart keeps the list, "cancelled" and "cancelling" included."""
        for done in reversed(self.outbox.history(VOID_RECENT_ORDERS_MAX)):
            if done.kind == "bar_order" and done.status == "approved" and done.amount_cents > 0:
                self._remember_order(
                    RecentOrder(
                        done.request_id,
                        done.seq,
                        done.card_uid,
                        done.amount_cents,
                        done.created_at_ms,
                        offline=done.offline,
                    )
                )
        for record in self.outbox.voids():
            order = self._recent.get(record.original_request_id)
            if record.status is None:
                self._void_of[record.request_id] = record.original_request_id
                if order is not None:
                    self._recent[order.request_id] = dataclasses.replace(
                        order, void=record.request_id
                    )
            elif record.status == "approved" and order is not None:
                self._recent[order.request_id] = dataclasses.replace(order, voided=True)

    def _remember_order(self, order: RecentOrder) -> None:
        self._recent[order.request_id] = order
        while len(self._recent) > VOID_RECENT_ORDERS_MAX:
            del self._recent[next(iter(self._recent))]

    def _recent_order_result(self, stored: StoredRequest, approved: bool) -> None:
        """Keep an approved sale for "cancel"; note what the cloud said to a void."""
        if stored.kind == "bar_order" and approved and stored.amount_cents > 0:
            self._remember_order(
                RecentOrder(
                    stored.request_id,
                    stored.seq,
                    stored.card_uid,
                    stored.amount_cents,
                    stored.created_at_ms,
                    offline=stored.offline,
                )
            )
            self._changed()
        elif stored.kind == "void":
            original = self._void_of.pop(stored.request_id, None)
            order = None if original is None else self._recent.get(original)
            if order is not None:
                # Declined (too late, already voided, a role): "cancel" is offered again only
                # while the window lasts; the cloud's message is on the screen.
                self._recent[order.request_id] = dataclasses.replace(
                    order, void=None, voided=approved
                )
                self._changed()

    def _void_sent(self, original_request_id: str, void_request_id: str) -> None:
        self._void_of[void_request_id] = original_request_id
        order = self._recent.get(original_request_id)
        if order is not None:
            self._recent[original_request_id] = dataclasses.replace(order, void=void_request_id)
        log.info(
            "void stored",
            extra={"context": {"request_id": void_request_id, "original": original_request_id}},
        )

    def _void(self, press: VoidPressed) -> Reply:
        """ "Cancel" on one of the listed orders: checked here against what the kiosk holds (the
        cloud checks again, with its own clock), then the machine sends the void at once."""
        if self.config.mode is not Mode.BAR:
            return Reply(False, "only a bar kiosk cancels its orders")
        order = self._recent.get(press.request_id)
        if order is None:
            return Reply(False, "not a recent approved order of this kiosk")
        if order.voided:
            return Reply(False, "this order was already cancelled")
        if order.void is not None:
            return Reply(False, "this order is being cancelled")
        if self.clock.wall_ms() > order.created_at_ms + self.void_window_s * 1000:
            minutes = self.void_window_s // 60
            return Reply(False, f"too late: an order can be cancelled within {minutes} minutes")
        draft = VoidDraft(
            original_request_id=order.request_id,
            staff_id=self._active_staff_id or press.staff_id,
            amount_cents=order.amount_cents,
            config_version=self._sales_menu.config_version,
        )
        return self._step(VoidEntered(draft, order.card_uid)).reply or Reply(True)

    def orders_view(self) -> dict[str, object] | None:
        """The page's list of recent orders, newest first, with until when each may be voided
        (wall clock ms; the page hides "cancel" after it, the shell refuses after it)."""
        if self.config.mode is not Mode.BAR:
            return None
        window_ms = self.void_window_s * 1000
        return {
            "void_window_s": self.void_window_s,
            "recent": [
                {
                    "request_id": order.request_id,
                    "seq": order.seq,
                    "card_uid": mask_card_uid(order.card_uid),
                    "amount_cents": order.amount_cents,
                    "created_at_ms": order.created_at_ms,
                    "cancellable_until_ms": order.created_at_ms + window_ms,
                    "offline": order.offline,
                    "void": "voided"
                    if order.voided
                    else ("pending" if order.void is not None else None),
                }
                for order in reversed(self._recent.values())
            ],
        }

    # --- (1.1) staff logged in at this kiosk ----------------------------------------------------

    @property
    def active_staff_id(self) -> str | None:
        """The staff member at the till (None: nobody logged in chose themselves). A str read
        is atomic: the HTTP threads may call this."""
        return self._active_staff_id

    def _staffed(self, draft: machine.Draft) -> machine.Draft:
        """``draft`` naming the active staff member: whoever is logged in and at the till is
        who every request names, whatever id the page (or a fixed setting) typed. A login or
        logout names its own staff member."""
        active = self._active_staff_id
        if active is None or isinstance(draft, _OWN_STAFF_DRAFTS) or draft.staff_id == active:
            return draft
        return dataclasses.replace(draft, staff_id=active)

    def _load_staff(self) -> None:
        """The logins kept in the outbox database (a reboot keeps them), minus the expired."""
        self._sessions = {session.staff_id: session for session in self.outbox.staff_sessions()}
        active = self.outbox.active_staff_id()
        self._active_staff_id = active if active in self._sessions else None
        if self._sessions:
            log.info(
                "staff logins loaded",
                extra={"context": {"staff": sorted(self._sessions), "active": active}},
            )
        self._expire_staff()

    def _expire_staff(self) -> None:
        """Drop the logins older than 12 hours (the cloud no longer accepts them either)."""
        now_ms = self.clock.wall_ms()
        for session in list(self._sessions.values()):
            if now_ms - session.logged_in_at_ms >= STAFF_LOGIN_MAX_S * 1000:
                self._end_session(session.staff_id, "expired (12 hours)")

    def _end_session(self, staff_id: str, reason: str) -> None:
        self.outbox.drop_staff_session(staff_id)
        del self._sessions[staff_id]
        if self._active_staff_id == staff_id:
            self._active_staff_id = None
        log.info("staff logged out", extra={"context": {"staff_id": staff_id, "reason": reason}})
        self._changed()

    def _logged_in(self, stored: StoredRequest) -> None:
        """The cloud approved a login: keep it (renewed if it was held) and make that staff
        member the active one (they are the one at the till)."""
        staff_id = stored.login_staff_id
        assert staff_id is not None
        if staff_id not in self._sessions and len(self._sessions) >= STAFF_SESSIONS_MAX:
            oldest = min(self._sessions.values(), key=lambda session: session.logged_in_at_ms)
            self._end_session(oldest.staff_id, "too many logins at this kiosk")
        session = StaffSession(staff_id, stored.card_uid, stored.created_at_ms)
        self.outbox.keep_staff_session(session)
        self.outbox.set_active_staff_id(staff_id)
        self._sessions[staff_id] = session
        self._active_staff_id = staff_id
        log.info(
            "staff logged in",
            extra={"context": {"staff_id": staff_id, "card_uid": stored.card_uid}},
        )
        self._changed()

    def _logout(self, press: StaffLogoutPressed) -> Reply:
        """ "Log out": the login ends here at once (persisted), then its ``staff_logout`` is sent
        (queued in the outbox while offline)."""
        session = self._sessions.get(press.staff_id)
        if session is None:
            return Reply(False, f"{press.staff_id} is not logged in at this kiosk")
        transition = self._step(
            LogoutEntered(
                StaffLogoutDraft(
                    staff_id=session.staff_id, config_version=self._sales_menu.config_version
                ),
                session.card_uid,
            )
        )
        reply = transition.reply or Reply(True)
        if reply.ok:
            self._end_session(session.staff_id, "logout")
        return reply

    def _choose_active(self, press: StaffActivePressed) -> Reply:
        if press.staff_id not in self._sessions:
            return Reply(False, f"{press.staff_id} is not logged in at this kiosk")
        self.outbox.set_active_staff_id(press.staff_id)
        self._active_staff_id = press.staff_id
        self._changed()
        return Reply(True, f"{press.staff_id} is at the till")

    def staff_view(self) -> dict[str, object]:
        """What the page shows: who is logged in (their band masked), until when, who is
        active."""
        login_ms = STAFF_LOGIN_MAX_S * 1000
        return {
            "active": self._active_staff_id,
            "login_max_s": STAFF_LOGIN_MAX_S,
            "logged_in": [
                {
                    "staff_id": session.staff_id,
                    "card_uid": mask_card_uid(session.card_uid),
                    "logged_in_at_ms": session.logged_in_at_ms,
                    "expires_at_ms": session.logged_in_at_ms + login_ms,
                }
                for session in self._sessions.values()
            ],
        }

    # --- the cloud's config and deny-list --------------------------------------------------------

    def _verified_config(self, raw: bytes) -> KioskConfig:
        """``raw`` as a config for this kiosk, in its currency; ProtocolError otherwise."""
        config = verify_config(
            raw, cloud_public_key=self.identity.cloud_public_key, kiosk_id=self.identity.kiosk_id
        )
        if config.currency != self.identity.currency:
            raise ProtocolError(
                ErrorCode.INVALID_REQUEST,
                f"config currency {config.currency}, this kiosk sells in {self.identity.currency}",
            )
        return config

    def _verified_denylist(self, raw: bytes) -> DenyList:
        return verify_denylist(raw, cloud_public_key=self.identity.cloud_public_key)

    def _config_arrived(self, raw: bytes) -> None:
        config = self._arrived(
            "config",
            raw,
            self._verified_config,
            self._apply_config,
            self.config_version,
            self._config_payload,
        )
        if config is not None:
            log.info("config applied", extra={"context": _config_log_fields(config)})

    def _denylist_arrived(self, raw: bytes) -> None:
        denylist = self._arrived(
            "denylist",
            raw,
            self._verified_denylist,
            self._apply_denylist,
            self.denylist_version,
            self._denylist_payload,
        )
        if denylist is not None:
            log.info("deny-list applied", extra={"context": _denylist_log_fields(denylist)})

    def _arrived(
        self,
        kind: str,
        raw: bytes,
        verified: Callable[[bytes], _CloudDocument],
        apply: Callable[[_CloudDocument, bytes], None],
        held: int | None,
        held_payload: bytes | None,
    ) -> _CloudDocument | None:
        """A message of ``kind`` from the broker, verified, kept in the outbox database and
        applied when its version is above the ``held`` one; None when it was ignored."""
        try:
            document = verified(raw)
        except ProtocolError as error:  # forged, wrong kid, another kiosk's, oversize, malformed
            self._ignore_cloud_message(kind, f"{error.code}: {error.message}", None)
            return None
        if self._is_stale(kind, document.version, held, raw, held_payload):
            return None
        self.outbox.keep_cloud_message(
            CloudMessage(kind, document.version, raw, self.clock.wall_ms())
        )
        apply(document, raw)
        self.counters["cloud_messages_applied"] += 1
        return document

    def _is_stale(
        self, kind: str, version: int, held: int | None, raw: bytes, held_payload: bytes | None
    ) -> bool:
        """Whether a verified message must not be applied: its version is not above ``held``."""
        if held is None or version > held:
            return False
        if version == held and raw == held_payload:
            # The retained copy the broker hands over again after every (re)connect.
            log.debug(f"{kind} already applied", extra={"context": {"version": version}})
        elif version == held:
            self._ignore_cloud_message(
                kind, "same version as the one applied, different content", version
            )
        else:
            self._ignore_cloud_message(kind, f"version {version} is older than {held}", version)
        return True

    def _ignore_cloud_message(self, kind: str, reason: str, version: int | None) -> None:
        self.counters["cloud_messages_ignored"] += 1
        log.warning(
            f"{kind} ignored",
            extra={"context": {"kind": kind, "reason": reason, "version": version}},
        )

    def _apply_config(self, config: KioskConfig, raw: bytes) -> None:
        shown = self._sales_menu.tag
        self._config = config
        self._config_payload = raw
        if config.menu is not None:
            menu: Menu | None = menu_from_config(config.menu, currency=self.identity.currency)
            sales = SalesMenu(menu, "config", config.version)
        else:  # no menu assigned: the local menu file, as before any config
            menu = self.fallback_menu
            sales = SalesMenu(menu, "none" if menu is None else "file", config.version)
        self._sales_menu = sales
        self._step(PolicyChanged(config.version, config.offline))
        if sales.tag != shown:
            self._step(MenuChanged())
        self._changed()

    def _apply_denylist(self, denylist: DenyList, raw: bytes) -> None:
        self._denylist = denylist
        self._denylist_payload = raw
        self._denied = frozenset(denylist.card_uids)
        self._changed()

    def _load_cloud_messages(self) -> None:
        """The config and deny-list kept in the outbox database, verified again (the pinned cloud
        key may have changed since): what the kiosk runs until the broker hands over newer."""
        config = self._load_kept("config", self._verified_config, self._apply_config)
        if config is not None:
            log.info("config loaded", extra={"context": _config_log_fields(config)})
        denylist = self._load_kept("denylist", self._verified_denylist, self._apply_denylist)
        if denylist is not None:
            log.info("deny-list loaded", extra={"context": _denylist_log_fields(denylist)})

    def _load_kept(
        self,
        kind: str,
        verified: Callable[[bytes], _CloudDocument],
        apply: Callable[[_CloudDocument, bytes], None],
    ) -> _CloudDocument | None:
        """The kept message of ``kind``, verified and applied; None when none is kept, or when
        it no longer verifies (then it is dropped)."""
        kept = self.outbox.cloud_message(kind)
        if kept is None:
            return None
        try:
            document = verified(kept.payload)
        except ProtocolError as error:
            self.outbox.forget_cloud_message(kind)
            log.warning(
                f"kept {kind} no longer verifies: dropped",
                extra={
                    "context": {"version": kept.version, "reason": f"{error.code}: {error.message}"}
                },
            )
            return None
        apply(document, kept.payload)
        return document

    # --- what the page sees ------------------------------------------------------------------

    def _snapshot_marker(self) -> tuple[int, int]:
        return (self.state.version, sum(self.counters.values()))

    def _cloud_view(self) -> machine.CloudView:
        sales = self._sales_menu
        config = self._config
        denylist = self._denylist
        return machine.CloudView(
            config_version=sales.config_version,
            menu_source=sales.source,
            menu_tag=sales.tag,
            menu_id=None if config is None or config.menu is None else config.menu.menu_id,
            offline_allowed=config is not None and config.offline is not None,
            denylist_version=None if denylist is None else denylist.version,
            denylist_cards=len(self._denied),
        )

    def _refresh_snapshot(self) -> None:
        """Publish a new immutable view; ``version`` grows with every change (pages poll it)."""
        reader = self._reader_status
        document = machine.view(
            self.state,
            self.config,
            machine.ShellView(
                kiosk_id=self.identity.kiosk_id,
                currency=self.identity.currency,
                firmware=self.identity.firmware,
                snapshot_version=self._snapshots,
                reader=None
                if reader is None
                else machine.ReaderView(reader.available, reader.reader, reader.detail),
                link_reason=self._link_reason,
                alert=self._alert,
                counters=dict(self.counters),
                cloud=self._cloud_view(),
                orders=self.orders_view(),
                staff=self.staff_view(),
            ),
        )
        self._snapshot = json.dumps(document, separators=(",", ":")).encode()
        self._snapshot_version = self._snapshot_marker()
        self._snapshots += 1
