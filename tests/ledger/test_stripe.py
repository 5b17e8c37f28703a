"""Stripe top-ups: credited once per session, anomalies, refunds with shortfall, disputes."""

from __future__ import annotations

import threading

from cloud.ledger import Ledger
from cloud.ledger_records import Outcome
from protocol.errors import ErrorCode, Status
from tests.ledger.helpers import bar_order, execute, recharge

CARD = "04D00D00"


def _pay(
    ledger: Ledger,
    *,
    event_id: str = "evt_1",
    session_id: str = "cs_test_1",
    card_uid: str = CARD,
    amount_cents: int = 2_500,
    currency: str = "eur",
    payment_intent_id: str | None = "pi_1",
    topup_id: str | None = None,
) -> Outcome:
    return ledger.process_stripe_recharge(
        event_id=event_id,
        session_id=session_id,
        card_uid=card_uid,
        amount_cents=amount_cents,
        currency=currency,
        payment_intent_id=payment_intent_id,
        topup_id=topup_id,
        trace_id="trace-1",
    )


def test_paid_session_is_credited_once_to_the_topup_card(ledger: Ledger) -> None:
    ledger.create_topup(topup_id="top_1", card_uid=CARD, amount_cents=2_500, currency="EUR")
    ledger.attach_checkout_session(topup_id="top_1", session_id="cs_test_1")
    assert ledger.record_stripe_event(
        event_id="evt_1", event_type="checkout.session.completed", payload={"id": "evt_1"}
    )
    first = _pay(ledger, topup_id="top_1")
    assert (first.status, first.error_code) == (Status.APPROVED, None)
    assert (first.previous_balance_cents, first.new_balance_cents) == (0, 2_500)
    assert first.request_id == "cs_test_1" and first.card_uid == CARD
    # The same event again, and a second event for the same session: nothing more.
    assert not ledger.record_stripe_event(
        event_id="evt_1", event_type="checkout.session.completed", payload={"id": "evt_1"}
    )
    again = _pay(ledger, topup_id="top_1")
    async_event = _pay(ledger, event_id="evt_2", topup_id="top_1")
    for outcome in (again, async_event):
        assert outcome.replayed is True and outcome.transaction_id == first.transaction_id
    assert ledger.card(CARD).balance_cents == 2_500  # type: ignore[union-attr]
    assert ledger.sales_report()["stripe"]["credited_cents"] == 2_500  # type: ignore[index]
    assert ledger.check() == []


def test_session_we_never_created_still_credits_a_new_card(ledger: Ledger) -> None:
    outcome = _pay(ledger, session_id="cs_unknown", card_uid="04AAAA01", topup_id=None)
    assert outcome.status is Status.APPROVED and outcome.previous_balance_cents == 0
    assert ledger.card("04AAAA01").balance_cents == 2_500  # type: ignore[union-attr]
    assert ledger.check() == []


def test_webhook_overtaking_attach_uses_the_topup_record(ledger: Ledger) -> None:
    ledger.create_topup(topup_id="top_2", card_uid=CARD, amount_cents=1_000, currency="EUR")
    outcome = _pay(ledger, session_id="cs_2", amount_cents=1_000, topup_id="top_2")
    assert outcome.status is Status.APPROVED
    ledger.attach_checkout_session(topup_id="top_2", session_id="cs_2")  # late, harmless
    rows = execute(
        ledger.engine.url.render_as_string(hide_password=False),
        "SELECT topup_id, status, credited_cents FROM topups",
    )
    assert rows == [("top_2", "credited", 1_000)]


def test_other_currency_is_an_anomaly_without_credit(ledger: Ledger) -> None:
    outcome = _pay(ledger, currency="usd")
    assert (outcome.status, outcome.error_code) == (Status.REJECTED, ErrorCode.INVALID_REQUEST)
    assert "USD" in outcome.message
    assert ledger.card(CARD) is None
    assert _pay(ledger, currency="usd", event_id="evt_again").replayed is True
    assert ledger.sales_report()["stripe"]["to_refund_count"] == 1  # type: ignore[index]


def test_online_topup_respects_the_balance_limit(ledger: Ledger) -> None:
    ledger.apply(recharge(CARD, 100_000))
    ledger.apply(recharge(CARD, 40_000))
    outcome = _pay(ledger, amount_cents=10_001)
    assert (outcome.status, outcome.error_code) == (
        Status.DECLINED,
        ErrorCode.BALANCE_LIMIT_EXCEEDED,
    )
    assert outcome.new_balance_cents == 140_000
    assert ledger.card(CARD).balance_cents == 140_000  # type: ignore[union-attr]
    assert ledger.check() == []


