"""(1.1) staff_login / staff_logout and our cash_out extension: schema, model, codec, roles, and
the shape of a result that moves no money."""

from __future__ import annotations

from typing import Any

import pytest

from protocol.codec import encode_request
from protocol.errors import ErrorCode, ProtocolError, Status
from protocol.models import (
    MONEYLESS_REQUEST_TYPES,
    CashOut,
    Request,
    Result,
    StaffLogin,
    StaffLogout,
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
    apply_changes,
    decode_request,
    lookup,
)


def staff_document(request_type: str = "staff_login", **changes: object) -> dict[str, object]:
    document: dict[str, object] = {
        "v": 1,
        "type": request_type,
        "request_id": "018f3b2a-7c4e-7def-8a12-000000000009",
        "kiosk_id": KIOSK_ID,
        "seq": 12,
        "created_at_ms": CREATED_AT_MS,
        "card_uid": "04A1B2C3",
        "currency": CURRENCY,
        "staff_id": "anna",
    }
    if request_type == "staff_login":
        document["pin"] = "482913"
    return apply_changes(document, changes)


def parse(document: object) -> Request:
    return parse_request(document, currency=CURRENCY)


def invalid(document: object) -> str:
    with pytest.raises(ProtocolError) as caught:
        parse(document)
    assert caught.value.code is ErrorCode.INVALID_REQUEST
    return caught.value.message


def test_a_login_parses_into_the_model_and_hides_its_pin() -> None:
    login = parse(staff_document())
    assert login == StaffLogin(
        request_id="018f3b2a-7c4e-7def-8a12-000000000009",
        kiosk_id=KIOSK_ID,
        seq=12,
        created_at_ms=CREATED_AT_MS,
        card_uid="04A1B2C3",
        currency=CURRENCY,
        staff_id="anna",
        pin="482913",
    )
    assert "482913" not in repr(login)
    assert request_to_dict(login) == staff_document()


@pytest.mark.parametrize("request_type", ["staff_logout", "cash_out"])
def test_a_logout_and_a_cash_out_carry_only_the_staff_id(request_type: str) -> None:
    request = parse(staff_document(request_type))
    assert type(request) is (StaffLogout if request_type == "staff_logout" else CashOut)
    assert request.staff_id == "anna"
    assert request_to_dict(request) == staff_document(request_type)


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"pin": DELETE}, "missing field pin"),
        ({"pin": "123"}, "pin must be a string of 4..12 digits"),
        ({"pin": "1234567890123"}, "pin must be a string of 4..12 digits"),
        ({"pin": "12a4"}, "pin must be a string of 4..12 digits"),
        ({"pin": 1234}, "pin must be a string of 4..12 digits"),
        (
            {"pin": "\uff11\uff12\uff13\uff14"},
            "pin must be a string of 4..12 digits",
        ),  # full-width digits
        ({"staff_id": DELETE}, "missing field staff_id"),
        ({"staff_id": ""}, "staff_id must be 1..64"),
        ({"amount_cents": 100}, "unknown field 'amount_cents' in staff_login"),
    ],
)
def test_login_rules(changes: dict[str, object], expected: str) -> None:
    assert expected in invalid(staff_document(**changes))


def test_a_refused_pin_is_never_quoted_back() -> None:
    assert "98765x" not in invalid(staff_document(pin="98765x"))


@pytest.mark.parametrize("request_type", ["staff_logout", "cash_out"])
def test_only_a_login_carries_a_pin(request_type: str) -> None:
    assert f"unknown field 'pin' in {request_type}" in invalid(
        staff_document(request_type, pin="1234")
    )


def test_a_model_checks_itself() -> None:
    with pytest.raises(ProtocolError, match="pin must be"):
        StaffLogin(
            request_id="r-1",
            kiosk_id=KIOSK_ID,
            seq=1,
            created_at_ms=CREATED_AT_MS,
            card_uid="04A1B2C3",
            currency=CURRENCY,
            staff_id="anna",
            pin="12",
        )


def test_they_round_trip_signed_through_the_codec() -> None:
    login = parse(staff_document())
    cash_out = parse(staff_document("cash_out", kiosk_id=CHECKPOINT_KIOSK_ID))
    for request, key in ((login, KIOSK_KEY), (cash_out, CHECKPOINT_KEY)):
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
        ("bar", "staff_login", True),
        ("checkpoint", "staff_login", True),
        ("all", "staff_logout", True),
        ("bar", "staff_logout", True),
        ("checkpoint", "cash_out", True),
        ("all", "cash_out", True),
        ("bar", "cash_out", False),
    ],
)
def test_the_role_rule(role: str, request_type: str, allowed: bool) -> None:
    assert role_may_send(role, request_type) is allowed


def test_staff_not_allowed_is_a_rejection() -> None:
    assert ErrorCode.STAFF_NOT_ALLOWED.status is Status.REJECTED


def test_an_approved_login_carries_no_transaction_and_no_balances() -> None:
    assert MONEYLESS_REQUEST_TYPES == {"staff_login", "staff_logout"}
    common: dict[str, Any] = {
        "request_id": "r-1",
        "kiosk_id": KIOSK_ID,
        "seq": 1,
        "card_uid": "04A1B2C3",
        "status": Status.APPROVED,
        "error_code": None,
        "message": "Logged in",
        "replayed": False,
        "processed_at_ms": NOW_MS,
    }
    none = {"previous_balance_cents": None, "new_balance_cents": None, "debt_cents": None}
    Result(**common, transaction_id=None, **none)
    # Half a money result is still inconsistent.
    with pytest.raises(ProtocolError, match="balances"):
        Result(**common, transaction_id="tx-1", **none)
    with pytest.raises(ProtocolError, match="moves no money"):
        Result(
            **common,
            transaction_id=None,
            previous_balance_cents=0,
            new_balance_cents=0,
            debt_cents=0,
        )
    # A rejection still never carries a transaction.
    rejected = {**common, "status": Status.REJECTED, "error_code": ErrorCode.STAFF_NOT_ALLOWED}
    with pytest.raises(ProtocolError, match="transaction_id"):
        Result(**rejected, transaction_id="tx-1", **none)
