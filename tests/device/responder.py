"""A small stand-in for the cloud consumer, for the kiosk's tests.

``FakeLedger`` decides outcomes the way PROTOCOL.md says (idempotent by request_id: the same
payload gets the stored outcome with ``replayed: true``; a bar order on an unknown card is
CARD_NOT_FOUND; balances never go negative) and signs results with a test cloud key.
``MqttResponder`` puts it on the broker as the "cloud-consumer" user, subscribed to the shared
subscription every consumer uses, answering on each kiosk's result topic.
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from cloud.sandbox import MosquittoBroker
from protocol.codec import authenticate, build_result, encode_result, parse_authenticated
from protocol.errors import ErrorCode, ProtocolError
from protocol.models import BarOrder, Request
from protocol.topics import TopicKind, parse_topic, shared_subscription, topic_for
from tests.waiting import wait_until

PREFIX = "festival"


@dataclass
class FakeLedger:
    cloud_key: Ed25519PrivateKey
    kiosk_keys: dict[str, Ed25519PublicKey]
    balances: dict[str, int] = field(default_factory=dict)
    outcomes: dict[str, tuple[str, bytes]] = field(default_factory=dict)
    applied: Counter[str] = field(default_factory=Counter)
    received: list[tuple[str, bytes]] = field(default_factory=list)
    requests: dict[str, Request] = field(default_factory=dict)
    decisions: dict[str, dict[str, Any]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    _transactions: Any = field(default_factory=lambda: itertools.count(1))

    def answer(self, kiosk_id: str, raw: bytes) -> bytes | None:
        """The signed result for one request message (None when it is not even a JWS)."""
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
            stored = self.outcomes.get(request.request_id)
            if stored is not None:
                payload_sha256, _ = stored
                if payload_sha256 != message.payload_sha256:
                    return self._rejection(
                        ProtocolError(
                            ErrorCode.IDEMPOTENCY_CONFLICT,
                            "request_id reused with another payload",
                            echo={"request_id": request.request_id, "kiosk_id": kiosk_id},
                        ),
                        now_ms,
                    )
                return self._decide(request, now_ms, replay=True)
            self.requests[request.request_id] = request
            result = self._decide(request, now_ms, replay=False)
            self.outcomes[request.request_id] = (message.payload_sha256, result)
            return result

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
            replayed=False,
            processed_at_ms=now_ms,
        )
        return encode_result(result, self.cloud_key)

    def _decide(self, request: Request, now_ms: int, *, replay: bool) -> bytes:
        if replay:
            # The stored outcome, marked replayed: same decision, nothing applied again.
            previous = self.decisions[request.request_id]
            result = build_result(**{**previous, "replayed": True, "processed_at_ms": now_ms})
            return encode_result(result, self.cloud_key)
        card = request.card_uid
        balance = self.balances.get(card)
        error: ErrorCode | None = None
        if isinstance(request, BarOrder):
            if balance is None:
                error = ErrorCode.CARD_NOT_FOUND
            elif balance < request.total_cents:
                error = ErrorCode.INSUFFICIENT_FUNDS
            else:
                new_balance = balance - request.total_cents
        else:
            balance = balance or 0
            new_balance = balance + request.amount_cents
        if error is None:
            self.balances[card] = new_balance
            self.applied[request.request_id] += 1
            decision: dict[str, Any] = {
                "error_code": None,
                "message": "approved",
                "transaction_id": f"tx-{next(self._transactions)}",
                "previous_balance_cents": balance,
                "new_balance_cents": new_balance,
            }
        else:
            decision = {
                "error_code": error,
                "message": error.value.lower().replace("_", " "),
                "transaction_id": None,
                "previous_balance_cents": balance,
                "new_balance_cents": balance,
            }
        fields: dict[str, Any] = {
            "request_id": request.request_id,
            "kiosk_id": request.kiosk_id,
            "seq": request.seq,
            "card_uid": request.card_uid,
            "replayed": False,
            "processed_at_ms": now_ms,
            **decision,
        }
        self.decisions[request.request_id] = fields
        return encode_result(build_result(**fields), self.cloud_key)

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
