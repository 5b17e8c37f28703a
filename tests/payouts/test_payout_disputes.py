"""Revision 0018: no payout while a Stripe dispute of the card is under way. charge.dispute.created
only blocks the card (the stripe_disputes row comes when the dispute closes), so r0015's check
alone let a disputed card's money leave: found by the portal payout work (issue 16)."""

from __future__ import annotations

import pytest

from cloud.database import make_engine
from cloud.ledger import Ledger
from cloud.payouts import PayoutRefused, PayoutStore
from tests.ledger.helpers import recharge

CARD = "04A1B2C3D4E5F6"
IBAN = "DE89370400440532013000"


@pytest.fixture
def store(service_database_url: str) -> PayoutStore:
    return PayoutStore(make_engine(service_database_url, pool_size=1))


def _stripe_topup(ledger: Ledger) -> None:
    ledger.create_topup(topup_id="top_1", card_uid=CARD, amount_cents=2_500, currency="EUR")
    ledger.attach_checkout_session(topup_id="top_1", session_id="cs_1")
    credited = ledger.process_stripe_recharge(
        event_id="evt_1",
        session_id="cs_1",
        card_uid=CARD,
        amount_cents=2_500,
        currency="eur",
        payment_intent_id="pi_1",
        topup_id="top_1",
        trace_id="trace-1",
    )
    assert credited.approved


def _request(store: PayoutStore, key: str) -> dict[str, object]:
    return store.request(
        CARD, iban=IBAN, account_holder="Ada L", donate_cents=0, fee_cents=0, request_key=key
    )


def test_a_card_with_a_dispute_under_way_cannot_be_paid_out(
    ledger: Ledger, store: PayoutStore
) -> None:
    _stripe_topup(ledger)
    ledger.apply(recharge(CARD, 1_000, kiosk_id="checkpoint-1"))
    assert ledger.process_stripe_dispute(event_id="evt_d1", payment_intent_id="pi_1").approved
    with pytest.raises(PayoutRefused, match="dispute"):
        _request(store, "k1")
    card = ledger.card(CARD)
    assert card is not None and card.balance_cents == 3_500  # nothing left the card
    assert store.list(card_uid=CARD) == []
    # Won: the card stays blocked until an operator has looked (r0006), and so does the payout.
    ledger.process_stripe_dispute_closed(
        event_id="evt_d2",
        dispute_id="dp_1",
        payment_intent_id="pi_1",
        status="won",
        amount_cents=2_500,
    )
    with pytest.raises(PayoutRefused, match="dispute"):
        _request(store, "k2")
    assert ledger.unblock_card(CARD)
    outcome = _request(store, "k3")
    assert outcome["status"] == "created" and outcome["amount_cents"] == 3_500
    assert ledger.check() == []


def test_a_card_blocked_as_lost_can_still_be_paid_out(ledger: Ledger, store: PayoutStore) -> None:
    """The new check names the dispute reasons only: a band reported lost is paid out."""
    ledger.apply(recharge(CARD, 1_000, kiosk_id="checkpoint-1"))
    ledger.block_card(CARD, "lost")
    outcome = _request(store, "k1")
    assert outcome["status"] == "created" and outcome["amount_cents"] == 1_000
