"""The broker rules of PROTOCOL.md 1.1 against a real Mosquitto run from the generated
configuration (cloud/broker.py through cloud/sandbox.py), with the consumer's real MQTT adapter.

Issue 11, items 5-7: with one kiosk's credentials nobody joins the consumers' shared
subscription (`$share` hijack), nobody takes over another client's session (client id =
username for kiosks), and packets are capped.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloud.consumer import limits
from cloud.consumer.inbox import InboundMessage, Inbox, LinkEvent, LinkState
from cloud.consumer.mqtt_link import MqttLink, Subscription
from cloud.sandbox import MosquittoBroker
from protocol.mqtt_url import parse_mqtt_url
from protocol.topics import TopicKind, shared_subscription
from tests.broker.sessions import Session
from tests.consumer.kiosk_client import purge_session
from tests.waiting import wait_until

KIOSKS = ("bar-1", "bar-2", "bar-3", "bar-4")
SERVICE = "cloud-consumer"
SHARED_TX = shared_subscription("festival", TopicKind.TX)
TX = "festival/v1/kiosks/bar-1/tx"
NOT_AUTHORIZED = "Not authorized"
PACKET_BYTES_MAX = 262_144


@pytest.fixture
def broker() -> Iterator[MosquittoBroker]:
    root = Path(tempfile.mkdtemp(prefix="festival-broker-rules-"))
    root.chmod(0o755)
    own = MosquittoBroker(root)
    own.add_user(SERVICE, role="cloud")
    for kiosk_id in KIOSKS:
        own.add_user(kiosk_id)
    own.start()
    yield own
    own.stop()
    shutil.rmtree(root, ignore_errors=True)


class Consumer:
    """The consumer's own MQTT adapter (durable session, shared subscription, manual acks)."""

    def __init__(self, broker: MosquittoBroker, client_id: str) -> None:
        self.broker = broker
        self.client_id = client_id
        self.inbox = Inbox(messages_max=1000, scans_max=10, events_max=64)
        self.link = MqttLink(
            endpoint=parse_mqtt_url(broker.url(SERVICE)),
            client_id=client_id,
            inbox=self.inbox,
            subscriptions=[Subscription(SHARED_TX, 1)],
            receive_maximum=256,
        )
        self.events: list[LinkEvent] = []
        self.messages: list[InboundMessage] = []

    def start(self) -> Consumer:
        self.link.start()
        self.wait_state(LinkState.SUBSCRIBED)
        return self

    def pump(self) -> None:
        events, messages = self.inbox.take(1000, timeout_s=0.05)
        self.events += events
        self.messages += messages
        self.link.ack(messages)

    def wait_state(self, state: LinkState) -> LinkEvent:
        def found() -> LinkEvent | None:
            self.pump()
            return next((e for e in reversed(self.events) if e.state is state), None)

        event = wait_until(found, timeout_s=10, what=str(state))
        assert event is not None
        return event

    def wait_payloads(self, count: int) -> list[bytes]:
        def enough() -> bool:
            self.pump()
            return len(self.messages) >= count

        wait_until(enough, timeout_s=15, what=f"{count} messages at the consumer")
        return [message.payload for message in self.messages]

    def disconnections(self) -> list[LinkEvent]:
        self.pump()
        return [e for e in self.events if e.state is LinkState.DISCONNECTED]

    def close(self) -> None:
        self.link.stop()
        purge_session(self.broker.url(SERVICE), self.client_id)


def kiosk(
    broker: MosquittoBroker, kiosk_id: str, client_id: str | None = None, **kw: int
) -> Session:
    own_id = kiosk_id if client_id is None else client_id
    return Session(broker.port, kiosk_id, broker.users[kiosk_id], own_id, **kw)


def test_a_kiosk_cannot_join_the_shared_subscription_and_the_consumer_gets_40_of_40(
    broker: MosquittoBroker,
) -> None:
    """The issue's scenario: three sessions with kiosk credentials subscribe to the consumers'
    `$share/ledger/…/+/tx`. On a broker with only a topic ACL they were granted and swallowed
    3 of every 4 payments (the consumer saw 10 of 40); here the SUBSCRIBE itself is refused."""
    consumer = Consumer(broker, "consumer-share-test").start()
    attackers = [kiosk(broker, kiosk_id, session_expiry_s=3600) for kiosk_id in KIOSKS[1:]]
    try:
        for attacker in attackers:
            assert attacker.connect() == "Success"
            refused = attacker.subscribe(
                SHARED_TX,
                "$share/other/festival/v1/kiosks/+/tx",
                "festival/v1/kiosks/+/tx",
                "festival/v1/kiosks/bar-1/result",
                "#",
            )
            assert refused == [NOT_AUTHORIZED] * 5
            # What a kiosk may read, it may subscribe to (its own result, config; the deny-list).
            own = f"festival/v1/kiosks/{attacker.username}"
            allowed = [f"{own}/result", f"{own}/config", "festival/v1/denylist"]
            assert attacker.subscribe(*allowed) == ["Granted QoS 1"] * 3
        attackers[0].close()  # a durable attacker session that went away swallows nothing either

        victim = kiosk(broker, "bar-1")
        assert victim.connect() == "Success"
        sent = [f"payment-{number:02d}".encode() for number in range(40)]
        for payload in sent:
            victim.publish(TX, payload, wait=False)
        wait_until(lambda: len(victim.pubacks) == 40, timeout_s=15, what="40 PUBACKs")
        assert set(victim.pubacks.values()) == {"Success"}
        assert sorted(consumer.wait_payloads(40)) == sent
        assert all(attacker.messages == [] for attacker in attackers)
        victim.close()
    finally:
        for attacker in attackers:
            attacker.close()
        for attacker in attackers:
            purge_session(broker.url(attacker.username), attacker.client_id)
        consumer.close()


