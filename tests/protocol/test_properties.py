"""Property tests: altered messages never verify and fail only with ProtocolError; valid
requests survive the wire unchanged; the schema fails only with ProtocolError."""

from __future__ import annotations

from typing import Final

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from protocol.codec import (
    authenticate,
    build_result,
    encode_request,
    encode_result,
    parse_authenticated,
    verify_result,
)
from protocol.errors import ProtocolError
from protocol.limits import TEXT_FORBIDDEN_PATTERN
from protocol.models import BarItem, BarOrder, parse_request, parse_result

from .support import (
    CLOUD_KEY,
    CREATED_AT_MS,
    CURRENCY,
    KIOSK_ID,
    KIOSK_KEY,
    NOW_MS,
    bar_order_document,
    lookup,
    recharge_document,
)

# No example database: the suite must not write .hypothesis/ into the checkout.
PROPERTY_SETTINGS: Final = settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
# Edits that keep the alphabet are weighted up: they reach the signature check.
MUTATION_KINDS: Final = ["alphabet"] * 6 + ["flip", "byte", "delete", "insert", "dot", "cut"]
BASE64URL: Final = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"

ORDER: Final = parse_request(bar_order_document(), currency=CURRENCY)
SIGNED_ORDER: Final = encode_request(ORDER, KIOSK_KEY)
SIGNED_RESULT: Final = encode_result(
    build_result(
        request_id="r1",
        kiosk_id=KIOSK_ID,
        seq=42,
        card_uid="04A1B2C3",
        error_code=None,
        message="Paid 11.00",
        transaction_id="tx-1",
        previous_balance_cents=5000,
        new_balance_cents=3900,
        debt_cents=0,
        replayed=False,
        processed_at_ms=NOW_MS,
    ),
    CLOUD_KEY,
)


@st.composite
def mutated(draw: st.DrawFn, original: bytes) -> bytes:
    """``original`` with 1-3 random edits; most keep the base64url alphabet, so that many
    altered messages get past the structure checks and reach signature verification."""
    data = bytearray(original)
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(MUTATION_KINDS))
        position = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "alphabet" and data:
            data[position] = draw(st.sampled_from(BASE64URL))
        elif kind == "flip" and data:
            data[position] ^= 1 << draw(st.integers(0, 7))
        elif kind == "byte" and data:
            data[position] = draw(st.integers(0, 255))
        elif kind == "delete" and data:
            del data[position]
        elif kind == "insert":
            data.insert(position, draw(st.sampled_from(BASE64URL + b".=\x00\xff ")))
        elif kind == "dot" and data:
            data[position] = ord(".")
        elif kind == "cut":
            data = data[:position]
    altered = bytes(data)
    assume(altered != original)
    return altered


@PROPERTY_SETTINGS
@given(mutated(SIGNED_ORDER))
def test_altered_requests_never_authenticate(raw: bytes) -> None:
    with pytest.raises(ProtocolError):
        authenticate(raw, topic_kiosk_id=KIOSK_ID, public_key_for=lookup)


@PROPERTY_SETTINGS
@given(mutated(SIGNED_RESULT))
def test_altered_results_never_verify(raw: bytes) -> None:
    with pytest.raises(ProtocolError):
        verify_result(raw, cloud_public_key=CLOUD_KEY.public_key())


@PROPERTY_SETTINGS
@given(st.binary(max_size=300))
def test_arbitrary_bytes_fail_only_with_protocol_error(raw: bytes) -> None:
    with pytest.raises(ProtocolError):
        authenticate(raw, topic_kiosk_id=KIOSK_ID, public_key_for=lookup)


text_characters = st.characters(codec="utf-8").filter(
    lambda char: TEXT_FORBIDDEN_PATTERN.search(char) is None
)


@st.composite
def bar_items(draw: st.DrawFn) -> BarItem:
    return BarItem(
        name=draw(st.text(text_characters, min_size=1, max_size=64)),
        quantity=draw(st.integers(1, 99)),
        unit_price_cents=draw(st.integers(0, 100_000)),
        sku=draw(st.none() | st.text(text_characters, min_size=1, max_size=32)),
        is_deposit=draw(st.booleans()),
        is_return=draw(st.booleans()),
    )


@st.composite
def bar_orders(draw: st.DrawFn) -> BarOrder:
    items = tuple(draw(st.lists(bar_items(), min_size=1, max_size=8)))
    return BarOrder(
        request_id=draw(st.from_regex(r"[A-Za-z0-9._:-]{1,64}", fullmatch=True)),
        kiosk_id=KIOSK_ID,
        seq=draw(st.integers(1, 2**63 - 1)),
        created_at_ms=draw(st.integers(CREATED_AT_MS - 10**8, CREATED_AT_MS + 10**5)),
        card_uid=draw(st.from_regex(r"[0-9A-F]{8}|[0-9A-F]{14}|[0-9A-F]{20}", fullmatch=True)),
        currency=CURRENCY,
        items=items,
        total_cents=sum(item.signed_cents for item in items),
        staff_id=draw(st.none() | st.text(text_characters, min_size=1, max_size=64)),
    )


@PROPERTY_SETTINGS
@given(bar_orders())
def test_valid_orders_survive_the_wire(order: BarOrder) -> None:
    try:
        raw = encode_request(order, KIOSK_KEY)
    except ProtocolError as error:
        # Only legitimate refusal: long multi-byte names can exceed the message size.
        assert "8192" in error.message
        return
    message = authenticate(raw, topic_kiosk_id=KIOSK_ID, public_key_for=lookup)
    assert parse_authenticated(message, currency=CURRENCY, now_ms=NOW_MS) == order


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=70),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
REQUEST_FIELDS: Final = sorted(set(bar_order_document()) | set(recharge_document()))


@PROPERTY_SETTINGS
@given(
    st.sampled_from([bar_order_document(), recharge_document()]),
    st.dictionaries(st.sampled_from([*REQUEST_FIELDS, "extra"]), json_values, max_size=3),
)
def test_schema_fails_only_with_protocol_error(
    document: dict[str, object], changes: dict[str, object]
) -> None:
    try:
        parse_request({**document, **changes}, currency=CURRENCY)
    except ProtocolError as error:
        assert error.message.isascii() and len(error.message) <= 200


@PROPERTY_SETTINGS
@given(json_values)
def test_result_schema_fails_only_with_protocol_error(value: object) -> None:
    with pytest.raises(ProtocolError):
        parse_result(value)
