"""The seed's HTTP bodies: exact euro conversion, strict validation, idempotency fingerprint."""

from __future__ import annotations

import json

import pytest

from cloud.api.seed_requests import (
    BAR_ORDER,
    CHECKPOINT_RECHARGE,
    Euros,
    euros_to_cents,
    http_status_for,
    loads_decimal,
    parse_seed_request,
    render_json,
)
from protocol.errors import ErrorCode, ProtocolError
from protocol.models import BarOrder, CheckpointRecharge

CARD = "04A1B2C3"


def bar_body(**overrides: object) -> bytes:
    body: dict[str, object] = {
        "card_id": CARD,
        "items": [{"name": "Beer", "quantity": 2, "unit_price": 4.5}],
        "total_amount": 9.0,
        "client_request_id": "pos-1",
    }
    body.update(overrides)
    return json.dumps(body).encode()


def parse(body: bytes, kind: str = BAR_ORDER, **kwargs: object) -> object:
    options: dict[str, object] = {
        "kiosk_id": "till-7",
        "currency": "EUR",
        "topup_cents_max": 100_000,
        "seq": 1,
        "now_ms": 1_700_000_000_000,
    }
    options.update(kwargs)
    return parse_seed_request(body, kind, **options)  # type: ignore[arg-type]


def test_bar_order_becomes_the_protocol_request() -> None:
    parsed = parse(bar_body())
    request = parsed.request  # type: ignore[attr-defined]
    assert isinstance(request, BarOrder)
    assert request.total_cents == 900 and request.items[0].unit_price_cents == 450
    assert request.kiosk_id == "till-7" and request.request_id == "pos-1"
    assert request.card_uid == CARD and request.currency == "EUR"


def test_recharge_becomes_the_protocol_request() -> None:
    body = json.dumps(
        {
            "card_id": CARD,
            "amount": 10.00,
            "payment_method": "cash",
            "staff_id": "staff123",
            "client_request_id": "r-1",
            "checkpoint_id": "gate-a",
        }
    ).encode()
    request = parse(body, CHECKPOINT_RECHARGE).request  # type: ignore[attr-defined]
    assert isinstance(request, CheckpointRecharge)
    assert request.amount_cents == 1000 and request.effective_checkpoint_id == "gate-a"


@pytest.mark.parametrize(
    ("text", "cents"),
    [
        ("5", 500),
        ("5.0", 500),
        ("5.00", 500),
        ("0.01", 1),
        ("12.5", 1250),
        ("1e1", 1000),
        ("0.1", 10),
        ("-2.50", -250),
        ("1000.00", 100_000),
        ("0.29", 29),
        ("1.15", 115),
    ],
)
def test_euros_convert_exactly(text: str, cents: int) -> None:
    assert euros_to_cents(loads_decimal(text.encode()), "amount") == cents


