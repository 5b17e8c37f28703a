"""loads_strict and dumps_canonical."""

from __future__ import annotations

import json
import time

import pytest

from protocol.errors import ErrorCode, ProtocolError
from protocol.limits import JSON_DEPTH_MAX, MESSAGE_BYTES_MAX
from protocol.strict_json import dumps_canonical, loads_strict


def rejected(data: bytes, **kwargs: int) -> ProtocolError:
    with pytest.raises(ProtocolError) as caught:
        loads_strict(data, **kwargs)
    assert caught.value.code is ErrorCode.INVALID_REQUEST
    return caught.value


def test_accepts_plain_json() -> None:
    assert loads_strict(b' {"a": [1, -2, "x\\u00e9"], "b": null} \n') == {
        "a": [1, -2, "x\u00e9"],
        "b": None,
    }


def test_non_integer_numbers_decode_as_float_for_the_schema_to_reject() -> None:
    assert loads_strict(b"[4.5, 500.0, 1e2]") == [4.5, 500.0, 100.0]
    assert all(type(value) is float for value in loads_strict(b"[500.0, 1e2]"))  # type: ignore[attr-defined]


@pytest.mark.parametrize("document", [b'{"a":1,"a":1}', b'{"a":1,"b":{"c":1,"c":2}}'])
def test_rejects_duplicate_keys(document: bytes) -> None:
    assert "duplicate" in rejected(document).message


@pytest.mark.parametrize("constant", [b"NaN", b"Infinity", b"-Infinity"])
def test_rejects_nan_and_infinity(constant: bytes) -> None:
    rejected(b'{"a":' + constant + b"}")


@pytest.mark.parametrize("number", [b"1e999", b"-1e999", b"1" * 400 + b".5"])
def test_rejects_non_integer_numbers_beyond_double_range(number: bytes) -> None:
    assert rejected(number).message == "number out of range"


def test_large_finite_non_integer_number_decodes() -> None:
    assert loads_strict(b"1e308") == 1e308


def test_huge_integer_within_python_limit_decodes_exactly() -> None:
    assert loads_strict(b"1" + b"0" * 400) == 10**400


def test_integer_beyond_python_conversion_limit_is_invalid_not_a_crash() -> None:
    error = rejected(b'{"seq":' + b"9" * 5000 + b"}")
    assert error.message == "number out of range"


def test_many_huge_integers_decode_quickly() -> None:
    data = b"[" + b",".join([b"9" * 4000, b"9" * 4000]) + b"]"
    assert len(data) < MESSAGE_BYTES_MAX
    started = time.perf_counter()
    loads_strict(data, depth_max=1)
    # Generous bound: quadratic int parsing of 4000 digits takes well under a millisecond.
    assert time.perf_counter() - started < 0.5


def nested(depth: int) -> bytes:
    # object > array > object > ... alternating, ``depth`` containers.
    opening = "".join('{"a":' if level % 2 == 0 else "[" for level in range(depth))
    closing = "".join("}" if level % 2 == 0 else "]" for level in reversed(range(depth)))
    return (opening + "1" + closing).encode()


def test_depth_at_the_limit_is_accepted() -> None:
    assert JSON_DEPTH_MAX >= 3  # requests need object > items > item
    loads_strict(nested(JSON_DEPTH_MAX))


def test_depth_past_the_limit_is_rejected() -> None:
    assert "nested" in rejected(nested(JSON_DEPTH_MAX + 1)).message


def test_depth_limit_ignores_brackets_inside_strings() -> None:
    assert loads_strict(b'{"a":"[[[[[[{{{{{{"}') == {"a": "[[[[[[{{{{{{"}


def test_wide_but_shallow_is_accepted() -> None:
    loads_strict(json.dumps({"items": [{"a": 1}] * 50}).encode())


@pytest.mark.parametrize("depth", [100, 5_000, MESSAGE_BYTES_MAX // 2])
def test_deep_nesting_is_invalid_not_a_recursion_crash(depth: int) -> None:
    rejected(b"[" * depth + b"]" * depth)
    rejected(b"[" * depth)


def test_custom_depth() -> None:
    loads_strict(b"[[1]]", depth_max=2)
    rejected(b"[[[1]]]", depth_max=2)


@pytest.mark.parametrize(
    "data",
    [
        b"\xff{}",
        b'{"a":"\xc3"}',
        b'{"a":"\xed\xa0\x80"}',  # a surrogate encoded as UTF-8 (CESU-8)
        b"\xef\xbb\xbf{}",  # UTF-8 byte order mark
        '{"a":1}'.encode("utf-16"),
        '{"a":1}'.encode("utf-32-le"),
    ],
)
def test_rejects_anything_but_utf8_json(data: bytes) -> None:
    rejected(data)


@pytest.mark.parametrize(
    "data",
    [b"", b" ", b"{", b"{}{}", b'{"a":1,}', b"[1,]", b"{'a':1}", b'{"a":"\x01"}', b"01"],
)
def test_rejects_malformed_json(data: bytes) -> None:
    error = rejected(data)
    assert error.message.isascii()


def test_canonical_output_is_compact_sorted_utf8() -> None:
    assert dumps_canonical({"b": 1, "a": ["\u00e9", None, True]}) == (
        '{"a":["\u00e9",null,true],"b":1}'.encode()
    )


def test_canonical_output_refuses_nan() -> None:
    with pytest.raises(ValueError):
        dumps_canonical({"a": float("nan")})


def test_canonical_round_trip() -> None:
    document = {"z": [1, {"y": "\U0001f37a"}], "a": -5}
    assert loads_strict(dumps_canonical(document)) == document
