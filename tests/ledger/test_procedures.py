"""Approve and decline paths of each procedure, with exact balances; replays and conflicts."""

from __future__ import annotations

import pytest

from cloud.ledger import Ledger
from protocol.errors import ErrorCode, Status
from protocol.models import BarItem
from tests.ledger.helpers import PUBLIC_KEY, bar_order, recharge, same_id_other_payload

CARD = "04A1B2C3"


def test_first_topup_creates_the_card_and_credits_it(ledger: Ledger) -> None:
    assert ledger.card(CARD) is None
    outcome = ledger.apply(recharge(CARD, 2_000))
    assert outcome.status is Status.APPROVED and outcome.error_code is None
    assert (outcome.previous_balance_cents, outcome.new_balance_cents) == (0, 2_000)
    assert outcome.transaction_id and not outcome.replayed and outcome.card_uid == CARD
    card = ledger.card(CARD)
    assert card is not None and (card.balance_cents, card.status) == (2_000, "active")
    assert ledger.check() == []


def test_bar_order_is_charged_exactly(ledger: Ledger) -> None:
    ledger.apply(recharge(CARD, 2_000))
    outcome = ledger.apply(bar_order(CARD, ("Beer", 2, 450), ("Water", 1, 250)))
    assert outcome.status is Status.APPROVED
    assert (outcome.previous_balance_cents, outcome.new_balance_cents) == (2_000, 850)
    assert outcome.order_id and outcome.transaction_id
    assert ledger.card(CARD).balance_cents == 850  # type: ignore[union-attr]
    history = ledger.card_transactions(CARD)
    assert [(row["kind"], row["amount_cents"]) for row in history] == [
        ("bar_order", -1_150),
        ("checkpoint_recharge", 2_000),
    ]
    assert history[0]["balance_after_cents"] == 850
    assert ledger.check() == []


def test_order_of_exactly_the_balance_is_approved_and_one_cent_more_is_not(
    ledger: Ledger,
) -> None:
    ledger.apply(recharge(CARD, 1_000))
    declined = ledger.apply(bar_order(CARD, ("Cocktail", 1, 1_001)))
    assert declined.status is Status.DECLINED
    assert declined.error_code is ErrorCode.INSUFFICIENT_FUNDS
    assert (declined.previous_balance_cents, declined.new_balance_cents) == (1_000, 1_000)
    assert declined.transaction_id is None
    approved = ledger.apply(bar_order(CARD, ("Cocktail", 1, 1_000)))
    assert approved.status is Status.APPROVED and approved.new_balance_cents == 0


def test_unknown_card_is_declined_with_null_balances(ledger: Ledger) -> None:
    outcome = ledger.apply(bar_order("04FFFFFF"))
    assert (outcome.status, outcome.error_code) == (Status.DECLINED, ErrorCode.CARD_NOT_FOUND)
    assert outcome.previous_balance_cents is None and outcome.new_balance_cents is None
    assert ledger.card("04FFFFFF") is None


def test_blocked_card_is_declined_for_orders_and_topups(ledger: Ledger) -> None:
    ledger.apply(recharge(CARD, 3_000))
    assert ledger.block_card(CARD, "lost") is True
    order = ledger.apply(bar_order(CARD))
    topup = ledger.apply(recharge(CARD, 500))
    for outcome in (order, topup):
        assert (outcome.status, outcome.error_code) == (Status.DECLINED, ErrorCode.CARD_BLOCKED)
        assert (outcome.previous_balance_cents, outcome.new_balance_cents) == (3_000, 3_000)
    assert ledger.unblock_card(CARD) is True
    assert ledger.apply(bar_order(CARD)).new_balance_cents == 2_500
    assert ledger.block_card("04000000", "lost") is False


def test_balance_limit_allows_exactly_the_maximum(ledger: Ledger) -> None:
    assert ledger.apply(recharge(CARD, 100_000)).new_balance_cents == 100_000
    over = ledger.apply(recharge(CARD, 50_001))
    assert (over.status, over.error_code) == (Status.DECLINED, ErrorCode.BALANCE_LIMIT_EXCEEDED)
    assert (over.previous_balance_cents, over.new_balance_cents) == (100_000, 100_000)
    assert ledger.apply(recharge(CARD, 50_000)).new_balance_cents == 150_000


def test_returns_only_order_credits_the_card_within_the_limit(ledger: Ledger) -> None:
    ledger.apply(recharge(CARD, 1_000))
    # (1.1) returns are paid from the deposit account: someone paid these cups' deposits first
    ledger.apply(recharge("04AB0001", 1_000))
    assert ledger.apply(bar_order("04AB0001", BarItem("Cup", 4, 200, is_deposit=True))).approved
    cup_back = BarItem("Cup", 2, 200, sku="CUP", is_deposit=True, is_return=True)
    outcome = ledger.apply(bar_order(CARD, cup_back))
    assert outcome.status is Status.APPROVED
    assert (outcome.previous_balance_cents, outcome.new_balance_cents) == (1_000, 1_400)
    ledger.apply(recharge(CARD, 100_000))
    ledger.apply(recharge(CARD, 48_600))
    over = ledger.apply(bar_order(CARD, cup_back))
    assert over.error_code is ErrorCode.BALANCE_LIMIT_EXCEEDED
    assert over.new_balance_cents == 150_000
    assert ledger.check() == []