@pytest.mark.parametrize(
    "text", ["5.001", "5.000", "0.005", "1e-3", "true", '"5.00"', "null", "1e999999", "[5]"]
)
def test_bad_euro_values_are_invalid_requests(text: str) -> None:
    with pytest.raises(ProtocolError) as error:
        euros_to_cents(loads_decimal(text.encode()), "amount")
    assert error.value.code is ErrorCode.INVALID_REQUEST


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"{",
        b"[]",
        b'{"card_id": "04A1B2C3", "card_id": "04A1B2C3"}',
        b"\xff",
        b'{"x": NaN}',
        b'{"x": Infinity}',
        bar_body(card_id="TEST1234"),
        bar_body(card_id="04a1b2c3"),
        bar_body(card_id=None),
        bar_body(client_request_id=""),
        bar_body(client_request_id="has space"),
        bar_body(client_request_id="x" * 65),
        bar_body(total_amount=9.01),
        bar_body(total_amount=9.001),
        bar_body(total_amount="9.00"),
        bar_body(items=[]),
        bar_body(items={}),
        bar_body(items=[{"name": "Beer", "quantity": 1.5, "unit_price": 4.5}]),
        bar_body(items=[{"name": "Beer", "quantity": 0, "unit_price": 4.5}], total_amount=0),
        bar_body(items=[{"name": "Beer", "quantity": 1, "unit_price": -4.5}], total_amount=-4.5),
        bar_body(items=[{"name": "", "quantity": 1, "unit_price": 4.5}], total_amount=4.5),
        bar_body(items=[{"name": "Beer", "quantity": 1}], total_amount=4.5),
        bar_body(items=[{"name": "Beer", "quantity": 1, "unit_price": 4.5, "x": 1}]),
        bar_body(extra=True),
        bar_body(items=[{"name": "B", "quantity": 1, "unit_price": 4.5}] * 51, total_amount=229.5),
        json.dumps({"card_id": CARD, "client_request_id": "x"}).encode(),
        b'{"a": [[[[[[1]]]]]]}',
        b"[" * 100_000,
        b'{"total_amount": 1' + b"1" * 5000 + b"}",
    ],
)
def test_bad_bar_bodies_are_invalid_requests(body: bytes) -> None:
    with pytest.raises(ProtocolError) as error:
        parse(body)
    assert error.value.code is ErrorCode.INVALID_REQUEST


@pytest.mark.parametrize(
    "change",
    [
        {"amount": 0},
        {"amount": -5},
        {"amount": 1000.01},
        {"amount": 10**9},
        {"payment_method": "bitcoin"},
        {"staff_id": ""},
        {"staff_id": 5},
    ],
)
def test_bad_recharges_are_invalid_requests(change: dict[str, object]) -> None:
    body: dict[str, object] = {
        "card_id": CARD,
        "amount": 10,
        "payment_method": "card",
        "staff_id": "s1",
        "client_request_id": "r-2",
    }
    body.update(change)
    with pytest.raises(ProtocolError) as error:
        parse(json.dumps(body).encode(), CHECKPOINT_RECHARGE)
    assert error.value.code is ErrorCode.INVALID_REQUEST


def test_fingerprint_ignores_formatting_and_server_fields_but_not_meaning() -> None:
    first = parse(bar_body()).payload_sha256  # type: ignore[attr-defined]
    spaced = b'{ "client_request_id":"pos-1","total_amount":9.00,"card_id":"04A1B2C3",'
    spaced += b'"items":[{"unit_price":4.50,"quantity":2,"name":"Beer"}]}'
    assert parse(spaced, seq=7, now_ms=1).payload_sha256 == first  # type: ignore[attr-defined]
    other = parse(bar_body(items=[{"name": "Wine", "quantity": 2, "unit_price": 4.5}]))
    assert other.payload_sha256 != first  # type: ignore[attr-defined]


def test_answers_write_euros_with_two_decimals() -> None:
    body = render_json(
        [
            ("success", True),
            ("new_balance", Euros(1250)),
            ("previous_balance", Euros(-5)),
            ("error", None),
            ("zero", Euros(0)),
        ]
    )
    assert body == (
        b'{"success":true,"new_balance":12.50,"previous_balance":-0.05,"error":null,"zero":0.00}'
    )
    assert json.loads(body)["new_balance"] == 12.5


def test_status_mapping_is_the_seeds() -> None:
    assert http_status_for(None) == 200
    assert http_status_for("INVALID_REQUEST") == 400
    assert http_status_for(ErrorCode.INSUFFICIENT_FUNDS) == 402
    assert http_status_for(ErrorCode.CARD_BLOCKED) == 403
    assert http_status_for(ErrorCode.CARD_NOT_FOUND) == 404
    assert http_status_for(ErrorCode.IDEMPOTENCY_CONFLICT) == 409
    assert http_status_for(ErrorCode.BALANCE_LIMIT_EXCEEDED) == 422
