"""A bare MQTT 5 session for the broker's tests: every CONNACK, SUBACK, PUBACK, DISCONNECT and
message is recorded, so a test can assert exactly what the broker said to whom."""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from tests.waiting import wait_until

TIMEOUT_S = 10.0


@dataclass
class Session:
    port: int
    username: str
    password: str
    client_id: str
    session_expiry_s: int = 0
    host: str = "127.0.0.1"
    connacks: list[str] = field(default_factory=list)
    subacks: list[list[str]] = field(default_factory=list)
    pubacks: dict[int, str] = field(default_factory=dict)
    disconnects: list[str] = field(default_factory=list)
    messages: list[tuple[str, bytes]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=mqtt.MQTTv5,
            reconnect_on_failure=False,
        )
        client.username_pw_set(self.username, self.password)
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_publish = self._on_publish
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_socket_open = _nodelay
        self.client = client

    # --- driving it ----------------------------------------------------------------------------

    def connect(self) -> str:
        """Connect (durable when session_expiry_s > 0) and return the CONNACK reason."""
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = self.session_expiry_s
        self.client.connect(
            self.host,
            self.port,
            keepalive=30,
            clean_start=self.session_expiry_s == 0,
            properties=properties,
        )
        self.client.loop_start()
        reason: str = wait_until(
            lambda: self.connacks[-1] if self.connacks else None,
            timeout_s=TIMEOUT_S,
            what=f"CONNACK for {self.username}/{self.client_id}",
        )
        return reason

    def subscribe(self, *topic_filters: str) -> list[str]:
        """Subscribe at QoS 1; the SUBACK's reason per filter."""
        before = len(self.subacks)
        self.client.subscribe([(f, SubscribeOptions(qos=1)) for f in topic_filters])
        wait_until(lambda: len(self.subacks) > before, timeout_s=TIMEOUT_S, what="SUBACK")
        return self.subacks[before]

    def publish(self, topic: str, payload: bytes, *, wait: bool = True) -> int:
        info = self.client.publish(topic, payload, qos=1)
        if wait:
            wait_until(lambda: info.mid in self.pubacks, timeout_s=TIMEOUT_S, what="PUBACK")
        return int(info.mid)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
        close_socket(self.client)

    @property
    def connected(self) -> bool:
        return bool(self.client.is_connected())

    def payloads(self) -> list[bytes]:
        with self._lock:
            return [payload for _, payload in self.messages]

    # --- paho callbacks ------------------------------------------------------------------------

    def _on_connect(self, c: Any, u: Any, flags: Any, reason: Any, properties: Any) -> None:
        self.connacks.append(str(reason))

    def _on_subscribe(self, c: Any, u: Any, mid: Any, reasons: Any, properties: Any) -> None:
        self.subacks.append([str(reason) for reason in reasons])

    def _on_publish(self, c: Any, u: Any, mid: int, reason: Any, properties: Any) -> None:
        self.pubacks[mid] = str(reason)

    def _on_disconnect(self, c: Any, u: Any, flags: Any, reason: Any, properties: Any) -> None:
        self.disconnects.append(str(reason))

    def _on_message(self, c: Any, u: Any, message: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append((message.topic, bytes(message.payload)))


def close_socket(client: mqtt.Client) -> None:
    """paho leaves the socket of a connection the broker refused or dropped open until the
    client is garbage collected (a ResourceWarning, an error in this suite): close it."""
    sock = client.socket()
    if sock is not None:
        try:
            sock.close()
        except OSError:
            pass
    # And the wake-up socket pair of loop_start(): a session is in a reference cycle (its
    # callbacks are bound methods), collected in any order with its sockets, which then warn.
    client._reset_sockets()


def _nodelay(client: Any, userdata: Any, sock: Any) -> None:
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError):
        pass
