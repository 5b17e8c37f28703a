"""One set of behaviours of the kiosk's MQTT link, run against `device.link.FakeLink` and the
real `device.mqtt_link.MqttLink` on a real Mosquitto.

What the kiosk (device/kiosk.py, device/machine.py) relies on: `LinkConnected` after connecting
and again after every lost connection (`LinkDisconnected`) comes back; `publish_online()`
announces the kiosk; a request is acknowledged by `PublishDone(message_id)` with the id
`publish_request` returned and reaches the cloud once; a request handed over while the
connection is down goes out, and is acknowledged, after it is back (the machine never publishes
it again: `_link_up`); a full queue refuses at once; results arrive on the kiosk's result topic,
those sent while it was away after it is back (its durable session); scans go out only while
connected; `stop()` says offline. (1.1) The cloud's retained config and deny-list (QoS 1): a
kiosk subscribing gets the newest one of each at once, on first connect and again after every
reconnect (the kiosk calls `publish_online()` on every `LinkConnected`); one published while it is
connected and subscribed arrives at once; one published while it is away waits in its durable
session (the subscription survives the disconnect) and arrives after the return, followed by the
newest retained again when the kiosk subscribes anew; a newer retained message replaces the older
(never handed over again); an empty retained payload clears the topic (live subscribers receive
the empty message; later subscribers nothing retained, at most the clear once more).

Each `Harness` plays the broker and the cloud for one link: the fake's drives `FakeLink`
directly; the real one puts a pullable TCP cable (tests/contract/cable.py) between the link and
a private broker, and a cloud client on the broker's far side.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from cloud.sandbox import MosquittoBroker
from device.link import FakeLink, LinkConnected, LinkDisconnected, MessageReceived, PublishDone
from device.mqtt_link import MqttLink
from protocol.codec import decode_status
from protocol.mqtt_url import MqttEndpoint
from protocol.topics import (
    TopicKind,
    config_topic,
    denylist_topic,
    parse_topic,
    shared_subscription,
    topic_for,
)
from tests.contract.cable import Cable
from tests.waiting import wait_until

PREFIX: Final = "festival"
KIOSK_ID: Final = "bar-1"
CLOUD_USER: Final = "cloud-consumer"
RESULT_TOPIC: Final = topic_for(PREFIX, KIOSK_ID, TopicKind.RESULT)
CONFIG_TOPIC: Final = config_topic(PREFIX, KIOSK_ID)
DENYLIST_TOPIC: Final = denylist_topic(PREFIX)
TIMEOUT_S: Final = 30.0  # paho's reconnect delay doubles while the cable is out (up to 30 s)
QUEUED_MAX: Final = 100


class Harness:
    """The broker and the cloud around one link; the link's events, as the kiosk gets them."""

    link: Any

    def __init__(self) -> None:
        self._events: list[object] = []
        self._lock = threading.Lock()

    def sink(self, event: object) -> None:
        with self._lock:
            self._events.append(event)

    def events(self) -> list[object]:
        with self._lock:
            return list(self._events)

    def wait_event(self, matches: Callable[[Any], bool], what: str, after: int = 0) -> int:
        """The index of the first event from `after` on that matches."""

        def found() -> int | None:
            events = self.events()
            return next((i + 1 for i in range(after, len(events)) if matches(events[i])), None)

        return wait_until(found, TIMEOUT_S, what=what) - 1

    def go_online(self) -> None:
        """Start, connect and announce the kiosk, as Kiosk.start and its first LinkConnected do."""
        self.start()
        self.wait_event(lambda e: isinstance(e, LinkConnected), "the first connect")
        self.link.publish_online()
        wait_until(lambda: "online" in self.cloud_statuses(), TIMEOUT_S, what="online")

    def cut_and_wait(self) -> int:
        mark = len(self.events())
        self.cut()
        return self.wait_event(lambda e: isinstance(e, LinkDisconnected), "disconnect", mark)

    def mend_and_wait(self) -> int:
        mark = len(self.events())
        self.mend()
        return self.wait_event(lambda e: isinstance(e, LinkConnected), "reconnect", mark)

    def come_back(self) -> int:
        """Mend the cable and announce the kiosk again, as Kiosk does on every LinkConnected;
        the index of the LinkConnected."""
        back = self.mend_and_wait()
        self.announce()
        return back

    def announce(self) -> None:
        """`publish_online()`, and wait for its status at the cloud: the kiosk subscribes before
        it publishes the status, on one connection, so the broker has the subscriptions then
        (a `settle()` after this cannot overtake them)."""
        seen = len(self.cloud_statuses())
        self.link.publish_online()
        wait_until(lambda: len(self.cloud_statuses()) > seen, TIMEOUT_S, what="online again")

    def messages_on(self, topic: str, after: int = 0) -> list[bytes]:
        """The payloads received on `topic`, from event `after` on, in order."""
        return [
            e.payload
            for e in self.events()[after:]
            if isinstance(e, MessageReceived) and e.topic == topic
        ]

    def wait_messages_on(self, topic: str, expected: list[bytes], after: int = 0) -> None:
        """Wait until the payloads on `topic` from `after` on are `expected`, then that no
        more arrive: a retained message sent twice is a failure, not a race won."""
        wait_until(
            lambda: len(self.messages_on(topic, after)) >= len(expected),
            TIMEOUT_S,
            what=f"{len(expected)} message(s) on {topic}",
        )
        self.settle()
        assert self.messages_on(topic, after) == expected

    # --- what each harness provides ----------------------------------------------------------

    def start(self) -> None:
        raise NotImplementedError

    def cut(self) -> None:
        raise NotImplementedError

    def mend(self) -> None:
        raise NotImplementedError

    def send_result(self, payload: bytes) -> None:
        raise NotImplementedError

    def publish_retained(self, topic: str, payload: bytes) -> None:
        """The cloud publishes a retained QoS 1 message (config, deny-list) and has its PUBACK."""
        raise NotImplementedError

    def settle(self) -> None:
        """Return once everything the broker had for the kiosk at the call has been handed
        over (the fake: at once)."""

    def cloud_requests(self) -> list[bytes]:
        raise NotImplementedError

    def cloud_scans(self) -> list[bytes]:
        raise NotImplementedError

    def cloud_statuses(self) -> list[str]:
        raise NotImplementedError

    def close(self) -> None:
        pass


