"""The card reader port: what a reader reports, and the simulated reader (``KIOSK_READER=sim``).

A reader runs on its own thread and reports through ``sink`` (a callable that only enqueues):
- ``ScanEvent`` for every read attempt: ``ok`` with the UID, or ``unsupported_card``,
  ``read_error``, ``removed_early`` (PROTOCOL.md's scan statuses). A band left on the reader is
  one scan; removed and tapped again is a new one.
- ``CardRemoved`` when the band leaves the reader (no money meaning; tests and the page use it).
- ``ReaderStatus`` when the reader becomes available or unavailable (pcscd gone, unplugged).

The real adapter is ``device.reader_pcsc.PcscReader``; ``SimulatedReader`` is the fake that the
local HTTP interface (POST /api/tap) and tests drive.

(1.1) Genuine wristbands: after the UID, a 7-byte-UID card is asked for its NDEF file
(``read_card_sun``: three APDUs) and a SUN message found there rides along as
``ScanEvent.card_sun``. The kiosk holds no key: it neither checks nor needs the message, the
cloud verifies it. A card without one (a UID-only card, a clone) still makes a request.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, TypeAlias

from protocol.models import CardSun, ScanStatus, is_valid_card_uid
from protocol.ntag424 import TagReadError, Transmit, read_ndef_url
from protocol.sun import sun_from_url

SIMULATED_READER_NAME = "sim"


@dataclass(frozen=True, slots=True)
class ScanEvent:
    status: ScanStatus
    card_uid: str | None
    reader: str
    scanned_at_ms: int
    duration_ms: int
    # (1.1) The SUN message of a genuine wristband (NTAG 424 DNA), None for any other card.
    card_sun: CardSun | None = None


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


SUN_UID_HEX_LENGTH = 14  # only a 7-byte UID can be a genuine wristband (PROTOCOL.md)


def read_card_sun(card_uid: str, transmit: Transmit) -> CardSun | None:
    """The SUN message of the card just read as ``card_uid``, or None when it has none.

    Only 7-byte UIDs are asked (4- and 10-byte cards cannot be genuine: no APDU spent on
    them). A card that does not answer the NDEF commands (6D 00 from a MIFARE Classic, 6A 82
    from a tag without the NDEF application) or holds a URL without ``picc_data``/``cmac``
    gives None; ``TagCommunicationError`` (the card left) passes through to the caller."""
    if len(card_uid) != SUN_UID_HEX_LENGTH:
        return None
    try:
        url = read_ndef_url(transmit)
    except TagReadError:
        return None
    message = sun_from_url(url)
    if message is None:
        return None
    return CardSun(picc_data=message.picc_data, cmac=message.cmac)


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

    def tap(
        self, card_uid: str | None, status: ScanStatus = "ok", card_sun: CardSun | None = None
    ) -> None:
        """One tap and removal. ``card_uid`` must be valid for ``ok`` (ValueError otherwise);
        ``card_sun`` is the SUN message a genuine band would give (a cloned band: none, or one
        replayed from an earlier tap)."""
        if card_sun is not None and status != "ok":
            raise ValueError("only a successful read carries card_sun")
        if status == "ok" and not is_valid_card_uid(card_uid):
            raise ValueError("card_uid must be 8, 14 or 20 upper-case hex digits")
        if status != "ok" and card_uid is not None and not is_valid_card_uid(card_uid):
            raise ValueError("card_uid must be 8, 14 or 20 upper-case hex digits or null")
        sink = self._sink
        if sink is None:
            raise RuntimeError("the simulated reader is not started")
        now_ms = self._clock_ms()
        sink(ScanEvent(status, card_uid, SIMULATED_READER_NAME, now_ms, 0, card_sun))
        sink(CardRemoved(SIMULATED_READER_NAME, now_ms))

    def tap_tag(self, card_uid: str, transmit: Transmit) -> CardSun | None:
        """A tap of a (virtual) tag answering ``transmit``: its SUN message is read exactly as
        the PC/SC reader reads it (``read_card_sun``), so a simulated genuine band is a virtual
        NTAG 424 DNA, and the kiosk still holds no key. Returns what was read."""
        card_sun = read_card_sun(card_uid, transmit)
        self.tap(card_uid, "ok", card_sun)
        return card_sun
