"""`festival-cloud shift close` (issue 17 §4, revision 0019): the cash drawer of a checkpoint
counted against the cash its account took since the last close, the variance booked in double
entry, exact when top-ups and closes run at the same time."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any

import pytest

from cloud import database
from cloud.database import make_engine, text
from cloud.ledger import Ledger
from cloud.ledger_records import request_document
from cloud.shifts import ShiftClose, ShiftRefused, ShiftStore
from tests.ledger.helpers import PUBLIC_KEY, bar_order, execute, recharge
from tests.ledger.test_cli import cli
from tests.ledger.test_r0009_migration import _differences, _schema
from tests.waiting import wait_until

REVISION = "0019"  # the shifts' revision: one place
PREVIOUS = "0018"
JOIN_TIMEOUT_S = 30
HANDLE_SQL = text(
    "SELECT sp_handle_request(CAST(:request AS jsonb), :balance_max, :topup_max, :return_max,"
    " :menu_grace_s)"
)


@pytest.fixture
def shifts(ledger: Ledger) -> ShiftStore:
    return ShiftStore(ledger.engine)


def _postings(url: str, transaction_id: str) -> dict[str, int]:
    rows = execute(
        url,
        "SELECT a.name, p.amount_cents FROM postings p JOIN accounts a USING (account_id)"
        " WHERE p.transaction_id = CAST(:tx AS uuid)",
        tx=transaction_id,
    )
    return {str(name): int(amount) for name, amount in rows}


def _account_total(url: str, name: str) -> int:
    rows = execute(
        url,
        "SELECT coalesce(sum(p.amount_cents), 0) FROM postings p"
        " JOIN accounts a USING (account_id) WHERE a.name = :name",
        name=name,
    )
    return int(rows[0][0])


def _held_topup(ledger: Ledger, card_uid: str, amount_cents: int) -> tuple[Any, Any]:
    """A cash top-up at checkpoint-1 written but not committed: (connection, transaction)."""
    connection = ledger.engine.connect()
    transaction = connection.begin()
    outcome = connection.execute(
        HANDLE_SQL,
        {
            "request": json.dumps(request_document(recharge(card_uid, amount_cents))),
            "balance_max": ledger.max_balance_cents,
            "topup_max": ledger.max_topup_cents,
            "return_max": ledger.return_cents_max,
            "menu_grace_s": ledger.menu_grace_s,
        },
    ).scalar_one()
    document = json.loads(outcome) if isinstance(outcome, str) else outcome
    assert document["status"] == "approved"
    return connection, transaction


def test_expected_counts_cash_topups_only_and_the_variance_balances(
    ledger: Ledger, shifts: ShiftStore, service_database_url: str
) -> None:
    ledger.apply(recharge("04AA0001", 2_000))
    ledger.apply(recharge("04AA0002", 3_000))
    ledger.apply(recharge("04AA0003", 5_000, method="card"))  # the card terminal's, not cash
    ledger.apply(recharge("04AA0004", 700, kiosk_id="checkpoint-2"))  # another drawer
    ledger.apply(bar_order("04AA0001"))  # a sale moves no cash

    closed = shifts.close("checkpoint-1", 4_990, "staff-9")

    assert (closed.expected_cents, closed.counted_cents, closed.variance_cents) == (
        5_000,
        4_990,
        -10,
    )
    assert (closed.shift_no, closed.opened_at, closed.closed_by) == (1, None, "staff-9")
    assert closed.transaction_id is not None
    # 10 cents short: the drawer's account gives back 10, the variance account takes the loss
    assert _postings(service_database_url, closed.transaction_id) == {
        "cash:checkpoint-1": 10,
        "variance:cash": -10,
    }
    # the drawer's account now says what was counted
    assert _account_total(service_database_url, "cash:checkpoint-1") == -4_990
    assert ledger.check() == []


def test_a_second_close_counts_only_what_came_after_the_first(
    ledger: Ledger, shifts: ShiftStore, service_database_url: str
) -> None:
    ledger.apply(recharge("04AB0001", 2_500))
    first = shifts.close("checkpoint-1", 2_600, None)  # 1.00 over
    assert (first.expected_cents, first.variance_cents) == (2_500, 100)

    ledger.apply(recharge("04AB0002", 1_500))
    ledger.apply(recharge("04AB0003", 400))
    second = shifts.close("checkpoint-1", 1_900, None)
    assert (second.shift_no, second.opened_at) == (2, first.closed_at)
    assert (second.expected_cents, second.variance_cents, second.transaction_id) == (
        1_900,
        0,
        None,
    )

    third = shifts.close("checkpoint-1", 0, None)
    assert (third.shift_no, third.expected_cents, third.variance_cents) == (3, 0, 0)
    assert _account_total(service_database_url, "variance:cash") == 100
    assert [close.shift_no for close in shifts.closes(checkpoint_id="checkpoint-1")] == [1, 2, 3]
    assert ledger.check() == []


def test_a_checkpoint_without_cash_closes_at_zero_and_unknown_or_negative_are_refused(
    ledger: Ledger, shifts: ShiftStore
) -> None:
    empty = shifts.close("checkpoint-2", 0, None)  # registered, never took cash
    assert (empty.expected_cents, empty.variance_cents) == (0, 0)
    with pytest.raises(ShiftRefused, match="unknown checkpoint gate-404"):
        shifts.close("gate-404", 0, None)
    with pytest.raises(ShiftRefused, match="unknown checkpoint bar-1"):  # a bar has no drawer
        shifts.close("bar-1", 0, None)
    with pytest.raises(ShiftRefused, match="negative"):
        shifts.close("checkpoint-1", -1, None)
    assert [close.checkpoint_id for close in shifts.closes()] == ["checkpoint-2"]


def test_a_topup_uncommitted_during_a_close_lands_in_the_next_shift(
    ledger: Ledger, shifts: ShiftStore
) -> None:
    ledger.apply(recharge("04AC0001", 1_000))
    connection, transaction = _held_topup(ledger, "04AC0002", 300)
    try:
        first = shifts.close("checkpoint-1", 1_000, None)
        transaction.commit()
    finally:
        connection.close()
    assert (first.expected_cents, first.variance_cents) == (1_000, 0)
    second = shifts.close("checkpoint-1", 300, None)
    assert (second.expected_cents, second.variance_cents) == (300, 0)
    assert ledger.check() == []


def test_a_topup_committed_while_a_close_is_open_lands_in_the_next_shift(
    ledger: Ledger, shifts: ShiftStore
) -> None:
    ledger.apply(recharge("04AD0001", 1_000))
    with ledger.engine.connect() as connection:
        transaction = connection.begin()
        outcome = connection.execute(
            text("SELECT sp_shift_close('checkpoint-1', 990, NULL)")
        ).scalar_one()
        # the close has summed the drawer; a top-up commits before the close does
        assert ledger.apply(recharge("04AD0002", 450)).status.value == "approved"
        transaction.commit()
    first = ShiftClose.from_document(json.loads(outcome) if isinstance(outcome, str) else outcome)
    assert (first.expected_cents, first.variance_cents) == (1_000, -10)
    second = shifts.close("checkpoint-1", 450, None)
    assert (second.expected_cents, second.variance_cents) == (450, 0)
    assert ledger.check() == []


def test_two_closes_at_once_run_one_after_the_other(
    ledger: Ledger, shifts: ShiftStore, service_database_url: str
) -> None:
    ledger.apply(recharge("04AE0001", 2_000))
    engine = make_engine(service_database_url, pool_size=3)
    results: list[ShiftClose] = []
    errors: list[BaseException] = []
    try:
        holder = engine.connect()
        transaction = holder.begin()
        holder.execute(text("SELECT sp_shift_close('checkpoint-1', 1950, NULL)"))

        def contender() -> None:
            try:
                results.append(ShiftStore(engine).close("checkpoint-1", 0, None))
            except BaseException as error:
                errors.append(error)

        thread = threading.Thread(target=contender)
        thread.start()

        def contender_waits() -> bool:
            with engine.begin() as observer:
                waiting = observer.execute(
                    text(
                        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                        " AND datname = current_database()"
                    )
                ).scalar()
            return bool(waiting)

        wait_until(contender_waits, timeout_s=10, what="the second close to wait for the first")
        transaction.commit()
        holder.close()
        thread.join(timeout=JOIN_TIMEOUT_S)
    finally:
        engine.dispose()
    assert errors == []
    # the second close sees the first one's count (and its variance): nothing left to expect
    assert [(c.shift_no, c.expected_cents, c.variance_cents) for c in results] == [(2, 0, 0)]
    first = shifts.closes(checkpoint_id="checkpoint-1")[0]
    assert (first.shift_no, first.expected_cents, first.variance_cents) == (1, 2_000, -50)
    assert ledger.check() == []


def test_the_cli_prints_json_and_euros_and_refuses_an_unknown_checkpoint(
    database_url: str,
) -> None:
    engine = make_engine(database_url, pool_size=1)
    try:
        ledger = Ledger(engine)
        ledger.add_kiosk("cash-7", PUBLIC_KEY, "checkpoint", "gate-north")
        outcome = ledger.apply(
            recharge("04AF0001", 1_234, kiosk_id="cash-7", checkpoint_id="gate-north")
        )
        assert outcome.status.value == "approved"
    finally:
        engine.dispose()
    closed = cli(database_url, "shift", "close", "gate-north", "--counted-cents", "1200", "--json")
    assert closed.returncode == 0, closed.stderr
    document = json.loads(closed.stdout)
    assert (
        document["expected_cents"],
        document["counted_cents"],
        document["variance_cents"],
        document["shift_no"],
    ) == (1_234, 1_200, -34, 1)
    human = cli(database_url, "shift", "close", "gate-north", "--counted-cents", "0")
    assert human.returncode == 0, human.stderr
    assert "expected 0.00, counted 0.00, variance 0.00" in human.stdout
    unknown = cli(database_url, "shift", "close", "gate-south", "--counted-cents", "0")
    assert unknown.returncode == 1
    assert "unknown checkpoint gate-south" in unknown.stderr
    negative = cli(database_url, "shift", "close", "gate-north", "--counted-cents", "-5")
    assert negative.returncode == 1 and "negative" in negative.stderr
    assert cli(database_url, "check").returncode == 0


def test_downgrade_of_the_shifts_revision_restores_the_previous_one_exactly(
    make_database: Callable[..., str],
) -> None:
    url = make_database()
    database.upgrade(url, PREVIOUS)
    before = _schema(url)
    database.upgrade(url, REVISION)
    assert any("shift_closes" in line for line in _schema(url))
    database.downgrade(url, PREVIOUS)
    assert _schema(url) == before, _differences(before, _schema(url))
