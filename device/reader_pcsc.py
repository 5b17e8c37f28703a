"""The PC/SC card reader adapter (pyscard's low-level ``smartcard.scard`` API, pcscd underneath).

One thread per reader:
1. establish a PC/SC context; wait until a reader whose name contains ``KIOSK_READER`` appears;
2. wait for state changes with ``SCardGetStatusChange`` (a short timeout, so ``stop()`` is quick);
3. when a card is present and not yet read, connect (shared), send GET UID (FF CA 00 00 00),
   (1.1) for a 7-byte UID read the NDEF file for a SUN message (``device.reader.read_card_sun``:
   SELECT application, SELECT file, READ BINARY), disconnect leaving the card, report one
   ``ScanEvent``; a card left on the reader is not read
   again until the reader reports it removed (or pcsc-lite's insertion counter moves on, which
   catches a removal and re-tap that happened between two polls);
4. on any service error (pcscd restarted or stopped, reader unplugged) release the context,
   report the reader unavailable once, and start again from 1 with a growing pause.

The thread never dies from an exception: anything unexpected is logged and handled like a lost
service. We do not use pyscard's CardMonitor: its thread dies for good when pcscd restarts.
This module is the only one that imports pyscard.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Final

from smartcard import scard

from device.limits import (
    CARD_UID_BYTES_ALLOWED,
    READ_ATTEMPTS_MAX,
    READ_RETRY_PAUSE_S,
    READER_POLL_MS,
    READER_RETRY_MAX_S,
    READER_RETRY_MIN_S,
)
from device.reader import (
    CardRemoved,
    ReaderSink,
    ReaderStatus,
    ScanEvent,
    read_card_sun,
    wall_clock_ms,
)
from protocol.limits import READER_NAME_LENGTH_MAX
from protocol.models import CardSun, ScanStatus
from protocol.ntag424 import TagCommunicationError

log = logging.getLogger(__name__)

GET_UID_APDU: Final = [0xFF, 0xCA, 0x00, 0x00, 0x00]
_SW_OK: Final = (0x90, 0x00)
# pcsc-lite keeps a per-reader insertion/removal counter in the upper 16 bits of the event state.
_EVENT_COUNTER_SHIFT: Final = 16
_STATE_MASK: Final = 0xFFFF
_PROTOCOLS: Final = scard.SCARD_PROTOCOL_T0 | scard.SCARD_PROTOCOL_T1

# The service itself is gone or our context is stale: rebuild everything.
_SERVICE_ERRORS: Final = frozenset(
    {
        scard.SCARD_E_NO_SERVICE,
        scard.SCARD_E_SERVICE_STOPPED,
        scard.SCARD_E_INVALID_HANDLE,
        scard.SCARD_E_NO_READERS_AVAILABLE,
        scard.SCARD_E_UNKNOWN_READER,
        scard.SCARD_E_READER_UNAVAILABLE,
        scard.SCARD_E_COMM_DATA_LOST,
        scard.SCARD_E_SYSTEM_CANCELLED,
        scard.SCARD_E_CANCELLED,
        scard.SCARD_E_NO_MEMORY,
        scard.SCARD_E_UNKNOWN_RES_MNG,
        scard.SCARD_E_UNEXPECTED,
    }
)
# The card left before we could read it.
_REMOVED_ERRORS: Final = frozenset({scard.SCARD_W_REMOVED_CARD, scard.SCARD_E_NO_SMARTCARD})
# A card that does not speak to us the way a wristband does.
_UNSUPPORTED_ERRORS: Final = frozenset(
    {
        scard.SCARD_W_UNRESPONSIVE_CARD,
        scard.SCARD_W_UNSUPPORTED_CARD,
        scard.SCARD_E_PROTO_MISMATCH,
        scard.SCARD_E_CARD_UNSUPPORTED,
        scard.SCARD_W_UNPOWERED_CARD,
    }
)


class PcscUnavailable(Exception):
    """The PC/SC service or our reader is not usable right now (the thread starts over)."""


def _error_text(code: int) -> str:
    try:
        return f"{scard.SCardGetErrorMessage(code)} (0x{code & 0xFFFFFFFF:08X})"
    except Exception:  # pragma: no cover - pyscard always knows its codes
        return f"0x{code & 0xFFFFFFFF:08X}"


class PcscReader:
    """Reports taps on the first PC/SC reader whose name contains ``name_contains``."""

    def __init__(
        self,
        name_contains: str,
        *,
        clock_ms: Callable[[], int] = wall_clock_ms,
        poll_ms: int = READER_POLL_MS,
    ) -> None:
        self.name_contains = name_contains
        self._clock_ms = clock_ms
        self._poll_ms = poll_ms
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sink: ReaderSink | None = None
        self._available: bool | None = None
        self.reader_name: str | None = None

    # --- lifecycle -------------------------------------------------------------------------

    def start(self, sink: ReaderSink) -> None:
        assert self._thread is None or not self._thread.is_alive(), "reader already started"
        self._sink = sink
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="pcsc-reader", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self._poll_ms / 1000 + 5)
            self._thread = None

    def healthy(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # --- the thread ------------------------------------------------------------------------

    def _emit(self, event: ScanEvent | CardRemoved | ReaderStatus) -> None:
        if self._sink is not None:
            self._sink(event)

    def _set_available(self, available: bool, detail: str) -> None:
        # Say "unavailable" once and "back" once, not on every retry.
        if self._available is available:
            return
        self._available = available
        if available:
            log.info("card reader available", extra={"context": {"reader": self.reader_name}})
        else:
            log.warning("card reader unavailable", extra={"context": {"detail": detail}})
        self._emit(ReaderStatus(available, self.reader_name, detail))

    def _run(self) -> None:
        retry_s = READER_RETRY_MIN_S
        while not self._stop.is_set():
            context: Any = None
            try:
                context = self._establish()
                reader = self._wait_for_reader(context)
                if reader is None:
                    return  # stopping
                self.reader_name = reader
                self._set_available(True, "ready")
                retry_s = READER_RETRY_MIN_S
                self._monitor(context, reader)
            except PcscUnavailable as error:
                self._set_available(False, str(error))
            except Exception as error:
                # Never a silently dead thread: log, report, rebuild.
                log.exception("card reader thread failed; rebuilding the PC/SC context")
                self._set_available(False, f"unexpected error: {error}")
            finally:
                if context is not None:
                    _release(context)
            if self._stop.wait(retry_s):
                return
            retry_s = min(retry_s * 2, READER_RETRY_MAX_S)

    def _establish(self) -> Any:
        result, context = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
        if result != scard.SCARD_S_SUCCESS:
            raise PcscUnavailable(f"no PC/SC service: {_error_text(result)}")
        return context

    def _wait_for_reader(self, context: Any) -> str | None:
        """The first reader whose name contains ``name_contains``; polls until one appears."""
        while not self._stop.is_set():
            result, readers = scard.SCardListReaders(context, [])
            if result == scard.SCARD_S_SUCCESS:
                matching = [name for name in readers if self.name_contains in name]
                if matching:
                    return str(matching[0])
                self._set_available(False, f"no reader matching {self.name_contains!r}")
            elif result == scard.SCARD_E_NO_READERS_AVAILABLE:
                self._set_available(False, "no reader connected")
            else:
                raise PcscUnavailable(f"listing readers failed: {_error_text(result)}")
            if self._stop.wait(self._poll_ms / 1000):
                return None
        return None

    def _monitor(self, context: Any, reader: str) -> None:
        known_state = scard.SCARD_STATE_UNAWARE
        card_read = False  # the card now present was already read (debounce)
        read_counter: int | None = None
        while not self._stop.is_set():
            result, states = scard.SCardGetStatusChange(
                context, self._poll_ms, [(reader, known_state)]
            )
            if result == scard.SCARD_E_TIMEOUT:
                continue
            if result != scard.SCARD_S_SUCCESS:
                raise PcscUnavailable(f"waiting for a card failed: {_error_text(result)}")
            _, event_state, _atr = states[0]
            known_state = event_state & ~scard.SCARD_STATE_CHANGED
            flags = event_state & _STATE_MASK
            counter = (event_state >> _EVENT_COUNTER_SHIFT) & _STATE_MASK
            if flags & (scard.SCARD_STATE_UNKNOWN | scard.SCARD_STATE_UNAVAILABLE):
                raise PcscUnavailable(f"reader {reader!r} went away")
            if flags & scard.SCARD_STATE_PRESENT:
                # A new counter value while "present" means it was removed and tapped again
                # between two of our polls: a new tap.
                if card_read and read_counter is not None and counter != read_counter:
                    self._emit(CardRemoved(reader, self._clock_ms()))
                    card_read = False
                if not card_read:
                    card_read = True
                    read_counter = counter
                    if flags & scard.SCARD_STATE_MUTE:
                        self._emit(self._scan(reader, "unsupported_card", None, self._clock_ms()))
                    else:
                        self._emit(self._read_with_retries(context, reader))
            elif flags & scard.SCARD_STATE_EMPTY:
                if card_read:
                    self._emit(CardRemoved(reader, self._clock_ms()))
                card_read = False
                read_counter = None

    def _scan(
        self,
        reader: str,
        status: ScanStatus,
        card_uid: str | None,
        started_ms: int,
        card_sun: CardSun | None = None,
    ) -> ScanEvent:
        now_ms = self._clock_ms()
        return ScanEvent(
            status=status,
            card_uid=card_uid,
            reader=reader[:READER_NAME_LENGTH_MAX],
            scanned_at_ms=started_ms,
            duration_ms=max(0, now_ms - started_ms),
            card_sun=card_sun,
        )

    def _read_with_retries(self, context: Any, reader: str) -> ScanEvent:
        """Read the card now present; a read error with the card still there is retried after
        a short pause (a band moving in the field), so one tap gives one scan."""
        scan = self._read_reporting(context, reader)
        for _ in range(READ_ATTEMPTS_MAX - 1):
            if scan.status != "read_error" or self._stop.wait(READ_RETRY_PAUSE_S):
                break
            scan = self._read_reporting(context, reader)
        return scan

    def _read_reporting(self, context: Any, reader: str) -> ScanEvent:
        started_ms = self._clock_ms()
        try:
            return self._read(context, reader, started_ms)
        except PcscUnavailable:
            # The service went away mid-read: the attempt is still a scan record.
            self._emit(self._scan(reader, "read_error", None, started_ms))
            raise

    def _read(self, context: Any, reader: str, started_ms: int) -> ScanEvent:
        """Connect, GET UID, disconnect; always a ScanEvent (or PcscUnavailable)."""
        started_s = time.monotonic()
        result, card, protocol = scard.SCardConnect(
            context,
            reader,
            scard.SCARD_SHARE_SHARED,
            _PROTOCOLS,
        )
        if result != scard.SCARD_S_SUCCESS:
            return self._scan(reader, self._failure(result, "connect"), None, started_ms)
        try:
            result, response = scard.SCardTransmit(card, protocol, GET_UID_APDU)
            if result not in (scard.SCARD_S_SUCCESS, *_REMOVED_ERRORS, *_SERVICE_ERRORS):
                # Power-cycle the card once and ask again: it recovers a card that answered
                # the reader's ATR but then lost the exchange (RF glitch; with vpcd, a card
                # swapped faster than pcscd's presence poll).
                reset, protocol = scard.SCardReconnect(
                    card, scard.SCARD_SHARE_SHARED, _PROTOCOLS, scard.SCARD_RESET_CARD
                )
                if reset == scard.SCARD_S_SUCCESS:
                    result, response = scard.SCardTransmit(card, protocol, GET_UID_APDU)
            if result != scard.SCARD_S_SUCCESS:
                return self._scan(reader, self._failure(result, "transmit"), None, started_ms)
            data, status_word = bytes(response[:-2]), tuple(response[-2:])
            if status_word != _SW_OK or len(data) not in CARD_UID_BYTES_ALLOWED:
                # 6D 00 / 6A 81: the card (or the reader for it) has no UID command; odd
                # lengths are not wristbands the protocol can carry.
                return self._scan(reader, "unsupported_card", None, started_ms)
            card_uid = data.hex().upper()
            uid_ms = (time.monotonic() - started_s) * 1000
            try:
                card_sun = read_card_sun(card_uid, _transmitter(card, protocol))
            except _TransmitFailed as failed:
                # Gone in the middle of the NDEF read: not a scan with a UID and no SUN message
                # (a genuine band would be declined as a clone); removed early, or retried.
                return self._scan(reader, self._failure(failed.code, "ndef"), None, started_ms)
        finally:
            scard.SCardDisconnect(card, scard.SCARD_LEAVE_CARD)
        log.debug(
            "card read",
            extra={
                "context": {
                    "uid_ms": uid_ms,
                    "ms": (time.monotonic() - started_s) * 1000,
                    "sun": card_sun is not None,
                }
            },
        )
        return self._scan(reader, "ok", card_uid, started_ms, card_sun)

    def _failure(self, result: int, step: str) -> ScanStatus:
        log.info(
            "card read failed",
            extra={"context": {"step": step, "pcsc_error": _error_text(result)}},
        )
        if result in _REMOVED_ERRORS:
            return "removed_early"
        if result in _UNSUPPORTED_ERRORS:
            return "unsupported_card"
        if result in _SERVICE_ERRORS:
            raise PcscUnavailable(f"{step} failed: {_error_text(result)}")
        return "read_error"


class _TransmitFailed(TagCommunicationError):
    """An APDU of the NDEF read failed at the PC/SC level (``code``: the PC/SC error)."""

    def __init__(self, code: int) -> None:
        super().__init__(_error_text(code))
        self.code = code


def _transmitter(card: Any, protocol: Any) -> Callable[[bytes], bytes]:
    def transmit(apdu: bytes) -> bytes:
        result, response = scard.SCardTransmit(card, protocol, list(apdu))
        if result != scard.SCARD_S_SUCCESS:
            raise _TransmitFailed(result)
        return bytes(response)

    return transmit


def _release(context: Any) -> None:
    try:
        scard.SCardReleaseContext(context)
    except Exception:  # a context of a dead service may refuse to be released; nothing to do
        log.debug("releasing a stale PC/SC context failed", exc_info=True)