def test_a_kiosk_publishes_only_its_own_topics(broker: MosquittoBroker) -> None:
    consumer = Consumer(broker, "consumer-publish-test").start()
    bar = kiosk(broker, "bar-2")
    try:
        assert bar.connect() == "Success"
        forged = [
            "festival/v1/kiosks/bar-1/tx",
            "festival/v1/kiosks/bar-2/result",
            "festival/v1/kiosks/bar-2/config",
            "festival/v1/denylist",
            "festival/v1/kiosks/bar-2/tx/extra",
        ]
        mids = [bar.publish(topic, b"forged") for topic in forged]
        assert [bar.pubacks[mid] for mid in mids] == [NOT_AUTHORIZED] * len(forged)
        own = bar.publish("festival/v1/kiosks/bar-2/tx", b"own")
        assert bar.pubacks[own] == "Success"
        assert consumer.wait_payloads(1) == [b"own"]
    finally:
        bar.close()
        consumer.close()


def test_kiosk_credentials_cannot_take_over_another_clients_session(
    broker: MosquittoBroker,
) -> None:
    """Item 6: a kiosk login with the consumer's client id (or another kiosk's, or none) is
    refused before any takeover; the consumer keeps its durable session and its messages."""
    consumer = Consumer(broker, "consumer-takeover-test").start()
    generation = consumer.link.generation
    honest = kiosk(broker, "bar-2", session_expiry_s=3600)
    try:
        assert honest.connect() == "Success"
        for client_id in ("consumer-takeover-test", "bar-2", "cloud-consumer", ""):
            intruder = kiosk(broker, "bar-1", client_id=client_id)
            try:
                assert intruder.connect() == NOT_AUTHORIZED, client_id
            finally:
                intruder.close()
        # Nobody was kicked: the consumer's connection (and session) and bar-2's are intact.
        assert consumer.disconnections() == []
        assert consumer.link.connected and consumer.link.generation == generation
        assert honest.connected and honest.disconnects == []

        bar = kiosk(broker, "bar-1")
        assert bar.connect() == "Success"
        bar.publish(TX, b"after the attempts")
        assert consumer.wait_payloads(1) == [b"after the attempts"]
        bar.close()
    finally:
        honest.close()
        purge_session(broker.url("bar-2"), "bar-2")
        consumer.close()


def test_packets_are_capped_and_the_consumer_is_unaffected(broker: MosquittoBroker) -> None:
    """Item 7: the broker disconnects a client sending a packet over 262144 bytes; and it never
    hands the consumer more than the Maximum Packet Size the consumer announced."""
    consumer = Consumer(broker, "consumer-packets-test").start()
    generation = consumer.link.generation
    try:
        bar = kiosk(broker, "bar-1")
        assert bar.connect() == "Success"
        # Under the broker's cap but over the consumer's: accepted, never delivered to it.
        big = b"x" * (limits.PACKET_BYTES_MAX + 1)
        assert bar.pubacks[bar.publish(TX, big)] == "Success"
        bar.publish(TX, b"small after big")
        assert consumer.wait_payloads(1) == [b"small after big"]
        wait_until(
            lambda: (
                "Dropping too large outgoing PUBLISH for consumer-packets-test"
                in broker.log_file.read_text()
            ),
            timeout_s=5,
            what="the broker's log of the dropped packet",
        )

        # Over the broker's cap: the sender is disconnected, the message goes nowhere.
        bar.publish(TX, b"y" * PACKET_BYTES_MAX, wait=False)
        wait_until(lambda: bar.disconnects, timeout_s=10, what="the oversize sender's disconnect")
        assert bar.disconnects == ["Packet too large"]  # MQTT 5 DISCONNECT reason 0x95
        bar.close()

        again = kiosk(broker, "bar-1")
        assert again.connect() == "Success"
        again.publish(TX, b"still served")
        assert consumer.wait_payloads(2) == [b"small after big", b"still served"]
        again.close()
        assert consumer.disconnections() == []
        assert consumer.link.generation == generation
    finally:
        consumer.close()