def test_blocked_card_is_still_credited(ledger: Ledger) -> None:
    ledger.apply(recharge(CARD, 100))
    ledger.block_card(CARD, "lost")
    outcome = _pay(ledger)
    assert outcome.status is Status.APPROVED and outcome.new_balance_cents == 2_600


def test_refunds_take_the_cumulative_delta_and_block_on_shortfall(ledger: Ledger) -> None:
    _pay(ledger, amount_cents=3_000)
    first = ledger.process_stripe_refund(
        event_id="evt_r1", payment_intent_id="pi_1", amount_refunded_cents=1_000
    )
    assert (first.status, first.previous_balance_cents, first.new_balance_cents) == (
        Status.APPROVED,
        3_000,
        2_000,
    )
    # Redelivery of the same cumulative amount: nothing more.
    again = ledger.process_stripe_refund(
        event_id="evt_r1", payment_intent_id="pi_1", amount_refunded_cents=1_000
    )
    assert again.replayed is True and again.new_balance_cents == 2_000
    # The attendee spends most of it, then the rest is refunded.
    ledger.apply(bar_order(CARD, ("Beer", 3, 500)))
    full = ledger.process_stripe_refund(
        event_id="evt_r2", payment_intent_id="pi_1", amount_refunded_cents=3_000
    )
    assert (full.previous_balance_cents, full.new_balance_cents) == (500, 0)
    assert "1500" in full.message
    card = ledger.card(CARD)
    assert card is not None and (card.balance_cents, card.status) == (0, "blocked")
    stripe = ledger.sales_report()["stripe"]
    assert stripe["refunded_cents"] == 3_000 and stripe["shortfall_cents"] == 1_500  # type: ignore[index]
    # More than was ever credited is capped.
    capped = ledger.process_stripe_refund(
        event_id="evt_r3", payment_intent_id="pi_1", amount_refunded_cents=9_999
    )
    assert capped.replayed is True
    assert ledger.check() == []


def test_refund_for_unknown_payment_never_fails(ledger: Ledger) -> None:
    outcome = ledger.process_stripe_refund(
        event_id="evt_x", payment_intent_id="pi_unknown", amount_refunded_cents=500
    )
    assert outcome.status is Status.REJECTED and outcome.transaction_id is None


def test_dispute_blocks_the_card_once(ledger: Ledger) -> None:
    _pay(ledger)
    outcome = ledger.process_stripe_dispute(event_id="evt_d1", payment_intent_id="pi_1")
    assert outcome.status is Status.APPROVED and outcome.new_balance_cents == 2_500
    assert ledger.card(CARD).status == "blocked"  # type: ignore[union-attr]
    assert ledger.process_stripe_dispute(event_id="evt_d1", payment_intent_id="pi_1").replayed


def test_failed_payment_marks_the_topup_and_a_later_success_still_credits(
    ledger: Ledger,
) -> None:
    ledger.create_topup(topup_id="top_f", card_uid=CARD, amount_cents=700, currency="EUR")
    ledger.attach_checkout_session(topup_id="top_f", session_id="cs_f")
    ledger.mark_topup_failed(session_id="cs_f", event_id="evt_fail")
    url = ledger.engine.url.render_as_string(hide_password=False)
    assert execute(url, "SELECT status FROM topups") == [("failed",)]
    assert _pay(ledger, session_id="cs_f", amount_cents=700, topup_id="top_f").approved


def test_concurrent_deliveries_of_one_session_credit_once(ledger: Ledger) -> None:
    outcomes: list[Outcome] = []
    lock = threading.Lock()

    def deliver(number: int) -> None:
        outcome = _pay(ledger, event_id=f"evt_c{number}", session_id="cs_c")
        with lock:
            outcomes.append(outcome)

    threads = [threading.Thread(target=deliver, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(outcomes) == 4
    assert sum(not outcome.replayed for outcome in outcomes) == 1
    assert len({outcome.transaction_id for outcome in outcomes}) == 1
    assert ledger.card(CARD).balance_cents == 2_500  # type: ignore[union-attr]
    assert ledger.check() == []
