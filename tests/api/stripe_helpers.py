"""Paid Checkout Sessions as this API creates them: the top-up row first (what
/api/topups/checkout records), then a session whose metadata names it."""

from __future__ import annotations

import itertools
import time
from typing import Any

from cloud.ledger import Ledger
from cloud.stripe_fake import checkout_session_object

_numbers = itertools.count(1)


def new_topup_id() -> str:
    return f"tu_{time.time_ns():x}{next(_numbers):04x}"


def our_paid_session(
    ledger: Ledger,
    card_uid: str,
    amount_total: int = 2500,
    *,
    currency: str = "eur",
    attach: bool = True,
    **overrides: Any,
) -> dict[str, Any]:
    """A paid session of a top-up made through the checkout (recorded in the ledger first)."""
    topup_id = new_topup_id()
    ledger.create_topup(
        topup_id=topup_id, card_uid=card_uid, amount_cents=amount_total, currency=currency.upper()
    )
    fields: dict[str, Any] = {
        "amount_total": amount_total,
        "currency": currency,
        "client_reference_id": card_uid,
        "metadata": {"card_uid": card_uid, "topup_id": topup_id},
        "status": "complete",
        "payment_status": "paid",
        "payment_intent": f"pi_3Test{time.time_ns()}{next(_numbers)}",
    }
    fields.update(overrides)
    session = checkout_session_object(**fields)
    if attach:
        ledger.attach_checkout_session(topup_id=topup_id, session_id=session["id"])
    return session
