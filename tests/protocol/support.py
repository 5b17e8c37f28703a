"""Builders shared by the protocol tests: deterministic keys and valid messages."""

from __future__ import annotations

import copy
import json
from typing import Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from protocol.codec import PublicKeyLookup, authenticate, build_result, parse_authenticated
from protocol.errors import ProtocolError
from protocol.jws import sign_compact
from protocol.keys import b64url_encode
from protocol.limits import (
    FUTURE_SKEW_S_DEFAULT,
    STALE_AFTER_S_DEFAULT,
    TOPUP_CENTS_MAX_DEFAULT,
)
from protocol.models import Request, Result

KIOSK_ID: Final = "bar-01"
CHECKPOINT_KIOSK_ID: Final = "checkpoint-1"
CURRENCY: Final = "EUR"
CREATED_AT_MS: Final = 1_750_000_000_000
NOW_MS: Final = CREATED_AT_MS + 1_500
DELETE: Final = object()


def private_key(seed: int) -> Ed25519PrivateKey:
    """A deterministic key, so failures reproduce."""
    return Ed25519PrivateKey.from_private_bytes(bytes([seed]) * 32)


KIOSK_KEY: Final = private_key(1)
OTHER_KIOSK_KEY: Final = private_key(2)
CLOUD_KEY: Final = private_key(3)
CHECKPOINT_KEY: Final = private_key(4)

PUBLIC_KEYS: Final[dict[str, Ed25519PublicKey]] = {
    KIOSK_ID: KIOSK_KEY.public_key(),
    CHECKPOINT_KIOSK_ID: CHECKPOINT_KEY.public_key(),
}


def lookup(kiosk_id: str) -> Ed25519PublicKey | None:
    return PUBLIC_KEYS.get(kiosk_id)


def bar_order_document(**changes: object) -> dict[str, object]:
    """A valid 3-item bar order (beer, cup deposit, cup return), with ``changes`` applied."""
    document: dict[str, object] = {
        "v": 1,
        "type": "bar_order",
        "request_id": "018f3b2a-7c4e-7def-8a12-3456789abcde",
        "kiosk_id": KIOSK_ID,
        "seq": 42,
        "created_at_ms": CREATED_AT_MS,
        "card_uid": "04A1B2C3D4E5F6",
        "currency": CURRENCY,
        "items": [
            {"name": "Pils 0,5 l", "quantity": 2, "unit_price_cents": 450, "sku": "BEER-05"},
            {"name": "Cup deposit", "quantity": 2, "unit_price_cents": 200, "is_deposit": True},
            {
                "name": "Cup return",
                "quantity": 1,
                "unit_price_cents": 200,
                "is_deposit": True,
                "is_return": True,
            },
        ],
        "total_cents": 2 * 450 + 2 * 200 - 200,
        "staff_id": "anna",
    }
    return apply_changes(document, changes)


def recharge_document(**changes: object) -> dict[str, object]:
    """A valid cash top-up of 20.00, with ``changes`` applied."""
    document: dict[str, object] = {
        "v": 1,
        "type": "checkpoint_recharge",
        "request_id": "018f3b2a-7c4e-7def-8a12-000000000001",
        "kiosk_id": CHECKPOINT_KIOSK_ID,
        "seq": 7,
        "created_at_ms": CREATED_AT_MS,
        "card_uid": "04A1B2C3",
        "currency": CURRENCY,
        "amount_cents": 2000,
        "payment_method": "cash",
        "staff_id": "staff-17",
    }
    return apply_changes(document, changes)


def apply_changes(document: dict[str, object], changes: dict[str, object]) -> dict[str, object]:
    """Set (or, with DELETE, remove) each field; a key ``items__1__name`` reaches into items."""
    document = copy.deepcopy(document)
    for key, value in changes.items():
        path = key.split("__")
        target: object = document
        for part in path[:-1]:
            target = target[int(part)] if isinstance(target, list) else target[part]  # type: ignore[index]
        assert isinstance(target, dict)
        if value is DELETE:
            del target[path[-1]]
        else:
            target[path[-1]] = value
    return document


def item(name: str = "Water", quantity: int = 1, unit_price_cents: int = 250) -> dict[str, object]:
    return {"name": name, "quantity": quantity, "unit_price_cents": unit_price_cents}


