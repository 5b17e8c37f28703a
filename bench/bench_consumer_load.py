"""Simulated kiosks for bench_consumer.py: signed bar orders in, signed results out, timed.

Each kiosk is one paho client with a durable MQTT 5 session (like a real kiosk), publishing its
pre-signed requests at QoS 1 on its own tx topic and receiving its results. Requests are signed
before the clock starts (a kiosk signs at tap time, so signing is not the system under test);
every result is verified under the cloud key after the run, and a request counts only with a
verified result.

Two ways to drive the load:
- open loop (`run_open_loop`): requests at a fixed offered rate, round-robin over the kiosks;
  latency is measured from the *scheduled* send time, so a late generator cannot hide queueing
  (no coordinated omission);
- closed loop (`run_closed_loop`): each kiosk keeps `window` requests outstanding and sends the
  next one when a result arrives, which saturates the system and measures its throughput.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import socket
import statistics
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from protocol.codec import encode_request, verify_result
from protocol.errors import ProtocolError, Status
from protocol.models import BarItem, BarOrder, CardSun
from protocol.mqtt_url import parse_mqtt_url
from protocol.topics import TopicKind, topic_for


def uuid7() -> str:
    """A time-ordered UUIDv7 (RFC 9562): the request id PROTOCOL.md recommends."""
    unix_ms = time.time_ns() // 1_000_000
    value = (unix_ms & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76 | secrets.randbits(12) << 64 | 0b10 << 62 | secrets.randbits(62)
    return str(uuid.UUID(int=value))


def _request_id_of(raw_result: bytes) -> str | None:
    """The request_id of a result without verifying it (verification happens after the run)."""
    payload_b64 = raw_result.split(b".")[1]
    payload = base64.urlsafe_b64decode(payload_b64 + b"=" * (-len(payload_b64) % 4))
    value = json.loads(payload).get("request_id")
    return value if isinstance(value, str) else None


@dataclass
class Sent:
    kiosk_index: int
    request_id: str
    raw: bytes
    started_at: float = 0.0  # monotonic: scheduled (open loop) or actual (closed loop) send time


@dataclass
class RunStats:
    offered_per_s: float | None
    duration_s: float
    sent: int
    answered: int
    approved: int
    declined: int
    rejected: int
    invalid_results: int
    duplicates: int
    unanswered: int
    latencies_ms: list[float] = field(repr=False, default_factory=list)

    @property
    def approved_per_s(self) -> float:
        return self.approved / self.duration_s if self.duration_s else 0.0

    def percentile_ms(self, fraction: float) -> float | None:
        if not self.latencies_ms:
            return None
        ordered = sorted(self.latencies_ms)
        index = min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))
        return round(ordered[index], 2)

    def summary(self) -> dict[str, object]:
        return {
            "offered_per_s": self.offered_per_s,
            "duration_s": round(self.duration_s, 2),
            "sent": self.sent,
            "answered": self.answered,
            "approved": self.approved,
            "declined": self.declined,
            "rejected": self.rejected,
            "invalid_results": self.invalid_results,
            "duplicate_results": self.duplicates,
            "unanswered": self.unanswered,
            "approved_per_s": round(self.approved_per_s, 1),
            "latency_ms": {
                "p50": self.percentile_ms(0.50),
                "p95": self.percentile_ms(0.95),
                "p99": self.percentile_ms(0.99),
                "max": round(max(self.latencies_ms), 2) if self.latencies_ms else None,
                "mean": round(statistics.fmean(self.latencies_ms), 2)
                if self.latencies_ms
                else None,
            },
        }


class SimulatedKiosk:
    def __init__(self, index: int, kiosk_id: str, broker_url: str, prefix: str) -> None:
        self.index = index
        self.kiosk_id = kiosk_id
        self.tx_topic = topic_for(prefix, kiosk_id, TopicKind.TX)
        self.result_topic = topic_for(prefix, kiosk_id, TopicKind.RESULT)
        self.results: list[tuple[float, bytes]] = []
        self.on_result: object = None  # closed loop hook: callable(kiosk) or None
        self._connected = threading.Event()
        self._subscribed = threading.Event()
        endpoint = parse_mqtt_url(broker_url)
        self._endpoint = endpoint
        client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=kiosk_id,  # the broker accepts a kiosk's credentials under this id only
            protocol=mqtt.MQTTv5,
        )
        client.username_pw_set(endpoint.username, endpoint.password)
        client.max_inflight_messages_set(1000)
        client.max_queued_messages_set(0)
        client.on_connect = lambda *a: self._connected.set()
        client.on_subscribe = lambda *a: self._subscribed.set()
        client.on_message = self._on_message
        client.on_socket_open = _nodelay
        self.client = client

    def connect(self) -> None:
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = 3600
        self.client.connect_async(
            self._endpoint.host,
            self._endpoint.port,
            keepalive=30,
            clean_start=False,
            properties=properties,
        )
        self.client.loop_start()
        if not self._connected.wait(10):
            raise RuntimeError(f"{self.kiosk_id}: no CONNACK")
        self.client.subscribe(self.result_topic, qos=1)
        if not self._subscribed.wait(10):
            raise RuntimeError(f"{self.kiosk_id}: no SUBACK")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        self.results.append((time.monotonic(), bytes(message.payload)))
        hook = self.on_result
        if hook is not None:
            hook(self)  # type: ignore[operator]


def _nodelay(client: mqtt.Client, userdata: object, sock: object) -> None:
    if isinstance(sock, socket.socket):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class LoadGenerator:
    def __init__(
        self,
        *,
        broker_urls: dict[str, str],
        keys: dict[str, Ed25519PrivateKey],
        cloud_public_key: Ed25519PublicKey,
        prefix: str = "festival",
        currency: str = "EUR",
    ) -> None:
        self.kiosks = [
            SimulatedKiosk(index, kiosk_id, url, prefix)
            for index, (kiosk_id, url) in enumerate(sorted(broker_urls.items()))
        ]
        self._keys = keys
        self._cloud_public_key = cloud_public_key
        self._currency = currency
        self._seq = dict.fromkeys(broker_urls, 0)

    def connect(self) -> None:
        for kiosk in self.kiosks:
            kiosk.connect()

    def close(self) -> None:
        for kiosk in self.kiosks:
            kiosk.close()

    def presign(
        self,
        count: int,
        card_uids: Sequence[str],
        price_cents: int,
        *,
        items: tuple[BarItem, ...] | None = None,
        config_version: int | None = None,
        offline: bool = False,
        card_sun: Callable[[str], CardSun] | None = None,
    ) -> list[Sent]:
        """``count`` bar orders, round-robin over kiosks and cards, signed now: one beer at
        ``price_cents``, or ``items``, citing ``config_version`` (the menus comparison);
        ``offline``: offline sales (bench/bench_offline_drain.py); each carrying
        ``card_sun(card_uid)`` when given (the sun comparison: a fresh SUN message)."""
        lines = items or (BarItem(name="Beer", quantity=1, unit_price_cents=price_cents),)
        requests: list[Sent] = []
        now_ms = time.time_ns() // 1_000_000
        for number in range(count):
            kiosk = self.kiosks[number % len(self.kiosks)]
            self._seq[kiosk.kiosk_id] += 1
            order = BarOrder(
                request_id=uuid7(),
                kiosk_id=kiosk.kiosk_id,
                seq=self._seq[kiosk.kiosk_id],
                created_at_ms=now_ms,
                card_uid=card_uids[number % len(card_uids)],
                currency=self._currency,
                items=lines,
                total_cents=sum(line.signed_cents for line in lines),
                staff_id="bench",
                config_version=config_version,
                offline=offline,
                card_sun=None if card_sun is None else card_sun(card_uids[number % len(card_uids)]),
            )
            raw = encode_request(order, self._keys[kiosk.kiosk_id])
            requests.append(Sent(kiosk.index, order.request_id, raw))
        return requests

    def _reset(self) -> None:
        for kiosk in self.kiosks:
            kiosk.results = []
            kiosk.on_result = None

    def run_open_loop(
        self, requests: list[Sent], rate_per_s: float, drain_timeout_s: float = 30.0
    ) -> RunStats:
        self._reset()
        interval_s = 1.0 / rate_per_s
        start = time.monotonic() + 0.05
        kiosks = self.kiosks
        for number, sent in enumerate(requests):
            scheduled = start + number * interval_s
            delay = scheduled - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            sent.started_at = scheduled
            kiosk = kiosks[sent.kiosk_index]
            kiosk.client.publish(kiosk.tx_topic, sent.raw, qos=1)
        send_end = time.monotonic()
        self._wait_answers(requests, drain_timeout_s)
        return self._stats(requests, rate_per_s, send_end - start)

    def run_closed_loop(
        self,
        requests: list[Sent],
        window: int,
        duration_s: float,
        drain_timeout_s: float = 60.0,
        meter: CpuMeter | None = None,
    ) -> tuple[RunStats, list[Sent], dict[str, float]]:
        """Keep ``window`` requests in flight per kiosk for ``duration_s``; returns the stats of
        what was sent, the requests left unsent, and the CPU seconds ``meter`` measured from the
        start until the last answer arrived (before the results are verified)."""
        self._reset()
        queues: list[list[Sent]] = [[] for _ in self.kiosks]
        for sent in requests:
            queues[sent.kiosk_index].append(sent)
        for queue in queues:
            queue.reverse()  # pop() from the end = oldest first
        stop_at = [0.0]
        issued: list[Sent] = []
        lock = threading.Lock()

        def send_next(kiosk: SimulatedKiosk) -> None:
            queue = queues[kiosk.index]
            if not queue or time.monotonic() >= stop_at[0]:
                return
            sent = queue.pop()
            sent.started_at = time.monotonic()
            with lock:
                issued.append(sent)
            kiosk.client.publish(kiosk.tx_topic, sent.raw, qos=1)

        if meter is not None:
            meter.start()
        start = time.monotonic()
        stop_at[0] = start + duration_s
        for kiosk in self.kiosks:
            kiosk.on_result = send_next
        for kiosk in self.kiosks:
            for _ in range(window):
                send_next(kiosk)
        while time.monotonic() < stop_at[0]:
            time.sleep(0.05)
        elapsed = time.monotonic() - start
        with lock:
            done = list(issued)
        self._wait_answers(done, drain_timeout_s)
        cpu = meter.stop() if meter is not None else {}
        for kiosk in self.kiosks:
            kiosk.on_result = None
        leftover = [sent for queue in queues for sent in reversed(queue)]
        stats = self._stats(done, None, elapsed, count_window_s=duration_s, window_start=start)
        return stats, leftover, cpu

    def _wait_answers(self, requests: list[Sent], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        expected = len(requests)
        while time.monotonic() < deadline:
            if sum(len(kiosk.results) for kiosk in self.kiosks) >= expected:
                return
            time.sleep(0.05)

    def _stats(
        self,
        requests: list[Sent],
        offered_per_s: float | None,
        duration_s: float,
        count_window_s: float | None = None,
        window_start: float | None = None,
    ) -> RunStats:
        by_id = {sent.request_id: sent for sent in requests}
        seen: set[str] = set()
        latencies: list[float] = []
        approved = declined = rejected = invalid = duplicates = 0
        approved_in_window = 0
        for kiosk in self.kiosks:
            for received_at, raw in kiosk.results:
                try:
                    result = verify_result(
                        raw, cloud_public_key=self._cloud_public_key, kiosk_id=kiosk.kiosk_id
                    )
                except ProtocolError:
                    invalid += 1
                    continue
                request_id = result.request_id
                if request_id is None or request_id not in by_id:
                    invalid += 1
                    continue
                if request_id in seen:
                    duplicates += 1
                    continue
                seen.add(request_id)
                latencies.append((received_at - by_id[request_id].started_at) * 1000)
                if result.status is Status.APPROVED:
                    approved += 1
                    if (
                        window_start is not None
                        and count_window_s is not None
                        and received_at - window_start <= count_window_s
                    ):
                        approved_in_window += 1
                elif result.status is Status.DECLINED:
                    declined += 1
                else:
                    rejected += 1
        stats = RunStats(
            offered_per_s=offered_per_s,
            duration_s=duration_s,
            sent=len(requests),
            answered=len(seen),
            approved=approved,
            declined=declined,
            rejected=rejected,
            invalid_results=invalid,
            duplicates=duplicates,
            unanswered=len(requests) - len(seen),
            latencies_ms=latencies,
        )
        if count_window_s is not None:
            # Sustained rate: approvals that arrived inside the timed window, over the window.
            stats.approved = approved_in_window
            stats.duration_s = count_window_s
        return stats


def request_id_of(raw_result: bytes) -> str | None:
    return _request_id_of(raw_result)


# --- CPU accounting (Linux /proc) --------------------------------------------------------------

_CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(child) for child in text.split()]


def process_tree_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process and its live descendants (threads included)."""
    total = 0.0
    stack = [pid]
    while stack:
        current = stack.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # Fields 14 and 15 of stat (utime, stime), counted after the ")" of the command name.
        total += (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS_PER_S
        stack.extend(_children(current))
    return total


class CpuMeter:
    """CPU seconds used by named process trees between start() and stop()."""

    def __init__(self, pids: dict[str, list[int]]) -> None:
        self._pids = pids
        self._start: dict[str, float] = {}
        self._wall_start = 0.0

    def _sample(self) -> dict[str, float]:
        sample = {
            name: sum(process_tree_cpu_s(pid) for pid in pids) for name, pids in self._pids.items()
        }
        times = os.times()
        sample["load generator"] = times.user + times.system
        return sample

    def start(self) -> None:
        self._start = self._sample()
        self._wall_start = time.monotonic()

    def stop(self) -> dict[str, float]:
        end = self._sample()
        wall = time.monotonic() - self._wall_start
        used = {name: round(end[name] - self._start.get(name, 0.0), 2) for name in end}
        used["wall_s"] = round(wall, 2)
        return used
