"""Cup deposits (issue 11 item 1, PROTOCOL.md 1.1): deposits go to one deposit account, returns are
paid from it, never below zero festival-wide, at most FESTIVAL_RETURN_MAX_CENTS of returns per
order; the bar's sales account gets only the sales lines; `check` catches a wrong sign.

Each attack of the issue is reproduced as it was sent (a bar kiosk's normal screen, a kiosk key)
and shown declined RETURN_LIMIT_EXCEEDED with the card's balances, nothing moved."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
import sqlalchemy

from cloud.api.seed_requests import http_status_for
from cloud.database import TransientDatabaseError, make_engine
from cloud.ledger import Ledger
from cloud.ledger_records import Outcome
from protocol.errors import ErrorCode, Status
from protocol.limits import RETURN_CENTS_MAX_DEFAULT
from protocol.models import BarItem
from tests.ledger.helpers import bar_order, execute, recharge, scalar
from tests.ledger.test_cli import cli
from tests.waiting import wait_until

CARD = "04D0D0D0"
OTHER = "04E0E0E0"
CUP_CENTS = 200
THREADS = 8
JOIN_TIMEOUT_S = 60.0


def cups(quantity: int) -> BarItem:
    return BarItem("Cup", quantity, CUP_CENTS, sku="cup", is_deposit=True)


def returned(quantity: int, unit_price_cents: int = CUP_CENTS) -> BarItem:
    return BarItem(
        "Cup back", quantity, unit_price_cents, sku="cup", is_deposit=True, is_return=True
    )


BEER = BarItem("Beer", 1, 500, sku="beer")


def account_total(url: str, name: str) -> int:
    return int(
        scalar(
            url,
            "SELECT coalesce(sum(p.amount_cents), 0) FROM accounts a"
            " LEFT JOIN postings p ON p.account_id = a.account_id WHERE a.name = :name",
            name=name,
        )
    )


def assert_declined_return(outcome: Outcome, balance_cents: int) -> None:
    assert outcome.status is Status.DECLINED
    assert outcome.error_code is ErrorCode.RETURN_LIMIT_EXCEEDED
    assert (outcome.previous_balance_cents, outcome.new_balance_cents) == (balance_cents,) * 2
    assert outcome.transaction_id is None


# --- the attacks of the issue ------------------------------------------------------------------


def test_99_returned_cups_per_tap_mint_nothing_however_often(ledger: Ledger) -> None:
    """Reproduced: staff enter 99 returned cups for +198.00 per tap, again and again."""
    ledger.apply(recharge(CARD, 1_000))
    for _ in range(3):
        outcome = ledger.apply(bar_order(CARD, returned(99)))
        assert_declined_return(outcome, 1_000)
        assert "19800" not in outcome.message and "198.00" in outcome.message
    assert ledger.card(CARD).balance_cents == 1_000  # type: ignore[union-attr]
    assert ledger.deposit_balance_cents() == 0
    assert ledger.check() == []


def test_one_request_cannot_fill_a_card_to_the_maximum(ledger: Ledger) -> None:
    """Reproduced: with a kiosk key, one made-up return fills a card to the maximum balance."""
    ledger.apply(recharge(CARD, 1_000))
    # Two cups of 745.00 (a unit price over 1000.00 is no valid request since models check
    # themselves; a signed one is refused by the consumer's schema).
    fill = bar_order(CARD, returned(2, (ledger.max_balance_cents - 1_000) // 2))
    assert_declined_return(ledger.apply(fill), 1_000)
    # Within the per-order limit but with nothing ever deposited: still declined.
    assert_declined_return(ledger.apply(bar_order(CARD, returned(1))), 1_000)
    # Through the batch procedure (the consumer's path) just the same.
    [batched] = ledger.apply_batch([bar_order(CARD, returned(10))])
    assert_declined_return(batched, 1_000)
    assert ledger.card(CARD).balance_cents == 1_000  # type: ignore[union-attr]


def test_a_declined_return_is_stored_and_replayed(ledger: Ledger) -> None:
    ledger.apply(recharge(CARD, 1_000))
    order = bar_order(CARD, returned(99))
    first = ledger.apply(order)
    ledger.apply(recharge(OTHER, 20_000))
    assert ledger.apply(bar_order(OTHER, cups(99))).approved  # deposits exist now ...
    # ... but the stored outcome stands.
    again = ledger.apply(order)
    assert again.replayed and again.error_code is ErrorCode.RETURN_LIMIT_EXCEEDED
    assert again.processed_at_ms == first.processed_at_ms


# --- what honest bars do -----------------------------------------------------------------------


def test_deposits_then_returns_within_what_was_deposited(ledger: Ledger, database_url: str) -> None:
    ledger.apply(recharge(CARD, 2_000))
    ledger.apply(recharge(OTHER, 100))
    bought = ledger.apply(bar_order(CARD, BEER, cups(2)))
    assert bought.approved and bought.new_balance_cents == 1_100
    assert account_total(database_url, "sales:bar-1") == 500  # the sales line only
    assert account_total(database_url, "deposit:cups") == ledger.deposit_balance_cents() == 400

    # Cups come back at another bar, on another card: paid from the deposit account.
    back = ledger.apply(bar_order(OTHER, returned(1), kiosk_id="bar-2"))
    assert back.approved and (back.previous_balance_cents, back.new_balance_cents) == (100, 300)
    assert account_total(database_url, "sales:bar-2") == 0
    back = ledger.apply(bar_order(OTHER, returned(1), kiosk_id="bar-2"))
    assert back.approved and ledger.deposit_balance_cents() == 0
    # Every deposit has come back: one cup more is one cup too many.
    assert_declined_return(ledger.apply(bar_order(OTHER, returned(1))), 500)
    assert ledger.check() == []


def test_an_orders_own_deposits_count_first(ledger: Ledger) -> None:
    """A round of fresh cups handed over against the empty ones: nets out, even from zero."""
    ledger.apply(recharge(CARD, 1_000))
    swap = ledger.apply(bar_order(CARD, BEER, cups(2), returned(2)))
    assert swap.approved and swap.new_balance_cents == 500
    assert ledger.deposit_balance_cents() == 0
    assert_declined_return(ledger.apply(bar_order(CARD, BEER, cups(1), returned(2))), 500)
    assert ledger.check() == []


def test_the_return_limit_is_per_order_and_configurable(ledger: Ledger) -> None:
    assert ledger.return_cents_max == RETURN_CENTS_MAX_DEFAULT == 2_000
    strict = Ledger(ledger.engine, return_cents_max=600)
    strict.apply(recharge(CARD, 5_000))
    strict.apply(bar_order(CARD, cups(20)))  # 40.00 deposited
    assert strict.apply(bar_order(CARD, returned(3))).approved  # 6.00: the limit itself
    assert_declined_return(strict.apply(bar_order(CARD, returned(4))), 1_600)
    # The limit counts the return lines alone, whatever else the order holds.
    assert_declined_return(strict.apply(bar_order(CARD, BEER, cups(4), returned(4))), 1_600)
    [batched] = strict.apply_batch([bar_order(CARD, returned(4))])
    assert_declined_return(batched, 1_600)
    assert ledger.apply(bar_order(CARD, returned(4))).approved  # the default limit: 20.00


def test_the_order_of_checks(ledger: Ledger) -> None:
    """CARD_NOT_FOUND, CARD_BLOCKED, then RETURN_LIMIT_EXCEEDED, then the balance rules."""
    assert ledger.apply(bar_order(CARD, returned(99))).error_code is ErrorCode.CARD_NOT_FOUND
    ledger.apply(recharge(CARD, 100))
    ledger.block_card(CARD, "lost")
    assert ledger.apply(bar_order(CARD, returned(99))).error_code is ErrorCode.CARD_BLOCKED
    ledger.unblock_card(CARD)
    # Unaffordable beer and too many returns: the return rule decides.
    too_much = bar_order(CARD, BarItem("Magnum", 1, 100_000), returned(11))
    assert_declined_return(ledger.apply(too_much), 100)
    # Within the limits, the balance rule.
    ledger.apply(recharge(OTHER, 1_000))
    ledger.apply(bar_order(OTHER, cups(2)))
    poor = ledger.apply(bar_order(CARD, BarItem("Magnum", 1, 1_000), returned(1)))
    assert poor.error_code is ErrorCode.INSUFFICIENT_FUNDS
    assert ledger.deposit_balance_cents() == 400


def test_in_one_batch_earlier_deposits_fund_later_returns_and_declines_move_nothing(
    ledger: Ledger, database_url: str
) -> None:
    ledger.apply(recharge(CARD, 2_000))
    ledger.apply(recharge(OTHER, 100))
    deposit = bar_order(CARD, BEER, cups(3))
    outcomes = ledger.apply_batch(
        [
            bar_order(OTHER, returned(1)),  # before any deposit: declined
            deposit,
            bar_order(OTHER, returned(2)),
            deposit,  # a replay moves nothing twice
            bar_order(OTHER, returned(2)),  # only one deposit left
            bar_order(OTHER, BEER),  # a plain order in the same batch
        ]
    )
    assert [(o.error_code, o.new_balance_cents, o.replayed) for o in outcomes] == [
        (ErrorCode.RETURN_LIMIT_EXCEEDED, 100, False),
        (None, 900, False),
        (None, 500, False),
        (None, 900, True),
        (ErrorCode.RETURN_LIMIT_EXCEEDED, 500, False),
        (None, 0, False),
    ]
    assert ledger.deposit_balance_cents() == account_total(database_url, "deposit:cups") == 200
    assert account_total(database_url, "sales:bar-1") == 1_000
    assert ledger.check() == []


def test_the_http_path_declines_the_same_way_with_http_422(ledger: Ledger) -> None:
    ledger.apply(recharge(CARD, 1_000))
    outcome = ledger.apply(bar_order(CARD, returned(99), source="http"))
    assert_declined_return(outcome, 1_000)
    assert http_status_for(outcome.error_code) == 422


# --- concurrency and the hot path --------------------------------------------------------------


@pytest.fixture
def wide_ledger(service_database_url: str, ledger: Ledger) -> Iterator[Ledger]:
    engine = make_engine(service_database_url, pool_size=THREADS, application_name="test-cups")
    yield Ledger(engine)
    engine.dispose()


def test_concurrent_returns_never_take_the_deposit_account_below_zero(
    wide_ledger: Ledger, database_url: str
) -> None:
    """Eight bars return cups at once against 10 deposited cups: exactly 10 are paid."""
    wide_ledger.apply(recharge(CARD, 5_000))
    wide_ledger.apply(bar_order(CARD, cups(10)))
    cards = [f"04F0F0{number:02X}" for number in range(THREADS)]
    for card in cards:
        wide_ledger.apply(recharge(card, 100))
    outcomes: list[Outcome] = []
    lock = threading.Lock()

    def bar(card: str) -> None:
        for _ in range(3):
            for _attempt in range(20):
                try:
                    outcome = wide_ledger.apply(bar_order(card, returned(1), kiosk_id="bar-2"))
                    break
                except TransientDatabaseError:
                    continue
            else:
                raise AssertionError("still transient after retries")
            with lock:
                outcomes.append(outcome)

    threads = [threading.Thread(target=bar, args=(card,)) for card in cards]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(JOIN_TIMEOUT_S)
        assert not thread.is_alive()
    assert len(outcomes) == 3 * THREADS
    assert sum(o.approved for o in outcomes) == 10
    assert {o.error_code for o in outcomes if not o.approved} == {ErrorCode.RETURN_LIMIT_EXCEEDED}
    assert wide_ledger.deposit_balance_cents() == 0
    assert account_total(database_url, "deposit:cups") == 0
    assert wide_ledger.check() == []


def test_only_orders_with_deposit_lines_wait_for_the_deposit_account(
    ledger: Ledger, database_url: str
) -> None:
    """Plain orders (the hot path) never touch the deposit account's row."""
    ledger.apply(recharge(CARD, 5_000))
    ledger.apply(recharge(OTHER, 5_000))
    blocker = sqlalchemy.create_engine(database_url, poolclass=sqlalchemy.pool.NullPool)
    waiting: list[Outcome] = []
    try:
        with blocker.connect() as connection:
            transaction = connection.begin()
            connection.execute(sqlalchemy.text("SELECT * FROM deposit_balances FOR UPDATE"))
            # Held: a plain order goes through at once ...
            assert ledger.apply(bar_order(CARD, BEER)).approved
            assert ledger.apply_batch([bar_order(OTHER, BEER)])[0].approved
            # ... an order with deposit lines waits for the row.
            thread = threading.Thread(
                target=lambda: waiting.append(ledger.apply(bar_order(OTHER, BEER, cups(1))))
            )
            thread.start()
            wait_until(
                lambda: scalar(
                    database_url,
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                    " AND query LIKE '%sp_handle_request%'",
                ),
                timeout_s=10,
                what="the deposit order waiting for the deposit account's row",
            )
            assert not waiting
            transaction.rollback()
        thread.join(JOIN_TIMEOUT_S)
    finally:
        blocker.dispose()
    assert waiting and waiting[0].approved
    assert ledger.deposit_balance_cents() == CUP_CENTS


