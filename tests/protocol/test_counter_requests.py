"""(1.1) The counter's requests, card_swap and void: schema, model, codec and the role rule."""

from __future__ import annotations

from typing import Any

import pytest

from protocol.codec import encode_request
from protocol.errors import ErrorCode, ProtocolError, Status
from protocol.models import (
    REQUEST_TYPES_BY_ROLE,
    CardSun,
    CardSwap,
    Request,
    Result,
    Void,
    parse_request,
    request_to_dict,
    role_may_send,
)

from .support import (
    CHECKPOINT_KEY,
    CHECKPOINT_KIOSK_ID,
    CREATED_AT_MS,
    CURRENCY,
    DELETE,
    KIOSK_ID,
    KIOSK_KEY,
    NOW_MS,
    card_swap_document,
    decode_request,
    lookup,
    void_document,
)

SUN: dict[str, object] = {"picc_data": "0" * 32, "cmac": "A" * 16}


def parse(document: object) -> Request:
    return parse_request(document, currency=CURRENCY)


def invalid(document: object) -> str:
    with pytest.raises(ProtocolError) as caught:
        parse(document)
    assert caught.value.code is ErrorCode.INVALID_REQUEST
    return caught.value.message


# --- card_swap ---------------------------------------------------------------------------------


def test_card_swap_parses_into_the_model() -> None:
    swap = parse(card_swap_document())
    assert swap == CardSwap(
        request_id="018f3b2a-7c4e-7def-8a12-000000000002",
        kiosk_id=CHECKPOINT_KIOSK_ID,
        seq=8,
        created_at_ms=CREATED_AT_MS,
        card_uid="04A1B2C3D4E5F6",
        currency=CURRENCY,
        old_card_uid="04A1B2C3",
        staff_id="staff-17",
    )
    assert request_to_dict(swap) == card_swap_document()


def test_card_swap_carries_both_bands_sun_messages() -> None:
    swap = parse(card_swap_document(old_card_sun=SUN, card_sun=SUN))
    assert isinstance(swap, CardSwap)
    assert swap.old_card_sun == CardSun("0" * 32, "A" * 16) == swap.card_sun
    assert request_to_dict(swap)["old_card_sun"] == SUN


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"old_card_uid": "04A1B2C3D4E5F6"}, "old_card_uid must differ from card_uid"),
        ({"old_card_uid": "04a1b2c3"}, "invalid old_card_uid"),
        ({"old_card_uid": None}, "old_card_uid must be a string"),
        ({"old_card_uid": DELETE}, "missing field old_card_uid"),
        ({"staff_id": DELETE}, "missing field staff_id"),
        ({"staff_id": ""}, "staff_id must be 1..64"),
        ({"old_card_sun": None}, "old_card_sun must be a JSON object"),
        ({"old_card_sun": {"picc_data": "0" * 32}}, "missing field cmac in old_card_sun"),
        (
            {"old_card_sun": {"picc_data": "0" * 31, "cmac": "A" * 16}},
            "old_card_sun.picc_data must be 32",
        ),
        ({"original_request_id": "x"}, "unknown field 'original_request_id' in card_swap"),
        ({"amount_cents": 100}, "unknown field 'amount_cents' in card_swap"),
    ],
)
def test_card_swap_rules(changes: dict[str, object], expected: str) -> None:
    assert expected in invalid(card_swap_document(**changes))


def test_a_card_swap_model_checks_itself() -> None:
    swap = parse(card_swap_document())
    assert isinstance(swap, CardSwap)
    fields: dict[str, Any] = {
        name: getattr(swap, name) for name in CardSwap.__dataclass_fields__ if name != "type"
    }
    with pytest.raises(ProtocolError, match="must differ"):
        CardSwap(**{**fields, "old_card_uid": swap.card_uid})
    with pytest.raises(ProtocolError, match="old_card_sun must be a CardSun"):
        CardSwap(**{**fields, "old_card_sun": SUN})


# --- void --------------------------------------------------------------------------------------


def test_void_parses_into_the_model() -> None:
    void = parse(void_document())
    assert void == Void(
        request_id="018f3b2a-7c4e-7def-8a12-000000000003",
        kiosk_id=KIOSK_ID,
        seq=43,
        created_at_ms=CREATED_AT_MS,
        card_uid="04A1B2C3D4E5F6",
        currency=CURRENCY,
        original_request_id="018f3b2a-7c4e-7def-8a12-3456789abcde",
        staff_id="anna",
    )
    assert request_to_dict(void) == void_document()


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"original_request_id": DELETE}, "missing field original_request_id"),
        ({"original_request_id": "has space"}, "invalid original_request_id"),
        ({"original_request_id": 17}, "original_request_id must be a string"),
        (
            {"original_request_id": "018f3b2a-7c4e-7def-8a12-000000000003"},
            "original_request_id must differ from request_id",
        ),
        ({"staff_id": DELETE}, "missing field staff_id"),
        ({"staff_id": "x" * 65}, "staff_id must be 1..64"),
        ({"old_card_uid": "04A1B2C3"}, "unknown field 'old_card_uid' in void"),
        ({"items": []}, "unknown field 'items' in void"),
    ],
)
def test_void_rules(changes: dict[str, object], expected: str) -> None:
    assert expected in invalid(void_document(**changes))


# --- codec and the role rule -------------------------------------------------------------------


def test_both_round_trip_signed_through_the_codec() -> None:
    swap = parse(card_swap_document(old_card_sun=SUN))
    void = parse(void_document())
    for request, key in ((swap, CHECKPOINT_KEY), (void, KIOSK_KEY)):
        raw = encode_request(request, key)
        decoded = decode_request(
            raw,
            topic_kiosk_id=request.kiosk_id,
            public_key_for=lookup,
            currency=CURRENCY,
            now_ms=NOW_MS,
        )
        assert decoded == request


@pytest.mark.parametrize(
    ("role", "request_type", "allowed"),
    [
        ("bar", "void", True),
        ("bar", "card_swap", False),
        ("checkpoint", "card_swap", True),
        ("checkpoint", "void", False),
        ("all", "void", True),
        ("all", "card_swap", True),
        ("bar", "bar_order", True),
        ("checkpoint", "bar_order", False),
        ("unknown-role", "void", False),
    ],
)
def test_the_role_rule(role: str, request_type: str, allowed: bool) -> None:
    assert role_may_send(role, request_type) is allowed


def test_every_role_names_only_known_types() -> None:
    assert set().union(*REQUEST_TYPES_BY_ROLE.values()) == {
        "bar_order",
        "checkpoint_recharge",
        "card_swap",
        "void",
        "staff_login",
        "staff_logout",
        "cash_out",
    }


def test_void_not_allowed_is_a_decline_and_may_name_an_unknown_card() -> None:
    assert ErrorCode.VOID_NOT_ALLOWED.status is Status.DECLINED
    common: dict[str, Any] = {
        "request_id": "r-1",
        "kiosk_id": KIOSK_ID,
        "seq": 1,
        "card_uid": "04A1B2C3",
        "status": Status.DECLINED,
        "error_code": ErrorCode.VOID_NOT_ALLOWED,
        "message": "Not voided",
        "transaction_id": None,
        "replayed": False,
        "processed_at_ms": NOW_MS,
    }
    Result(**common, previous_balance_cents=None, new_balance_cents=None, debt_cents=None)
    Result(**common, previous_balance_cents=500, new_balance_cents=500, debt_cents=0)
    with pytest.raises(ProtocolError, match="unchanged"):
        Result(**common, previous_balance_cents=500, new_balance_cents=900, debt_cents=0)
