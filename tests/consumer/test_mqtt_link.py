"""The consumer's MQTT adapter against a real Mosquitto: durable session, acks, redelivery."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cloud.consumer.inbox import InboundMessage, Inbox, LinkEvent, LinkState
from cloud.consumer.mqtt_link import MqttLink, Subscription
from cloud.sandbox import MosquittoBroker
from protocol.mqtt_url import parse_mqtt_url
from protocol.topics import TopicKind, shared_subscription
from tests.consumer.kiosk_client import purge_session
from tests.waiting import wait_until

TX = "festival/v1/kiosks/bar-1/tx"


@pytest.fixture()
def broker(service_dirs: Callable[[str], Path]) -> Iterator[MosquittoBroker]:
    own = MosquittoBroker(service_dirs("link-broker"))
    own.add_user("cloud-consumer", role="cloud")
    own.add_user("bar-1")
    own.start()
    yield own
    own.stop()


class Harness:
    def __init__(self, broker: MosquittoBroker, client_id: str) -> None:
        self.inbox = Inbox(messages_max=1000, scans_max=10, events_max=16)
        self.link = MqttLink(
            endpoint=parse_mqtt_url(broker.url("cloud-consumer")),
            client_id=client_id,
            inbox=self.inbox,
            subscriptions=[Subscription(shared_subscription("festival", TopicKind.TX), 1)],
            receive_maximum=256,
        )
        self.events: list[LinkEvent] = []
        self.messages: list[InboundMessage] = []

    def pump(self) -> None:
        events, messages = self.inbox.take(1000, timeout_s=0.05)
        self.events += events
        self.messages += messages

    def wait_state(self, state: LinkState) -> LinkEvent:
        def found() -> LinkEvent | None:
            self.pump()
            return next((e for e in reversed(self.events) if e.state is state), None)

        event = wait_until(found, timeout_s=10, what=str(state))
        assert event is not None
        return event

    def wait_messages(self, count: int) -> list[InboundMessage]:
        def enough() -> bool:
            self.pump()
            return len(self.messages) >= count

        wait_until(enough, timeout_s=10, what=f"{count} messages")
        taken, self.messages = self.messages, []
        return taken


def publish_as_kiosk(broker: MosquittoBroker, payloads: list[bytes]) -> None:
    import paho.mqtt.publish as publish

    endpoint = parse_mqtt_url(broker.url("bar-1"))
    publish.multiple(
        [{"topic": TX, "payload": p, "qos": 1} for p in payloads],
        hostname=endpoint.host,
        port=endpoint.port,
        auth={"username": endpoint.username or "", "password": endpoint.password or ""},
        client_id="bar-1",  # a kiosk's client id is its username (PROTOCOL.md 1.1)
    )


def test_unacknowledged_messages_come_back_after_a_restart_and_acked_ones_do_not(
    broker: MosquittoBroker,
) -> None:
    harness = Harness(broker, "consumer-link-1")
    harness.link.start()
    try:
        connected = harness.wait_state(LinkState.CONNECTED)
        assert not connected.session_present  # a brand-new durable session
        harness.wait_state(LinkState.SUBSCRIBED)
        publish_as_kiosk(broker, [b"one", b"two", b"three"])
        first = harness.wait_messages(3)
        assert [m.payload for m in first] == [b"one", b"two", b"three"]
        assert harness.link.ack(first[:1]) == 1
        assert harness.link.flush(5)

        harness.events.clear()
        harness.link.restart()
        reconnected = harness.wait_state(LinkState.CONNECTED)
        assert reconnected.session_present and reconnected.generation > connected.generation
        again = harness.wait_messages(2)
        assert sorted(m.payload for m in again) == [b"three", b"two"]
        # The copies from the old connection may not be acknowledged any more: their packet
        # ids belong to the redelivered copies now.
        assert harness.link.ack(first[1:]) == 0
        assert harness.link.ack(again) == 2
        assert harness.link.flush(5)

        harness.events.clear()
        harness.link.restart()
        harness.wait_state(LinkState.SUBSCRIBED)
        publish_as_kiosk(broker, [b"four"])
        assert [m.payload for m in harness.wait_messages(1)] == [b"four"]
    finally:
        harness.link.stop()
        purge_session(broker.url("cloud-consumer"), "consumer-link-1")


def test_the_session_survives_a_broker_restart(broker: MosquittoBroker) -> None:
    harness = Harness(broker, "consumer-link-2")
    harness.link.start()
    try:
        harness.wait_state(LinkState.SUBSCRIBED)
        broker.restart()
        harness.wait_state(LinkState.DISCONNECTED)
        harness.events.clear()
        reconnected = harness.wait_state(LinkState.CONNECTED)
        assert reconnected.session_present  # created with clean_start=False from the start
        publish_as_kiosk(broker, [b"after restart"])
        assert [m.payload for m in harness.wait_messages(1)] == [b"after restart"]
    finally:
        harness.link.stop()
        purge_session(broker.url("cloud-consumer"), "consumer-link-2")


def test_nagle_is_off_on_the_consumers_socket(broker: MosquittoBroker) -> None:
    harness = Harness(broker, "consumer-link-3")
    harness.link.start()
    try:
        harness.wait_state(LinkState.CONNECTED)
        sock = harness.link._client.socket()
        assert isinstance(sock, socket.socket)
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
    finally:
        harness.link.stop()
        purge_session(broker.url("cloud-consumer"), "consumer-link-3")
