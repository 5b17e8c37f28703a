"""The bounded hand-over from paho's network thread to the consumer's worker.

paho calls back on its own thread and an exception there kills that thread (ENVIRONMENT.md), so
the callbacks only put what they received here; the worker decides. Bounds:
- QoS 1 messages are bounded by the MQTT 5 Receive Maximum we announce (the broker never has
  more unacknowledged messages out to us); a hard cap above that catches a misbehaving broker.
  A message refused here is simply not acknowledged, so the broker delivers it again after the
  next reconnect, which the worker then asks for.
- QoS 0 scan records beyond their own cap are dropped and counted (they never move money).
- Connection events are few; the oldest is dropped if they pile up (only the latest matters).

Fairness between kiosks (1.1, offline sales): messages wait in one queue per kiosk (the topic
up to `…/kiosks/{id}`), and a batch takes from them in turn, at most `source_share_max` of one
kiosk per batch (`taken` counts what the batch being built holds already), so a kiosk draining
thousands of offline sales at once cannot put every other kiosk's order behind its backlog: the
others' orders are in the next batch, and that batch's commit is short because it holds at most
one share of the backlog (measured before: online p99 480 ms during a 2,000-sale drain with no
shares, 60-150 ms with a share only while other kiosks had messages waiting, so that a kiosk
alone filled whole batches and an order arriving during one waited for its commit;
bench/bench_offline_drain.py). A kiosk alone is still served batch after batch. Each kiosk's own
messages keep their arrival order; the order *between* kiosks is not a protocol property
(PROTOCOL.md: each request stands alone, `seq` only reveals gaps). Acknowledgements then reach
the broker out of arrival order across kiosks, which Mosquitto matches by packet id.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum

from cloud.consumer import limits


@dataclass(frozen=True, slots=True)
class InboundMessage:
    """One MQTT message as received; ``generation`` is the connection it arrived on."""

    topic: str
    payload: bytes
    qos: int
    mid: int
    retain: bool
    generation: int
    received_at: float  # time.monotonic()
    received_at_ms: int  # wall clock, Unix milliseconds


class LinkState(Enum):
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"
    SUBSCRIBED = "subscribed"
    SUBSCRIBE_FAILED = "subscribe_failed"


@dataclass(frozen=True, slots=True)
class LinkEvent:
    state: LinkState
    generation: int
    session_present: bool = False
    reason: str = ""


class Inbox:
    def __init__(
        self,
        *,
        messages_max: int,
        scans_max: int,
        events_max: int,
        source_share_max: int = limits.INBOX_SOURCE_SHARE_MAX,
    ) -> None:
        assert messages_max >= 1 and scans_max >= 0 and events_max >= 1 and source_share_max >= 1
        self._messages_max = messages_max
        self._scans_max = scans_max
        self._source_share_max = source_share_max
        # One queue per source (kiosk), in turn order: the dict's order is the next batch's.
        self._sources: dict[str, deque[InboundMessage]] = {}
        self._count = 0
        self._scan_count = 0
        self._events: deque[LinkEvent] = deque(maxlen=events_max)
        self._condition = threading.Condition(threading.Lock())
        self.dropped_scans = 0
        self.refused_messages = 0
        self._closed = False
        self._woken = False

    def put_message(self, message: InboundMessage) -> bool:
        """Called on paho's thread; never blocks. False when the message was not taken."""
        with self._condition:
            if self._closed:
                # Shutting down: not taken, so not acknowledged; the broker redelivers it.
                return False
            if message.qos == 0:
                if self._scan_count >= self._scans_max:
                    self.dropped_scans += 1
                    return False
                self._scan_count += 1
            elif self._count - self._scan_count >= self._messages_max:
                self.refused_messages += 1
                return False
            source = _source(message.topic)
            waiting = self._sources.get(source)
            if waiting is None:
                waiting = self._sources[source] = deque()
            waiting.append(message)
            self._count += 1
            self._condition.notify()
        return True

    def put_event(self, event: LinkEvent) -> None:
        with self._condition:
            self._events.append(event)
            self._condition.notify()

    def wake(self) -> None:
        """End the current (or the next) `take` now, with whatever is waiting: the committer
        calls it when it is free for the batch the worker is still adding to."""
        with self._condition:
            self._woken = True
            self._condition.notify()

    def take(
        self,
        batch_max: int,
        timeout_s: float,
        linger_s: float = 0.0,
        taken: Mapping[str, int] | None = None,
    ) -> tuple[list[LinkEvent], list[InboundMessage]]:
        """Wait up to ``timeout_s`` for anything (or until `wake`); return pending events and up
        to ``batch_max`` messages, taken from the kiosks in turn (each kiosk's in arrival order;
        at most ``source_share_max`` of one kiosk per batch). ``taken``: what the batch being
        built holds already, per source (see `source_of`). With fewer than ``batch_max``
        waiting, wait ``linger_s`` more once for stragglers (only when messages are in hand)."""
        deadline = time.monotonic() + timeout_s
        taken = taken or {}
        with self._condition:
            while not self._events and not self._woken and not self._takeable(taken):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return [], []
                self._condition.wait(remaining)
            if linger_s > 0 and 0 < self._count < batch_max and not self._events:
                self._condition.wait(linger_s)
            self._woken = False
            events = list(self._events)
            self._events.clear()
            return events, self._take_in_turn(batch_max, taken)

    def _takeable(self, taken: Mapping[str, int]) -> bool:
        """Something waits that the batch may still take."""
        if not self._count:
            return False
        share_max = self._source_share_max
        return any(taken.get(source, 0) < share_max for source in self._sources)

    def _take_in_turn(self, batch_max: int, taken: Mapping[str, int]) -> list[InboundMessage]:
        messages: list[InboundMessage] = []
        for source in list(self._sources):
            if len(messages) >= batch_max:
                break
            share = self._source_share_max - taken.get(source, 0)
            if share <= 0:
                continue  # this kiosk had its share of the batch; it stays in its turn
            waiting = self._sources.pop(source)
            for _ in range(min(share, len(waiting), batch_max - len(messages))):
                message = waiting.popleft()
                if message.qos == 0:
                    self._scan_count -= 1
                messages.append(message)
            if waiting:
                self._sources[source] = waiting  # its turn comes again after the others'
        self._count -= len(messages)
        return messages

    def depth(self) -> int:
        with self._condition:
            return self._count

    def close(self) -> None:
        """Take no more messages (events still pass)."""
        with self._condition:
            self._closed = True

    def drain(self) -> list[InboundMessage]:
        """Everything still waiting (used at shutdown)."""
        with self._condition:
            messages = [message for waiting in self._sources.values() for message in waiting]
            self._sources.clear()
            self._count = 0
            self._scan_count = 0
            return messages


def source_of(message: InboundMessage) -> str:
    """The source (kiosk) a message is queued and shared under."""
    return _source(message.topic)


def _source(topic: str) -> str:
    """The kiosk a message came from: its topic up to `…/kiosks/{id}` (every kiosk topic has
    one more level after the id); other topics are a source of their own."""
    head, separator, _ = topic.rpartition("/")
    return head if separator else topic
