"""The seed's point-of-sale HTTP bodies, the pure part: parse them into protocol requests and
write the seed's answers.

The seed sends decimal euros (`"unit_price": 5.00`). They are read from the raw JSON text as
`Decimal` (never through float) and converted to integer cents exactly; a value with more than
two decimals (`5.001`, and also `5.000`: the text itself has three) is INVALID_REQUEST. The
result is then built as the same protocol request a kiosk would send and validated by
`protocol.models.parse_request`, so the HTTP path has exactly the limits of the MQTT path.

The idempotency fingerprint (`payload_sha256`) covers what the request *means*: the canonical
JSON of the protocol request without the fields the server fills in (`seq`, `created_at_ms`).
Resending the same body replays; `5.0` and `5.00` mean the same amount and replay too; any other
change under the same `client_request_id` is an IDEMPOTENCY_CONFLICT.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Final, NoReturn

from cloud.api.limits import SEED_JSON_DEPTH_MAX
from protocol.errors import ErrorCode, ProtocolError, json_type_name, quote
from protocol.limits import (
    CARD_UID_PATTERN,
    ITEMS_MAX,
    ORDER_TOTAL_CENTS_MAX,
    PROTOCOL_VERSION,
    REQUEST_ID_PATTERN,
)
from protocol.models import Request, parse_request
from protocol.strict_json import dumps_canonical

BAR_ORDER = "bar_order"
CHECKPOINT_RECHARGE = "checkpoint_recharge"

_BAR_REQUIRED: Final = frozenset({"card_id", "items", "total_amount", "client_request_id"})
_BAR_OPTIONAL: Final = frozenset({"staff_id"})
_ITEM_REQUIRED: Final = frozenset({"name", "quantity", "unit_price"})
_ITEM_OPTIONAL: Final = frozenset({"sku", "is_deposit", "is_return"})
_RECHARGE_REQUIRED: Final = frozenset(
    {"card_id", "amount", "payment_method", "staff_id", "client_request_id"}
)
_RECHARGE_OPTIONAL: Final = frozenset({"checkpoint_id"})
# No euro amount the protocol accepts is larger; bounding first keeps int() of `1e999999`
# from building a giant integer.
_EUROS_ABS_MAX: Final = Decimal(ORDER_TOTAL_CENTS_MAX) / 100
_SERVER_FILLED: Final = ("seq", "created_at_ms")


def _fail(message: str) -> NoReturn:
    raise ProtocolError(ErrorCode.INVALID_REQUEST, message)


def _object_from_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    document = dict(pairs)
    if len(document) != len(pairs):
        _fail("duplicate key in a JSON object")
    return document


def _reject_constant(name: str) -> NoReturn:
    _fail(f"{name} is not allowed in JSON")


_DECODER: Final = json.JSONDecoder(
    object_pairs_hook=_object_from_pairs,
    parse_float=Decimal,
    parse_constant=_reject_constant,
)


def _depth(value: object) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(child) for child in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(child) for child in value), default=0)
    return 0


def loads_decimal(body: bytes) -> object:
    """Strict JSON with non-integer numbers as Decimal (exactly as written)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        _fail("body is not valid UTF-8")
    # Count openers first: measuring the depth of a pathological body could recurse too far.
    if text.count("{") + text.count("[") > 4 * ITEMS_MAX + 8:
        _fail("JSON has too many objects or arrays")
    try:
        value = _DECODER.decode(text)
    except ProtocolError:
        raise
    except json.JSONDecodeError as error:
        _fail(f"not valid JSON: {error.msg} at offset {error.pos}")
    except (ValueError, RecursionError):
        # int() of more than 4300 digits, or absurd nesting.
        _fail("number out of range or JSON nested too deeply")
    if _depth(value) > SEED_JSON_DEPTH_MAX:
        _fail(f"JSON nested deeper than {SEED_JSON_DEPTH_MAX} levels")
    return value


def euros_to_cents(value: object, name: str) -> int:
    """A JSON number of euros with at most two decimals, as exact integer cents."""
    if isinstance(value, bool) or not isinstance(value, int | Decimal):
        _fail(f"{name} must be a number of euros, got {json_type_name(value)}")
    amount = Decimal(value)
    if not amount.is_finite():
        _fail(f"{name} must be a finite number")
    exponent = amount.as_tuple().exponent
    assert isinstance(exponent, int)
    if exponent < -2:
        _fail(f"{name} has more than two decimals")
    if abs(amount) > _EUROS_ABS_MAX:
        _fail(f"{name} is out of range")
    try:
        cents = amount.scaleb(2)
    except InvalidOperation:
        _fail(f"{name} is out of range")
    assert cents == cents.to_integral_value()
    return int(cents)


def _check_fields(
    document: dict[str, Any], required: frozenset[str], optional: frozenset[str], where: str
) -> None:
    unknown = sorted(set(document) - required - optional)
    if unknown:
        _fail(f"unknown field {quote(unknown[0])} in {where}")
    missing = sorted(required - set(document))
    if missing:
        _fail(f"missing field {missing[0]} in {where}")


def _object(value: object, where: str) -> dict[str, Any]:
    if type(value) is not dict:
        _fail(f"{where} must be a JSON object, got {json_type_name(value)}")
    assert isinstance(value, dict)
    return value


@dataclass(frozen=True, slots=True)
class SeedRequest:
    request: Request
    payload_sha256: str


