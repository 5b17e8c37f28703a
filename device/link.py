"""The MQTT link port: what the kiosk needs from the broker, and an in-memory fake.

The link reports through ``sink`` (a callable that only enqueues): ``LinkConnected``,
``LinkDisconnected``, ``MessageReceived`` (a message on one of the kiosk's subscriptions: its
result topic, its config topic or the deny-list topic) and ``PublishDone`` (the broker
acknowledged a QoS 1 publish, or refused it). The real adapter is
``device.mqtt_link.MqttLink``; ``FakeLink`` records publishes and lets tests and the benchmark
play the broker.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, TypeAlias


@dataclass(frozen=True, slots=True)
class LinkConnected:
    session_present: bool


@dataclass(frozen=True, slots=True)
class LinkDisconnected:
    reason: str


@dataclass(frozen=True, slots=True)
class MessageReceived:
    topic: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class PublishDone:
    message_id: int
    refused_reason: str | None = None


LinkEvent: TypeAlias = LinkConnected | LinkDisconnected | MessageReceived | PublishDone
LinkSink: TypeAlias = Callable[[LinkEvent], None]


class Link(Protocol):
    def start(self, sink: LinkSink) -> None: ...

    def publish_request(self, payload: bytes) -> int:
        """Publish a signed request (QoS 1); returns the message id its PublishDone carries."""
        ...

    def publish_scan(self, payload: bytes) -> None:
        """Publish a signed scan record (QoS 0, dropped when offline)."""
        ...

    def publish_online(self, *, offline_pending: int = 0, offline_pending_cents: int = 0) -> None:
        """Subscribe (QoS 1) to our result topic, our config topic and the deny-list topic, and
        publish the retained ``online`` status (with the offline sales the kiosk holds
        unanswered, 1.1). The broker hands over the retained config and deny-list on every such
        subscription, so they arrive again after each connect."""
        ...

    def publish_status(self, *, offline_pending: int, offline_pending_cents: int) -> None:
        """(1.1) Publish the retained ``online`` status again, with new ``offline_pending*``."""
        ...

    def stop(self) -> None:
        """Publish the retained ``offline`` status (bounded wait) and disconnect."""
        ...


@dataclass(frozen=True, slots=True)
class Published:
    kind: str  # "request", "scan", "status"
    payload: bytes
    message_id: int


class FakeLink:
    """An in-memory broker for one kiosk.

    ``connect()`` / ``disconnect()`` drive the link state; ``deliver(payload)`` hands the kiosk a
    result (``topic`` another of its topics); ``retain(topic, payload)`` is the cloud publishing a
    retained QoS 1 message (config, deny-list). Like Mosquitto (the contract's retained cases):
    only the kiosk's own config topic and the deny-list topic reach it (the topics its
    ``publish_online`` subscribes to, derived from ``result_topic``); the newest retained message
    of a topic replaces the older and is handed over on every ``publish_online`` (the
    subscription a connect makes); once subscribed, the durable session keeps the subscription
    across disconnects, so a message published while connected arrives at once and one published
    while away arrives on the next connect, before the kiosk subscribes anew; an empty payload
    clears the topic and reaches a subscribed kiosk as an empty message. With
    ``auto_ack`` every request publish is acknowledged as it reaches the broker;
    ``responder`` (if set) is called with each request's bytes as it reaches the broker and may
    return result bytes to deliver. Like the real link (tests/contract/test_link_contract.py):
    a request published while disconnected waits (at most ``queued_max``, beyond that it is
    refused at once) and goes out on the next connect; a result delivered while disconnected
    waits in the durable session and arrives after the next connect.
    """

    def __init__(
        self,
        *,
        auto_ack: bool = True,
        responder: Callable[[bytes], bytes | None] | None = None,
        result_topic: str = "result",
        queued_max: int = 1000,
    ) -> None:
        assert queued_max >= 1
        self.auto_ack = auto_ack
        self.responder = responder
        self.result_topic = result_topic
        self.queued_max = queued_max
        self.published: list[Published] = []
        self.connected = False
        self._sink: LinkSink | None = None
        self._next_id = 0
        self._lock = threading.Lock()
        self._queued_requests: list[tuple[int, bytes]] = []  # published while disconnected
        self._queued_results: list[tuple[str, bytes]] = []  # delivered while disconnected
        self.retained: dict[str, bytes] = {}
        self._retained_topics = _retained_topics(result_topic)
        # (offline_pending, offline_pending_cents) of every online status published.
        self.statuses: list[tuple[int, int]] = []
        # The durable session holds the subscriptions from the first publish_online on.
        self._subscribed = False

    def start(self, sink: LinkSink) -> None:
        self._sink = sink

    def _emit(self, event: LinkEvent) -> None:
        assert self._sink is not None, "FakeLink not started"
        self._sink(event)

    def connect(self, session_present: bool = True) -> None:
        self.connected = True
        self._emit(LinkConnected(session_present))
        requests, self._queued_requests = self._queued_requests, []
        for message_id, payload in requests:
            self._arrive(message_id, payload)
        results, self._queued_results = self._queued_results, []
        for topic, payload in results:
            self.deliver(payload, topic)

    def disconnect(self, reason: str = "test") -> None:
        self.connected = False
        self._emit(LinkDisconnected(reason))

    def deliver(self, payload: bytes, topic: str | None = None) -> None:
        topic = self.result_topic if topic is None else topic
        if not self.connected:
            self._queued_results.append((topic, payload))
            return
        self._emit(MessageReceived(topic, payload))

    def retain(self, topic: str, payload: bytes) -> None:
        """The cloud publishes a retained message (an empty payload clears it, as in MQTT)."""
        if self._retained_topics is None:
            raise ValueError(f"FakeLink: result topic {self.result_topic!r} names no kiosk")
        if payload:
            self.retained[topic] = payload
        else:
            self.retained.pop(topic, None)
        if self._subscribed and topic in self._retained_topics:
            self.deliver(payload, topic)  # now, or queued in the session until the next connect

    def _record(self, kind: str, payload: bytes) -> int:
        with self._lock:
            self._next_id += 1
            self.published.append(Published(kind, payload, self._next_id))
            return self._next_id

    def publish_request(self, payload: bytes) -> int:
        message_id = self._record("request", payload)
        if self.connected:
            self._arrive(message_id, payload)
        elif len(self._queued_requests) >= self.queued_max:
            self._emit(PublishDone(message_id, refused_reason="message queue full"))
        else:
            self._queued_requests.append((message_id, payload))
        return message_id

    def _arrive(self, message_id: int, payload: bytes) -> None:
        """A request reaches the broker: acknowledged, and answered by the responder."""
        if self.auto_ack:
            self._emit(PublishDone(message_id))
        if self.responder is not None:
            result = self.responder(payload)
            if result is not None:
                self.deliver(result)

    def publish_scan(self, payload: bytes) -> None:
        if self.connected:
            self._record("scan", payload)

    def publish_online(self, *, offline_pending: int = 0, offline_pending_cents: int = 0) -> None:
        self._record("status", b"online")
        self.statuses.append((offline_pending, offline_pending_cents))
        self._subscribed = True
        for topic, payload in list(self.retained.items()):
            if self._retained_topics is not None and topic in self._retained_topics:
                self._emit(MessageReceived(topic, payload))

    def publish_status(self, *, offline_pending: int, offline_pending_cents: int) -> None:
        if self.connected:
            self._record("status", b"online")
            self.statuses.append((offline_pending, offline_pending_cents))

    def stop(self) -> None:
        self._record("status", b"offline")
        self.connected = False

    def requests(self) -> list[bytes]:
        return [p.payload for p in self.published if p.kind == "request"]


def _retained_topics(result_topic: str) -> frozenset[str] | None:
    """The retained topics a kiosk with this result topic subscribes to (its config and the
    deny-list, PROTOCOL.md "Topics"), or None when ``result_topic`` is not
    ``{prefix}/v1/kiosks/{id}/result``. Plain string work: a port imports nothing at run time
    (tests/test_architecture.py); the contract checks the topics against the real link's."""
    head, marker, rest = result_topic.partition("/v1/kiosks/")
    kiosk_id, slash, kind = rest.partition("/")
    if not (head and marker and kiosk_id and slash and kind == "result"):
        return None
    return frozenset({f"{head}{marker}{kiosk_id}/config", f"{head}/v1/denylist"})
