"""Request, result, scan and status schemas: every rule at and just past each boundary."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from protocol.errors import ErrorCode, ProtocolError, Status
from protocol.limits import SEQ_MAX, TIMESTAMP_MS_MAX
from protocol.models import (
    BarItem,
    BarOrder,
    CheckpointRecharge,
    KioskStatus,
    Request,
    Result,
    ScanRecord,
    echo_fields,
    parse_request,
    parse_result,
    parse_scan,
    parse_status,
    request_to_dict,
    result_to_dict,
    scan_to_dict,
    status_to_dict,
)

from .support import (
    CURRENCY,
    DELETE,
    bar_order_document,
    item,
    order_with_items,
    recharge_document,
)

FULLWIDTH_UID = "\uff10\uff14A1B2C3"  # "04A1B2C3" with fullwidth digits


def parse(document: object, **kwargs: Any) -> Request:
    return parse_request(document, currency=CURRENCY, **kwargs)


def invalid(document: object, **kwargs: Any) -> ProtocolError:
    with pytest.raises(ProtocolError) as caught:
        parse(document, **kwargs)
    error = caught.value
    assert error.code is ErrorCode.INVALID_REQUEST
    assert error.message.isascii() and len(error.message) <= 200
    return error


# --- the valid examples -------------------------------------------------------------------


def test_bar_order_parses_into_the_model() -> None:
    order = parse(bar_order_document())
    assert order == BarOrder(
        request_id="018f3b2a-7c4e-7def-8a12-3456789abcde",
        kiosk_id="bar-01",
        seq=42,
        created_at_ms=1_750_000_000_000,
        card_uid="04A1B2C3D4E5F6",
        currency="EUR",
        items=(
            BarItem("Pils 0,5 l", 2, 450, sku="BEER-05"),
            BarItem("Cup deposit", 2, 200, is_deposit=True),
            BarItem("Cup return", 1, 200, is_deposit=True, is_return=True),
        ),
        total_cents=1100,
        staff_id="anna",
    )
    assert BarOrder.type == "bar_order"
    assert isinstance(order, BarOrder)
    assert [entry.signed_cents for entry in order.items] == [900, 400, -200]


def test_recharge_parses_into_the_model() -> None:
    recharge = parse(recharge_document())
    assert recharge == CheckpointRecharge(
        request_id="018f3b2a-7c4e-7def-8a12-000000000001",
        kiosk_id="checkpoint-1",
        seq=7,
        created_at_ms=1_750_000_000_000,
        card_uid="04A1B2C3",
        currency="EUR",
        amount_cents=2000,
        payment_method="cash",
        staff_id="staff-17",
    )
    assert isinstance(recharge, CheckpointRecharge)
    assert recharge.effective_checkpoint_id == "checkpoint-1"
    with_checkpoint = parse(recharge_document(checkpoint_id="gate-north"))
    assert isinstance(with_checkpoint, CheckpointRecharge)
    assert with_checkpoint.effective_checkpoint_id == "gate-north"


@pytest.mark.parametrize("document", [bar_order_document(), recharge_document()])
def test_to_dict_round_trips(document: dict[str, object]) -> None:
    request = parse_request(document, currency=CURRENCY)
    assert request_to_dict(request) == document
    # The parsed model is the one its constructor builds (which checks every field itself).
    names = [field.name for field in dataclasses.fields(request)]
    assert type(request)(**{name: getattr(request, name) for name in names}) == request


def test_to_dict_omits_absent_optionals() -> None:
    order = BarOrder("r1", "bar-01", 1, 0, "04A1B2C3", "EUR", (BarItem("Cola", 1, 300),), 300)
    assert request_to_dict(order) == {
        "v": 1,
        "type": "bar_order",
        "request_id": "r1",
        "kiosk_id": "bar-01",
        "seq": 1,
        "created_at_ms": 0,
        "card_uid": "04A1B2C3",
        "currency": "EUR",
        "items": [{"name": "Cola", "quantity": 1, "unit_price_cents": 300}],
        "total_cents": 300,
    }


def test_constructors_catch_wrong_python_types() -> None:
    with pytest.raises(ProtocolError) as caught:
        BarOrder("r1", "bar-01", 1, 0, "04A1B2C3", "EUR", [BarItem("Cola", 1, 300)], 300)  # type: ignore[arg-type]
    assert caught.value.code is ErrorCode.INVALID_REQUEST
    assert "items" in caught.value.message
    with pytest.raises(ProtocolError, match="seq"):
        BarOrder("r1", "bar-01", True, 0, "04A1B2C3", "EUR", (BarItem("Cola", 1, 300),), 300)


COLA = BarItem("Cola", 1, 300)
ORDER_FIELDS: dict[str, object] = {
    "request_id": "r1",
    "kiosk_id": "bar-01",
    "seq": 1,
    "created_at_ms": 0,
    "card_uid": "04A1B2C3",
    "currency": "EUR",
    "items": (COLA,),
    "total_cents": 300,
}
RECHARGE_FIELDS: dict[str, object] = {
    **{name: ORDER_FIELDS[name] for name in list(ORDER_FIELDS)[:6]},
    "amount_cents": 2000,
    "payment_method": "cash",
    "staff_id": "staff-17",
}


@pytest.mark.parametrize(
    ("model", "fields", "changes", "field"),
    [
        (BarItem, {"name": "Cola", "quantity": 1, "unit_price_cents": 300}, {"name": ""}, "name"),
        (
            BarItem,
            {"name": "Cola", "quantity": 1, "unit_price_cents": 300},
            {"quantity": 100},
            "quantity",
        ),
        (
            BarItem,
            {"name": "Cola", "quantity": 1, "unit_price_cents": 300},
            {"unit_price_cents": -1},
            "unit_price",
        ),
        (BarItem, {"name": "Cola", "quantity": 1, "unit_price_cents": 300}, {"sku": ""}, "sku"),
        (
            BarItem,
            {"name": "Cola", "quantity": 1, "unit_price_cents": 300},
            {"is_deposit": 1},
            "is_deposit",
        ),
        (
            BarItem,
            {"name": "Cola", "quantity": 1, "unit_price_cents": 300},
            {"name": "a\u202eb"},
            "name",
        ),
        (BarOrder, ORDER_FIELDS, {"request_id": "not valid"}, "request_id"),
        (BarOrder, ORDER_FIELDS, {"kiosk_id": "cloud"}, "kiosk_id"),
        (BarOrder, ORDER_FIELDS, {"seq": 0}, "seq"),
        (BarOrder, ORDER_FIELDS, {"created_at_ms": -1}, "created_at_ms"),
        (BarOrder, ORDER_FIELDS, {"card_uid": "04a1b2c3"}, "card_uid"),
        (BarOrder, ORDER_FIELDS, {"currency": "eur"}, "currency"),
        (BarOrder, ORDER_FIELDS, {"items": (), "total_cents": 0}, "items"),
        (BarOrder, ORDER_FIELDS, {"items": (COLA,) * 51, "total_cents": 51 * 300}, "items"),
        (BarOrder, ORDER_FIELDS, {"items": ({"name": "Cola"},)}, "items[0]"),
        (BarOrder, ORDER_FIELDS, {"total_cents": 301}, "total_cents"),
        (BarOrder, ORDER_FIELDS, {"total_cents": 300.0}, "total_cents"),
        (BarOrder, ORDER_FIELDS, {"staff_id": ""}, "staff_id"),
        (CheckpointRecharge, RECHARGE_FIELDS, {"amount_cents": 0}, "amount_cents"),
        (CheckpointRecharge, RECHARGE_FIELDS, {"payment_method": "crypto"}, "payment_method"),
        (CheckpointRecharge, RECHARGE_FIELDS, {"staff_id": None}, "staff_id"),
        (CheckpointRecharge, RECHARGE_FIELDS, {"checkpoint_id": "a\nb"}, "checkpoint_id"),
    ],
)
def test_constructors_check_the_rules_of_the_schema(
    model: type, fields: dict[str, object], changes: dict[str, object], field: str
) -> None:
    model(**fields)
    with pytest.raises(ProtocolError) as caught:
        model(**{**fields, **changes})
    assert caught.value.code is ErrorCode.INVALID_REQUEST
    assert field in caught.value.message, caught.value.message


def test_result_scan_and_status_constructors_check_the_rules() -> None:
    valid = parse_result(approved_result_document())
    fields = {name: getattr(valid, name) for name in Result.__slots__}
    with pytest.raises(ProtocolError, match="status"):
        Result(**{**fields, "status": "approved"})
    with pytest.raises(ProtocolError, match="transaction_id"):
        Result(**{**fields, "transaction_id": None})
    with pytest.raises(ProtocolError, match="message"):
        Result(**{**fields, "message": "m" * 201})
    with pytest.raises(ProtocolError, match="card_uid"):
        ScanRecord("bar-01", 0, None, "ok", "reader", 1)
    with pytest.raises(ProtocolError, match="reader"):
        ScanRecord("bar-01", 0, None, "read_error", "r" * 65, 1)
    with pytest.raises(ProtocolError, match="state"):
        KioskStatus("bar-01", "away", 5, "1.0")  # type: ignore[arg-type]


# --- envelope -----------------------------------------------------------------------------


@pytest.mark.parametrize("value", [[], "x", 1, None, [bar_order_document()]])
def test_request_must_be_an_object(value: object) -> None:
    invalid(value)


@pytest.mark.parametrize("version", [0, 2, "1", 1.0, True, None, DELETE])
def test_version_must_be_integer_one(version: object) -> None:
    invalid(bar_order_document(v=version))


@pytest.mark.parametrize("kind", ["BAR_ORDER", "bar-order", "scan", "", None, 1, DELETE])
def test_type_must_be_known(kind: object) -> None:
    invalid(bar_order_document(type=kind))


def test_unknown_fields_are_rejected() -> None:
    assert "unknown field 'note'" in invalid(bar_order_document(note="x")).message
    assert "unknown field" in invalid(recharge_document(discount_cents=5)).message
    assert "unknown field" in invalid(bar_order_document(items__0__discount=1)).message
    # Fields of the other request type are unknown too.
    invalid(bar_order_document(checkpoint_id="gate"))
    invalid(bar_order_document(amount_cents=5))
    invalid(recharge_document(total_cents=2000))


def test_unknown_field_name_is_not_echoed_at_length() -> None:
    message = invalid(bar_order_document(**{"x" * 5000: 1})).message
    assert len(message) < 100


@pytest.mark.parametrize(
    "field",
    [
        "request_id",
        "kiosk_id",
        "seq",
        "created_at_ms",
        "card_uid",
        "currency",
        "items",
        "total_cents",
    ],
)
def test_required_bar_order_fields(field: str) -> None:
    assert f"missing field {field}" in invalid(bar_order_document(**{field: DELETE})).message


@pytest.mark.parametrize("field", ["amount_cents", "payment_method", "staff_id", "card_uid"])
def test_required_recharge_fields(field: str) -> None:
    invalid(recharge_document(**{field: DELETE}))


def test_optional_fields_may_be_absent_but_not_null() -> None:
    parse(bar_order_document(staff_id=DELETE))
    parse(bar_order_document(items__0__sku=DELETE))
    for changes in (
        {"staff_id": None},
        {"items__0__sku": None},
        {"items__1__is_deposit": None},
    ):
        invalid(bar_order_document(**changes))
    invalid(recharge_document(checkpoint_id=None))


# --- common fields ------------------------------------------------------------------------

INTEGER_LOOKALIKES = [1.0, 42.5, "42", True, False, None, [42], {"n": 42}]


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        ("a", True),
        ("a" * 64, True),
        ("A.b_c:d-9", True),
        ("018f3b2a-7c4e-7def-8a12-3456789abcde", True),
        ("", False),
        ("a" * 65, False),
        ("abc def", False),
        ("abc/def", False),
        ("abc+def", False),
        ("abc\n", False),
        ("r\u0430", False),  # Cyrillic a
        ("\uff11", False),  # fullwidth 1
        ("abc\u2010def", False),  # Unicode hyphen
        (123, False),
        (None, False),
    ],
)
def test_request_id(value: object, valid: bool) -> None:
    check(bar_order_document(request_id=value), valid, "request_id")


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        ("a", True),
        ("bar-01", True),
        ("a" * 32, True),
        ("a" * 33, False),
        ("", False),
        ("1bar", False),
        ("Bar-01", False),
        ("bar_01", False),
        ("b\u0430r-01", False),  # Cyrillic a
        ("bar-\uff10\uff11", False),  # fullwidth digits
        ("cloud", False),
        (1, False),
    ],
)
def test_kiosk_id(value: object, valid: bool) -> None:
    check(bar_order_document(kiosk_id=value), valid, "kiosk_id")


@pytest.mark.parametrize(
    ("value", "valid"),
    [(1, True), (SEQ_MAX, True), (0, False), (-1, False), (SEQ_MAX + 1, False), (10**400, False)]
    + [(value, False) for value in INTEGER_LOOKALIKES],
)
def test_seq(value: object, valid: bool) -> None:
    check(bar_order_document(seq=value), valid, "seq")


@pytest.mark.parametrize(
    ("value", "valid"),
    [(0, True), (TIMESTAMP_MS_MAX, True), (-1, False), (TIMESTAMP_MS_MAX + 1, False)]
    + [(value, False) for value in INTEGER_LOOKALIKES],
)
def test_created_at_ms(value: object, valid: bool) -> None:
    check(bar_order_document(created_at_ms=value), valid, "created_at_ms")


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        ("04A1B2C3", True),
        ("04A1B2C3D4E5F6", True),
        ("04A1B2C3D4E5F6A7B8C9", True),
        ("0123456789ABCDEF0123", True),
        ("04A1B2C", False),  # 7
        ("04A1B2C3D", False),  # 9
        ("04A1B2C3D4", False),  # 10
        ("04A1B2C3D4E5", False),  # 12
        ("04A1B2C3D4E5F6A", False),  # 15
        ("04A1B2C3D4E5F6A7", False),  # 16
        ("04A1B2C3D4E5F6A7B8C", False),  # 19
        ("04A1B2C3D4E5F6A7B8C9D", False),  # 21
        ("04a1b2c3", False),  # lower case
        ("04A1B2G3", False),
        ("0x04A1B2", False),
        ("04:A1:B2:C3", False),
        ("04A1B2C3\n", False),
        (FULLWIDTH_UID, False),
        ("04A1B2C\u0417", False),  # Cyrillic Ze looks like 3
        ("", False),
        (0x04A1B2C3, False),
        (None, False),
    ],
)
def test_card_uid(value: object, valid: bool) -> None:
    check(bar_order_document(card_uid=value), valid, "card_uid")


@pytest.mark.parametrize(
    ("value", "valid"),
    [("EUR", True), ("USD", False), ("eur", False), ("EURO", False), ("", False), (978, False)],
)
def test_currency_must_equal_the_deployments(value: object, valid: bool) -> None:
    check(bar_order_document(currency=value), valid, "currency")


def test_deployment_currency_is_configurable_and_validated() -> None:
    parse_request(bar_order_document(currency="CHF"), currency="CHF")
    with pytest.raises(ValueError):
        parse_request(bar_order_document(), currency="euro")


# --- bar orders ---------------------------------------------------------------------------


def check(document: object, valid: bool, field: str, **kwargs: Any) -> None:
    """Parse ``document``; when invalid, the error must be about ``field``."""
    if valid:
        parse(document, **kwargs)
    else:
        message = invalid(document, **kwargs).message
        assert field in message, message


@pytest.mark.parametrize(("count", "valid"), [(0, False), (1, True), (50, True), (51, False)])
def test_item_count(count: int, valid: bool) -> None:
    check(order_with_items([item(f"Item {index}") for index in range(count)]), valid, "items")


@pytest.mark.parametrize("value", ["Cola", {"name": "Cola"}, None, 3])
def test_items_must_be_an_array(value: object) -> None:
    invalid(bar_order_document(items=value, total_cents=0))


@pytest.mark.parametrize("value", ["Cola", None, 3, [item()]])
def test_each_item_must_be_an_object(value: object) -> None:
    invalid(bar_order_document(items=[value], total_cents=250))


@pytest.mark.parametrize(
    ("name", "valid"),
    [
        ("W", True),
        ("W" * 64, True),
        ("\U0001f37a" * 64, True),  # 64 code points, 256 UTF-8 bytes
        ("Bi\u00e8re blonde 0,5 l", True),
        ("\u0416\u0438\u0432\u043e", True),  # Cyrillic is fine in free text
        ("", False),
        ("W" * 65, False),
        ("Cola\x00", False),
        ("Cola\n", False),
        ("Cola\t", False),
        ("Cola\x7f", False),
        ("Cola\x85", False),
        ("Cola\u2028", False),
        ("\u202eeloC", False),  # right-to-left override
        ("Cola\u2066", False),
        ("Cola\ud800", False),  # lone surrogate
        (1, False),
        (None, False),
    ],
)
def test_item_name(name: object, valid: bool) -> None:
    check(
        order_with_items([{"name": name, "quantity": 1, "unit_price_cents": 250}]),
        valid,
        "items[0].name",
    )


@pytest.mark.parametrize(
    ("quantity", "valid"),
    [(1, True), (99, True), (0, False), (100, False), (-1, False)]
    + [(value, False) for value in INTEGER_LOOKALIKES],
)
def test_item_quantity(quantity: object, valid: bool) -> None:
    document = bar_order_document(
        items=[{"name": "Cola", "quantity": quantity, "unit_price_cents": 1}]
    )
    document["total_cents"] = quantity if type(quantity) is int else 1
    check(document, valid, "items[0].quantity")


@pytest.mark.parametrize(
    ("price", "valid"),
    [(0, True), (100_000, True), (-1, False), (100_001, False), (10**400, False)]
    + [(value, False) for value in INTEGER_LOOKALIKES],
)
def test_item_unit_price_cents(price: object, valid: bool) -> None:
    document = bar_order_document(
        items=[{"name": "Cola", "quantity": 1, "unit_price_cents": price}]
    )
    document["total_cents"] = price if type(price) is int else 500
    check(document, valid, "items[0].unit_price_cents")


@pytest.mark.parametrize("price", [4.5, 500.0])
def test_float_money_is_never_accepted(price: float) -> None:
    error = invalid(order_with_items([item(unit_price_cents=500)], total_cents=price))
    assert "total_cents must be an integer" in error.message
    error = invalid(bar_order_document(items__0__unit_price_cents=price))
    assert "must be an integer, got non-integer number" in error.message


@pytest.mark.parametrize(
    ("sku", "valid"), [("S", True), ("S" * 32, True), ("", False), ("S" * 33, False), (12, False)]
)
def test_item_sku(sku: object, valid: bool) -> None:
    check(bar_order_document(items__0__sku=sku), valid, "items[0].sku")


@pytest.mark.parametrize("flag", ["is_deposit", "is_return"])
@pytest.mark.parametrize(
    ("value", "valid"), [(True, True), (False, True), (1, False), ("true", False), (0, False)]
)
def test_item_flags_are_booleans(flag: str, value: object, valid: bool) -> None:
    entry = {**item(), flag: value}
    total = -250 if (flag == "is_return" and value is True) else 250
    check(bar_order_document(items=[entry], total_cents=total), valid, f"items[0].{flag}")


@pytest.mark.parametrize("delta", [1, -1, 1100, -2200])
def test_total_must_equal_the_sum(delta: int) -> None:
    assert "does not equal" in invalid(bar_order_document(total_cents=1100 + delta)).message


def test_returns_count_negative_and_total_may_be_negative() -> None:
    order = parse(
        order_with_items([{**item("Cup return", 3, 200), "is_deposit": True, "is_return": True}])
    )
    assert isinstance(order, BarOrder)
    assert order.total_cents == -600
    invalid(
        bar_order_document(
            items=[{**item("Cup return", 3, 200), "is_return": True}], total_cents=600
        )
    )


def test_total_may_be_zero() -> None:
    parse(order_with_items([item("Water", 1, 0)]))
    parse(order_with_items([item("Cup", 1, 200), {**item("Cup back", 1, 200), "is_return": True}]))


def test_largest_order_adds_up() -> None:
    order = parse(order_with_items([item(f"Item {index}", 99, 100_000) for index in range(50)]))
    assert isinstance(order, BarOrder)
    assert order.total_cents == 495_000_000


@pytest.mark.parametrize(
    ("staff_id", "valid"),
    [("a", True), ("s" * 64, True), ("", False), ("s" * 65, False), (7, False)],
)
def test_bar_order_staff_id(staff_id: object, valid: bool) -> None:
    check(bar_order_document(staff_id=staff_id), valid, "staff_id")


# --- checkpoint recharges -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("amount", "valid"),
    [(1, True), (100_000, True), (0, False), (-100, False), (100_001, False), (10**400, False)]
    + [(value, False) for value in INTEGER_LOOKALIKES],
)
def test_recharge_amount(amount: object, valid: bool) -> None:
    check(recharge_document(amount_cents=amount), valid, "amount_cents")


def test_recharge_amount_limit_is_the_deployments() -> None:
    parse(recharge_document(amount_cents=5_000), topup_cents_max=5_000)
    invalid(recharge_document(amount_cents=5_001), topup_cents_max=5_000)
    parse(recharge_document(amount_cents=200_000), topup_cents_max=200_000)


@pytest.mark.parametrize(
    ("method", "valid"),
    [
        ("cash", True),
        ("card", True),
        ("CASH", False),
        ("stripe", False),
        ("", False),
        (None, False),
        (["cash"], False),
    ],
)
def test_recharge_payment_method(method: object, valid: bool) -> None:
    check(recharge_document(payment_method=method), valid, "payment_method")


@pytest.mark.parametrize(
    ("staff_id", "valid"),
    [
        ("a", True),
        ("s" * 64, True),
        ("", False),
        ("s" * 65, False),
        (None, False),
        ("a\x00", False),
    ],
)
def test_recharge_staff_id(staff_id: object, valid: bool) -> None:
    check(recharge_document(staff_id=staff_id), valid, "staff_id")


@pytest.mark.parametrize(
    ("checkpoint_id", "valid"),
    [("g", True), ("g" * 64, True), ("", False), ("g" * 65, False), (1, False)],
)
def test_recharge_checkpoint_id(checkpoint_id: object, valid: bool) -> None:
    check(recharge_document(checkpoint_id=checkpoint_id), valid, "checkpoint_id")


# --- echo -----------------------------------------------------------------------------------


def test_echo_fields_take_only_valid_values() -> None:
    assert echo_fields(bar_order_document()) == {
        "request_id": "018f3b2a-7c4e-7def-8a12-3456789abcde",
        "kiosk_id": "bar-01",
        "seq": 42,
        "card_uid": "04A1B2C3D4E5F6",
    }
    assert echo_fields(bar_order_document(seq=True, card_uid=FULLWIDTH_UID, request_id="")) == {
        "request_id": None,
        "kiosk_id": "bar-01",
        "seq": None,
        "card_uid": None,
    }
    assert echo_fields([1, 2]) == dict.fromkeys(["request_id", "kiosk_id", "seq", "card_uid"])


# --- results --------------------------------------------------------------------------------


def approved_result_document(**changes: object) -> dict[str, object]:
    document: dict[str, object] = {
        "v": 1,
        "request_id": "r1",
        "kiosk_id": "bar-01",
        "seq": 42,
        "card_uid": "04A1B2C3",
        "status": "approved",
        "error_code": None,
        "message": "Paid 11.00",
        "transaction_id": "tx-123",
        "previous_balance_cents": 5000,
        "new_balance_cents": 3900,
        "debt_cents": 0,
        "replayed": False,
        "processed_at_ms": 1_750_000_000_100,
    }
    document.update(changes)
    return {key: value for key, value in document.items() if value is not DELETE}


def test_result_round_trips() -> None:
    result = parse_result(approved_result_document())
    assert result == Result(
        "r1",
        "bar-01",
        42,
        "04A1B2C3",
        Status.APPROVED,
        None,
        "Paid 11.00",
        "tx-123",
        5000,
        3900,
        0,
        False,
        1_750_000_000_100,
    )
    assert result_to_dict(result) == approved_result_document()
    assert result.approved


REJECTED = {
    "status": "rejected",
    "transaction_id": None,
    "previous_balance_cents": None,
    "new_balance_cents": None,
    "debt_cents": None,
}


@pytest.mark.parametrize(
    ("changes", "valid"),
    [
        ({}, True),
        ({"unexpected": 1}, False),
        ({"message": DELETE}, False),
        ({"error_code": DELETE}, False),
        ({"v": 2}, False),
        ({"status": "APPROVED"}, False),
        ({"status": "declined"}, False),  # without an error code
        ({"error_code": "INSUFFICIENT_FUNDS"}, False),  # approved with an error code
        ({"error_code": "NOT_A_CODE", "status": "rejected"}, False),
        ({"transaction_id": None}, False),  # approved needs a transaction
        ({"transaction_id": ""}, False),
        ({"transaction_id": "t" * 65}, False),
        ({"transaction_id": "t" * 64}, True),
        ({"message": ""}, True),
        ({"message": "m" * 200}, True),
        ({"message": "m" * 201}, False),
        ({"message": "line\nbreak"}, False),
        ({"previous_balance_cents": None}, False),
        ({"new_balance_cents": -1}, False),
        ({"new_balance_cents": 1.0}, False),
        ({"debt_cents": DELETE}, False),  # 1.1: results gain a field, parsers require it
        ({"debt_cents": None}, False),  # balances without a debt
        ({"debt_cents": -1}, False),
        ({"debt_cents": 1.0}, False),
        ({"debt_cents": "0"}, False),
        ({"debt_cents": 250}, True),  # an offline sale's shortfall
        ({**REJECTED, "error_code": "INVALID_SIGNATURE", "debt_cents": 0}, False),
        ({"replayed": 0}, False),
        ({"replayed": True}, True),
        ({"processed_at_ms": -1}, False),
        ({"request_id": None}, False),  # approved results echo the request
        ({"card_uid": "04a1b2c3"}, False),
        ({"seq": 0}, False),
        ({"kiosk_id": "cloud"}, False),
        ({**REJECTED, "error_code": "INVALID_SIGNATURE"}, True),
        (
            {
                **REJECTED,
                "error_code": "INVALID_SIGNATURE",
                "request_id": None,
                "kiosk_id": None,
                "seq": None,
                "card_uid": None,
            },
            True,
        ),
        ({**REJECTED, "error_code": "STALE_REQUEST", "previous_balance_cents": 5}, False),
        ({**REJECTED, "error_code": "STALE_REQUEST", "transaction_id": "t"}, False),
        ({**REJECTED, "error_code": "CARD_BLOCKED"}, False),  # a declining code
        (
            {
                "status": "declined",
                "error_code": "INSUFFICIENT_FUNDS",
                "transaction_id": None,
                "new_balance_cents": 5000,
            },
            True,
        ),
        (
            {"status": "declined", "error_code": "INSUFFICIENT_FUNDS", "transaction_id": None},
            False,
        ),  # balance changed
        ({**REJECTED, "status": "declined", "error_code": "CARD_NOT_FOUND"}, True),
        (
            {**REJECTED, "status": "declined", "error_code": "CARD_BLOCKED"},
            False,
        ),  # card exists: balances
        (
            {**REJECTED, "status": "declined", "error_code": "CARD_NOT_FOUND", "card_uid": None},
            False,
        ),
    ],
)
def test_result_rules(changes: dict[str, object], valid: bool) -> None:
    document = approved_result_document(**changes)
    if valid:
        parse_result(document)
    else:
        with pytest.raises(ProtocolError) as caught:
            parse_result(document)
        assert caught.value.code is ErrorCode.INVALID_REQUEST


# --- scans and status ---------------------------------------------------------------------


def scan_document(**changes: object) -> dict[str, object]:
    document: dict[str, object] = {
        "v": 1,
        "type": "scan",
        "kiosk_id": "bar-01",
        "scanned_at_ms": 1_750_000_000_000,
        "card_uid": "04A1B2C3",
        "status": "ok",
        "reader": "ACS ACR122U PICC Interface 00 00",
        "duration_ms": 180,
    }
    document.update(changes)
    return {key: value for key, value in document.items() if value is not DELETE}


def test_scan_round_trips() -> None:
    record = parse_scan(scan_document())
    assert record == ScanRecord(
        "bar-01", 1_750_000_000_000, "04A1B2C3", "ok", "ACS ACR122U PICC Interface 00 00", 180
    )
    assert scan_to_dict(record) == scan_document()


@pytest.mark.parametrize(
    ("changes", "valid"),
    [
        ({"status": "read_error", "card_uid": None}, True),
        ({"status": "unsupported_card", "card_uid": None}, True),
        ({"status": "removed_early"}, True),
        ({"card_uid": None}, False),  # ok without a UID
        ({"card_uid": DELETE}, False),
        ({"status": "OK"}, False),
        ({"type": "bar_order"}, False),
        ({"type": DELETE}, False),
        ({"reader": ""}, True),
        ({"reader": "r" * 64}, True),
        ({"reader": "r" * 65}, False),
        ({"duration_ms": 0}, True),
        ({"duration_ms": 3_600_000}, True),
        ({"duration_ms": 3_600_001}, False),
        ({"duration_ms": -1}, False),
        ({"duration_ms": 1.5}, False),
        ({"scanned_at_ms": "1"}, False),
        ({"extra": 1}, False),
        ({"kiosk_id": "Bar"}, False),
    ],
)
def test_scan_rules(changes: dict[str, object], valid: bool) -> None:
    document = scan_document(**changes)
    if valid:
        parse_scan(document)
    else:
        with pytest.raises(ProtocolError):
            parse_scan(document)


def test_status_round_trips() -> None:
    document = {"v": 1, "kiosk_id": "bar-01", "state": "online", "at_ms": 5, "firmware": "1.4.2"}
    status = parse_status(document)
    assert status == KioskStatus("bar-01", "online", 5, "1.4.2")
    assert status_to_dict(status) == document


@pytest.mark.parametrize(
    "changes",
    [
        {"state": "ONLINE"},
        {"state": "away"},
        {"firmware": ""},
        {"firmware": "f" * 65},
        {"at_ms": 1.0},
        {"extra": 1},
        {"v": 2},
    ],
)
def test_status_rules(changes: dict[str, object]) -> None:
    document = {"v": 1, "kiosk_id": "bar-01", "state": "offline", "at_ms": 5, "firmware": "f" * 64}
    parse_status(document)
    with pytest.raises(ProtocolError):
        parse_status({**document, **changes})


def test_non_string_keys_from_python_callers_are_unknown_fields() -> None:
    document: dict[object, object] = {**bar_order_document(), 1: "x", None: "y"}
    assert "unknown field" in invalid(document).message