class FakeHarness(Harness):
    def __init__(self, queued_max: int) -> None:
        super().__init__()
        self._requests: list[bytes] = []
        self.link = FakeLink(
            responder=self._receive, result_topic=RESULT_TOPIC, queued_max=queued_max
        )

    def _receive(self, payload: bytes) -> None:
        self._requests.append(payload)

    def start(self) -> None:
        self.link.start(self.sink)
        self.link.connect(session_present=False)

    def cut(self) -> None:
        self.link.disconnect("cable pulled")

    def mend(self) -> None:
        self.link.connect(session_present=True)

    def send_result(self, payload: bytes) -> None:
        self.link.deliver(payload)

    def publish_retained(self, topic: str, payload: bytes) -> None:
        self.link.retain(topic, payload)

    def cloud_requests(self) -> list[bytes]:
        return list(self._requests)

    def cloud_scans(self) -> list[bytes]:
        return [p.payload for p in self.link.published if p.kind == "scan"]

    def cloud_statuses(self) -> list[str]:
        return [p.payload.decode() for p in self.link.published if p.kind == "status"]


class CloudSide:
    """The cloud's end: the consumers' shared subscriptions, and results to the kiosk."""

    def __init__(self, broker: MosquittoBroker) -> None:
        self._messages: list[tuple[TopicKind, bytes]] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id="contract-cloud",
            protocol=mqtt.MQTTv5,
        )
        client.username_pw_set(CLOUD_USER, broker.users[CLOUD_USER])
        client.on_connect = lambda c, *args: c.subscribe(
            [
                (shared_subscription(PREFIX, TopicKind.TX), 1),
                (shared_subscription(PREFIX, TopicKind.SCAN), 0),
                (shared_subscription(PREFIX, TopicKind.STATUS), 1),
            ]
        )
        client.on_subscribe = lambda *args: self._subscribed.set()
        client.on_message = self._on_message
        client.connect("127.0.0.1", broker.port)
        client.loop_start()
        self.client = client
        wait_until(self._subscribed.is_set, TIMEOUT_S, what="the cloud's subscriptions")

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        kind = parse_topic(message.topic, PREFIX).kind
        with self._lock:
            self._messages.append((kind, bytes(message.payload)))

    def received(self, kind: TopicKind) -> list[bytes]:
        with self._lock:
            return [payload for found, payload in self._messages if found is kind]

    def publish_result(self, payload: bytes) -> None:
        self.client.publish(RESULT_TOPIC, payload, qos=1).wait_for_publish(TIMEOUT_S)

    def publish_retained(self, topic: str, payload: bytes) -> None:
        """With the cloud's credentials, as cloud/publisher.py does (the ACL lets only the
        cloud publish configs and the deny-list)."""
        info = self.client.publish(topic, payload, qos=1, retain=True)
        info.wait_for_publish(TIMEOUT_S)
        assert info.is_published()

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class RealHarness(Harness):
    def __init__(self, queued_max: int) -> None:
        super().__init__()
        self._root = Path(tempfile.mkdtemp(prefix="festival-link-contract-"))
        self.broker = MosquittoBroker(self._root, prefix=PREFIX)
        self.broker.add_user(CLOUD_USER, role="cloud")
        self.broker.add_user(KIOSK_ID)
        self.broker.start()
        self.cable = Cable(self.broker.port)
        self.cloud = CloudSide(self.broker)
        endpoint = MqttEndpoint(
            "127.0.0.1", self.cable.port, KIOSK_ID, self.broker.users[KIOSK_ID], False
        )
        self.link = MqttLink(
            endpoint=endpoint,
            kiosk_id=KIOSK_ID,
            topic_prefix=PREFIX,
            firmware="contract",
            queued_max=queued_max,
            clock_ms=lambda: time.time_ns() // 1_000_000,
        )
        self._started = False

    def go_online(self) -> None:
        super().go_online()
        # The online status's own PUBACK: until it is in, that publish counts against the queue.
        self.wait_event(lambda e: isinstance(e, PublishDone), "the online status acknowledged")

    def start(self) -> None:
        self._started = True
        self.link.start(self.sink)

    def cut(self) -> None:
        self.cable.pull()

    def mend(self) -> None:
        self.cable.plug()

    def send_result(self, payload: bytes) -> None:
        self.cloud.publish_result(payload)

    def publish_retained(self, topic: str, payload: bytes) -> None:
        self.cloud.publish_retained(topic, payload)

    def settle(self) -> None:
        # A marker result published after everything else: the broker hands a session's
        # messages over in order, so once it is in, nothing published before it is on the way.
        marker = f"settle-{time.monotonic_ns()}".encode()
        mark = len(self.events())
        self.cloud.publish_result(marker)
        self.wait_event(received(marker), "the settle marker", mark)

    def cloud_requests(self) -> list[bytes]:
        return self.cloud.received(TopicKind.TX)

    def cloud_scans(self) -> list[bytes]:
        return self.cloud.received(TopicKind.SCAN)

    def cloud_statuses(self) -> list[str]:
        return [
            decode_status(payload, topic_kiosk_id=KIOSK_ID).state
            for payload in self.cloud.received(TopicKind.STATUS)
        ]

    def close(self) -> None:
        try:
            if self._started:
                self.link.stop()
            self.cloud.stop()
            self.cable.close()
        finally:
            self.broker.stop()
            shutil.rmtree(self._root, ignore_errors=True)