# --- festival-cloud check ----------------------------------------------------------------------


def test_check_fails_on_a_sales_account_below_zero(ledger: Ledger, database_url: str) -> None:
    """The wrong sign can only be made by hand now: as the owner, balanced postings that move a
    bar's sales into the negative (what made-up returns did before revision 0005)."""
    ledger.apply(recharge(CARD, 2_000))
    ledger.apply(bar_order(CARD, BEER))
    ledger.apply(bar_order(CARD, BEER, kiosk_id="bar-2"))
    assert cli(database_url, "check").returncode == 0
    execute(
        database_url,
        """
        WITH event AS (INSERT INTO stripe_events (event_id) VALUES ('evt_corrupt')),
             tx AS (INSERT INTO transactions (transaction_id, kind, stripe_event_id)
                    VALUES ('00000000-0000-7000-8000-000000000001', 'stripe_refund', 'evt_corrupt'))
        INSERT INTO postings (transaction_id, account_id, amount_cents)
        SELECT '00000000-0000-7000-8000-000000000001', account_id,
               CASE name WHEN 'sales:bar-1' THEN -700 ELSE 700 END
          FROM accounts WHERE name IN ('sales:bar-1', 'sales:bar-2')
        """,
    )
    broken = cli(database_url, "check")
    assert broken.returncode == 1, broken.stdout
    assert "LEDGER CHECK FAILED: 1 violation(s)" in broken.stdout
    assert "sales account sales:bar-1: its postings sum to -200 cents, below zero" in broken.stdout


