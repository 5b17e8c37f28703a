"""The kiosk's MQTT adapter: paho-mqtt 2.x, MQTT 5, a durable session, QoS 1 requests.

- ``clean_start=False`` with a SessionExpiryInterval from the very first connect: results the
  cloud sends while the kiosk is away wait for it at the broker (a session first created with
  clean_start=True is lost on a broker restart, see ENVIRONMENT.md).
- The Will is the retained ``offline`` status; ``online`` (retained) follows every connect, after
  the subscriptions (QoS 1) to the result topic, the kiosk's config topic and the deny-list topic:
  the broker hands over the retained config and deny-list on each of them.
- paho reconnects by itself with a growing delay; publishes it has not had acknowledged are
  resent by paho on reconnect (same packet). Its queue is bounded explicitly.
- TCP_NODELAY on paho's socket: with Nagle and delayed ACKs a lone request/result round trip
  costs ~88 ms instead of ~1 ms (ENVIRONMENT.md).

Only this module imports paho. Callbacks run on paho's network thread and only hand events to
the sink (which enqueues); they never raise, since an exception would end paho's thread.
"""

from __future__ import annotations

import logging
import socket
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from device.limits import (
    CONNECT_TIMEOUT_S,
    KEEPALIVE_S,
    MQTT_INFLIGHT_MAX,
    RECONNECT_DELAY_MAX_S,
    RECONNECT_DELAY_MIN_S,
    SESSION_EXPIRY_S,
    SHUTDOWN_PUBLISH_TIMEOUT_S,
)
from device.link import (
    LinkConnected,
    LinkDisconnected,
    LinkEvent,
    LinkSink,
    MessageReceived,
    PublishDone,
)
from protocol.codec import encode_status
from protocol.models import KioskStatus
from protocol.mqtt_url import MqttEndpoint
from protocol.topics import TopicKind, config_topic, denylist_topic, topic_for

log = logging.getLogger(__name__)

_NO_MATCHING_SUBSCRIBERS = 0x10