def test_retained_configs_reach_their_own_kiosk_only_and_only_the_cloud_publishes_them(
    broker: MosquittoBroker,
) -> None:
    """(1.1) The cloud's link publishes a retained config and the deny-list and gets the PUBACK
    (MqttLink.publish_retained); a kiosk reads its own config and the deny-list, never another
    kiosk's config; a topic outside the cloud's ACL is refused, and said so."""
    consumer = Consumer(broker, "consumer-retained-test").start()
    own = kiosk(broker, "bar-1")
    other = kiosk(broker, "bar-2")
    try:
        config_1 = "festival/v1/kiosks/bar-1/config"
        assert consumer.link.publish_retained(config_1, b"config of bar-1", 5.0) is None
        assert consumer.link.publish_retained("festival/v1/denylist", b"denylist", 5.0) is None
        refused = consumer.link.publish_retained("festival/v1/kiosks/bar-1/tx", b"x", 5.0)
        assert refused == f"refused by the broker: {NOT_AUTHORIZED}"

        assert own.connect() == "Success" and other.connect() == "Success"
        assert own.subscribe(config_1, "festival/v1/denylist") == ["Granted QoS 1"] * 2
        wait_until(lambda: len(own.payloads()) == 2, timeout_s=10, what="the retained copies")
        assert sorted(own.payloads()) == [b"config of bar-1", b"denylist"]
        assert other.subscribe(config_1, "festival/v1/kiosks/+/config") == [NOT_AUTHORIZED] * 2
        assert other.subscribe("festival/v1/denylist") == ["Granted QoS 1"]
        wait_until(lambda: other.payloads(), timeout_s=10, what="the deny-list at bar-2")
        assert other.payloads() == [b"denylist"]
    finally:
        own.close()
        other.close()
        consumer.close()


def _publish_retained_as_kiosk(session: Session, topic: str, payload: bytes) -> str:
    """A retained QoS 1 publish with the kiosk's credentials; the PUBACK's reason."""
    info = session.client.publish(topic, payload, qos=1, retain=True)
    wait_until(lambda: info.mid in session.pubacks, timeout_s=10, what="PUBACK")
    return session.pubacks[info.mid]


def test_a_kiosk_cannot_publish_or_clear_a_retained_config_or_the_denylist(
    broker: MosquittoBroker,
) -> None:
    """(1.1) "Only the cloud publishes config and deny-list messages": a kiosk's retained
    publish to its own config, another kiosk's config or the deny-list — forged bytes, or the
    empty payload that would clear the cloud's copy — is refused (PUBACK "Not authorized") and
    the broker's retained copies stay the cloud's: a kiosk subscribing afterwards gets exactly
    those, and nothing is retained where the cloud published nothing."""
    consumer = Consumer(broker, "consumer-retained-forgery-test").start()
    config_1 = "festival/v1/kiosks/bar-1/config"
    config_2 = "festival/v1/kiosks/bar-2/config"
    denylist = "festival/v1/denylist"
    try:
        assert consumer.link.publish_retained(config_1, b"cloud config of bar-1", 5.0) is None
        assert consumer.link.publish_retained(denylist, b"cloud denylist", 5.0) is None
        for kiosk_id in ("bar-1", "bar-2"):
            attacker = kiosk(broker, kiosk_id)
            try:
                assert attacker.connect() == "Success"
                for topic in (config_1, config_2, denylist):
                    for payload in (b"forged", b""):
                        answer = _publish_retained_as_kiosk(attacker, topic, payload)
                        assert answer == NOT_AUTHORIZED, (kiosk_id, topic, payload)
            finally:
                attacker.close()

        reader_1, reader_2 = kiosk(broker, "bar-1"), kiosk(broker, "bar-2")
        try:
            assert reader_1.connect() == "Success" and reader_2.connect() == "Success"
            assert reader_1.subscribe(config_1, denylist) == ["Granted QoS 1"] * 2
            wait_until(lambda: len(reader_1.payloads()) >= 2, timeout_s=10, what="bar-1's copies")
            # bar-2's config first: the broker sends a subscription's retained messages in the
            # order of its filters, so once the deny-list is in, a bar-2 config would be too.
            assert reader_2.subscribe(config_2, denylist) == ["Granted QoS 1"] * 2
            wait_until(reader_2.payloads, timeout_s=10, what="the deny-list at bar-2")
            assert sorted(reader_1.messages) == [
                (denylist, b"cloud denylist"),
                (config_1, b"cloud config of bar-1"),
            ]
            assert reader_2.messages == [(denylist, b"cloud denylist")]
        finally:
            reader_1.close()
            reader_2.close()
    finally:
        consumer.close()
