"""Refunds and disputes linked by the payment intent first and the card metadata second (0003).

An unknown payment intent with a card uid in the metadata: a dispute blocks that card; a refund
takes no money (what was credited is unknown) but blocks the card until an operator reconciles.
Idempotent by event id. A matched payment intent behaves exactly as revision 0002 did.
"""

from __future__ import annotations

import json
import threading

import pytest

from cloud.ledger import Ledger
from cloud.ledger_records import Outcome
from protocol.errors import ErrorCode, Status
from tests.ledger.helpers import execute, recharge, scalar

CARD = "04FA11BA"
OTHER = "04FA11BB"
REFUND_REASON = "refund of an unmatched payment: reconcile"


def _pay(ledger: Ledger, *, card_uid: str = CARD, amount_cents: int = 2_500) -> Outcome:
    return ledger.process_stripe_recharge(
        event_id="evt_paid",
        session_id="cs_paid",
        card_uid=card_uid,
        amount_cents=amount_cents,
        currency="EUR",
        payment_intent_id="pi_known",
        topup_id=None,
    )


def _card(ledger: Ledger, card_uid: str = CARD) -> tuple[int, str, str | None]:
    url = ledger.engine.url.render_as_string(hide_password=False)
    ((balance, status, reason),) = execute(
        url,
        "SELECT balance_cents, status, blocked_reason FROM cards WHERE card_uid = :c",
        c=card_uid,
    )
    return balance, status, reason


def _counts(url: str) -> tuple[int, int]:
    return (
        scalar(url, "SELECT count(*) FROM transactions"),
        scalar(url, "SELECT count(*) FROM postings"),
    )


def _stored_outcome(url: str, event_id: str) -> dict[str, object]:
    document = scalar(url, "SELECT outcome FROM stripe_events WHERE event_id = :e", e=event_id)
    return document if isinstance(document, dict) else json.loads(document)


def _log(url: str, event_id: str) -> list[tuple[object, ...]]:
    return execute(
        url,
        "SELECT transaction_type, status, card_id, amount_cents, error_code "
        "FROM app_transaction_log WHERE details ->> 'event_id' = :e ORDER BY id",
        e=event_id,
    )


# --- refunds ------------------------------------------------------------------------------------


def test_unmatched_refund_with_metadata_blocks_the_card_and_moves_no_money(
    ledger: Ledger, database_url: str
) -> None:
    ledger.apply(recharge(CARD, 3_000))
    before = _counts(database_url)
    outcome = ledger.process_stripe_refund(
        event_id="evt_ref_1",
        payment_intent_id="pi_unknown",
        amount_refunded_cents=1_000,
        card_uid=CARD,
    )
    assert (outcome.status, outcome.error_code) == (Status.REJECTED, ErrorCode.INVALID_REQUEST)
    assert outcome.card_uid == CARD and outcome.transaction_id is None
    assert (outcome.previous_balance_cents, outcome.new_balance_cents) == (3_000, 3_000)
    assert not outcome.replayed and "reconcile" in outcome.message
    assert _card(ledger) == (3_000, "blocked", REFUND_REASON)
    assert _counts(database_url) == before
    assert ledger.sales_report()["stripe"]["refunded_cents"] == 0  # type: ignore[index]
    stored = _stored_outcome(database_url, "evt_ref_1")
    assert stored["linked_by"] == "card_metadata" and stored["card_uid"] == CARD
    assert scalar(
        database_url,
        "SELECT processed_at IS NOT NULL FROM stripe_events WHERE event_id = 'evt_ref_1'",
    )
    assert _log(database_url, "evt_ref_1") == [
        ("stripe_refund", "anomaly", CARD, 1_000, "INVALID_REQUEST")
    ]
    # Nothing more can be spent until an operator reconciles.
    spent = ledger.apply(recharge(CARD, 100))
    assert spent.error_code is ErrorCode.CARD_BLOCKED
    assert ledger.check() == []


def test_duplicate_unmatched_refund_replays_and_changes_nothing(
    ledger: Ledger, database_url: str
) -> None:
    ledger.apply(recharge(CARD, 3_000))
    first = ledger.process_stripe_refund(
        event_id="evt_ref_2",
        payment_intent_id="pi_unknown",
        amount_refunded_cents=500,
        card_uid=CARD,
    )
    # The operator reconciles and unblocks; Stripe then redelivers the same event.
    assert ledger.unblock_card(CARD)
    again = ledger.process_stripe_refund(
        event_id="evt_ref_2",
        payment_intent_id="pi_unknown",
        amount_refunded_cents=500,
        card_uid=CARD,
    )
    assert again.replayed is True
    assert (again.status, again.error_code, again.message, again.processed_at_ms) == (
        first.status,
        first.error_code,
        first.message,
        first.processed_at_ms,
    )
    assert _card(ledger) == (3_000, "active", None)
    assert [row[1] for row in _log(database_url, "evt_ref_2")] == ["anomaly", "replayed"]
    assert ledger.check() == []