class MqttLink:
    def __init__(
        self,
        *,
        endpoint: MqttEndpoint,
        kiosk_id: str,
        topic_prefix: str,
        firmware: str,
        queued_max: int,
        clock_ms: Callable[[], int],
        ca_file: Path | None = None,
        cert_file: Path | None = None,
        key_file: Path | None = None,
    ) -> None:
        self._endpoint = endpoint
        self._kiosk_id = kiosk_id
        self._firmware = firmware
        self._clock_ms = clock_ms
        self._sink: LinkSink | None = None
        self._offline: tuple[int, int] | None = None
        self.tx_topic = topic_for(topic_prefix, kiosk_id, TopicKind.TX)
        self.result_topic = topic_for(topic_prefix, kiosk_id, TopicKind.RESULT)
        self.scan_topic = topic_for(topic_prefix, kiosk_id, TopicKind.SCAN)
        self.status_topic = topic_for(topic_prefix, kiosk_id, TopicKind.STATUS)
        self.config_topic = config_topic(topic_prefix, kiosk_id)
        self.denylist_topic = denylist_topic(topic_prefix)
        # One stable client id per kiosk: the durable session (and results waiting in it)
        # belongs to it. It equals the MQTT username (the kiosk id): the broker binds each
        # kiosk's credentials to that one client id (PROTOCOL.md 1.1).
        client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=endpoint.username or kiosk_id,
            protocol=mqtt.MQTTv5,
        )
        client.suppress_exceptions = True
        if endpoint.username is not None:
            client.username_pw_set(endpoint.username, endpoint.password)
        if endpoint.tls or ca_file is not None:
            client.tls_set(
                ca_certs=str(ca_file) if ca_file else None,
                certfile=str(cert_file) if cert_file else None,
                keyfile=str(key_file) if key_file else None,
                cert_reqs=ssl.CERT_REQUIRED,
                tls_version=ssl.PROTOCOL_TLS_CLIENT,
            )
        # Both before connect(); paho's queue of unsent publishes is unbounded by default.
        client.max_inflight_messages_set(MQTT_INFLIGHT_MAX)
        client.max_queued_messages_set(queued_max)
        client.reconnect_delay_set(RECONNECT_DELAY_MIN_S, RECONNECT_DELAY_MAX_S)
        client.connect_timeout = CONNECT_TIMEOUT_S
        client.will_set(self.status_topic, self._status("offline"), qos=1, retain=True)
        client.on_socket_open = self._on_socket_open
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        self._client = client
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = SESSION_EXPIRY_S
        self._connect_properties = properties

    def _status(self, state: str, offline: tuple[int, int] | None = None) -> bytes:
        return encode_status(
            KioskStatus(
                kiosk_id=self._kiosk_id,
                state="online" if state == "online" else "offline",
                at_ms=self._clock_ms(),
                firmware=self._firmware,
                offline_pending=None if offline is None else offline[0],
                offline_pending_cents=None if offline is None else offline[1],
            )
        )

    # --- the kiosk's side --------------------------------------------------------------------

    def start(self, sink: LinkSink) -> None:
        """Connect in the background; paho retries with backoff until the broker answers."""
        self._sink = sink
        self._client.connect_async(
            self._endpoint.host,
            self._endpoint.port,
            keepalive=KEEPALIVE_S,
            clean_start=False,
            properties=self._connect_properties,
        )
        self._client.loop_start()

    def publish_request(self, payload: bytes) -> int:
        info = self._client.publish(self.tx_topic, payload, qos=1)
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            # Not queued (paho's bounded queue is full): report it like a refusal, so the
            # kiosk retries later with the same bytes.
            self._emit(PublishDone(info.mid, refused_reason=mqtt.error_string(info.rc)))
        return int(info.mid)

    def publish_scan(self, payload: bytes) -> None:
        if self._client.is_connected():
            self._client.publish(self.scan_topic, payload, qos=0)

    def publish_online(self, *, offline_pending: int = 0, offline_pending_cents: int = 0) -> None:
        # Exactly the filters the broker's ACL lets a kiosk read (cloud/broker.py).
        self._client.subscribe(
            [(self.result_topic, 1), (self.config_topic, 1), (self.denylist_topic, 1)]
        )
        self.publish_status(
            offline_pending=offline_pending, offline_pending_cents=offline_pending_cents
        )

    def publish_status(self, *, offline_pending: int, offline_pending_cents: int) -> None:
        # Kept for the "offline" status of a clean shutdown (the Will, set before the first
        # connect, cannot know them).
        self._offline = (offline_pending, offline_pending_cents)
        payload = self._status("online", self._offline)
        self._client.publish(self.status_topic, payload, qos=1, retain=True)

    def stop(self) -> None:
        if self._client.is_connected():
            info = self._client.publish(
                self.status_topic, self._status("offline", self._offline), qos=1, retain=True
            )
            try:
                info.wait_for_publish(SHUTDOWN_PUBLISH_TIMEOUT_S)
            except (RuntimeError, ValueError):
                log.warning("offline status not confirmed before shutdown")
        # A clean DISCONNECT (reason 0) keeps the Will from firing; we sent "offline" ourselves.
        self._client.disconnect()
        self._client.loop_stop()

    # --- paho callbacks (network thread) -------------------------------------------------------

    def _emit(self, event: LinkEvent) -> None:
        sink = self._sink
        if sink is not None:
            sink(event)

    def _on_socket_open(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (OSError, AttributeError):
            pass

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
                self._emit(LinkDisconnected(f"connect refused: {reason_code}"))
            else:
                self._emit(LinkConnected(bool(flags.session_present)))
        except Exception:  # pragma: no cover - a bug must not end paho's thread
            log.exception("on_connect failed")

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        try:
            self._emit(LinkDisconnected("connect failed"))
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
            self._emit(LinkDisconnected(str(reason_code)))
        except Exception:  # pragma: no cover
            log.exception("on_disconnect failed")

    def _on_publish(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        try:
            refused = None
            # 0x10 "No matching subscribers" is a success code, but it means no consumer got
            # the request: treat it like a refusal so it is visible and resent later.
            if reason_code.is_failure or reason_code.value == _NO_MATCHING_SUBSCRIBERS:
                refused = str(reason_code)
            self._emit(PublishDone(mid, refused_reason=refused))
        except Exception:  # pragma: no cover
            log.exception("on_publish failed")

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        try:
            refused = [str(code) for code in reason_codes if code.is_failure]
            if refused:
                # A broker whose ACL predates 1.1 refuses the config or deny-list filter: the
                # kiosk then never hears of menus or blocked cards. Say so (once per connect).
                log.warning(
                    "broker refused a subscription", extra={"context": {"reasons": refused}}
                )
        except Exception:  # pragma: no cover
            log.exception("on_subscribe failed")

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        try:
            try:
                topic = message.topic
            except UnicodeDecodeError:
                topic = ""
            self._emit(MessageReceived(topic, bytes(message.payload)))
        except Exception:  # pragma: no cover
            log.exception("on_message failed")
