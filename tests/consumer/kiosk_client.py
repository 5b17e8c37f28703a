"""A minimal test kiosk written from PROTOCOL.md alone (not the firmware in device/).

It signs requests with protocol.codec.encode_request, publishes them at QoS 1 on its own tx
topic from a durable MQTT 5 session (clean_start=False + session expiry), and collects every
result arriving on its result topic, verified under the pinned cloud key.
"""

from __future__ import annotations

import os
import secrets
import ssl
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from protocol.codec import encode_request, verify_result
from protocol.errors import ProtocolError
from protocol.models import BarItem, BarOrder, CheckpointRecharge, Request, Result
from protocol.mqtt_url import MqttEndpoint, parse_mqtt_url
from protocol.topics import TopicKind, topic_for
from tests.waiting import wait_until

SESSION_EXPIRY_S = 3600
# PUBACK reason "No matching subscribers": the broker took the request but nobody got it (e.g.
# Mosquitto right after a restart, before the consumer has subscribed again). A kiosk keeps such
# a request in its outbox and sends it again.
NO_MATCHING_SUBSCRIBERS = 0x10
PUBACK_TIMEOUT_S = 10.0


def uuid7() -> str:
    """A time-ordered UUIDv7 (RFC 9562), as PROTOCOL.md recommends for request ids."""
    unix_ms = time.time_ns() // 1_000_000
    value = (unix_ms & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76
    value |= secrets.randbits(12) << 64
    value |= 0b10 << 62
    value |= secrets.randbits(62)
    return str(uuid.UUID(int=value))


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class Received:
    raw: bytes
    result: Result | None
    error: ProtocolError | None
    at: float


@dataclass
class KioskClient:
    broker_url: str
    kiosk_id: str
    private_key: Ed25519PrivateKey
    cloud_public_key: Ed25519PublicKey
    prefix: str = "festival"
    currency: str = "EUR"
    client_id: str = ""
    tls: TlsClientFiles | None = None  # for mqtts:// URLs: the CA to pin, a client certificate
    received: list[Received] = field(default_factory=list)
    seq: int = 0

    def __post_init__(self) -> None:
        # The broker accepts a kiosk's credentials under one client id only: its username.
        self.client_id = self.client_id or self.kiosk_id
        self._lock = threading.Lock()
        self._connected = threading.Event()
        self._subscribed = threading.Event()
        self._puback_failures: list[str] = []
        self._sent_by_mid: dict[int, bytes] = {}
        self._unrouted_mids: list[int] = []
        self.tx_topic = topic_for(self.prefix, self.kiosk_id, TopicKind.TX)
        self.result_topic = topic_for(self.prefix, self.kiosk_id, TopicKind.RESULT)
        endpoint = parse_mqtt_url(self.broker_url)
        self._endpoint = endpoint
        client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=mqtt.MQTTv5,
        )
        client.username_pw_set(endpoint.username, endpoint.password)
        _tls_set(client, endpoint, self.tls)
        client.max_inflight_messages_set(200)
        client.max_queued_messages_set(100_000)
        client.reconnect_delay_set(1, 2)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = lambda *args: self._subscribed.set()
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        client.on_socket_open = _nodelay
        self._client = client

    # --- connection ----------------------------------------------------------------------------

    def connect(self, timeout_s: float = 10.0) -> KioskClient:
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = SESSION_EXPIRY_S
        self._client.connect_async(
            self._endpoint.host,
            self._endpoint.port,
            keepalive=30,
            clean_start=False,
            properties=properties,
        )
        self._client.loop_start()
        assert self._connected.wait(timeout_s), f"{self.kiosk_id}: no CONNACK"
        self._client.subscribe(self.result_topic, qos=1)
        assert self._subscribed.wait(timeout_s), f"{self.kiosk_id}: no SUBACK"
        return self

    def close(self, purge: bool = True) -> None:
        self._client.disconnect()
        self._client.loop_stop()
        if purge:
            purge_session(self.broker_url, self.client_id, tls=self.tls)

    def wait_connected(self, timeout_s: float = 15.0) -> None:
        assert self._connected.wait(timeout_s), f"{self.kiosk_id}: not reconnected"

    # --- requests ------------------------------------------------------------------------------

    def next_seq(self) -> int:
        with self._lock:
            self.seq += 1
            return self.seq

    def bar_order(
        self,
        card_uid: str,
        total_cents: int,
        *,
        request_id: str | None = None,
        created_at_ms: int | None = None,
        items: Iterable[BarItem] | None = None,
    ) -> BarOrder:
        if items is None:
            items = (BarItem(name="Beer", quantity=1, unit_price_cents=total_cents),)
        return BarOrder(
            request_id=request_id or uuid7(),
            kiosk_id=self.kiosk_id,
            seq=self.next_seq(),
            created_at_ms=created_at_ms if created_at_ms is not None else now_ms(),
            card_uid=card_uid,
            currency=self.currency,
            items=tuple(items),
            total_cents=total_cents,
            staff_id="staff-1",
        )

    def recharge(
        self,
        card_uid: str,
        amount_cents: int,
        *,
        payment_method: str = "cash",
        request_id: str | None = None,
        created_at_ms: int | None = None,
    ) -> CheckpointRecharge:
        return CheckpointRecharge(
            request_id=request_id or uuid7(),
            kiosk_id=self.kiosk_id,
            seq=self.next_seq(),
            created_at_ms=created_at_ms if created_at_ms is not None else now_ms(),
            card_uid=card_uid,
            currency=self.currency,
            amount_cents=amount_cents,
            payment_method=payment_method,  # type: ignore[arg-type]
            staff_id="staff-1",
        )

    def sign(self, request: Request) -> bytes:
        return encode_request(request, self.private_key, topup_cents_max=10**9)

    def send(self, request: Request | bytes, *, wait: bool = True) -> bytes:
        """Publish a request (or raw bytes) at QoS 1 on this kiosk's tx topic."""
        raw = request if isinstance(request, bytes) else self.sign(request)
        self.publish(self.tx_topic, raw, wait=wait)
        return raw

    def publish(self, topic: str, raw: bytes, *, qos: int = 1, wait: bool = True) -> None:
        info = self._client.publish(topic, raw, qos=qos)
        assert info.rc in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN)
        if topic == self.tx_topic:
            with self._lock:
                self._sent_by_mid[info.mid] = raw
        if wait and qos > 0:
            info.wait_for_publish(PUBACK_TIMEOUT_S)
            assert info.is_published(), f"{self.kiosk_id}: no PUBACK"
        assert not self._puback_failures, self._puback_failures

    def take_unrouted(self) -> list[bytes]:
        """Requests the broker accepted with "no matching subscribers" since the last call."""
        with self._lock:
            mids, self._unrouted_mids = self._unrouted_mids, []
            return [self._sent_by_mid[mid] for mid in mids if mid in self._sent_by_mid]

    # --- results -------------------------------------------------------------------------------

    def received_for(self, request_id: str) -> list[Received]:
        with self._lock:
            return [r for r in self.received if r.result and r.result.request_id == request_id]

    def results_for(self, request_id: str) -> list[Result]:
        with self._lock:
            return [
                r.result for r in self.received if r.result and r.result.request_id == request_id
            ]

    def wait_result(self, request_id: str, timeout_s: float = 15.0) -> Result:
        results = wait_until(
            lambda: self.results_for(request_id),
            timeout_s=timeout_s,
            what=f"the result of {request_id} at {self.kiosk_id}",
        )
        return results[0]

    def wait_anonymous_results(self, count: int, timeout_s: float = 15.0) -> list[Result]:
        """Results with a null request_id (answers to messages that did not authenticate)."""

        def anonymous() -> list[Result]:
            with self._lock:
                found = [
                    r.result for r in self.received if r.result and r.result.request_id is None
                ]
            return found if len(found) >= count else []

        return wait_until(anonymous, timeout_s=timeout_s, what=f"{count} anonymous results")

    def invalid_results(self) -> list[Received]:
        with self._lock:
            return [r for r in self.received if r.error is not None]

    def all_results(self) -> list[Result]:
        with self._lock:
            return [r.result for r in self.received if r.result is not None]

    # --- paho callbacks ------------------------------------------------------------------------

    def _on_connect(self, client: mqtt.Client, userdata: object, flags, reason_code, properties):  # type: ignore[no-untyped-def]
        if not reason_code.is_failure:
            self._connected.set()

    def _on_disconnect(self, client: mqtt.Client, userdata: object, *args: object) -> None:
        self._connected.clear()

    def _on_publish(self, client: mqtt.Client, userdata: object, mid, reason_code, properties):  # type: ignore[no-untyped-def]
        if reason_code.is_failure:
            self._puback_failures.append(str(reason_code))
        elif reason_code.value == NO_MATCHING_SUBSCRIBERS:
            with self._lock:
                self._unrouted_mids.append(mid)

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        raw = bytes(message.payload)
        try:
            result: Result | None = verify_result(
                raw, cloud_public_key=self.cloud_public_key, kiosk_id=self.kiosk_id
            )
            error = None
        except ProtocolError as failure:
            result, error = None, failure
        with self._lock:
            self.received.append(Received(raw, result, error, time.monotonic()))


