"""A small stand-in for the cloud consumer, for the kiosk's tests.

``FakeLedger`` does what the consumer does with one request message - authenticate it against
the kiosk's key, parse it, let the ledger decide, sign the result with a test cloud key - with
the shipped in-memory ledger (``cloud.ledger_fake.FakeLedger``, held to the stored procedures by
tests/contract/) deciding: idempotent by request_id (the same payload gets the stored outcome,
``replayed: true``; another payload IDEMPOTENCY_CONFLICT), CARD_NOT_FOUND for a bar order on an
unknown card, balances never below zero, the balance cap, the cup-return rules. (1.1) An offline
sale (``offline: true``) is answered here, not by the in-memory ledger (the cloud's real rules for
them come in a later revision): approved once, whatever the balance, the card paying what it
holds and the rest becoming its debt (``debts``), replayed like any other outcome.
(1.1) Staff (``add_staff``): ``staff_login``/``staff_logout`` are answered here too, like the
cloud (band, id and PIN must match; a login holds for that kiosk), and with ``staff_required``
every other request must name a staff member logged in at the sending kiosk whose role allows it
(DESIGN.md), else ``STAFF_NOT_ALLOWED``. Our ``cash_out`` extension is answered here until the
cloud's side lands: the card's whole balance paid out (``cash_outs``), the card blocked.
``MqttResponder`` puts it on the broker as the "cloud-consumer" user, subscribed to the shared
subscription every consumer uses, answering on each kiosk's result topic.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from cloud.ledger_fake import FakeLedger as InMemoryLedger
from cloud.ledger_records import LedgerRequest
from cloud.sandbox import MosquittoBroker
from protocol.codec import authenticate, build_result, encode_result, parse_authenticated
from protocol.errors import ErrorCode, ProtocolError
from protocol.keys import public_key_b64
from protocol.models import (
    BarOrder,
    CardSwap,
    CashOut,
    CheckpointRecharge,
    Request,
    Result,
    StaffLogin,
    StaffLogout,
    Void,
)
from protocol.topics import TopicKind, parse_topic, shared_subscription, topic_for
from tests.waiting import wait_until

PREFIX = "festival"
# Cup deposits charged earlier in the festival and not yet returned, so that a kiosk test's cup
# returns are paid (a fresh ledger holds none: every return would be RETURN_LIMIT_EXCEEDED).
DEPOSITS_HELD_CENTS = 1_000_000


class FakeLedger:
    """The consumer's handling of one request message around the shipped in-memory ledger.

    ``balances`` is the in-memory ledger's own dict (set a card's balance directly);
    ``received`` every authenticated request message in arrival order (replays included),
    ``requests`` the first request seen per request_id, ``applied`` how often each was approved
    afresh (never more than once).
    """

    def __init__(
        self,
        *,
        cloud_key: Ed25519PrivateKey,
        kiosk_keys: dict[str, Ed25519PublicKey],
        balances: Mapping[str, int] | None = None,
        deposits_held_cents: int = DEPOSITS_HELD_CENTS,
    ) -> None:
        self.cloud_key = cloud_key
        self.kiosk_keys = kiosk_keys
        self.ledger = InMemoryLedger(balances=balances, deposits_held_cents=deposits_held_cents)
        self.applied: Counter[str] = Counter()
        self.received: list[tuple[str, bytes]] = []
        self.requests: dict[str, Request] = {}
        # (1.1) What each card owes after offline sales it could not cover, and the answers
        # given to offline sales (payload SHA-256, result) for their replays.
        self.debts: dict[str, int] = {}
        self._offline_answers: dict[str, tuple[str, Result]] = {}
        # (1.1) staff_id -> (their band, PIN, role); who is logged in at which kiosk; whether
        # roles are enforced (FESTIVAL_STAFF_REQUIRED); the cash paid out per card.
        self.staff: dict[str, tuple[str, str, str]] = {}
        self.logged_in: dict[str, set[str]] = {}
        self.staff_required = False
        self.cash_outs: dict[str, int] = {}
        self.blocked: set[str] = set()
        self._staff_answers: dict[str, tuple[str, Result]] = {}
        self.lock = threading.Lock()

    def add_staff(self, staff_id: str, *, band: str, pin: str, role: str) -> None:
        """``staff add STAFF_ID --card BAND --role ROLE`` with the PIN it printed."""
        self.staff[staff_id] = (band, pin, role)

    @property
    def balances(self) -> dict[str, int]:
        return self.ledger.balances

    def answer(self, kiosk_id: str, raw: bytes) -> bytes | None:
        """The signed result for one request message (a rejection when it does not verify)."""
        with self.lock:
            now_ms = time.time_ns() // 1_000_000
            try:
                message = authenticate(
                    raw, topic_kiosk_id=kiosk_id, public_key_for=self.kiosk_keys.get
                )
                request = parse_authenticated(message, currency="EUR", now_ms=now_ms)
            except ProtocolError as error:
                return self._rejection(error, now_ms)
            self.received.append((request.request_id, raw))
            self.requests.setdefault(request.request_id, request)
            self._know_the_cited_config(request)
            staffed = self._staff_answer(request, message.payload_sha256, now_ms)
            if staffed is not None:
                return encode_result(staffed, self.cloud_key)
            if isinstance(request, BarOrder) and request.offline:
                result = self._offline_sale(request, message.payload_sha256, now_ms)
                return encode_result(result, self.cloud_key)
            outcome = self.ledger.apply(LedgerRequest(request, message.payload_sha256))
            if outcome.approved and not outcome.replayed:
                self.applied[request.request_id] += 1
            result = build_result(
                request_id=request.request_id,
                kiosk_id=request.kiosk_id,
                seq=request.seq,
                card_uid=request.card_uid,
                error_code=outcome.error_code,
                message=outcome.message,
                transaction_id=outcome.transaction_id,
                previous_balance_cents=outcome.previous_balance_cents,
                new_balance_cents=outcome.new_balance_cents,
                debt_cents=outcome.debt_cents,
                replayed=outcome.replayed,
                processed_at_ms=outcome.processed_at_ms,
            )
            return encode_result(result, self.cloud_key)

    def _staff_answer(self, request: Request, payload_sha256: str, now_ms: int) -> Result | None:
        """A staff login or logout, a cash-out, or a request refused for its staff member: the
        outcome (stored, replayed like every outcome); None: the in-memory ledger decides."""
        answered = self._staff_answers.get(request.request_id)
        if answered is not None:
            sha256, result = answered
            if sha256 == payload_sha256:
                return replace(result, replayed=True)
            return self._answer_for(request, ErrorCode.IDEMPOTENCY_CONFLICT, "reused", now_ms)
        result = self._staff_outcome(request, now_ms)
        if result is not None:
            self._staff_answers[request.request_id] = (payload_sha256, result)
        return result

    def _staff_outcome(self, request: Request, now_ms: int) -> Result | None:
        kiosk = self.logged_in.setdefault(request.kiosk_id, set())
        if isinstance(request, StaffLogin):
            known = self.staff.get(request.staff_id)
            if known is None or known[:2] != (request.card_uid, request.pin):
                return self._answer_for(
                    request, ErrorCode.STAFF_NOT_ALLOWED, "login refused", now_ms
                )
            kiosk.add(request.staff_id)
            self.applied[request.request_id] += 1
            return self._answer_for(request, None, f"{request.staff_id} logged in", now_ms)
        if isinstance(request, StaffLogout):
            kiosk.discard(request.staff_id)
            self.applied[request.request_id] += 1
            return self._answer_for(request, None, f"{request.staff_id} logged out", now_ms)
        if self.staff_required:
            staff_id = getattr(request, "staff_id", None)
            known = None if staff_id is None else self.staff.get(staff_id)
            allowed = {
                "bartender": (BarOrder,),
                "cashier": (CheckpointRecharge,),
                "supervisor": (BarOrder, CheckpointRecharge, Void, CardSwap, CashOut),
            }
            if (
                known is None
                or staff_id not in kiosk
                or not isinstance(request, allowed.get(known[2], ()))
            ):
                return self._answer_for(
                    request, ErrorCode.STAFF_NOT_ALLOWED, f"staff {staff_id} not allowed", now_ms
                )
        if isinstance(request, CashOut):
            return self._cash_out(request, now_ms)
        return None

    def _cash_out(self, request: CashOut, now_ms: int) -> Result:
        balances = self.ledger.balances
        if request.card_uid not in balances:
            return self._answer_for(request, ErrorCode.CARD_NOT_FOUND, "unknown card", now_ms)
        balance = balances[request.card_uid]
        if request.card_uid in self.blocked:
            return replace(
                self._answer_for(request, ErrorCode.CARD_BLOCKED, "card blocked", now_ms),
                previous_balance_cents=balance,
                new_balance_cents=balance,
                debt_cents=0,
            )
        balances[request.card_uid] = 0
        self.blocked.add(request.card_uid)
        self.cash_outs[request.card_uid] = balance
        self.applied[request.request_id] += 1
        euros, cents = divmod(balance, 100)
        return build_result(
            request_id=request.request_id,
            kiosk_id=request.kiosk_id,
            seq=request.seq,
            card_uid=request.card_uid,
            error_code=None,
            message=f"pay out {euros}.{cents:02d} EUR in cash; the wristband is blocked",
            transaction_id=f"cash-out-{len(self.cash_outs)}",
            previous_balance_cents=balance,
            new_balance_cents=0,
            debt_cents=0,
            replayed=False,
            processed_at_ms=now_ms,
        )

    def _answer_for(
        self, request: Request, code: ErrorCode | None, message: str, now_ms: int
    ) -> Result:
        """An outcome that moves no money (balances, debt and transaction null)."""
        return build_result(
            request_id=request.request_id,
            kiosk_id=request.kiosk_id,
            seq=request.seq,
            card_uid=request.card_uid,
            error_code=code,
            message=message,
            transaction_id=None,
            previous_balance_cents=None,
            new_balance_cents=None,
            debt_cents=None,
            replayed=False,
            processed_at_ms=now_ms,
        )

    def _know_the_cited_config(self, request: Request) -> None:
        """The kiosk tests publish their own configs (tests/device/cloud_messages.py), not
        through the ledger: let the in-memory ledger know every version a kiosk cites, as
        configs without a menu, so it checks no prices (what the kiosk sells is these tests'
        subject; the cloud's price check is tests/contract's and tests/consumer's)."""
        cited = request.config_version
        if cited is None:
            return
        if self.ledger.kiosk(request.kiosk_id) is None:  # authenticated by this wrapper
            key = public_key_b64(self.kiosk_keys[request.kiosk_id])
            self.ledger.add_kiosk(request.kiosk_id, key, "all")
        while True:
            latest = self.ledger.latest_config(request.kiosk_id)
            if latest is not None and latest.version >= cited:
                return
            self.ledger.issue_kiosk_config(request.kiosk_id, menu=None)

    def _offline_sale(self, order: BarOrder, payload_sha256: str, now_ms: int) -> Result:
        """An offline sale: it happened, so it is approved once; the shortfall becomes a debt."""
        answered = self._offline_answers.get(order.request_id)
        if answered is not None:
            sha256, result = answered
            if sha256 == payload_sha256:
                return replace(result, replayed=True)
            return self._result_for(
                order, ErrorCode.IDEMPOTENCY_CONFLICT, "request_id reused", None, None, now_ms
            )
        balances = self.ledger.balances
        balance = balances.get(order.card_uid, 0)
        paid = min(balance, order.total_cents)
        balances[order.card_uid] = balance - paid
        debt = self.debts.get(order.card_uid, 0) + order.total_cents - paid
        self.debts[order.card_uid] = debt
        self.applied[order.request_id] += 1
        result = build_result(
            request_id=order.request_id,
            kiosk_id=order.kiosk_id,
            seq=order.seq,
            card_uid=order.card_uid,
            error_code=None,
            message="Offline sale applied" + (f", debt {debt}" if debt else ""),
            transaction_id=f"offline-{len(self._offline_answers) + 1}",
            previous_balance_cents=balance,
            new_balance_cents=balance - paid,
            debt_cents=debt,
            replayed=False,
            processed_at_ms=now_ms,
        )
        self._offline_answers[order.request_id] = (payload_sha256, result)
        return result

    def _result_for(
        self,
        order: BarOrder,
        code: ErrorCode,
        message: str,
        previous_balance_cents: int | None,
        new_balance_cents: int | None,
        now_ms: int,
    ) -> Result:
        return build_result(
            request_id=order.request_id,
            kiosk_id=order.kiosk_id,
            seq=order.seq,
            card_uid=order.card_uid,
            error_code=code,
            message=message,
            transaction_id=None,
            previous_balance_cents=previous_balance_cents,
            new_balance_cents=new_balance_cents,
            debt_cents=None if previous_balance_cents is None else 0,
            replayed=False,
            processed_at_ms=now_ms,
        )

    def _rejection(self, error: ProtocolError, now_ms: int) -> bytes:
        echo = error.echo
        result = build_result(
            request_id=echo.get("request_id"),  # type: ignore[arg-type]
            kiosk_id=echo.get("kiosk_id"),  # type: ignore[arg-type]
            seq=echo.get("seq"),  # type: ignore[arg-type]
            card_uid=echo.get("card_uid"),  # type: ignore[arg-type]
            error_code=error.code,
            message=error.message,
            transaction_id=None,
            previous_balance_cents=None,
            new_balance_cents=None,
            debt_cents=None,
            replayed=False,
            processed_at_ms=now_ms,
        )
        return encode_result(result, self.cloud_key)

    def received_ids(self) -> list[str]:
        with self.lock:
            return [request_id for request_id, _ in self.received]


class MqttResponder:
    """FakeLedger on the broker as the cloud consumer.

    ``hold`` makes it receive but not answer (a consumer that is slow or down); ``release()``
    answers everything held, in order.
    """

    def __init__(
        self,
        broker: MosquittoBroker,
        ledger: FakeLedger,
        *,
        group: str = "ledger",
        durable: bool = False,
    ) -> None:
        self.broker = broker
        self.ledger = ledger
        self.durable = durable
        self.hold = False
        self.held: list[tuple[str, bytes]] = []
        self.drop = 0  # how many of the next requests to lose (a cloud that never answers)
        self.seen: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.transform: Callable[[bytes], bytes] | None = None
        self._subscribed = threading.Event()
        self._lock = threading.Lock()
        client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=f"test-responder-{id(self)}",
            reconnect_on_failure=True,
            protocol=mqtt.MQTTv5,
        )
        client.username_pw_set("cloud-consumer", broker.users["cloud-consumer"])
        client.on_connect = self._on_connect
        client.on_subscribe = lambda *args: self._subscribed.set()
        client.on_message = self._on_message
        self.client = client
        self.subscription = shared_subscription(PREFIX, TopicKind.TX, group)

    def start(self) -> MqttResponder:
        """Connect and subscribe. A durable responder is like the real consumer: its session
        (and the requests queued in it while it is away) survives disconnects and broker
        restarts; a plain one leaves nothing behind on the broker."""
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = 3600 if self.durable else 0
        self.client.reconnect_delay_set(1, 2)
        self.client.connect(
            "127.0.0.1", self.broker.port, clean_start=not self.durable, properties=properties
        )
        self.client.loop_start()
        wait_until(self._subscribed.is_set, timeout_s=10, what="the responder's subscription")
        return self

    def stop(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, p: Any) -> None:
        self._subscribed.clear()
        client.subscribe(self.subscription, qos=1)

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        kiosk_id = parse_topic(message.topic, PREFIX).kiosk_id
        payload = bytes(message.payload)
        self.seen.put((kiosk_id, payload))
        with self._lock:
            if self.drop > 0:
                self.drop -= 1
                return
            if self.hold:
                self.held.append((kiosk_id, payload))
                return
        self._answer(kiosk_id, payload)

    def _answer(self, kiosk_id: str, payload: bytes) -> None:
        result = self.ledger.answer(kiosk_id, payload)
        if result is None:
            return
        if self.transform is not None:
            result = self.transform(result)
        self.client.publish(topic_for(PREFIX, kiosk_id, TopicKind.RESULT), result, qos=1)

    def release(self) -> None:
        with self._lock:
            self.hold = False
            held, self.held = self.held, []
        for kiosk_id, payload in held:
            self._answer(kiosk_id, payload)
