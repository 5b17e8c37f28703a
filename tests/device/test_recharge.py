"""A checkpoint's top-up from the page, checked before it becomes a draft."""

from __future__ import annotations

import pytest

from device.machine import RechargeDraft, SwapDraft
from device.recharge import RechargeError, parse_recharge, parse_swap, parse_void


def test_valid_top_up() -> None:
    draft = parse_recharge(
        {"amount_cents": 2_000, "payment_method": "card", "staff_id": "anna", "checkpoint_id": "a"},
        topup_cents_max=100_000,
    )
    assert draft == RechargeDraft(2_000, "card", "anna", "a")


@pytest.mark.parametrize(
    ("document", "problem"),
    [
        ({"amount_cents": 0, "payment_method": "cash", "staff_id": "a"}, "amount_cents"),
        ({"amount_cents": 100_001, "payment_method": "cash", "staff_id": "a"}, "amount_cents"),
        ({"amount_cents": 20.0, "payment_method": "cash", "staff_id": "a"}, "amount_cents"),
        ({"amount_cents": "2000", "payment_method": "cash", "staff_id": "a"}, "amount_cents"),
        ({"amount_cents": True, "payment_method": "cash", "staff_id": "a"}, "amount_cents"),
        ({"amount_cents": 100, "payment_method": "iou", "staff_id": "a"}, "payment_method"),
        ({"amount_cents": 100, "payment_method": "cash"}, "staff_id is required"),
        ({"amount_cents": 100, "payment_method": "cash", "staff_id": "a\u202e"}, "staff_id"),
        ({"amount_cents": 100, "payment_method": "cash", "staff_id": "a", "x": 1}, "unknown"),
        ([], "object"),
    ],
)
def test_bad_top_ups_are_refused(document: object, problem: str) -> None:
    with pytest.raises(RechargeError, match=problem):
        parse_recharge(document, topup_cents_max=100_000)


def test_a_swap_from_the_page_normalises_the_typed_old_uid() -> None:
    draft = parse_swap({"staff_id": "info-1", "old_card_uid": " 04 a1:b2 c3 d4 e5 f6 "})
    assert draft == SwapDraft(staff_id="info-1", old_card_uid="04A1B2C3D4E5F6")
    assert parse_swap({"staff_id": "info-1"}, config_version=3) == SwapDraft(
        staff_id="info-1", config_version=3
    )


@pytest.mark.parametrize(
    "document",
    [
        {"old_card_uid": "04A1B2C3D4E5F6"},
        {"staff_id": "", "old_card_uid": "04A1B2C3D4E5F6"},
        {"staff_id": "a", "old_card_uid": "04A1B2"},
        {"staff_id": "a", "old_card_uid": "ZZA1B2C3D4E5F6"},
        {"staff_id": "a", "old_card_uid": 42},
        {"staff_id": "a", "card_uid": "04A1B2C3D4E5F6"},
        [],
    ],
)
def test_a_bad_swap_is_refused(document: object) -> None:
    with pytest.raises(RechargeError):
        parse_swap(document)


def test_a_void_from_the_page_names_an_order_and_who_cancels_it() -> None:
    request_id = "0190f0aa-0000-7000-8000-000000000000"
    assert parse_void({"request_id": request_id, "staff_id": "anna"}) == (request_id, "anna")
    for document in (
        {"request_id": request_id},
        {"request_id": "not an id!", "staff_id": "anna"},
        {"request_id": request_id, "staff_id": "anna", "card_uid": "04A1B2C3D4E5F6"},
    ):
        with pytest.raises(RechargeError):
            parse_void(document)
