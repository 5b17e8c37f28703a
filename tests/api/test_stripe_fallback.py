"""charge.refunded / charge.dispute.created for a payment intent no top-up has: the webhook passes
the object's metadata.card_uid, and the ledger (revision 0003) blocks that card; a refund takes no
money. The payment intent stays the primary link."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import Engine

from cloud.api.stripe_events import DisputeCharge, RefundCharge, classify, parse_event
from cloud.ledger import Ledger
from cloud.stripe_fake import (
    charge_dispute_created_event,
    charge_object,
    charge_refunded_event,
    checkout_session_completed_event,
    dispute_object,
    encode_event,
)
from tests.api.conftest import PostEvent, rows
from tests.api.stripe_helpers import our_paid_session

CARD = "04C0FFEE112233"


def _pay(post_event: PostEvent, ledger: Ledger, amount_total: int = 2500) -> str:
    """A paid Checkout Session of ours for CARD; returns its payment intent."""
    session = our_paid_session(ledger, CARD, amount_total)
    assert post_event(checkout_session_completed_event(session)).json()["outcome"] == "processed"
    return str(session["payment_intent"])


def _card(ledger: Ledger) -> tuple[int, str]:
    card = ledger.card(CARD)
    assert card is not None
    return card.balance_cents, card.status


def _unknown_intent() -> str:
    return f"pi_3Unknown{time.time_ns()}"


def test_metadata_card_uid_reaches_the_actions() -> None:
    charge = charge_object(
        payment_intent="pi_3x", amount=500, amount_refunded=500, metadata={"card_uid": CARD}
    )
    refund = classify(parse_event(encode_event(charge_refunded_event(charge))))
    assert isinstance(refund, RefundCharge) and refund.card_uid == CARD
    dispute = dispute_object(charge_id="ch_3x", payment_intent="pi_3x", amount=500)
    assert classify(parse_event(encode_event(charge_dispute_created_event(dispute)))) == (
        DisputeCharge(payment_intent_id="pi_3x", charge_id="ch_3x", reason="fraudulent")
    )
    # Not a valid card uid, or metadata that is not an object: no card, and still no error.
    for metadata in ({"card_uid": CARD.lower()}, {"card_uid": 42}, "04C0FFEE112233", None):
        dispute["metadata"] = metadata
        action = classify(parse_event(encode_event(charge_dispute_created_event(dispute))))
        assert isinstance(action, DisputeCharge) and action.card_uid is None


def test_unmatched_refund_with_metadata_blocks_the_card_and_takes_nothing(
    post_event: PostEvent, ledger: Ledger, owner_engine: Engine
) -> None:
    _pay(post_event, ledger, 2500)
    charge = charge_object(
        payment_intent=_unknown_intent(),
        amount=1000,
        amount_refunded=1000,
        metadata={"card_uid": CARD},
    )
    event = charge_refunded_event(charge)
    response = post_event(event)
    assert response.status_code == 200 and response.json()["outcome"] == "anomaly"
    assert _card(ledger) == (2500, "blocked")
    logged = rows(
        owner_engine,
        "SELECT status, card_id FROM app_transaction_log WHERE details ->> 'event_id' = :e",
        e=event["id"],
    )
    assert logged == [{"status": "anomaly", "card_id": CARD}]
    assert post_event(event).json()["outcome"] == "duplicate"
    assert _card(ledger) == (2500, "blocked")
    assert ledger.sales_report()["stripe"]["refunded_cents"] == 0  # type: ignore[index]
    assert ledger.check() == []


def test_unmatched_dispute_with_metadata_blocks_the_card(
    post_event: PostEvent, ledger: Ledger
) -> None:
    _pay(post_event, ledger, 1800)
    dispute = dispute_object(charge_id="ch_3Lost", payment_intent=_unknown_intent(), amount=900)
    dispute["metadata"] = {"card_uid": CARD}
    event = charge_dispute_created_event(dispute)
    assert post_event(event).json()["outcome"] == "processed"
    assert _card(ledger) == (1800, "blocked")
    assert post_event(event).json()["outcome"] == "duplicate"
    assert _card(ledger) == (1800, "blocked")


def test_without_metadata_unknown_intents_stay_anomalies(
    post_event: PostEvent, ledger: Ledger
) -> None:
    _pay(post_event, ledger, 1500)
    charge = charge_object(payment_intent=_unknown_intent(), amount=700, amount_refunded=700)
    assert post_event(charge_refunded_event(charge)).json()["outcome"] == "anomaly"
    dispute = dispute_object(charge_id="ch_3Other", payment_intent=_unknown_intent(), amount=700)
    dispute["metadata"] = {"card_uid": CARD.lower()}  # not a card uid: no card
    assert post_event(charge_dispute_created_event(dispute)).json()["outcome"] == "anomaly"
    assert _card(ledger) == (1500, "active")


def test_matched_events_behave_as_before_whatever_the_metadata(
    post_event: PostEvent, ledger: Ledger
) -> None:
    intent = _pay(post_event, ledger, 3000)
    other: dict[str, Any] = {"card_uid": "04000000000001"}  # another card: never used here
    charge = charge_object(payment_intent=intent, amount=3000, amount_refunded=1000, metadata=other)
    refunded = charge_refunded_event(charge)
    assert post_event(refunded).json()["outcome"] == "processed"
    assert _card(ledger) == (2000, "active")
    assert post_event(refunded).json()["outcome"] == "duplicate"
    assert _card(ledger) == (2000, "active")
    dispute = dispute_object(charge_id=str(charge["id"]), payment_intent=intent, amount=3000)
    dispute["metadata"] = other
    assert post_event(charge_dispute_created_event(dispute)).json()["outcome"] == "processed"
    assert _card(ledger) == (2000, "blocked")
    assert ledger.card("04000000000001") is None
    assert ledger.check() == []