def test_duplicate_after_the_payment_intent_became_known_still_replays(
    ledger: Ledger, database_url: str
) -> None:
    # The refund overtook checkout.session.completed: card blocked, nothing taken.
    ledger.apply(recharge(CARD, 500))
    ledger.process_stripe_refund(
        event_id="evt_ref_3",
        payment_intent_id="pi_known",
        amount_refunded_cents=1_000,
        card_uid=CARD,
    )
    assert _pay(ledger).approved  # a blocked card is still credited
    assert _card(ledger) == (3_000, "blocked", REFUND_REASON)
    # A redelivery of that same event replays its stored outcome, whatever is known now.
    again = ledger.process_stripe_refund(
        event_id="evt_ref_3",
        payment_intent_id="pi_known",
        amount_refunded_cents=1_000,
        card_uid=CARD,
    )
    assert again.replayed and again.transaction_id is None
    assert _card(ledger)[0] == 3_000
    # A new event for the now-known payment intent is revision 0002's refund.
    later = ledger.process_stripe_refund(
        event_id="evt_ref_4",
        payment_intent_id="pi_known",
        amount_refunded_cents=1_000,
        card_uid=CARD,
    )
    assert later.approved and later.transaction_id is not None
    assert (later.previous_balance_cents, later.new_balance_cents) == (3_000, 2_000)
    assert ledger.check() == []


def test_unmatched_refund_keeps_an_earlier_block_reason(ledger: Ledger) -> None:
    ledger.apply(recharge(CARD, 800))
    ledger.block_card(CARD, "lost")
    for event_id in ("evt_ref_5", "evt_ref_6"):
        ledger.process_stripe_refund(
            event_id=event_id,
            payment_intent_id="pi_unknown",
            amount_refunded_cents=1,
            card_uid=CARD,
        )
    assert _card(ledger) == (800, "blocked", f"lost; {REFUND_REASON}")


def test_unmatched_refund_without_a_usable_card_is_the_old_anomaly(
    ledger: Ledger, database_url: str
) -> None:
    # No metadata, and metadata naming a card that does not exist: nothing is created or blocked.
    for event_id, card_uid in (("evt_ref_7", None), ("evt_ref_8", "04BEEF00")):
        outcome = ledger.process_stripe_refund(
            event_id=event_id,
            payment_intent_id="pi_unknown",
            amount_refunded_cents=500,
            card_uid=card_uid,
        )
        assert (outcome.status, outcome.error_code) == (Status.REJECTED, ErrorCode.INVALID_REQUEST)
        assert outcome.card_uid is None and outcome.message.startswith("Unknown payment intent")
        assert "linked_by" not in _stored_outcome(database_url, event_id)
        assert _log(database_url, event_id) == [
            ("stripe_refund", "rejected", None, 500, "INVALID_REQUEST")
        ]
    assert scalar(database_url, "SELECT count(*) FROM cards") == 0


def test_matched_refund_ignores_the_metadata(ledger: Ledger, database_url: str) -> None:
    _pay(ledger, amount_cents=3_000)
    ledger.apply(recharge(OTHER, 700))
    first = ledger.process_stripe_refund(
        event_id="evt_ref_9",
        payment_intent_id="pi_known",
        amount_refunded_cents=1_000,
        card_uid=OTHER,
    )
    assert (first.status, first.card_uid) == (Status.APPROVED, CARD)
    assert (first.previous_balance_cents, first.new_balance_cents) == (3_000, 2_000)
    again = ledger.process_stripe_refund(
        event_id="evt_ref_9",
        payment_intent_id="pi_known",
        amount_refunded_cents=1_000,
        card_uid=OTHER,
    )
    assert again.replayed and again.message == "Refund already applied"
    assert _card(ledger) == (2_000, "active", None)
    assert _card(ledger, OTHER) == (700, "active", None)
    assert "linked_by" not in _stored_outcome(database_url, "evt_ref_9")
    assert ledger.check() == []


def test_invalid_card_uids_never_reach_the_fallback(
    ledger: Ledger, service_database_url: str
) -> None:
    with pytest.raises(ValueError, match="invalid card uid"):
        ledger.process_stripe_refund(
            event_id="evt_bad",
            payment_intent_id="pi_x",
            amount_refunded_cents=1,
            card_uid="04fa11ba",
        )
    ledger.apply(recharge(CARD, 100))
    # The procedure itself checks too: a lower-case uid is no card uid.
    document = scalar(
        service_database_url,
        "SELECT sp_handle_stripe_refund('evt_bad_sql', 'pi_x', lower(:c), 1)",
        c=CARD,
    )
    assert document["card_uid"] is None and document["status"] == "rejected"
    assert _card(ledger) == (100, "active", None)


