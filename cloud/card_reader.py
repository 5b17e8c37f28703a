"""The cloud's PC/SC adapter (pyscard's ``smartcard.scard``, pcscd underneath), for
`festival-cloud card program`: tags presented one after another on one reader, each handed to a
callback as an APDU transport.

The only module of cloud/ that imports pyscard (tests/test_architecture.py), and only when
`card program` runs: a cloud server never needs it. The kiosk has its own adapter
(device/reader_pcsc.py); the two sides never share code but protocol/.

``TagCommunicationError`` from ``transmit`` means the tag left (or the reader did) in the middle
of an exchange: the callback reports it and the loop waits for the next tag.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Final

from smartcard import scard

from protocol.ntag424 import TagCommunicationError, Transmit

POLL_MS: Final = 200
_PROTOCOLS: Final = scard.SCARD_PROTOCOL_T0 | scard.SCARD_PROTOCOL_T1


class ReaderUnavailable(Exception):
    """No PC/SC service, or no reader matching the name."""


def _error_text(code: int) -> str:
    try:
        return f"{scard.SCardGetErrorMessage(code)} (0x{code & 0xFFFFFFFF:08X})"
    except Exception:  # pragma: no cover - pyscard knows its codes
        return f"0x{code & 0xFFFFFFFF:08X}"


def find_reader(context: Any, name_contains: str) -> str:
    result, readers = scard.SCardListReaders(context, [])
    if result not in (scard.SCARD_S_SUCCESS, scard.SCARD_E_NO_READERS_AVAILABLE):
        raise ReaderUnavailable(f"listing readers failed: {_error_text(result)}")
    matching = [name for name in (readers or []) if name_contains in name]
    if not matching:
        known = ", ".join(readers or []) or "none"
        raise ReaderUnavailable(f"no reader matching {name_contains!r} (readers: {known})")
    return str(matching[0])


def _wait_for(
    context: Any, reader: str, present: bool, stop: threading.Event
) -> tuple[bool, int] | None:
    """Until a card is (``present``) or is not on the reader: (mute, state); None if stopped."""
    known = scard.SCARD_STATE_UNAWARE
    while not stop.is_set():
        result, states = scard.SCardGetStatusChange(context, POLL_MS, [(reader, known)])
        if result == scard.SCARD_E_TIMEOUT:
            continue
        if result != scard.SCARD_S_SUCCESS:
            raise ReaderUnavailable(f"waiting for a tag failed: {_error_text(result)}")
        _, state, _atr = states[0]
        known = state & ~scard.SCARD_STATE_CHANGED
        if state & (scard.SCARD_STATE_UNKNOWN | scard.SCARD_STATE_UNAVAILABLE):
            raise ReaderUnavailable(f"reader {reader!r} went away")
        if present and state & scard.SCARD_STATE_PRESENT:
            return bool(state & scard.SCARD_STATE_MUTE), state
        if not present and state & scard.SCARD_STATE_EMPTY:
            return False, state
    return None


def serve_tags(
    name_contains: str,
    handle: Callable[[Transmit], None],
    *,
    say: Callable[[str], None],
    count: int | None = None,
    stop: threading.Event | None = None,
) -> int:
    """Hand every tag presented on the reader to ``handle`` until ``count`` tags were handled
    (None: until ``stop`` is set or Ctrl-C). Returns how many were handled; ReaderUnavailable
    when the service or the reader is not there."""
    stop = stop or threading.Event()
    result, context = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
    if result != scard.SCARD_S_SUCCESS:
        raise ReaderUnavailable(f"no PC/SC service: {_error_text(result)}")
    handled = 0
    try:
        reader = find_reader(context, name_contains)
        say(f"reader {reader}: present a wristband")
        while count is None or handled < count:
            waited = _wait_for(context, reader, True, stop)
            if waited is None:
                break
            mute, _ = waited
            if mute:
                say("this tag does not answer (not an ISO 14443-4 tag): remove it")
            else:
                _handle_one(context, reader, handle, say)
            handled += 1
            if count is not None and handled >= count:
                break
            say("remove the tag")
            if _wait_for(context, reader, False, stop) is None:
                break
            say("present the next wristband")
    finally:
        scard.SCardReleaseContext(context)
    return handled


def _handle_one(
    context: Any, reader: str, handle: Callable[[Transmit], None], say: Callable[[str], None]
) -> None:
    result, card, protocol = scard.SCardConnect(
        context, reader, scard.SCARD_SHARE_EXCLUSIVE, _PROTOCOLS
    )
    if result != scard.SCARD_S_SUCCESS:
        say(f"could not talk to the tag: {_error_text(result)}")
        return

    def transmit(apdu: bytes) -> bytes:
        code, response = scard.SCardTransmit(card, protocol, list(apdu))
        if code != scard.SCARD_S_SUCCESS:
            raise TagCommunicationError(_error_text(code))
        return bytes(response)

    try:
        handle(transmit)
    finally:
        # Reset the tag: its next reader (a kiosk, the next run) starts from a fresh selection.
        scard.SCardDisconnect(card, scard.SCARD_RESET_CARD)