def _nodelay(client: mqtt.Client, userdata: object, sock: object) -> None:
    import socket

    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # type: ignore[attr-defined]
    except (OSError, AttributeError):
        pass


@dataclass(frozen=True)
class TlsClientFiles:
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None


def _tls_set(client: mqtt.Client, endpoint: MqttEndpoint, tls: TlsClientFiles | None) -> None:
    """TLS for an mqtts:// endpoint, verifying the broker as the kiosk and the consumer do."""
    if not endpoint.tls:
        return
    files = tls or TlsClientFiles()
    client.tls_set(
        ca_certs=str(files.ca_file) if files.ca_file else None,
        certfile=str(files.cert_file) if files.cert_file else None,
        keyfile=str(files.key_file) if files.key_file else None,
        cert_reqs=ssl.CERT_REQUIRED,
        tls_version=ssl.PROTOCOL_TLS_CLIENT,
    )


def purge_session(
    broker_url: str,
    client_id: str,
    timeout_s: float = 10.0,
    *,
    tls: TlsClientFiles | None = None,
) -> None:
    """Remove a durable session from the broker (connect clean, expiry 0, disconnect).

    A consumer's durable session left behind on a shared broker would keep taking its turn of
    the shared subscription's messages for other tests.
    """
    endpoint = parse_mqtt_url(broker_url)
    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv5,
    )
    client.username_pw_set(endpoint.username, endpoint.password)
    _tls_set(client, endpoint, tls)
    properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    properties.SessionExpiryInterval = 0
    client.connect(
        endpoint.host, endpoint.port, keepalive=10, clean_start=True, properties=properties
    )
    client.loop_start()
    try:
        wait_until(client.is_connected, timeout_s=timeout_s, what="the purge connection")
    except AssertionError:
        pass  # nothing to purge if the broker will not take the session; disconnect anyway
    client.disconnect()
    client.loop_stop()


def env_without_settings() -> dict[str, str]:
    """The test process's environment minus any cloud setting that could leak into a child."""
    blocked = {
        "DATABASE_URL",
        "MQTT_URL",
        "MQTT_ADMIN_FILE",
        "CLOUD_SIGNING_KEY_FILE",
        "CONSUMER_ID",
        "NOTIFY_SOCKET",
        "WATCHDOG_USEC",
        "WATCHDOG_PID",
    }
    return {
        key: value
        for key, value in os.environ.items()
        if key not in blocked and not key.startswith("FESTIVAL_")
    }