def test_concurrent_deliveries_of_an_unmatched_refund_block_once(
    ledger: Ledger, database_url: str
) -> None:
    ledger.apply(recharge(CARD, 1_000))
    outcomes: list[Outcome] = []
    lock = threading.Lock()

    def deliver() -> None:
        outcome = ledger.process_stripe_refund(
            event_id="evt_ref_c",
            payment_intent_id="pi_unknown",
            amount_refunded_cents=300,
            card_uid=CARD,
        )
        with lock:
            outcomes.append(outcome)

    threads = [threading.Thread(target=deliver) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(outcomes) == 4
    assert sum(not outcome.replayed for outcome in outcomes) == 1
    assert [row[1] for row in _log(database_url, "evt_ref_c")].count("anomaly") == 1
    assert _card(ledger) == (1_000, "blocked", REFUND_REASON)


# --- disputes -----------------------------------------------------------------------------------


def test_unmatched_dispute_with_metadata_blocks_the_card(ledger: Ledger, database_url: str) -> None:
    ledger.apply(recharge(CARD, 1_200))
    outcome = ledger.process_stripe_dispute(
        event_id="evt_dis_1", payment_intent_id="pi_unknown", card_uid=CARD
    )
    assert (outcome.status, outcome.error_code, outcome.card_uid) == (Status.APPROVED, None, CARD)
    assert (outcome.previous_balance_cents, outcome.new_balance_cents) == (1_200, 1_200)
    balance, status, reason = _card(ledger)
    assert (balance, status) == (1_200, "blocked") and reason is not None and "disputed" in reason
    assert _stored_outcome(database_url, "evt_dis_1")["linked_by"] == "card_metadata"
    assert _log(database_url, "evt_dis_1") == [("stripe_dispute", "approved", CARD, None, None)]
    # A duplicate replays and changes nothing, even after an operator unblocked the card.
    assert ledger.unblock_card(CARD)
    again = ledger.process_stripe_dispute(
        event_id="evt_dis_1", payment_intent_id="pi_unknown", card_uid=CARD
    )
    assert again.replayed and again.message == outcome.message
    assert _card(ledger) == (1_200, "active", None)
    assert ledger.check() == []


def test_unmatched_dispute_without_a_usable_card_is_the_old_anomaly(
    ledger: Ledger, database_url: str
) -> None:
    for event_id, card_uid in (("evt_dis_2", None), ("evt_dis_3", "04BEEF00")):
        outcome = ledger.process_stripe_dispute(
            event_id=event_id, payment_intent_id="pi_unknown", card_uid=card_uid
        )
        assert (outcome.status, outcome.card_uid) == (Status.REJECTED, None)
        assert outcome.message == "Unknown payment intent: no card to block"
    assert scalar(database_url, "SELECT count(*) FROM cards") == 0


def test_matched_dispute_ignores_the_metadata(ledger: Ledger) -> None:
    _pay(ledger)
    ledger.apply(recharge(OTHER, 700))
    outcome = ledger.process_stripe_dispute(
        event_id="evt_dis_4", payment_intent_id="pi_known", card_uid=OTHER
    )
    assert (outcome.status, outcome.card_uid, outcome.message) == (
        Status.APPROVED,
        CARD,
        "Card blocked: payment disputed",
    )
    assert _card(ledger) == (2_500, "blocked", "payment disputed")
    assert _card(ledger, OTHER) == (700, "active", None)
    assert ledger.process_stripe_dispute(
        event_id="evt_dis_4", payment_intent_id="pi_known", card_uid=OTHER
    ).replayed


# --- privileges ---------------------------------------------------------------------------------


def test_only_the_entry_points_are_executable_by_the_service_role(database_url: str) -> None:
    rows = execute(
        database_url,
        "SELECT p.proname, p.prosecdef, p.proconfig, "
        "       has_function_privilege('festival_service', p.oid, 'EXECUTE'), "
        "       p.proacl IS NULL OR EXISTS (SELECT 1 FROM aclexplode(p.proacl) a "
        "                                   WHERE a.grantee = 0) "
        "FROM pg_proc p WHERE p.pronamespace = 'public'::regnamespace AND p.proname IN ("
        "  'sp_handle_stripe_refund', 'sp_handle_stripe_dispute', 'ledger_card_uid_valid',"
        "  'ledger_block_reason', 'ledger_metadata_outcome') ORDER BY p.proname",
    )
    by_name = {row[0]: row[1:] for row in rows}
    assert set(by_name) == {
        "sp_handle_stripe_refund",
        "sp_handle_stripe_dispute",
        "ledger_card_uid_valid",
        "ledger_block_reason",
        "ledger_metadata_outcome",
    }
    for name, (definer, config, service_may, public_may) in by_name.items():
        assert public_may is False, name
        if name.startswith("sp_"):
            assert definer is True and config == ["search_path=public, pg_temp"], name
            assert service_may is True, name
        else:
            assert service_may is False, name
