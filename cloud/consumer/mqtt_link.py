"""The cloud's one MQTT adapter: paho-mqtt 2.x, MQTT 5. `MqttLink` is the consumer's link (durable
session, manual acks); `short_session` is the one short session the operator's tools need (the
broker's control topic in cloud/broker.py, deploy's login check, the demo's attack probe).

Only this module of the cloud imports paho (tests/test_architecture.py). `MqttLink`'s callbacks
run on paho's network thread and only hand what they received to the `Inbox` (an exception there
would kill that thread). The worker calls `publish()`, `ack()` and `restart()` from its own
thread.

The one exception to "callbacks only hand over": `on_connect` sends SUBSCRIBE at once (a
non-blocking call that only queues a packet). Mosquitto 2.0 does not restore shared
subscriptions from its persistence file, so after a broker restart every message published
before we subscribe again has no subscriber; subscribing from the callback, not after the
worker has finished its batch, keeps that window as small as it can be.

Acknowledgements carry a connection *generation*: a message may be acknowledged only on the
connection it arrived on. After a reconnect the broker redelivers every unacknowledged message
with the same packet id; acknowledging the old copy on the new connection as well as the
redelivered one could acknowledge a different message that reused the id. So an ack from an
older generation is skipped: the redelivered copy is processed (replayed) and acknowledged.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from cloud.consumer import limits
from cloud.consumer.inbox import InboundMessage, Inbox, LinkEvent, LinkState
from protocol.mqtt_url import MqttEndpoint

log = logging.getLogger("cloud.consumer.mqtt")


@dataclass(frozen=True, slots=True)
class TlsFiles:
    ca_file: Path | None
    cert_file: Path | None
    key_file: Path | None


@dataclass(frozen=True, slots=True)
class Subscription:
    topic_filter: str
    qos: int


class MqttLink:
    def __init__(
        self,
        *,
        endpoint: MqttEndpoint,
        client_id: str,
        inbox: Inbox,
        subscriptions: Sequence[Subscription],
        receive_maximum: int,
        tls: TlsFiles | None = None,
        inflight_max: int = limits.RESULT_INFLIGHT_MAX,
        queued_max: int = limits.RESULT_QUEUE_MAX,
    ) -> None:
        self._endpoint = endpoint
        self._inbox = inbox
        self._subscriptions = tuple(subscriptions)
        self._lock = threading.Lock()
        self._generation = 0
        self._connected = False
        self._pending_subscribe: dict[int, int] = {}  # SUBSCRIBE mid -> generation
        self._refused = _Refusals()
        client = _client(endpoint, client_id, tls, manual_ack=True)
        # Belt and braces: our callbacks catch everything, but a bug must never end the
        # network thread (paho re-raises callback exceptions unless told otherwise).
        client.suppress_exceptions = True
        # Both must be set before connect(); paho's queue is unbounded by default.
        client.max_inflight_messages_set(inflight_max)
        client.max_queued_messages_set(queued_max)
        client.reconnect_delay_set(limits.RECONNECT_DELAY_MIN_S, limits.RECONNECT_DELAY_MAX_S)
        client.connect_timeout = limits.CONNECT_TIMEOUT_S
        client.on_socket_open = self._on_socket_open
        client.on_pre_connect = self._on_pre_connect
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.on_publish = self._refused.on_publish
        self._client = client
        # A durable session from the very first connect: a v5 session first created with
        # clean_start=True does not survive a broker restart (ENVIRONMENT.md).
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = limits.SESSION_EXPIRY_S
        properties.ReceiveMaximum = receive_maximum
        # MQTT 5 Maximum Packet Size: the broker drops (and logs) anything bigger for us instead
        # of sending it, so junk far beyond the protocol's message limit never reaches the
        # inbox or the dead-letter table; a message a little over the limit still arrives and
        # is answered and recorded as invalid.
        properties.MaximumPacketSize = limits.PACKET_BYTES_MAX
        self._connect_properties = properties

    # --- worker-side API ---------------------------------------------------------------------

    def start(self) -> None:
        """Connect in the background; paho retries until the broker answers."""
        self._client.connect_async(
            self._endpoint.host,
            self._endpoint.port,
            keepalive=limits.KEEPALIVE_S,
            clean_start=False,
            properties=self._connect_properties,
        )
        self._client.loop_start()

    def subscribe(self) -> None:
        """Subscribe to everything (done on every connect); the SUBACK arrives as a LinkEvent."""
        topics = [(s.topic_filter, SubscribeOptions(qos=s.qos)) for s in self._subscriptions]
        result, mid = self._client.subscribe(topics)
        if result == MQTTErrorCode.MQTT_ERR_SUCCESS and mid is not None:
            with self._lock:
                self._pending_subscribe[mid] = self._generation
        else:
            log.warning("subscribe not sent", extra={"context": {"rc": int(result)}})

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> bool:
        """Queue a publish; False when paho refused it (its bounded queue is full)."""
        info = self._client.publish(topic, payload, qos=qos)
        return info.rc in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN)

    def publish_retained(self, topic: str, payload: bytes, timeout_s: float) -> str | None:
        """(1.1) Publish a retained QoS 1 message (a config, the deny-list) and wait for the
        broker's PUBACK; None once the broker took it, else why not (not connected, refused,
        no PUBACK within ``timeout_s``). Called by the publisher's thread, never the worker's.

        Nothing is queued while disconnected: paho would send a stale copy on reconnect,
        after the publisher has already moved on to a newer version."""
        if not self._connected:
            return "not connected to the broker"
        return _publish_and_wait(self._client, self._refused, topic, payload, timeout_s)

    def ack(self, messages: Sequence[InboundMessage]) -> int:
        """Acknowledge QoS 1 messages received on the current connection; returns how many.

        Messages from an older connection are left alone: the broker has redelivered them.
        """
        acked = 0
        with self._lock:
            if not self._connected:
                return 0
            generation = self._generation
            client = self._client
            for message in messages:
                if message.qos == 1 and message.generation == generation:
                    client.ack(message.mid, 1)
                    acked += 1
        return acked

    def restart(self) -> None:
        """Drop the connection (same durable session); paho reconnects by itself and the broker
        then redelivers every message we did not acknowledge. Shutting the socket down makes
        paho's own thread notice a lost connection, so the worker never races it on the socket."""
        sock = self._client.socket()
        if isinstance(sock, socket.socket):  # an SSLSocket is one too
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def generation(self) -> int:
        return self._generation

    def stop(self, timeout_s: float = limits.DISCONNECT_TIMEOUT_S) -> None:
        """Send what is queued (results, acks), disconnect cleanly, stop the network thread."""
        self.flush(timeout_s)
        self._client.disconnect()
        self._client.loop_stop()
        _release_sockets(self._client)

    def flush(self, timeout_s: float) -> bool:
        """Wait until paho has written everything queued (results, acks) to the socket."""
        deadline = time.monotonic() + timeout_s
        while self._connected and self._client.want_write():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.005)
        return True

    # --- paho callbacks (network thread): hand over, never raise ---------------------------------

    def _on_socket_open(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        # Nagle + delayed ACK turn a 1 ms round trip into ~88 ms (ENVIRONMENT.md); paho never
        # sets TCP_NODELAY itself.
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (OSError, AttributeError):
            pass

    def _on_pre_connect(self, client: mqtt.Client, userdata: Any) -> None:
        with self._lock:
            self._generation += 1
            self._connected = False

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        try:
            if reason_code.is_failure:
                self._inbox.put_event(
                    LinkEvent(LinkState.DISCONNECTED, self._generation, reason=str(reason_code))
                )
                return
            with self._lock:
                self._generation += 1
                self._connected = True
                generation = self._generation
            self.subscribe()
            self._inbox.put_event(
                LinkEvent(
                    LinkState.CONNECTED,
                    generation,
                    session_present=bool(flags.session_present),
                    reason=str(getattr(properties, "ReceiveMaximum", "")),
                )
            )
        except Exception:  # pragma: no cover - a bug must not end paho's thread
            log.exception("on_connect failed")

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        try:
            self._inbox.put_event(
                LinkEvent(LinkState.DISCONNECTED, self._generation, reason="connect failed")
            )
        except Exception:  # pragma: no cover
            log.exception("on_connect_fail failed")

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        try:
            with self._lock:
                self._generation += 1
                self._connected = False
                generation = self._generation
            self._inbox.put_event(
                LinkEvent(LinkState.DISCONNECTED, generation, reason=str(reason_code))
            )
        except Exception:  # pragma: no cover
            log.exception("on_disconnect failed")

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        try:
            with self._lock:
                generation = self._pending_subscribe.pop(mid, self._generation)
            failed = [str(code) for code in reason_codes if code.is_failure]
            self._inbox.put_event(
                LinkEvent(
                    LinkState.SUBSCRIBED if not failed else LinkState.SUBSCRIBE_FAILED,
                    generation,
                    reason=", ".join(failed),
                )
            )
        except Exception:  # pragma: no cover
            log.exception("on_subscribe failed")

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        try:
            topic = message.topic
        except UnicodeDecodeError:
            topic = ""  # not UTF-8: still handed over, so it ends as a dead letter
        try:
            self._inbox.put_message(
                InboundMessage(
                    topic=topic,
                    payload=bytes(message.payload),
                    qos=message.qos,
                    mid=message.mid,
                    retain=bool(message.retain),
                    generation=self._generation,
                    received_at=time.monotonic(),
                    received_at_ms=time.time_ns() // 1_000_000,
                )
            )
        except Exception:  # pragma: no cover
            log.exception("on_message failed")


class _Refusals:
    """PUBACKs with a failure reason (MQTT 5: e.g. "Not authorized"), by message id, for the
    retained publishes that wait for them. paho reports a refused QoS 1 message as published;
    only the reason code tells. Its callback runs on paho's network thread *inside* paho's
    outgoing-message lock, so this lock is never held while calling into paho."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._reasons: dict[int, str] = {}

    def on_publish(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties,
    ) -> None:
        try:
            if reason_code.is_failure:
                with self._lock:
                    if len(self._reasons) >= limits.PUBACK_REFUSALS_KEPT_MAX:
                        self._reasons.clear()  # only waiting publishers read them, at once
                    self._reasons[mid] = str(reason_code)
        except Exception:  # pragma: no cover - a bug must not end paho's thread
            log.exception("on_publish failed")

    def take(self, mid: int) -> str | None:
        with self._lock:
            return self._reasons.pop(mid, None)


def _publish_and_wait(
    client: mqtt.Client, refusals: _Refusals, topic: str, payload: bytes, timeout_s: float
) -> str | None:
    info = client.publish(topic, payload, qos=1, retain=True)
    if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
        return f"publish not sent: {mqtt.error_string(info.rc)}"
    try:
        info.wait_for_publish(timeout_s)
    except (ValueError, RuntimeError) as error:
        return f"publish failed: {error}"
    if not info.is_published():
        return f"no PUBACK within {timeout_s} s"
    refused = refusals.take(info.mid)
    return None if refused is None else f"refused by the broker: {refused}"


class RetainedPublisherSession:
    """(1.1) A short MQTT 5 session of the operator's CLI that publishes retained messages
    (configs, the deny-list) and waits for each PUBACK (cloud/publisher.py's link): a clean
    session that expires at once, under one of the cloud's client ids. Use it as a context
    manager; entering raises OSError when the broker cannot be reached or refuses us."""

    def __init__(
        self,
        endpoint: MqttEndpoint,
        *,
        client_id: str,
        timeout_s: float,
        tls: TlsFiles | None = None,
    ) -> None:
        self._endpoint = endpoint
        self._timeout_s = timeout_s
        self._refused = _Refusals()
        self._connected = threading.Event()
        self._connect_refused: str | None = None
        client = _client(endpoint, client_id, tls, reconnect_on_failure=False)
        client.connect_timeout = min(limits.CONNECT_TIMEOUT_S, timeout_s)
        client.on_connect = self._on_connect
        client.on_publish = self._refused.on_publish
        self._client = client

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any
    ) -> None:
        if reason.is_failure:
            self._connect_refused = str(reason)
        self._connected.set()

    def __enter__(self) -> RetainedPublisherSession:
        _connect_short_session(self._client, self._endpoint)
        try:
            if not self._connected.wait(self._timeout_s):
                raise OSError(f"no CONNACK within {self._timeout_s} s")
            if self._connect_refused is not None:
                raise OSError(f"the broker refused the connection: {self._connect_refused}")
        except OSError:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._client.disconnect()
        self._client.loop_stop()
        _release_sockets(self._client)

    def publish_retained(self, topic: str, payload: bytes, timeout_s: float) -> str | None:
        """As MqttLink.publish_retained."""
        if self._connect_refused is not None or not self._client.is_connected():
            return "not connected to the broker"
        return _publish_and_wait(self._client, self._refused, topic, payload, timeout_s)


def _release_sockets(client: mqtt.Client) -> None:
    """Close the connection's socket and the wake-up socket pair `loop_start` made. paho closes
    them only when the client is collected, and a client in a reference cycle (its callbacks
    are our bound methods) may be collected in any order with its sockets: each then warns of
    an unclosed socket (a ResourceWarning, an error in the test suite)."""
    try:
        client._reset_sockets()  # paho's own close of all three; no public equivalent
    except OSError:
        pass


def _client(
    endpoint: MqttEndpoint,
    client_id: str,
    tls: TlsFiles | None,
    *,
    manual_ack: bool = False,
    reconnect_on_failure: bool = True,
) -> mqtt.Client:
    """A paho MQTT 5 client (callback API 2) under ``client_id``, with the endpoint's user and
    password, over TLS when the endpoint says so; not connected yet."""
    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv5,
        reconnect_on_failure=reconnect_on_failure,
        manual_ack=manual_ack,
    )
    if endpoint.username is not None:
        client.username_pw_set(endpoint.username, endpoint.password)
    if endpoint.tls:
        _use_tls(client, tls)
    return client


def _connect_short_session(client: mqtt.Client, endpoint: MqttEndpoint) -> None:
    """Connect (blocking; OSError when the broker cannot be reached) with a clean session that
    expires at once, then start paho's network thread, which reads the CONNACK."""
    properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    properties.SessionExpiryInterval = 0
    client.connect(
        endpoint.host, endpoint.port, keepalive=30, clean_start=True, properties=properties
    )
    client.loop_start()


def _use_tls(client: mqtt.Client, tls: TlsFiles | None) -> None:
    files = tls or TlsFiles(None, None, None)
    client.tls_set(
        ca_certs=str(files.ca_file) if files.ca_file else None,
        certfile=str(files.cert_file) if files.cert_file else None,
        keyfile=str(files.key_file) if files.key_file else None,
        cert_reqs=ssl.CERT_REQUIRED,
        tls_version=ssl.PROTOCOL_TLS_CLIENT,
    )


# --- short sessions: the operator's tools ----------------------------------------------------


@dataclass(slots=True)
class ShortSession:
    """What one short MQTT 5 session saw (`short_session`): the broker's answers as text and
    numbers, so that its callers (the broker's control channel, deploy's login check, the demo's
    attack probe) never touch paho themselves."""

    connect_refused: str | None = None  # the CONNACK's reason, when it is a refusal
    subscribe_codes: tuple[int, ...] = ()  # the SUBACK's reason codes (>= 0x80: refused)
    subscribe_refused: tuple[str, ...] = ()  # the refusals among them, as text
    finished: bool = False  # False: the broker did not answer within the timeout


def short_session(
    endpoint: MqttEndpoint,
    *,
    client_id: str,
    timeout_s: float,
    tls: TlsFiles | None = None,
    subscribe: str | None = None,
    publish: tuple[str, bytes] | None = None,
    on_message: Callable[[bytes], bool] | None = None,
) -> ShortSession:
    """Connect with a clean session that expires at once, then (optionally) subscribe to one
    filter at QoS 1, publish one QoS 1 message once the subscription is granted, and hand every
    message received to ``on_message`` until it returns True. Finished at the CONNACK when there
    is nothing to subscribe, at the SUBACK when there is nothing to publish or the subscription
    was refused, at the connect refusal. Raises OSError when the broker cannot be reached."""
    seen = ShortSession()
    done = threading.Event()
    client = _client(endpoint, client_id, tls)

    def on_connect(c: mqtt.Client, u: Any, flags: Any, reason: ReasonCode, props: Any) -> None:
        if reason.is_failure:
            seen.connect_refused = str(reason)
            done.set()
        elif subscribe is None:
            done.set()
        else:
            c.subscribe(subscribe, qos=1)

    def on_subscribe(
        c: mqtt.Client, u: Any, mid: int, reasons: list[ReasonCode], props: Any
    ) -> None:
        seen.subscribe_codes = tuple(int(reason.value) for reason in reasons)
        seen.subscribe_refused = tuple(str(reason) for reason in reasons if reason.is_failure)
        if seen.subscribe_refused or publish is None:
            done.set()
            return
        c.publish(publish[0], publish[1], qos=1)

    def on_received(c: mqtt.Client, u: Any, message: mqtt.MQTTMessage) -> None:
        if on_message is not None and on_message(bytes(message.payload)):
            done.set()

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_received
    client.connect_timeout = limits.CONNECT_TIMEOUT_S  # every MQTT connect is bounded
    _connect_short_session(client, endpoint)
    try:
        seen.finished = done.wait(timeout_s)
    finally:
        client.disconnect()
        client.loop_stop()
        sock = client.socket()
        if sock is not None:  # paho keeps a refused connection's socket until collected
            try:
                sock.close()
            except OSError:
                pass
    return seen