def test_check_fails_on_a_deposit_cache_that_differs_from_its_postings(
    ledger: Ledger, database_url: str
) -> None:
    ledger.apply(recharge(CARD, 2_000))
    ledger.apply(bar_order(CARD, cups(2)))
    execute(database_url, "UPDATE deposit_balances SET balance_cents = balance_cents + 1")
    broken = cli(database_url, "check")
    assert broken.returncode == 1
    assert (
        "deposit account deposit:cups: cached balance 401 cents, but its postings sum to 400"
        in broken.stdout
    )


def test_check_fails_on_a_deposit_account_below_zero(ledger: Ledger, database_url: str) -> None:
    ledger.apply(recharge(CARD, 2_000))
    ledger.apply(bar_order(CARD, BEER, kiosk_id="bar-2"))
    execute(
        database_url,
        """
        WITH event AS (INSERT INTO stripe_events (event_id) VALUES ('evt_corrupt')),
             tx AS (INSERT INTO transactions (transaction_id, kind, stripe_event_id)
                    VALUES ('00000000-0000-7000-8000-000000000002', 'stripe_refund', 'evt_corrupt'))
        INSERT INTO postings (transaction_id, account_id, amount_cents)
        SELECT '00000000-0000-7000-8000-000000000002', account_id,
               CASE kind WHEN 'deposit' THEN -300 ELSE 300 END
          FROM accounts WHERE name IN ('deposit:cups', 'sales:bar-2')
        """,
    )
    violations = ledger.check()
    assert "deposit account deposit:cups: its postings sum to -300 cents, below zero" in " ".join(
        violations
    )
