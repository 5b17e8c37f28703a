"""Strict JSON in, canonical JSON out.

``loads_strict`` accepts only what a careful peer sends: UTF-8 (no BOM, no UTF-16/32 guessing),
no duplicate object keys, no ``NaN``/``Infinity``, nesting at most ``JSON_DEPTH_MAX`` containers,
and no number Python cannot hold exactly enough to judge it (integers of more than 4300 digits,
non-integer numbers beyond the double range). Integers of any size up to that are returned as
``int`` (the schema then rejects them by range); non-integer numbers come back as ``float``
so that the schema can say "must be an integer" about them.
"""

from __future__ import annotations

import json
import math
from typing import Final, NoReturn

from protocol.errors import ErrorCode, ProtocolError
from protocol.limits import JSON_DEPTH_MAX


def _object_from_pairs(pairs: list[tuple[str, object]]) -> dict[str, object]:
    document = dict(pairs)
    if len(document) != len(pairs):
        raise ProtocolError(ErrorCode.INVALID_REQUEST, "duplicate key in a JSON object")
    return document


def _reject_constant(name: str) -> NoReturn:
    raise ProtocolError(ErrorCode.INVALID_REQUEST, f"{name} is not allowed in JSON")


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ProtocolError(ErrorCode.INVALID_REQUEST, "number out of range")
    return value


_CONTAINERS: Final = (dict, list)
_DECODER: Final = json.JSONDecoder(
    object_pairs_hook=_object_from_pairs,
    parse_constant=_reject_constant,
    parse_float=_parse_float,
)


def loads_strict(data: bytes, *, depth_max: int = JSON_DEPTH_MAX) -> object:
    """Decode one strict JSON value from UTF-8 ``data``; raise ProtocolError(INVALID_REQUEST)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError(ErrorCode.INVALID_REQUEST, "JSON is not valid UTF-8") from None
    # Each container opens with "[" or "{", so their count bounds the depth; only when it
    # exceeds the limit is the depth measured exactly (after decoding, below).
    openers = text.count("{") + text.count("[")
    try:
        value = _DECODER.decode(text)
    except ProtocolError:
        raise
    except RecursionError:
        raise ProtocolError(ErrorCode.INVALID_REQUEST, "JSON nested too deeply") from None
    except ValueError as error:
        # JSONDecodeError, and the int conversion limit of integers over 4300 digits.
        if isinstance(error, json.JSONDecodeError):
            message = f"not valid JSON: {error.msg} at offset {error.pos}"
        else:
            message = "number out of range"
        raise ProtocolError(ErrorCode.INVALID_REQUEST, message) from None
    if openers > depth_max and _depth(value) > depth_max:
        raise ProtocolError(
            ErrorCode.INVALID_REQUEST, f"JSON nested deeper than {depth_max} levels"
        )
    return value


def _depth(value: object) -> int:
    """How many containers deep ``value`` nests (a scalar is 0, ``{}`` is 1), level by level."""
    level: list[object] = [value] if type(value) is dict or type(value) is list else []
    depth = 0
    while level:
        depth += 1
        below: list[object] = []
        for container in level:
            if type(container) is dict:
                below.extend(child for child in container.values() if type(child) in _CONTAINERS)
            elif type(container) is list:
                below.extend(child for child in container if type(child) in _CONTAINERS)
        level = below
    return depth


def dumps_canonical(value: object) -> bytes:
    """Compact UTF-8 JSON with sorted keys: the bytes our kiosks and cloud sign.

    For the values this protocol carries (ASCII keys, integers, strings without control
    characters) this equals RFC 8785 (JCS) output.
    """
    return json.dumps(
        value, ensure_ascii=False, separators=(",", ":"), sort_keys=True, allow_nan=False
    ).encode("utf-8")
