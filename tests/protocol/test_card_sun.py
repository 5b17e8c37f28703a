"""(1.1) ``card_sun`` on bar orders and top-ups: optional, 32 + 16 upper-case hex, nothing else."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from protocol.codec import encode_request
from protocol.errors import ErrorCode, ProtocolError
from protocol.models import BarOrder, CardSun, CheckpointRecharge, parse_request, request_to_dict

from .support import (
    CURRENCY,
    KIOSK_ID,
    KIOSK_KEY,
    NOW_MS,
    bar_order_document,
    decode_request,
    lookup,
    recharge_document,
)

SUN = {"picc_data": "EF963FF7828658A599F3041510671E88", "cmac": "94EED9EE65337086"}


@pytest.mark.parametrize("make", [bar_order_document, recharge_document])
def test_card_sun_round_trips_and_is_omitted_when_none(
    make: Callable[..., dict[str, object]],
) -> None:
    request = parse_request(make(card_sun=dict(SUN)), currency=CURRENCY)
    assert isinstance(request, BarOrder | CheckpointRecharge)
    assert request.card_sun == CardSun(**SUN)
    assert request_to_dict(request)["card_sun"] == SUN
    plain = parse_request(make(), currency=CURRENCY)
    assert plain.card_sun is None and "card_sun" not in request_to_dict(plain)


def test_card_sun_survives_signing_and_decoding() -> None:
    request = parse_request(bar_order_document(card_sun=dict(SUN)), currency=CURRENCY)
    decoded = decode_request(
        encode_request(request, KIOSK_KEY),
        topic_kiosk_id=KIOSK_ID,
        public_key_for=lookup,
        currency=CURRENCY,
        now_ms=NOW_MS,
    )
    assert decoded.card_sun == CardSun(**SUN)


@pytest.mark.parametrize(
    ("card_sun", "message"),
    [
        (None, "card_sun must be a JSON object"),
        ("EF96", "card_sun must be a JSON object"),
        ({"picc_data": SUN["picc_data"]}, "missing field cmac in card_sun"),
        ({**SUN, "uid": "04DE5F1EACC040"}, "unknown field"),
        ({**SUN, "picc_data": SUN["picc_data"].lower()}, "card_sun.picc_data"),
        ({**SUN, "picc_data": SUN["picc_data"][:-1]}, "card_sun.picc_data"),
        ({**SUN, "cmac": SUN["cmac"] + "0"}, "card_sun.cmac"),
        ({**SUN, "cmac": 94}, "card_sun.cmac"),
    ],
)
def test_a_bad_card_sun_is_invalid_request(card_sun: object, message: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        parse_request(bar_order_document(card_sun=card_sun), currency=CURRENCY)
    assert caught.value.code is ErrorCode.INVALID_REQUEST
    assert message in caught.value.message


def test_the_model_checks_itself() -> None:
    with pytest.raises(ProtocolError, match=r"card_sun\.cmac"):
        CardSun(picc_data=SUN["picc_data"], cmac="nope")
    document = bar_order_document()
    order = parse_request(document, currency=CURRENCY)
    assert isinstance(order, BarOrder)
    with pytest.raises(ProtocolError, match="must be a CardSun"):
        BarOrder(
            request_id=order.request_id,
            kiosk_id=order.kiosk_id,
            seq=order.seq,
            created_at_ms=order.created_at_ms,
            card_uid=order.card_uid,
            currency=order.currency,
            items=order.items,
            total_cents=order.total_cents,
            card_sun=SUN,  # type: ignore[arg-type]
        )
