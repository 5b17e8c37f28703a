"""The card reader port: what a reader reports, and the simulated reader (``KIOSK_READER=sim``).

A reader runs on its own thread and reports through ``sink`` (a callable that only enqueues):
- ``ScanEvent`` for every read attempt: ``ok`` with the UID, or ``unsupported_card``,
  ``read_error``, ``removed_early`` (PROTOCOL.md's scan statuses). A band left on the reader is
  one scan; removed and tapped again is a new one.
- ``CardRemoved`` when the band leaves the reader (no money meaning; tests and the page use it).
- ``ReaderStatus`` when the reader becomes available or unavailable (pcscd gone, unplugged).

The real adapter is ``device.reader_pcsc.PcscReader``; ``SimulatedReader`` is the fake that the
local HTTP interface (POST /api/tap) and tests drive.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, TypeAlias

from protocol.models import ScanStatus, is_valid_card_uid

SIMULATED_READER_NAME = "sim"


@dataclass(frozen=True, slots=True)
class ScanEvent:
    status: ScanStatus
    card_uid: str | None
    reader: str
    scanned_at_ms: int
    duration_ms: int


@dataclass(frozen=True, slots=True)
class CardRemoved:
    reader: str
    at_ms: int


@dataclass(frozen=True, slots=True)
class ReaderStatus:
    available: bool
    reader: str | None
    detail: str


ReaderEvent: TypeAlias = ScanEvent | CardRemoved | ReaderStatus
ReaderSink: TypeAlias = Callable[[ReaderEvent], None]


class CardReader(Protocol):
    def start(self, sink: ReaderSink) -> None: ...

    def stop(self) -> None: ...

    def healthy(self) -> bool:
        """False when the reader's thread died (the kiosk logs it and restarts the reader)."""
        ...


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


class SimulatedReader:
    """Taps come from ``tap()`` (the local interface in sim mode, tests, the demo)."""

    def __init__(self, clock_ms: Callable[[], int] = wall_clock_ms) -> None:
        self._clock_ms = clock_ms
        self._sink: ReaderSink | None = None

    def start(self, sink: ReaderSink) -> None:
        self._sink = sink
        sink(ReaderStatus(True, SIMULATED_READER_NAME, "simulated reader"))

    def stop(self) -> None:
        self._sink = None

    def healthy(self) -> bool:
        return True

    def tap(self, card_uid: str | None, status: ScanStatus = "ok") -> None:
        """One tap and removal. ``card_uid`` must be valid for ``ok`` (ValueError otherwise)."""
        if status == "ok" and not is_valid_card_uid(card_uid):
            raise ValueError("card_uid must be 8, 14 or 20 upper-case hex digits")
        if status != "ok" and card_uid is not None and not is_valid_card_uid(card_uid):
            raise ValueError("card_uid must be 8, 14 or 20 upper-case hex digits or null")
        sink = self._sink
        if sink is None:
            raise RuntimeError("the simulated reader is not started")
        now_ms = self._clock_ms()
        sink(ScanEvent(status, card_uid, SIMULATED_READER_NAME, now_ms, 0))
        sink(CardRemoved(SIMULATED_READER_NAME, now_ms))
