"""Error codes, statuses and ProtocolError's message hygiene."""

from __future__ import annotations

import collections
import enum
import pickle

import pytest

from protocol.errors import ErrorCode, ProtocolError, Status, json_type_name, quote, status_for

# PROTOCOL.md's table, copied by hand: a change to either side must be deliberate.
PROTOCOL_TABLE = {
    "INVALID_REQUEST": "rejected",
    "INVALID_SIGNATURE": "rejected",
    "UNKNOWN_KIOSK": "rejected",
    "KIOSK_DISABLED": "rejected",
    "OPERATION_NOT_ALLOWED": "rejected",
    "STALE_REQUEST": "rejected",
    "IDEMPOTENCY_CONFLICT": "rejected",
    "CARD_NOT_FOUND": "declined",
    "CARD_BLOCKED": "declined",
    "INSUFFICIENT_FUNDS": "declined",
    "BALANCE_LIMIT_EXCEEDED": "declined",
    "RETURN_LIMIT_EXCEEDED": "declined",
    "PRICE_MISMATCH": "rejected",
    "OFFLINE_LIMIT_EXCEEDED": "rejected",
    "CARD_NOT_GENUINE": "declined",
    "VOID_NOT_ALLOWED": "declined",
    "STAFF_NOT_ALLOWED": "rejected",
}


def test_error_codes_are_exactly_the_protocol_table() -> None:
    assert {code.value: code.status.value for code in ErrorCode} == PROTOCOL_TABLE
    assert len(ErrorCode) == len(PROTOCOL_TABLE)


def test_status_values() -> None:
    assert [status.value for status in Status] == ["approved", "declined", "rejected"]
    assert status_for(None) is Status.APPROVED
    assert status_for(ErrorCode.CARD_BLOCKED) is Status.DECLINED


def test_codes_are_strings_on_the_wire() -> None:
    assert ErrorCode.INVALID_REQUEST == "INVALID_REQUEST"
    assert str(ErrorCode.STALE_REQUEST) == "STALE_REQUEST"
    assert Status("rejected") is Status.REJECTED


def test_protocol_error_carries_code_message_and_empty_echo() -> None:
    error = ProtocolError(ErrorCode.UNKNOWN_KIOSK, "no key")
    assert error.code is ErrorCode.UNKNOWN_KIOSK
    assert error.message == "no key"
    assert error.echo == {}
    assert error.status is Status.REJECTED
    assert str(error) == "UNKNOWN_KIOSK: no key"
    assert isinstance(error, ValueError)


def test_protocol_error_message_is_ascii_and_bounded() -> None:
    error = ProtocolError(ErrorCode.INVALID_REQUEST, "bad \u0430\x00\n" + "x" * 500)
    assert error.message.isascii()
    assert error.message.isprintable()
    assert len(error.message) == 200
    assert error.message.startswith("bad \\u0430\\x00\\x0a")


def test_quote_never_echoes_attacker_input_at_length() -> None:
    assert quote("a" * 10_000) == "'" + "a" * 28 + "..."
    assert quote(10**400) == "a huge integer"
    assert quote(12) == "12"
    assert quote(None) == "None"
    assert quote({"a": 1}) == "a JSON object"
    assert quote("\u202e") == "'\\u202e'"


class _Level(enum.IntEnum):
    HIGH = 3


@pytest.mark.parametrize(
    ("value", "name"),
    [
        (None, "null"),
        (True, "boolean"),
        (False, "boolean"),
        (0, "integer"),
        (_Level.HIGH, "integer"),
        (2**70, "integer"),
        (1.5, "non-integer number"),
        (1.0, "non-integer number"),
        ("", "string"),
        ([], "array"),
        ({}, "object"),
        (collections.OrderedDict(a=1), "object"),
        ((1, 2), "tuple"),
        (b"x", "bytes"),
    ],
)
def test_json_type_name_names_the_decoded_value_s_json_type(value: object, name: str) -> None:
    assert json_type_name(value) == name


def test_protocol_error_pickles_with_its_echo() -> None:
    error = ProtocolError(ErrorCode.STALE_REQUEST, "old", echo={"seq": 3})
    copy = pickle.loads(pickle.dumps(error))  # noqa: S301 - our own bytes
    assert (copy.code, copy.message, copy.echo) == (error.code, error.message, error.echo)


def test_with_echo_copies() -> None:
    error = ProtocolError(ErrorCode.INVALID_REQUEST, "bad")
    echoed = error.with_echo({"request_id": "r1"})
    assert echoed.echo == {"request_id": "r1"}
    assert error.echo == {}


def test_unknown_code_is_a_programmer_error() -> None:
    with pytest.raises(ValueError):
        ProtocolError("NOT_A_CODE", "x")  # type: ignore[arg-type]
