"""Helpers for tests that put virtual cards on pcscd's vpcd readers."""

from __future__ import annotations

from functools import partial

from smartcard import scard

from tests.waiting import wait_until

VIRTUAL_READERS = ("Virtual PCD 00 00", "Virtual PCD 00 01")


def reader_empty(name: str) -> bool:
    """Whether pcscd itself reports no card on reader ``name`` (a removal it has noticed)."""
    result, context = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
    if result != scard.SCARD_S_SUCCESS:
        return False
    try:
        result, states = scard.SCardGetStatusChange(context, 0, [(name, scard.SCARD_STATE_UNAWARE)])
        return result == scard.SCARD_S_SUCCESS and bool(states[0][1] & scard.SCARD_STATE_EMPTY)
    finally:
        scard.SCardReleaseContext(context)


def wait_until_readers_empty(names: tuple[str, ...] = VIRTUAL_READERS) -> None:
    """Until pcscd reports every reader empty: a card removed just before (by an earlier test)
    must not still look present when the next card is inserted."""
    for name in names:
        wait_until(partial(reader_empty, name), timeout_s=10, what=f"{name} to be empty")
