"""Indicators: a green LED, a red LED and a buzzer, playing one pattern per kiosk signal.

Layers, as in gpiozero: the kiosk talks to ``Indicators`` (``signal()``, ``close()``); an
``IndicatorPlayer`` turns a signal into timed steps on a thread of its own (so the main loop never
sleeps for a beep) and drives a ``Pins`` backend. Backends: ``RecordingPins`` here (the fake, with
a timestamped history of every pin change, for tests and machines without GPIO) and
``device.indicators_rpi.RpiPins`` on a Raspberry Pi.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Protocol

from device.limits import INDICATOR_QUEUE_MAX, RECORDED_PIN_CHANGES_MAX
from device.machine import Signal


@dataclass(frozen=True, slots=True)
class Step:
    green: bool
    red: bool
    buzzer: bool
    duration_ms: int


_OFF: Final = Step(False, False, False, 0)

# A pattern always ends with everything off (the player adds that step).
PATTERNS: Final[dict[Signal, tuple[Step, ...]]] = {
    # A short chirp: the band was read, keep calm while the cloud answers.
    Signal.CARD_READ: (Step(False, False, True, 60),),
    # Green with one beep.
    Signal.APPROVED: (Step(True, False, True, 150), Step(True, False, False, 1850)),
    # (1.1) Amber (green and red together: the bi-colour LED's amber) with three short beeps:
    # approved by the kiosk itself, offline - visibly and audibly not an online approval.
    Signal.APPROVED_OFFLINE: (
        Step(True, True, True, 80),
        Step(True, True, False, 80),
        Step(True, True, True, 80),
        Step(True, True, False, 80),
        Step(True, True, True, 80),
        Step(True, True, False, 1600),
    ),
    # Red with two beeps.
    Signal.DECLINED: (
        Step(False, True, True, 150),
        Step(False, True, False, 100),
        Step(False, True, True, 150),
        Step(False, True, False, 1600),
    ),
    # Red blinking slowly, silent: the network is away, payments are queued.
    Signal.OFFLINE: (
        Step(False, True, False, 250),
        Step(False, False, False, 250),
        Step(False, True, False, 250),
        Step(False, False, False, 250),
        Step(False, True, False, 250),
    ),
    # Red with a long tone: look at the screen.
    Signal.ERROR: (Step(False, True, True, 600), Step(False, True, False, 900)),
}
assert set(PATTERNS) == set(Signal)

log = logging.getLogger(__name__)


class Pins(Protocol):
    """The three outputs. ``set`` is called only from the player's thread."""

    def set(self, green: bool, red: bool, buzzer: bool) -> None: ...

    def close(self) -> None: ...


class Indicators(Protocol):
    def signal(self, signal: Signal) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class PinChange:
    at_s: float  # time.monotonic()
    green: bool
    red: bool
    buzzer: bool


class RecordingPins:
    """The fake backend: remembers every pin change with a monotonic timestamp."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._history: deque[PinChange] = deque(maxlen=RECORDED_PIN_CHANGES_MAX)
        self.closed = False

    def set(self, green: bool, red: bool, buzzer: bool) -> None:
        with self._lock:
            self._history.append(PinChange(self._clock(), green, red, buzzer))

    def close(self) -> None:
        self.set(False, False, False)
        self.closed = True

    @property
    def history(self) -> list[PinChange]:
        with self._lock:
            return list(self._history)


class IndicatorPlayer:
    """Plays patterns on ``pins`` from its own thread; a new signal interrupts the current one."""

    def __init__(self, pins: Pins, clock: Callable[[], float] = time.monotonic) -> None:
        self.pins = pins
        self._clock = clock
        self._queue: queue.Queue[Signal | None] = queue.Queue(maxsize=INDICATOR_QUEUE_MAX)
        self._signals: deque[tuple[float, Signal]] = deque(maxlen=RECORDED_PIN_CHANGES_MAX)
        self._lock = threading.Lock()
        self._failing = False
        self._thread = threading.Thread(target=self._run, name="indicators", daemon=True)
        self._thread.start()

    @property
    def signals(self) -> list[tuple[float, Signal]]:
        """Every signal asked for, with its monotonic time (the fake's history)."""
        with self._lock:
            return list(self._signals)

    def signal(self, signal: Signal) -> None:
        with self._lock:
            self._signals.append((self._clock(), signal))
        self._put(signal)

    def _put(self, item: Signal | None) -> None:
        while True:
            try:
                self._queue.put_nowait(item)
                return
            except queue.Full:
                # Only the newest pattern matters to the person in front of the kiosk.
                try:
                    self._queue.get_nowait()
                except queue.Empty:
                    pass

    def close(self) -> None:
        """Stop playing, switch everything off and release the pins."""
        if self._thread.is_alive():
            self._put(None)
            self._thread.join(timeout=5)
        self.pins.close()

    def _run(self) -> None:
        current: list[Step] = []
        while True:
            timeout_s = current[0].duration_ms / 1000 if current else None
            try:
                item = self._queue.get(timeout=timeout_s)
            except queue.Empty:
                current.pop(0)
                if current:
                    self._apply(current[0])
                else:
                    self._apply(_OFF)
                continue
            if item is None:
                self._apply(_OFF)
                return
            current = list(PATTERNS[item])
            self._apply(current[0])

    def _apply(self, step: Step) -> None:
        try:
            self.pins.set(step.green, step.red, step.buzzer)
        except Exception:
            # A GPIO fault must not kill the indicator thread; say so once, not per step.
            if not self._failing:
                log.exception("indicator pins failed")
            self._failing = True
        else:
            if self._failing:
                log.info("indicator pins work again")
            self._failing = False
