"""(1.1) Offline sales on the wire: a bar order's ``offline`` flag, a result's ``debt_cents``,
OFFLINE_LIMIT_EXCEEDED and a status message's ``offline_pending*`` (PROTOCOL.md)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from protocol.codec import build_result, encode_request, encode_result, verify_result
from protocol.errors import ErrorCode, ProtocolError, Status, status_for
from protocol.jws import parse_compact
from protocol.models import (
    BarItem,
    BarOrder,
    KioskStatus,
    parse_request,
    parse_status,
    request_to_dict,
    result_to_dict,
    status_to_dict,
)

from .support import CLOUD_KEY, CURRENCY, DELETE, KIOSK_ID, KIOSK_KEY, bar_order_document

BEER = {"name": "Pils 0,5 l", "quantity": 2, "unit_price_cents": 450, "sku": "BEER-05"}
CUP = {"name": "Cup deposit", "quantity": 2, "unit_price_cents": 200, "is_deposit": True}
CUP_RETURN = {
    "name": "Cup return",
    "quantity": 1,
    "unit_price_cents": 200,
    "is_deposit": True,
    "is_return": True,
}


def offline_document(**changes: object) -> dict[str, object]:
    """A valid offline sale: beer and cup deposits, no returns, citing config 3."""
    fields: dict[str, object] = {
        "items": [BEER, CUP],
        "total_cents": 1300,
        "config_version": 3,
        "offline": True,
    }
    fields.update(changes)
    return bar_order_document(**fields)


def parse(document: object) -> Any:
    return parse_request(document, currency=CURRENCY)


def invalid(document: object) -> ProtocolError:
    with pytest.raises(ProtocolError) as caught:
        parse(document)
    assert caught.value.code is ErrorCode.INVALID_REQUEST
    return caught.value


def test_an_offline_sale_parses_and_round_trips() -> None:
    order = parse(offline_document())
    assert isinstance(order, BarOrder)
    assert order.offline is True and order.config_version == 3
    assert request_to_dict(order) == offline_document()


def test_an_online_order_is_not_offline_and_writes_no_flag() -> None:
    order = parse(bar_order_document())
    assert order.offline is False
    assert "offline" not in request_to_dict(order)


def test_false_is_read_as_absent_and_never_written() -> None:
    # PROTOCOL.md: "Absent means false; false is not written" - a reader accepts the explicit
    # false (like is_deposit), the kiosk never writes it.
    order = parse(offline_document(offline=False))
    assert order.offline is False
    assert "offline" not in request_to_dict(order)


@pytest.mark.parametrize("value", [None, 1, 0, "true", [], {}])
def test_offline_must_be_a_boolean(value: object) -> None:
    assert "offline must be a boolean" in invalid(offline_document(offline=value)).message


def test_an_offline_sale_with_a_return_line_is_invalid() -> None:
    document = offline_document(items=[BEER, CUP, CUP_RETURN], total_cents=1100)
    assert "no return lines" in invalid(document).message
    # The same order online is fine: returns need the network, they are not forbidden.
    online = parse(bar_order_document(items=[BEER, CUP, CUP_RETURN], total_cents=1100))
    assert online.total_cents == 1100 and not online.offline


def test_an_offline_sale_with_a_negative_total_is_invalid() -> None:
    # A negative total comes only from returns: refused as such.
    document = offline_document(items=[CUP_RETURN], total_cents=-200)
    assert "no return lines" in invalid(document).message


def test_an_offline_sale_of_zero_is_valid() -> None:
    free = {"name": "Water", "quantity": 1, "unit_price_cents": 0}
    assert parse(offline_document(items=[free], total_cents=0)).total_cents == 0


def test_an_offline_sale_citing_no_config_parses_the_cloud_judges_it() -> None:
    # PROTOCOL.md: no config_version is OFFLINE_LIMIT_EXCEEDED, a business verdict of the
    # cloud on a valid message, not a schema violation.
    document = offline_document()
    del document["config_version"]
    order = parse(document)
    assert order.offline is True and order.config_version is None


def test_the_constructor_applies_the_same_rules() -> None:
    beer = BarItem("Pils", 1, 450)
    cup_return = BarItem("Cup return", 1, 200, is_deposit=True, is_return=True)
    fields: dict[str, Any] = {
        "request_id": "r1",
        "kiosk_id": KIOSK_ID,
        "seq": 1,
        "created_at_ms": 1_750_000_000_000,
        "card_uid": "04A1B2C3",
        "currency": CURRENCY,
        "config_version": 2,
        "offline": True,
    }
    assert BarOrder(items=(beer,), total_cents=450, **fields).offline
    with pytest.raises(ProtocolError, match="no return lines"):
        BarOrder(items=(beer, cup_return), total_cents=250, **fields)
    with pytest.raises(ProtocolError, match="offline must be a boolean"):
        BarOrder(items=(beer,), total_cents=450, **{**fields, "offline": 1})


def test_the_signed_request_carries_offline_true() -> None:
    order = parse(offline_document())
    token = encode_request(order, KIOSK_KEY)
    payload = json.loads(parse_compact(token).payload)
    assert payload["offline"] is True and payload["config_version"] == 3


def test_offline_limit_exceeded_is_a_rejection() -> None:
    assert ErrorCode("OFFLINE_LIMIT_EXCEEDED").status is Status.REJECTED
    assert status_for(ErrorCode.OFFLINE_LIMIT_EXCEEDED) is Status.REJECTED


# --- results: debt_cents -------------------------------------------------------------------


def result(**changes: object) -> Any:
    fields: dict[str, object] = {
        "request_id": "r1",
        "kiosk_id": KIOSK_ID,
        "seq": 7,
        "card_uid": "04A1B2C3",
        "error_code": None,
        "message": "Paid offline",
        "transaction_id": "tx-1",
        "previous_balance_cents": 500,
        "new_balance_cents": 0,
        "debt_cents": 800,
        "replayed": False,
        "processed_at_ms": 1_750_000_000_100,
    }
    fields.update(changes)
    return build_result(**fields)  # type: ignore[arg-type]


def test_a_result_with_a_debt_round_trips_signed() -> None:
    raw = encode_result(result(), CLOUD_KEY)
    verified = verify_result(raw, cloud_public_key=CLOUD_KEY.public_key(), kiosk_id=KIOSK_ID)
    assert verified.debt_cents == 800
    assert result_to_dict(verified)["debt_cents"] == 800


def test_encode_always_writes_debt_cents_even_null() -> None:
    rejected = result(
        error_code=ErrorCode.OFFLINE_LIMIT_EXCEEDED,
        transaction_id=None,
        previous_balance_cents=None,
        new_balance_cents=None,
        debt_cents=None,
    )
    assert rejected.status is Status.REJECTED
    document = result_to_dict(rejected)
    assert "debt_cents" in document and document["debt_cents"] is None


@pytest.mark.parametrize(
    "changes",
    [
        {"debt_cents": None},  # balances without a debt
        {"debt_cents": -1},
        {"debt_cents": True},
        {
            "error_code": ErrorCode.OFFLINE_LIMIT_EXCEEDED,
            "transaction_id": None,
            "previous_balance_cents": None,
            "new_balance_cents": None,
            "debt_cents": 0,
        },  # a debt without balances
    ],
)
def test_a_result_contradicting_the_debt_rule_is_never_built(changes: dict[str, object]) -> None:
    with pytest.raises(ProtocolError):
        result(**changes)


# --- status: offline_pending* -------------------------------------------------------------


def status_document(**changes: object) -> dict[str, object]:
    document: dict[str, object] = {
        "v": 1,
        "kiosk_id": "bar-01",
        "state": "online",
        "at_ms": 5,
        "firmware": "1.4.2",
        "offline_pending": 3,
        "offline_pending_cents": 1750,
    }
    document.update(changes)
    return {key: value for key, value in document.items() if value is not DELETE}


def test_a_status_with_offline_pending_round_trips() -> None:
    status = parse_status(status_document())
    assert (status.offline_pending, status.offline_pending_cents) == (3, 1750)
    assert status_to_dict(status) == status_document()


def test_offline_pending_is_optional_and_not_written_when_absent() -> None:
    document = status_document(offline_pending=DELETE, offline_pending_cents=DELETE)
    status = parse_status(document)
    assert status == KioskStatus("bar-01", "online", 5, "1.4.2")
    assert status_to_dict(status) == document


@pytest.mark.parametrize(
    "changes",
    [
        {"offline_pending": -1},
        {"offline_pending": None},
        {"offline_pending": 1.0},
        {"offline_pending_cents": -5},
        {"offline_pending_cents": "10"},
        {"offline_pending_cents": False},
        {"offline_total": 1},
    ],
)
def test_invalid_offline_pending(changes: dict[str, object]) -> None:
    with pytest.raises(ProtocolError) as caught:
        parse_status(status_document(**changes))
    assert caught.value.code is ErrorCode.INVALID_REQUEST
    key, value = next(iter(changes.items()))
    if key.startswith("offline_pending") and value is not None:  # None: absent, in Python
        with pytest.raises(ProtocolError):
            KioskStatus("bar-01", "online", 5, "1.4.2", **changes)  # type: ignore[arg-type]