def done_for(message_id: int) -> Callable[[Any], bool]:
    return lambda e: isinstance(e, PublishDone) and e.message_id == message_id


def received(payload: bytes) -> Callable[[Any], bool]:
    return lambda e: isinstance(e, MessageReceived) and e.payload == payload


class LinkContract:
    """The behaviours; `make_harness(queued_max)` comes from each subclass."""

    @pytest.fixture
    def harness(self, make_harness: Callable[[int], Harness]) -> Harness:
        return make_harness(QUEUED_MAX)

    def test_it_connects_and_says_online(self, harness: Harness) -> None:
        harness.go_online()
        assert harness.cloud_statuses()[-1] == "online"
        assert harness.link.result_topic == RESULT_TOPIC

    def test_a_request_is_acknowledged_and_reaches_the_cloud_once(self, harness: Harness) -> None:
        harness.go_online()
        first = harness.link.publish_request(b"request-1")
        second = harness.link.publish_request(b"request-2")
        assert first != second
        for message_id in (first, second):
            index = harness.wait_event(done_for(message_id), f"PublishDone({message_id})")
            assert harness.events()[index].refused_reason is None
        wait_until(lambda: len(harness.cloud_requests()) >= 2, TIMEOUT_S, what="the requests")
        assert harness.cloud_requests() == [b"request-1", b"request-2"]

    def test_a_result_arrives_on_the_result_topic(self, harness: Harness) -> None:
        harness.go_online()
        harness.send_result(b"result-1")
        index = harness.wait_event(received(b"result-1"), "the result")
        assert harness.events()[index].topic == RESULT_TOPIC

    def test_a_lost_connection_is_reported_and_so_is_its_return(self, harness: Harness) -> None:
        harness.go_online()
        lost = harness.cut_and_wait()
        back = harness.mend_and_wait()
        assert back > lost
        event = harness.events()[back]
        assert event.session_present  # the kiosk's durable session survived

    def test_results_sent_while_away_arrive_after_the_return(self, harness: Harness) -> None:
        harness.go_online()
        harness.cut_and_wait()
        harness.send_result(b"late result")
        assert not any(received(b"late result")(e) for e in harness.events())
        back = harness.mend_and_wait()
        index = harness.wait_event(received(b"late result"), "the late result")
        assert index > back

    def test_a_request_handed_over_while_away_goes_out_after_the_return(
        self, harness: Harness
    ) -> None:
        harness.go_online()
        harness.cut_and_wait()
        message_id = harness.link.publish_request(b"sold offline")
        assert not any(done_for(message_id)(e) for e in harness.events())
        assert harness.cloud_requests() == []
        back = harness.mend_and_wait()
        index = harness.wait_event(done_for(message_id), "the queued request acknowledged")
        assert index > back and harness.events()[index].refused_reason is None
        wait_until(harness.cloud_requests, TIMEOUT_S, what="the queued request")
        assert harness.cloud_requests() == [b"sold offline"]

    def test_a_full_queue_refuses_at_once(self, make_harness: Callable[[int], Harness]) -> None:
        harness = make_harness(2)
        harness.go_online()
        harness.cut_and_wait()
        queued = [harness.link.publish_request(f"queued-{n}".encode()) for n in (1, 2)]
        refused = harness.link.publish_request(b"one too many")
        index = harness.wait_event(done_for(refused), "the refusal")
        assert harness.events()[index].refused_reason
        harness.mend_and_wait()
        for message_id in queued:
            index = harness.wait_event(done_for(message_id), f"PublishDone({message_id})")
            assert harness.events()[index].refused_reason is None
        wait_until(lambda: len(harness.cloud_requests()) >= 2, TIMEOUT_S, what="the queued two")
        assert harness.cloud_requests() == [b"queued-1", b"queued-2"]

    def test_scans_go_out_only_while_connected(self, harness: Harness) -> None:
        harness.go_online()
        harness.link.publish_scan(b"scan-1")
        wait_until(harness.cloud_scans, TIMEOUT_S, what="the first scan")
        harness.cut_and_wait()
        harness.link.publish_scan(b"scan while away")
        harness.mend_and_wait()
        harness.link.publish_scan(b"scan-2")
        wait_until(lambda: b"scan-2" in harness.cloud_scans(), TIMEOUT_S, what="the last scan")
        assert harness.cloud_scans() == [b"scan-1", b"scan-2"]

    def test_stop_says_offline(self, harness: Harness) -> None:
        harness.go_online()
        harness.link.stop()
        wait_until(
            lambda: harness.cloud_statuses()[-1] == "offline", TIMEOUT_S, what="offline status"
        )

    # --- (1.1) the retained config and deny-list, cloud -> kiosk ---------------------------

    def test_the_retained_config_and_denylist_arrive_on_connect(self, harness: Harness) -> None:
        harness.publish_retained(CONFIG_TOPIC, b"config v1")
        harness.publish_retained(DENYLIST_TOPIC, b"denylist v1")
        harness.go_online()
        harness.wait_messages_on(CONFIG_TOPIC, [b"config v1"])
        harness.wait_messages_on(DENYLIST_TOPIC, [b"denylist v1"])

    def test_nothing_retained_for_another_kiosk_arrives(self, harness: Harness) -> None:
        other = config_topic(PREFIX, "bar-2")
        harness.publish_retained(other, b"config of bar-2")
        harness.go_online()
        harness.settle()
        assert harness.messages_on(other) == []
        assert harness.messages_on(CONFIG_TOPIC) == harness.messages_on(DENYLIST_TOPIC) == []

    def test_a_retained_message_published_while_online_arrives_at_once(
        self, harness: Harness
    ) -> None:
        harness.go_online()
        harness.publish_retained(CONFIG_TOPIC, b"config v1")
        harness.publish_retained(DENYLIST_TOPIC, b"denylist v1")
        harness.wait_messages_on(CONFIG_TOPIC, [b"config v1"])
        harness.wait_messages_on(DENYLIST_TOPIC, [b"denylist v1"])

    def test_the_retained_messages_arrive_again_after_a_reconnect(self, harness: Harness) -> None:
        harness.publish_retained(CONFIG_TOPIC, b"config v1")
        harness.publish_retained(DENYLIST_TOPIC, b"denylist v1")
        harness.go_online()
        harness.wait_messages_on(CONFIG_TOPIC, [b"config v1"])
        harness.cut_and_wait()
        back = harness.come_back()
        harness.wait_messages_on(CONFIG_TOPIC, [b"config v1"], after=back)
        harness.wait_messages_on(DENYLIST_TOPIC, [b"denylist v1"], after=back)

    def test_the_newest_retained_message_replaces_the_older(self, harness: Harness) -> None:
        harness.publish_retained(CONFIG_TOPIC, b"config v1")
        harness.publish_retained(CONFIG_TOPIC, b"config v2")
        harness.go_online()
        harness.wait_messages_on(CONFIG_TOPIC, [b"config v2"])  # v1 is gone from the broker
        harness.publish_retained(DENYLIST_TOPIC, b"denylist v1")
        harness.publish_retained(DENYLIST_TOPIC, b"denylist v2")
        harness.wait_messages_on(DENYLIST_TOPIC, [b"denylist v1", b"denylist v2"])  # live: both
        harness.cut_and_wait()
        back = harness.come_back()
        harness.wait_messages_on(CONFIG_TOPIC, [b"config v2"], after=back)
        harness.wait_messages_on(DENYLIST_TOPIC, [b"denylist v2"], after=back)

    def test_retained_messages_published_while_away_arrive_after_the_return(
        self, harness: Harness
    ) -> None:
        harness.go_online()
        harness.cut_and_wait()
        harness.publish_retained(CONFIG_TOPIC, b"config v1")
        harness.publish_retained(CONFIG_TOPIC, b"config v2")
        harness.publish_retained(DENYLIST_TOPIC, b"denylist v1")
        assert harness.messages_on(CONFIG_TOPIC) == []
        back = harness.mend_and_wait()
        # The durable session kept the subscriptions: both QoS 1 publishes were queued for the
        # kiosk, in order, and come on the reconnect itself, before the kiosk subscribes anew.
        harness.wait_messages_on(CONFIG_TOPIC, [b"config v1", b"config v2"], after=back)
        harness.wait_messages_on(DENYLIST_TOPIC, [b"denylist v1"], after=back)
        mark = len(harness.events())
        harness.announce()  # the new subscription: the newest retained, once more
        harness.wait_messages_on(CONFIG_TOPIC, [b"config v2"], after=mark)
        harness.wait_messages_on(DENYLIST_TOPIC, [b"denylist v1"], after=mark)

    def test_an_empty_retained_payload_clears_the_topic(self, harness: Harness) -> None:
        harness.publish_retained(CONFIG_TOPIC, b"config v1")
        harness.go_online()
        harness.wait_messages_on(CONFIG_TOPIC, [b"config v1"])
        mark = len(harness.events())
        harness.publish_retained(CONFIG_TOPIC, b"")
        harness.wait_messages_on(CONFIG_TOPIC, [b""], after=mark)  # live subscribers get it
        harness.cut_and_wait()
        back = harness.come_back()
        harness.settle()
        # Nothing retained comes back. The clear itself may come once more: QoS 1 is at least
        # once, and its PUBACK can be lost with the cable (seen in CI: the broker then hands it
        # over again on the return), which a kiosk applies as the same clear.
        assert set(harness.messages_on(CONFIG_TOPIC, after=back)) <= {b""}


class TestFakeLink(LinkContract):
    @pytest.fixture
    def make_harness(self) -> Iterator[Callable[[int], Harness]]:
        made: list[Harness] = []

        def make(queued_max: int) -> Harness:
            made.append(FakeHarness(queued_max))
            return made[-1]

        yield make
        for harness in made:
            harness.close()


@pytest.mark.integration
class TestMqttLink(LinkContract):
    @pytest.fixture
    def make_harness(self) -> Iterator[Callable[[int], Harness]]:
        made: list[Harness] = []

        def make(queued_max: int) -> Harness:
            made.append(RealHarness(queued_max))
            return made[-1]

        yield make
        for harness in made:
            harness.close()
