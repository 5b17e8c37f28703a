"""Concurrency: many connections on few cards, one request id raced from several connections."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Iterator

import pytest

from cloud.database import TransientDatabaseError, make_engine
from cloud.ledger import Ledger
from cloud.ledger_records import LedgerRequest, Outcome
from protocol.errors import ErrorCode, Status
from tests.ledger.helpers import bar_order, recharge

THREADS = 16
OPERATIONS_PER_THREAD = 24
CARDS = ("04000001", "04000002", "04000003")
JOIN_TIMEOUT_S = 60.0
TRANSIENT_RETRIES_MAX = 20


@pytest.fixture
def wide_ledger(service_database_url: str, ledger: Ledger) -> Iterator[Ledger]:
    """A Ledger whose pool has a connection for each thread (kiosks registered by `ledger`)."""
    engine = make_engine(service_database_url, pool_size=THREADS, application_name="test-race")
    yield Ledger(engine)
    engine.dispose()


def _retrying(call: Callable[[], list[Outcome]]) -> list[Outcome]:
    for _ in range(TRANSIENT_RETRIES_MAX):
        try:
            return call()
        except TransientDatabaseError:
            continue
    raise AssertionError("still transient after retries")


def _run_threads(target: Callable[[int], None]) -> None:
    errors: list[BaseException] = []

    def guarded(number: int) -> None:
        try:
            target(number)
        except BaseException as error:  # reported by the main thread
            errors.append(error)

    threads = [threading.Thread(target=guarded, args=(n,)) for n in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=JOIN_TIMEOUT_S)
    assert not any(thread.is_alive() for thread in threads), "a worker hung"
    assert not errors, errors[0]


def test_sixteen_threads_on_three_cards_end_with_exact_balances(wide_ledger: Ledger) -> None:
    opening_cents = 100_000
    for card in CARDS:
        wide_ledger.apply(recharge(card, opening_cents))
    # Each thread gets a fixed, seeded plan; amounts are chosen so that nothing is declined
    # whatever the interleaving, which makes every final balance exactly predictable.
    plans: list[list[LedgerRequest]] = []
    expected = dict.fromkeys(CARDS, opening_cents)
    for number in range(THREADS):
        rng = random.Random(number)
        plan: list[LedgerRequest] = []
        for step in range(OPERATIONS_PER_THREAD):
            card = rng.choice(CARDS)
            seq = step + 1
            if rng.random() < 0.3:
                amount = rng.randint(1, 30) * 10
                plan.append(recharge(card, amount, kiosk_id="checkpoint-1", seq=seq))
                expected[card] += amount
            else:
                quantity, price = rng.randint(1, 3), rng.randint(1, 16) * 10
                plan.append(bar_order(card, ("Beer", quantity, price), kiosk_id="bar-1", seq=seq))
                expected[card] -= quantity * price
        plans.append(plan)

    outcomes: list[Outcome] = []
    lock = threading.Lock()

    def work(number: int) -> None:
        plan = plans[number]
        results: list[Outcome] = []
        if number % 2:  # odd threads: one transaction per request
            for item in plan:
                results += _retrying(lambda item=item: [wide_ledger.apply(item)])  # type: ignore[misc]
        else:  # even threads: batches spanning all three cards, in shuffled order
            for start in range(0, len(plan), 6):
                chunk = plan[start : start + 6]
                results += _retrying(lambda chunk=chunk: wide_ledger.apply_batch(chunk))  # type: ignore[misc]
        with lock:
            outcomes.extend(results)

    _run_threads(work)
    assert len(outcomes) == THREADS * OPERATIONS_PER_THREAD
    assert all(outcome.status is Status.APPROVED for outcome in outcomes)
    assert all(not outcome.replayed for outcome in outcomes)
    for card in CARDS:
        record = wide_ledger.card(card)
        assert record is not None and record.balance_cents == expected[card]
    assert wide_ledger.check() == []


def test_sixteen_threads_draining_one_card_never_go_negative(wide_ledger: Ledger) -> None:
    card = CARDS[0]
    wide_ledger.apply(recharge(card, 5_050))
    outcomes: list[Outcome] = []
    lock = threading.Lock()

    def work(number: int) -> None:
        for _ in range(10):
            order = bar_order(card, ("Shot", 1, 100))
            outcome = _retrying(lambda order=order: [wide_ledger.apply(order)])[0]  # type: ignore[misc]
            with lock:
                outcomes.append(outcome)

    _run_threads(work)
    approved = [o for o in outcomes if o.status is Status.APPROVED]
    declined = [o for o in outcomes if o.error_code is ErrorCode.INSUFFICIENT_FUNDS]
    assert (len(approved), len(declined)) == (50, 110)
    assert all(o.new_balance_cents is not None and o.new_balance_cents >= 0 for o in outcomes)
    assert wide_ledger.card(card).balance_cents == 50  # type: ignore[union-attr]
    assert wide_ledger.check() == []


def test_one_request_id_raced_from_several_connections_is_applied_once(
    wide_ledger: Ledger,
) -> None:
    card = CARDS[1]
    wide_ledger.apply(recharge(card, 10_000))
    order = bar_order(card, ("Round", 1, 1_234))
    barrier = threading.Barrier(THREADS)
    outcomes: list[Outcome] = []
    lock = threading.Lock()

    def work(number: int) -> None:
        barrier.wait(timeout=JOIN_TIMEOUT_S)
        if number % 2:
            outcome = _retrying(lambda: [wide_ledger.apply(order)])[0]
        else:
            outcome = _retrying(lambda: wide_ledger.apply_batch([order]))[0]
        with lock:
            outcomes.append(outcome)

    _run_threads(work)
    assert len(outcomes) == THREADS
    assert sum(not outcome.replayed for outcome in outcomes) == 1
    assert {outcome.transaction_id for outcome in outcomes} != {None}
    assert len({outcome.transaction_id for outcome in outcomes}) == 1
    assert all(outcome.new_balance_cents == 10_000 - 1_234 for outcome in outcomes)
    assert wide_ledger.card(card).balance_cents == 10_000 - 1_234  # type: ignore[union-attr]
    assert wide_ledger.check() == []


def test_one_request_id_raced_with_payloads_on_different_cards(wide_ledger: Ledger) -> None:
    """The claim race that card locks cannot serialise: the unique key decides, once."""
    for card in CARDS[:2]:
        wide_ledger.apply(recharge(card, 10_000))
    variants = [
        bar_order(CARDS[0], ("Beer", 1, 500), request_id="raced-1"),
        bar_order(CARDS[1], ("Wine", 1, 700), request_id="raced-1"),
    ]
    barrier = threading.Barrier(THREADS)
    outcomes: list[tuple[int, Outcome]] = []
    lock = threading.Lock()

    def work(number: int) -> None:
        barrier.wait(timeout=JOIN_TIMEOUT_S)
        item = variants[number % 2]
        outcome = _retrying(lambda: wide_ledger.apply_batch([item]))[0]
        with lock:
            outcomes.append((number % 2, outcome))

    _run_threads(work)
    winners = [(v, o) for v, o in outcomes if not o.replayed and o.approved]
    assert len(winners) == 1
    winner_variant = winners[0][0]
    for variant, outcome in outcomes:
        if variant == winner_variant:
            assert outcome.approved
        else:
            assert outcome.error_code is ErrorCode.IDEMPOTENCY_CONFLICT
    balances = [wide_ledger.card(card).balance_cents for card in CARDS[:2]]  # type: ignore[union-attr]
    assert sorted(balances) == sorted([10_000, 10_000 - (500, 700)[winner_variant]])
    assert wide_ledger.check() == []


def test_a_claim_lost_to_a_concurrent_transaction_aborts_the_batch_as_transient(
    service_database_url: str, ledger: Ledger
) -> None:
    """Deterministic version of the race above: B decides while A's claim is uncommitted."""
    import json

    from sqlalchemy import text

    from cloud.database import translate_errors
    from cloud.ledger_records import request_document
    from tests.waiting import wait_until

    for card in CARDS[:2]:
        ledger.apply(recharge(card, 10_000))
    # Creates the bar's sales account (even a declined order does), so that the only lock the
    # contender can wait for is the uncommitted claim.
    assert ledger.apply(bar_order("04FFFFFF")).error_code is ErrorCode.CARD_NOT_FOUND
    first = bar_order(CARDS[0], request_id="held-1")
    second = bar_order(CARDS[1], ("Wine", 1, 700), request_id="held-1")
    sql = text("SELECT sp_process_batch(CAST(:requests AS jsonb))")
    engine = make_engine(service_database_url, pool_size=3)
    errors: list[BaseException] = []
    try:
        holder = engine.connect()
        transaction = holder.begin()
        holder.execute(sql, {"requests": json.dumps([request_document(first)])})

        def contender() -> None:
            try:
                with translate_errors(), engine.begin() as connection:
                    connection.execute(sql, {"requests": json.dumps([request_document(second)])})
            except BaseException as error:
                errors.append(error)

        thread = threading.Thread(target=contender)
        thread.start()

        def contender_waits() -> bool:
            # A fresh transaction each time: pg_stat_activity is a per-transaction snapshot.
            with engine.begin() as observer:
                waiting = observer.execute(
                    text(
                        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                        " AND datname = current_database()"
                    )
                ).scalar()
            return bool(waiting)

        wait_until(contender_waits, timeout_s=10, what="the contender to wait for the claim")
        transaction.commit()
        holder.close()
        thread.join(timeout=JOIN_TIMEOUT_S)
    finally:
        engine.dispose()
    assert len(errors) == 1 and isinstance(errors[0], TransientDatabaseError)
    assert "40001" in str(errors[0])
    # Retried, the contender sees the committed claim: a conflict, nothing charged twice.
    assert ledger.apply(second).error_code is ErrorCode.IDEMPOTENCY_CONFLICT
    assert ledger.card(CARDS[1]).balance_cents == 10_000  # type: ignore[union-attr]
    assert ledger.card(CARDS[0]).balance_cents == 9_500  # type: ignore[union-attr]
