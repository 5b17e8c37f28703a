"""Migrations: upgrade, downgrade to base and upgrade again on a database holding data."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from cloud import database
from cloud.database import make_engine
from cloud.ledger import Ledger
from protocol.errors import ErrorCode
from tests.ledger.helpers import PUBLIC_KEY, bar_order, execute, recharge, scalar


def _traffic(url: str) -> None:
    engine = make_engine(url, pool_size=1)
    try:
        ledger = Ledger(engine)
        ledger.add_kiosk("bar-1", PUBLIC_KEY, "bar")
        ledger.add_kiosk("checkpoint-1", PUBLIC_KEY, "checkpoint")
        ledger.apply(recharge("04AAAAAA", 5_000))
        ledger.apply(bar_order("04AAAAAA"))
        assert ledger.check() == []
    finally:
        engine.dispose()


def _functions(url: str, pattern: str) -> list[str]:
    return [
        row[0]
        for row in execute(
            url,
            "SELECT proname FROM pg_proc WHERE pronamespace = 'public'::regnamespace "
            "AND proname LIKE :pattern ORDER BY proname",
            pattern=pattern,
        )
    ]


def _traffic_again(url: str) -> None:
    """The metadata fallback works after a re-upgrade, for the service role too."""
    engine = make_engine(database.service_url(url), pool_size=1)
    try:
        outcome = Ledger(engine).process_stripe_dispute(
            event_id="evt_migration", payment_intent_id="pi_unknown", card_uid="04AAAAAA"
        )
        assert outcome.approved and outcome.card_uid == "04AAAAAA"
        assert Ledger(engine).check() == []
    finally:
        engine.dispose()
    assert scalar(url, "SELECT status FROM cards") == "blocked"


def test_upgrade_downgrade_upgrade_with_data(make_database: Callable[..., str]) -> None:
    url = make_database()
    assert database.current_revision(url) is None
    database.upgrade(url)
    head = database.head_revision()
    assert database.current_revision(url) == head and head == max(_revision_ids())
    _traffic(url)

    # Revision 0003 down and up again: only its functions go; 0002's procedures and the data stay.
    database.downgrade(url, "0002")
    assert database.current_revision(url) == "0002"
    assert _functions(url, "sp\\_handle\\_stripe\\_%") == []
    assert _functions(url, "ledger\\_metadata\\_outcome") == []
    assert _functions(url, "sp\\_process\\_stripe\\_refund") == ["sp_process_stripe_refund"]
    assert scalar(url, "SELECT balance_cents FROM cards") == 4_500
    database.upgrade(url, "0003")
    assert database.current_revision(url) == "0003"
    assert _functions(url, "sp\\_handle\\_stripe\\_%") == [
        "sp_handle_stripe_dispute",
        "sp_handle_stripe_refund",
    ]
    _traffic_again(url)

    # One step down: the procedures go, the data stays.
    database.downgrade(url, "0001")
    assert database.current_revision(url) == "0001"
    assert scalar(url, "SELECT count(*) FROM pg_proc WHERE proname LIKE 'sp\\_%'") == 0
    assert scalar(url, "SELECT balance_cents FROM cards") == 4_500
    database.upgrade(url)
    assert scalar(url, "SELECT count(*) FROM postings") == 4

    # All the way down: nothing of ours is left (the cluster-wide role stays).
    database.downgrade(url, "base")
    assert database.current_revision(url) is None
    leftovers = execute(
        url,
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = 'public' AND c.relkind IN ('r', 'v') AND c.relname <> 'alembic_version'",
    )
    assert leftovers == []
    assert scalar(url, "SELECT count(*) FROM pg_roles WHERE rolname = 'festival_service'") == 1

    database.upgrade(url, "head")
    _traffic(url)
    assert scalar(url, "SELECT balance_cents FROM cards") == 4_500


def test_migrations_are_found_from_the_package_not_the_working_directory(
    make_database: Callable[..., str], tmp_path: object, monkeypatch: object
) -> None:
    import pytest

    assert isinstance(monkeypatch, pytest.MonkeyPatch)
    monkeypatch.chdir(str(tmp_path))
    url = make_database()
    database.upgrade(url, "0001")
    assert database.current_revision(url) == "0001"


def test_revision_0005_down_and_up_keeps_the_cup_deposits(
    make_database: Callable[..., str],
) -> None:
    """Rolling 0005 back strands no money: the deposit account is parked as a system account
    revision 0004 accepts ('sales:deposit:cups') and comes back, with its balance, on upgrade."""
    from protocol.models import BarItem

    url = make_database()
    database.upgrade(url)
    engine = make_engine(url, pool_size=1)
    try:
        ledger = Ledger(engine)
        ledger.add_kiosk("bar-1", PUBLIC_KEY, "bar")
        ledger.add_kiosk("checkpoint-1", PUBLIC_KEY, "checkpoint", checkpoint_id="gate-a")
        ledger.apply(recharge("04AAAAAA", 5_000))
        cups = BarItem("Cup", 2, 200, is_deposit=True)
        assert ledger.apply(bar_order("04AAAAAA", ("Beer", 1, 500), cups)).approved
        assert ledger.deposit_balance_cents() == 400
        assert ledger.record_dead_letter(
            topic="junk",
            payload=b"j" * 10_000,
            error_code=ErrorCode.INVALID_REQUEST,
            reason="not a JWS",
            kiosk_id="bar-1",
        )

        database.downgrade(url, "0004")
        assert execute(
            url,
            "SELECT a.kind, a.name, sum(p.amount_cents) FROM accounts a"
            " JOIN postings p ON p.account_id = a.account_id"
            " WHERE a.name LIKE '%deposit%' GROUP BY a.kind, a.name",
        ) == [("sales", "sales:deposit:cups", 400)]
        assert scalar(url, "SELECT to_regclass('deposit_balances')") is None
        assert scalar(url, "SELECT length(payload) FROM dead_letters") == 8192
        assert ledger.check() == []  # revision 0002's checks, on what 0004 has

        database.upgrade(url)
        assert ledger.deposit_balance_cents() == 400
        assert scalar(url, "SELECT kind FROM accounts WHERE name = 'deposit:cups'") == "deposit"
        assert scalar(url, "SELECT checkpoint_id FROM kiosks WHERE kiosk_id = 'checkpoint-1'") == (
            "checkpoint-1"  # the column went with the rollback: each kiosk is its own again
        )
        back = BarItem("Cup", 2, 200, is_deposit=True, is_return=True)
        assert ledger.apply(bar_order("04AAAAAA", back)).new_balance_cents == 4_500
        assert ledger.deposit_balance_cents() == 0
        assert ledger.check() == []
    finally:
        engine.dispose()


def _revision_ids() -> list[str]:
    """The revision ids of the scripts in cloud/migrations/versions (rNNNN_*.py)."""
    versions = Path(database.__file__).parent / "migrations" / "versions"
    return [path.name[1:5] for path in versions.glob("r[0-9][0-9][0-9][0-9]_*.py")]
