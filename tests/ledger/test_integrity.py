"""Least privilege, the append-only ledger, balanced postings, and `check` catching corruption."""

from __future__ import annotations

import pytest
import sqlalchemy
from sqlalchemy import exc as sa_exc

from cloud.ledger import Ledger
from tests.ledger.helpers import bar_order, execute, recharge, scalar

CARD = "04ABCDEF"


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE cards SET balance_cents = 1000000",
        "INSERT INTO postings VALUES (gen_random_uuid(), 1, 5, NULL)",
        "DELETE FROM processed_requests",
        "DELETE FROM idempotency_keys",
        "INSERT INTO kiosks (kiosk_id, public_key_b64, role) VALUES "
        "('evil', '11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo', 'all')",
        "UPDATE kiosks SET enabled = true",
        "SELECT ledger_process_requests('[]', 1, 1, 1, 600)",
        # revision 0005: the deposit account's cache, the kiosks' checkpoints, the dead letters
        "UPDATE deposit_balances SET balance_cents = 1000000",
        "UPDATE kiosks SET checkpoint_id = 'another-drawer'",
        "DELETE FROM dead_letters",
        "UPDATE dead_letter_counts SET stored_count = 0",
        "SELECT ledger_store_dead_letter('t', '', 0, sha256(''), 'X', 'r', NULL, 1000)",
        "SELECT ledger_open_card('04000000')",
        "TRUNCATE app_transaction_log",
    ],
)
def test_service_role_cannot_write_directly(
    ledger: Ledger, service_database_url: str, statement: str
) -> None:
    ledger.apply(recharge(CARD, 1_000))
    with pytest.raises(sa_exc.ProgrammingError, match="permission denied"):
        execute(service_database_url, statement)
    assert ledger.card(CARD).balance_cents == 1_000  # type: ignore[union-attr]


def test_service_role_works_end_to_end_through_the_procedures(ledger: Ledger) -> None:
    # `ledger` is connected as festival_service: every path used in production works.
    assert scalar(
        ledger.engine.url.render_as_string(hide_password=False), "SELECT current_user"
    ) == ("festival_service")
    ledger.apply(recharge(CARD, 1_000))
    ledger.apply_batch([bar_order(CARD, ("Beer", 1, 300))])
    ledger.block_card(CARD, "test")
    ledger.unblock_card(CARD)
    assert ledger.card(CARD).balance_cents == 700  # type: ignore[union-attr]
    assert ledger.check() == [] and ledger.cleanup_expired_idempotency_keys() == 0


def test_postings_and_transactions_are_append_only_even_for_the_owner(
    ledger: Ledger, database_url: str
) -> None:
    ledger.apply(recharge(CARD, 1_000))
    for statement in (
        "UPDATE postings SET amount_cents = 0",
        "DELETE FROM postings",
        "TRUNCATE postings",
        "UPDATE transactions SET kind = 'bar_order'",
        "DELETE FROM transactions",
    ):
        with pytest.raises(sa_exc.DBAPIError, match="append-only"):
            execute(database_url, statement)


def test_unbalanced_postings_are_refused_even_for_the_owner(database_url: str) -> None:
    with pytest.raises(sa_exc.IntegrityError, match="sum to 5 cents"):
        execute(
            database_url,
            "INSERT INTO postings VALUES ('0190a000-0000-7000-8000-000000000001', 1, 5, NULL)",
        )


def test_negative_balance_is_refused_by_the_database(ledger: Ledger, database_url: str) -> None:
    ledger.apply(recharge(CARD, 1_000))
    with pytest.raises(sa_exc.IntegrityError, match="cards_balance_not_negative"):
        execute(database_url, f"UPDATE cards SET balance_cents = -1 WHERE card_uid = '{CARD}'")


def test_check_catches_a_corrupted_cached_balance(ledger: Ledger, database_url: str) -> None:
    ledger.apply(recharge(CARD, 1_000))
    assert ledger.check() == []
    execute(database_url, f"UPDATE cards SET balance_cents = 1500 WHERE card_uid = '{CARD}'")
    assert ledger.check() == [
        f"card {CARD}: cached balance 1500 cents, but its postings sum to 1000 cents"
    ]


def test_check_catches_tampered_postings_and_orphans(ledger: Ledger, database_url: str) -> None:
    ledger.apply(recharge(CARD, 1_000))
    engine = sqlalchemy.create_engine(database_url, poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.begin() as connection:
            # A superuser can switch triggers off: exactly the tampering `check` exists for.
            connection.execute(sqlalchemy.text("SET LOCAL session_replication_role = replica"))
            connection.execute(
                sqlalchemy.text(
                    "UPDATE postings SET amount_cents = amount_cents + 1"
                    " WHERE balance_after_cents IS NOT NULL"
                )
            )
            connection.execute(
                sqlalchemy.text(
                    "UPDATE processed_requests SET status = 'declined', transaction_id = NULL"
                )
            )
    finally:
        engine.dispose()
    report = "\n".join(ledger.check())
    assert "its postings sum to 1 cents, not 0" in report
    assert f"card {CARD}: cached balance 1000 cents, but its postings sum to 1001 cents" in report
    assert "which is not approved with this transaction" in report
