"""Revision 0006 at the ledger: sp_handle_stripe_checkout decides once under concurrent events,
the refund queue leases each owed refund to one caller, the service role writes nothing
directly, and a booked loss refuses the rollback."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
import sqlalchemy

from cloud import database
from cloud.database import make_engine
from cloud.ledger import Ledger
from cloud.ledger_records import StripeCheckoutResult
from tests.ledger.helpers import execute, scalar

CARD = "04C0FFEE"


def _topup(ledger: Ledger, topup_id: str, amount_cents: int = 2_000) -> None:
    ledger.create_topup(topup_id=topup_id, card_uid=CARD, amount_cents=amount_cents, currency="EUR")


def _paid(
    ledger: Ledger, *, event_id: str, topup_id: str, session_id: str, amount_cents: int = 2_000
) -> StripeCheckoutResult:
    return ledger.handle_stripe_checkout(
        event_id=event_id,
        session_id=session_id,
        topup_id=topup_id,
        card_uid=CARD,
        amount_cents=amount_cents,
        currency="EUR",
        payment_intent_id=f"pi_{session_id}",
    )


def test_concurrent_events_for_one_session_credit_it_once(ledger: Ledger) -> None:
    _topup(ledger, "tu_race")
    results: list[StripeCheckoutResult] = []
    barrier = threading.Barrier(6)

    def deliver(number: int) -> None:
        barrier.wait()
        results.append(
            _paid(ledger, event_id=f"evt_race{number}", topup_id="tu_race", session_id="cs_race")
        )

    threads = [threading.Thread(target=deliver, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(results) == 6
    assert sum(1 for result in results if not result.outcome.replayed) == 1
    assert ledger.card(CARD).balance_cents == 2_000  # type: ignore[union-attr]
    assert ledger.check() == []


def test_a_second_session_cannot_take_over_a_topup(ledger: Ledger) -> None:
    _topup(ledger, "tu_one")
    first = _paid(ledger, event_id="evt_a", topup_id="tu_one", session_id="cs_first")
    assert first.outcome.approved and not first.anomaly
    second = _paid(ledger, event_id="evt_b", topup_id="tu_one", session_id="cs_second")
    assert second.anomaly and not second.outcome.approved
    assert "another Checkout Session" in second.outcome.message
    assert ledger.card(CARD).balance_cents == 2_000  # type: ignore[union-attr]


def test_an_owed_refund_is_leased_to_one_caller_at_a_time(ledger: Ledger) -> None:
    _topup(ledger, "tu_cap", amount_cents=100_000)
    _topup(ledger, "tu_over", amount_cents=60_000)
    assert _paid(
        ledger, event_id="evt_1", topup_id="tu_cap", session_id="cs_cap", amount_cents=100_000
    ).outcome.approved
    declined = _paid(
        ledger, event_id="evt_2", topup_id="tu_over", session_id="cs_over", amount_cents=60_000
    )
    assert declined.refund_owed and declined.topup_id == "tu_over"
    [claimed] = ledger.claim_topup_refunds(limit=10)
    assert claimed.idempotency_key == "refund-session-cs_over" and claimed.amount_cents == 60_000
    # Leased: neither a due-only sweep nor a forced one (cleanup) takes it again meanwhile.
    assert ledger.claim_topup_refunds(limit=10) == []
    assert ledger.claim_topup_refunds(limit=10, due_only=False) == []
    assert ledger.finish_topup_refund(
        topup_id="tu_over", result="retry", error="503", retry_after_s=0
    )
    [again] = ledger.claim_topup_refunds(limit=10)
    assert again.attempts == 2
    assert ledger.finish_topup_refund(topup_id="tu_over", result="succeeded", refund_id="re_1")
    assert not ledger.finish_topup_refund(topup_id="tu_over", result="succeeded", refund_id="re_2")
    assert ledger.topup_refund("tu_over")["refund_id"] == "re_1"  # type: ignore[index]
    assert ledger.refunds_owed() == 0


def test_the_service_roles_write_nothing_directly(service_database_url: str) -> None:
    engine = make_engine(service_database_url, pool_size=1)
    try:
        for sql in (
            "INSERT INTO topup_refunds (topup_id, session_id, card_uid, amount_cents, currency, "
            "reason, idempotency_key) VALUES ('t', 's', '04C0FFEE', 1, 'EUR', 'r', 'k')",
            "UPDATE topups SET status = 'credited'",
            "DELETE FROM stripe_disputes",
        ):
            with pytest.raises(sqlalchemy.exc.ProgrammingError), engine.begin() as connection:
                connection.execute(sqlalchemy.text(sql))
    finally:
        engine.dispose()


def test_rollback_of_0006_is_refused_once_a_loss_is_booked(
    make_database: Callable[..., str],
) -> None:
    url = make_database()
    database.upgrade(url)
    engine = make_engine(url, pool_size=1)
    try:
        ledger = Ledger(engine)
        ledger.create_topup(topup_id="tu_d", card_uid=CARD, amount_cents=1_000, currency="EUR")
        _paid(ledger, event_id="evt_p", topup_id="tu_d", session_id="cs_d", amount_cents=1_000)
        outcome = ledger.process_stripe_dispute_closed(
            event_id="evt_lost",
            dispute_id="du_1",
            payment_intent_id="pi_cs_d",
            status="lost",
            amount_cents=1_000,
        )
        assert outcome.approved and ledger.check() == []
    finally:
        engine.dispose()
    with pytest.raises(Exception, match="loss account"):
        database.downgrade(url, "0005")
    # Revision 0006 (and everything it made) stays; later revisions may have gone down first.
    assert database.current_revision(url) in {"0006", database.head_revision()}
    assert scalar(url, "SELECT count(*) FROM accounts WHERE kind = 'loss'") == 1
    assert execute(url, "SELECT status FROM stripe_disputes") == [("lost",)]
