"""A checkpoint's top-up from the page, checked before it becomes a draft."""

from __future__ import annotations

import pytest

from device.machine import RechargeDraft
from device.recharge import RechargeError, parse_recharge


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