def test_replay_returns_the_stored_outcome_even_if_the_card_could_now_pay(
    ledger: Ledger,
) -> None:
    ledger.apply(recharge(CARD, 100))
    order = bar_order(CARD, ("Beer", 1, 500))
    first = ledger.apply(order)
    assert first.error_code is ErrorCode.INSUFFICIENT_FUNDS
    ledger.apply(recharge(CARD, 5_000))
    again = ledger.apply(order)
    assert again.replayed is True
    assert (again.status, again.error_code) == (Status.DECLINED, ErrorCode.INSUFFICIENT_FUNDS)
    assert again.processed_at_ms == first.processed_at_ms
    assert ledger.card(CARD).balance_cents == 5_100  # type: ignore[union-attr]


def test_approved_replay_changes_nothing(ledger: Ledger) -> None:
    ledger.apply(recharge(CARD, 2_000))
    order = bar_order(CARD, ("Beer", 1, 500))
    first = ledger.apply(order)
    second = ledger.apply(order)
    third = ledger.apply_batch([order])[0]
    for again in (second, third):
        assert again.replayed is True
        assert again.transaction_id == first.transaction_id
        assert again.order_id == first.order_id
        assert again.new_balance_cents == 1_500
    assert ledger.card(CARD).balance_cents == 1_500  # type: ignore[union-attr]
    assert len(ledger.card_transactions(CARD)) == 2


def test_same_request_id_with_another_payload_is_a_conflict(ledger: Ledger) -> None:
    ledger.apply(recharge(CARD, 2_000))
    order = bar_order(CARD, ("Beer", 1, 500))
    ledger.apply(order)
    conflict = ledger.apply(same_id_other_payload(order))
    assert (conflict.status, conflict.error_code) == (
        Status.REJECTED,
        ErrorCode.IDEMPOTENCY_CONFLICT,
    )
    assert conflict.replayed is False and conflict.transaction_id is None
    assert ledger.card(CARD).balance_cents == 1_500  # type: ignore[union-attr]
    # The conflict is not stored: the original is still what a replay returns.
    assert ledger.apply(order).replayed is True


def test_request_ids_are_one_namespace_across_types_and_sources(ledger: Ledger) -> None:
    topup = recharge(CARD, 2_000, request_id="shared-id-1")
    ledger.apply(topup)
    order = bar_order(CARD, request_id="shared-id-1", source="http")
    outcome = ledger.apply(order)
    assert outcome.error_code is ErrorCode.IDEMPOTENCY_CONFLICT
    assert ledger.card(CARD).balance_cents == 2_000  # type: ignore[union-attr]


def test_cash_and_card_topups_post_to_their_checkpoint_accounts(ledger: Ledger) -> None:
    ledger.apply(recharge(CARD, 1_000, method="cash", kiosk_id="checkpoint-1"))
    ledger.apply(recharge(CARD, 2_000, method="card", kiosk_id="checkpoint-1"))
    # (revision 0025) a kiosk books into the drawer of the checkpoint it is registered for
    ledger.add_kiosk("checkpoint-2", PUBLIC_KEY, "checkpoint", checkpoint_id="gate-a")
    ledger.apply(
        recharge(CARD, 4_000, method="cash", kiosk_id="checkpoint-2", checkpoint_id="gate-a")
    )
    ledger.apply(bar_order(CARD, ("Beer", 2, 500), kiosk_id="bar-2"))
    report = ledger.sales_report()
    assert report["checkpoints"] == [
        {"checkpoint_id": "checkpoint-1", "cash_cents": 1_000, "card_cents": 2_000, "count": 2},
        {"checkpoint_id": "gate-a", "cash_cents": 4_000, "card_cents": 0, "count": 1},
    ]
    assert report["bars"] == [{"kiosk_id": "bar-2", "orders": 1, "sales_cents": 1_000}]
    assert ledger.check() == []


@pytest.mark.parametrize("source", ["mqtt", "http"])
def test_batch_keeps_each_outcome_in_input_order(ledger: Ledger, source: str) -> None:
    other = "04B0B0B0"
    first_order = bar_order(CARD, ("Beer", 1, 700), source=source)
    batch = [
        bar_order(CARD, ("Beer", 1, 100), source=source),  # before any top-up: unknown card
        recharge(CARD, 1_000, source=source),
        first_order,
        bar_order(CARD, ("Wine", 1, 400), source=source),  # 300 left: insufficient
        recharge(other, 500, method="card", source=source),
        first_order,  # the same request again inside the batch: a replay
        same_id_other_payload(first_order),  # and a conflict
        bar_order(other, ("Water", 2, 250), source=source),
    ]
    outcomes = ledger.apply_batch(batch)
    assert [(o.status, o.error_code, o.new_balance_cents, o.replayed) for o in outcomes] == [
        (Status.DECLINED, ErrorCode.CARD_NOT_FOUND, None, False),
        (Status.APPROVED, None, 1_000, False),
        (Status.APPROVED, None, 300, False),
        (Status.DECLINED, ErrorCode.INSUFFICIENT_FUNDS, 300, False),
        (Status.APPROVED, None, 500, False),
        (Status.APPROVED, None, 300, True),
        (Status.REJECTED, ErrorCode.IDEMPOTENCY_CONFLICT, None, False),
        (Status.APPROVED, None, 0, False),
    ]
    assert [o.request_id for o in outcomes] == [i.request.request_id for i in batch]
    assert outcomes[5].transaction_id == outcomes[2].transaction_id
    assert ledger.card(CARD).balance_cents == 300  # type: ignore[union-attr]
    assert ledger.card(other).balance_cents == 0  # type: ignore[union-attr]
    assert ledger.check() == []


def test_empty_batch_is_no_round_trip(ledger: Ledger) -> None:
    assert ledger.apply_batch([]) == []