def order_with_items(items: list[dict[str, object]], **changes: object) -> dict[str, object]:
    """A bar order with ``items`` and the matching total."""
    total = sum(
        (-1 if entry.get("is_return") else 1)
        * int(entry["quantity"])  # type: ignore[call-overload]
        * int(entry["unit_price_cents"])  # type: ignore[call-overload]
        for entry in items
    )
    return bar_order_document(**{"items": items, "total_cents": total, **changes})


def sign_document(
    document: object,
    key: Ed25519PrivateKey = KIOSK_KEY,
    kid: str = KIOSK_ID,
) -> bytes:
    """Sign any JSON value (valid or not) the way a kiosk would."""
    payload = json.dumps(document, separators=(",", ":"), sort_keys=True).encode()
    return sign_compact(payload, key, kid)


def sign_with_header(header: bytes, payload: bytes, key: Ed25519PrivateKey = KIOSK_KEY) -> bytes:
    """A JWS with an arbitrary header, validly signed by ``key``."""
    signing_input = (b64url_encode(header) + "." + b64url_encode(payload)).encode()
    return signing_input + b"." + b64url_encode(key.sign(signing_input)).encode()


# --- helpers only the tests need (the consumer has its own path: cloud/consumer/decisions.py) ---


def decode_request(
    raw: bytes,
    *,
    topic_kiosk_id: str,
    public_key_for: PublicKeyLookup,
    currency: str,
    now_ms: int,
    stale_after_s: int = STALE_AFTER_S_DEFAULT,
    future_skew_s: int = FUTURE_SKEW_S_DEFAULT,
    topup_cents_max: int = TOPUP_CENTS_MAX_DEFAULT,
) -> Request:
    """``authenticate`` then ``parse_authenticated``, for tests that need no distinction."""
    message = authenticate(raw, topic_kiosk_id=topic_kiosk_id, public_key_for=public_key_for)
    return parse_authenticated(
        message,
        currency=currency,
        now_ms=now_ms,
        stale_after_s=stale_after_s,
        future_skew_s=future_skew_s,
        topup_cents_max=topup_cents_max,
    )


def result_for_error(
    error: ProtocolError, *, processed_at_ms: int, replayed: bool = False
) -> Result:
    """The rejection result for a ProtocolError from ``authenticate``/``parse_authenticated``.

    Echoes exactly what ``error.echo`` allows (nothing for an unauthenticated message).
    """
    echo = error.echo
    request_id = echo.get("request_id")
    kiosk_id = echo.get("kiosk_id")
    seq = echo.get("seq")
    card_uid = echo.get("card_uid")
    return build_result(
        request_id=request_id if isinstance(request_id, str) else None,
        kiosk_id=kiosk_id if isinstance(kiosk_id, str) else None,
        seq=seq if isinstance(seq, int) else None,
        card_uid=card_uid if isinstance(card_uid, str) else None,
        error_code=error.code,
        message=error.message,
        transaction_id=None,
        previous_balance_cents=None,
        new_balance_cents=None,
        debt_cents=None,
        replayed=replayed,
        processed_at_ms=processed_at_ms,
    )


def card_swap_document(**changes: object) -> dict[str, object]:
    """(1.1) A valid card swap at a checkpoint, with ``changes`` applied."""
    document: dict[str, object] = {
        "v": 1,
        "type": "card_swap",
        "request_id": "018f3b2a-7c4e-7def-8a12-000000000002",
        "kiosk_id": CHECKPOINT_KIOSK_ID,
        "seq": 8,
        "created_at_ms": CREATED_AT_MS,
        "card_uid": "04A1B2C3D4E5F6",
        "currency": CURRENCY,
        "old_card_uid": "04A1B2C3",
        "staff_id": "staff-17",
    }
    return apply_changes(document, changes)


def void_document(**changes: object) -> dict[str, object]:
    """(1.1) A valid void of ``bar_order_document()``'s order, with ``changes`` applied."""
    document: dict[str, object] = {
        "v": 1,
        "type": "void",
        "request_id": "018f3b2a-7c4e-7def-8a12-000000000003",
        "kiosk_id": KIOSK_ID,
        "seq": 43,
        "created_at_ms": CREATED_AT_MS,
        "card_uid": "04A1B2C3D4E5F6",
        "currency": CURRENCY,
        "original_request_id": "018f3b2a-7c4e-7def-8a12-3456789abcde",
        "staff_id": "anna",
    }
    return apply_changes(document, changes)
