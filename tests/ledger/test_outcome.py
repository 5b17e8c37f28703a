"""The ledger's Outcome is the protocol's Result (issue 12 §1): no copying between two forms."""

from __future__ import annotations

from dataclasses import replace

import pytest

from cloud.ledger_records import Outcome, outcome_from_document
from protocol.codec import encode_result, verify_result
from protocol.errors import ErrorCode, ProtocolError, Status
from protocol.keys import generate_private_key
from protocol.models import Result, result_to_dict

CLOUD_KEY = generate_private_key()
PROCESSED_AT_MS = 1_760_000_000_000

# What sp_process_batch answers for an approved bar order (no kiosk_id, no seq).
APPROVED = {
    "request_id": "018f3b2a-7c4e-7def-8a12-3456789abcde",
    "status": "approved",
    "error_code": None,
    "message": "Paid",
    "transaction_id": "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b",
    "previous_balance_cents": 5000,
    "new_balance_cents": 4100,
    "replayed": False,
    "processed_at_ms": PROCESSED_AT_MS,
    "order_id": "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5c",
    "card_uid": "04A1B2C3",
}
# What sp_process_stripe_dispute answers: approved, yet no money moved and no kiosk to answer.
DISPUTE = {
    **APPROVED,
    "request_id": "evt_1NG8Du2eZvKYlo2CUI79vXWy",
    "message": "Card blocked: payment disputed",
    "transaction_id": None,
    "new_balance_cents": 5000,
    "order_id": None,
}


def test_an_outcome_is_a_result_with_the_order_id() -> None:
    outcome = outcome_from_document(APPROVED)
    assert isinstance(outcome, Result)
    assert outcome.approved and outcome.status is Status.APPROVED
    assert outcome.order_id == APPROVED["order_id"]
    assert (outcome.kiosk_id, outcome.seq) == (None, None)  # the procedures do not know them
    assert "order_id" not in result_to_dict(outcome)


def test_an_outcome_completed_with_the_echo_is_the_answer_the_kiosk_verifies() -> None:
    answer = replace(outcome_from_document(APPROVED), kiosk_id="bar-1", seq=42)
    raw = encode_result(answer, CLOUD_KEY)
    verified = verify_result(raw, cloud_public_key=CLOUD_KEY.public_key(), kiosk_id="bar-1")
    assert result_to_dict(verified) == result_to_dict(answer)
    assert (verified.kiosk_id, verified.seq, verified.card_uid) == ("bar-1", 42, "04A1B2C3")


def test_an_outcome_is_checked_against_the_wire_before_it_is_signed() -> None:
    # Without the echo fields, an approved outcome is no valid answer yet.
    with pytest.raises(ProtocolError, match="must echo"):
        encode_result(outcome_from_document(APPROVED), CLOUD_KEY)
    # A Stripe event's outcome is an Outcome all the same, but never an answer to a kiosk.
    dispute = outcome_from_document(DISPUTE)
    assert dispute.approved and dispute.transaction_id is None
    with pytest.raises(ProtocolError, match="transaction_id"):
        encode_result(replace(dispute, kiosk_id="bar-1", seq=1), CLOUD_KEY)


def test_an_outcome_checks_the_types_of_its_fields() -> None:
    fields = {
        "request_id": "r1",
        "status": Status.DECLINED,
        "error_code": ErrorCode.INSUFFICIENT_FUNDS,
        "message": "Insufficient funds",
        "transaction_id": None,
        "previous_balance_cents": 10,
        "new_balance_cents": 10,
        "debt_cents": 0,
        "replayed": False,
        "processed_at_ms": PROCESSED_AT_MS,
    }
    assert Outcome(**fields).status is Status.DECLINED  # type: ignore[arg-type]
    for name, wrong in (("status", "declined"), ("error_code", "CARD_BLOCKED"), ("seq", True)):
        with pytest.raises(TypeError, match=name):
            Outcome(**{**fields, name: wrong})  # type: ignore[arg-type]


def test_debt_cents_comes_from_the_document_else_follows_the_balances() -> None:
    # (1.1) Procedures before debts exist name none: a card with balances owes 0, an outcome
    # without balances carries a null debt, as the wire requires.
    assert outcome_from_document(APPROVED).debt_cents == 0
    assert outcome_from_document({**APPROVED, "debt_cents": 350}).debt_cents == 350
    rejected = {
        **APPROVED,
        "status": "rejected",
        "error_code": "KIOSK_DISABLED",
        "transaction_id": None,
        "previous_balance_cents": None,
        "new_balance_cents": None,
    }
    assert outcome_from_document(rejected).debt_cents is None
    answer = replace(outcome_from_document({**APPROVED, "debt_cents": 350}), kiosk_id="b", seq=1)
    verified = verify_result(
        encode_result(answer, CLOUD_KEY), cloud_public_key=CLOUD_KEY.public_key(), kiosk_id="b"
    )
    assert verified.debt_cents == 350