def parse_seed_request(
    body: bytes,
    kind: str,
    *,
    kiosk_id: str,
    currency: str,
    topup_cents_max: int,
    seq: int,
    now_ms: int,
) -> SeedRequest:
    """Parse a seed bar-order or recharge body sent by POS device `kiosk_id` (the request is
    booked under that id, like a kiosk's); raise ProtocolError(INVALID_REQUEST)."""
    assert kind in (BAR_ORDER, CHECKPOINT_RECHARGE)
    document = _object(loads_decimal(body), "request body")
    if kind == BAR_ORDER:
        _check_fields(document, _BAR_REQUIRED, _BAR_OPTIONAL, "bar order")
    else:
        _check_fields(document, _RECHARGE_REQUIRED, _RECHARGE_OPTIONAL, "recharge")
    client_request_id = document["client_request_id"]
    if type(client_request_id) is not str or not REQUEST_ID_PATTERN.match(client_request_id):
        _fail(
            "client_request_id must be 1-64 characters of A-Z a-z 0-9 . _ : -, "
            f"got {quote(client_request_id)}"
        )
    card_id = document["card_id"]
    if type(card_id) is not str or not CARD_UID_PATTERN.match(card_id):
        _fail(
            "card_id must be the card UID in upper-case hex (8, 14 or 20 digits), "
            f"got {quote(card_id)}"
        )
    wire: dict[str, object] = {
        "v": PROTOCOL_VERSION,
        "type": kind,
        "request_id": client_request_id,
        "kiosk_id": kiosk_id,
        "seq": seq,
        "created_at_ms": now_ms,
        "card_uid": card_id,
        "currency": currency,
    }
    if kind == BAR_ORDER:
        items = document["items"]
        if type(items) is not list:
            _fail(f"items must be an array, got {json_type_name(items)}")
        wire["items"] = [_item(entry, f"items[{index}]") for index, entry in enumerate(items)]
        wire["total_cents"] = euros_to_cents(document["total_amount"], "total_amount")
        if "staff_id" in document:
            wire["staff_id"] = document["staff_id"]
    else:
        wire["amount_cents"] = euros_to_cents(document["amount"], "amount")
        for name in ("payment_method", "staff_id", "checkpoint_id"):
            if name in document:
                wire[name] = document[name]
    request = parse_request(wire, currency=currency, topup_cents_max=topup_cents_max)
    meaning = {key: value for key, value in wire.items() if key not in _SERVER_FILLED}
    payload_sha256 = hashlib.sha256(dumps_canonical(meaning)).hexdigest()
    return SeedRequest(request=request, payload_sha256=payload_sha256)


def _item(value: object, where: str) -> dict[str, object]:
    item = _object(value, where)
    _check_fields(item, _ITEM_REQUIRED, _ITEM_OPTIONAL, where)
    wire: dict[str, object] = {
        "name": item["name"],
        "quantity": item["quantity"],
        "unit_price_cents": euros_to_cents(item["unit_price"], f"{where}.unit_price"),
    }
    for name in _ITEM_OPTIONAL:
        if name in item:
            wire[name] = item[name]
    return wire


# --------------------------------------------------------------------------------------------
# Answers
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Euros:
    """An amount of cents that the seed's answers show as a JSON number of euros, 2 decimals."""

    cents: int

    def json(self) -> str:
        sign = "-" if self.cents < 0 else ""
        whole, fraction = divmod(abs(self.cents), 100)
        return f"{sign}{whole}.{fraction:02d}"


def render_json(fields: Iterable[tuple[str, object]]) -> bytes:
    """A flat JSON object in field order; Euros are written as `12.50`, never through float."""
    parts = []
    for key, value in fields:
        rendered = value.json() if isinstance(value, Euros) else json.dumps(value)
        parts.append(f"{json.dumps(key)}:{rendered}")
    return ("{" + ",".join(parts) + "}").encode("utf-8")


# The seed's status mapping (DESIGN.md "Seed compatibility"), extended to every protocol code.
HTTP_STATUS_BY_CODE: Final[dict[ErrorCode, int]] = {
    ErrorCode.INVALID_REQUEST: 400,
    ErrorCode.STALE_REQUEST: 400,
    ErrorCode.INVALID_SIGNATURE: 401,
    ErrorCode.UNKNOWN_KIOSK: 403,
    ErrorCode.KIOSK_DISABLED: 403,
    ErrorCode.OPERATION_NOT_ALLOWED: 403,
    ErrorCode.CARD_BLOCKED: 403,
    ErrorCode.CARD_NOT_FOUND: 404,
    ErrorCode.IDEMPOTENCY_CONFLICT: 409,
    ErrorCode.INSUFFICIENT_FUNDS: 402,
    ErrorCode.BALANCE_LIMIT_EXCEEDED: 422,
    ErrorCode.RETURN_LIMIT_EXCEEDED: 422,
    ErrorCode.PRICE_MISMATCH: 422,
    ErrorCode.OFFLINE_LIMIT_EXCEEDED: 422,
    # (1.1) sun mode: these endpoints cannot carry a SUN message (PROTOCOL.md)
    ErrorCode.CARD_NOT_GENUINE: 403,
    # (1.1) a void is a kiosk's request over MQTT only; named so that every code has a status
    ErrorCode.VOID_NOT_ALLOWED: 422,
    # (1.1) the POS endpoints are exempt from staff roles (DESIGN.md); named for completeness
    ErrorCode.STAFF_NOT_ALLOWED: 403,
}
assert set(HTTP_STATUS_BY_CODE) == set(ErrorCode)


def http_status_for(error_code: ErrorCode | str | None) -> int:
    return 200 if error_code is None else HTTP_STATUS_BY_CODE[ErrorCode(error_code)]
