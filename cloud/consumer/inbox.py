"""The bounded hand-over from paho's network thread to the consumer's worker.

paho calls back on its own thread and an exception there kills that thread (ENVIRONMENT.md), so
the callbacks only put what they received here; the worker decides. Bounds:
- QoS 1 messages are bounded by the MQTT 5 Receive Maximum we announce (the broker never has
  more unacknowledged messages out to us); a hard cap above that catches a misbehaving broker.
  A message refused here is simply not acknowledged, so the broker delivers it again after the
  next reconnect, which the worker then asks for.
- QoS 0 scan records beyond their own cap are dropped and counted (they never move money).
- Connection events are few; the oldest is dropped if they pile up (only the latest matters).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from enum import Enum


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
    def __init__(self, *, messages_max: int, scans_max: int, events_max: int) -> None:
        assert messages_max >= 1 and scans_max >= 0 and events_max >= 1
        self._messages_max = messages_max
        self._scans_max = scans_max
        self._messages: deque[InboundMessage] = deque()
        self._scan_count = 0
        self._events: deque[LinkEvent] = deque(maxlen=events_max)
        self._condition = threading.Condition(threading.Lock())
        self.dropped_scans = 0
        self.refused_messages = 0
        self._closed = False

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
            elif len(self._messages) - self._scan_count >= self._messages_max:
                self.refused_messages += 1
                return False
            self._messages.append(message)
            self._condition.notify()
        return True

    def put_event(self, event: LinkEvent) -> None:
        with self._condition:
            self._events.append(event)
            self._condition.notify()

    def take(
        self, batch_max: int, timeout_s: float, linger_s: float = 0.0
    ) -> tuple[list[LinkEvent], list[InboundMessage]]:
        """Wait up to ``timeout_s`` for anything; return pending events and up to ``batch_max``
        messages in arrival order. With fewer than ``batch_max`` waiting, wait ``linger_s`` more
        once for stragglers (only when messages are already in hand)."""
        deadline = time.monotonic() + timeout_s
        with self._condition:
            while not self._messages and not self._events:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return [], []
                self._condition.wait(remaining)
            if linger_s > 0 and 0 < len(self._messages) < batch_max and not self._events:
                self._condition.wait(linger_s)
            events = list(self._events)
            self._events.clear()
            messages: list[InboundMessage] = []
            pop = self._messages.popleft
            for _ in range(min(batch_max, len(self._messages))):
                message = pop()
                if message.qos == 0:
                    self._scan_count -= 1
                messages.append(message)
            return events, messages

    def depth(self) -> int:
        with self._condition:
            return len(self._messages)

    def close(self) -> None:
        """Take no more messages (events still pass)."""
        with self._condition:
            self._closed = True

    def drain(self) -> list[InboundMessage]:
        """Everything still waiting (used at shutdown)."""
        with self._condition:
            messages = list(self._messages)
            self._messages.clear()
            self._scan_count = 0
            return messages
