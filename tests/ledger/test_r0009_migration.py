"""Revision 0009 (the procedures restructured): its downgrade gives back exactly what 0008 had,
and the whole ledger suite runs at 0009 (every test's database is migrated to head)."""

from __future__ import annotations

import difflib
import json
import subprocess
from collections.abc import Callable, Sequence

import sqlalchemy

from cloud import database
from cloud.database import make_engine
from cloud.ledger import Ledger
from cloud.ledger_records import LedgerRequest, Outcome, outcome_from_document, request_document
from cloud.sandbox import embedded_postgres_bin
from protocol.models import BarItem
from tests.ledger.helpers import PUBLIC_KEY, bar_order, recharge, scalar


class _LedgerOfEveryRevision(Ledger):
    """The Ledger, its requests through sp_process_batch with the procedure's own default
    limits: the one call every revision from 0005 on answers (0011 added a parameter, which
    today's Ledger passes)."""

    def apply(self, item: LedgerRequest) -> Outcome:
        return self.apply_batch([item])[0]

    def apply_batch(self, items: Sequence[LedgerRequest]) -> list[Outcome]:
        documents = self._scalar(
            "SELECT sp_process_batch(CAST(:requests AS jsonb))",
            requests=json.dumps([request_document(item) for item in items]),
        )
        return [outcome_from_document(document) for document in documents]


DUMP_TIMEOUT_S = 60
# pg_dump's lines that say nothing about the schema: comments, its session settings, and the
# \restrict key it draws at random for every dump.
NOT_SCHEMA = ("--", "SET ", "SELECT pg_catalog.set_config", "\\restrict", "\\unrestrict")


def _schema(url: str) -> list[str]:
    """The database's whole schema as pg_dump prints it (functions with their bodies, grants,
    defaults, types and domains, tables with their constraints, indexes, triggers), normalised."""
    parts = sqlalchemy.engine.make_url(url)
    dumped = subprocess.run(
        [
            str(embedded_postgres_bin() / "pg_dump"),
            "--schema-only",
            "-h",
            str(parts.host),
            "-p",
            str(parts.port),
            "-U",
            str(parts.username),
            str(parts.database),
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=DUMP_TIMEOUT_S,
    ).stdout
    return [line for line in dumped.splitlines() if line and not line.startswith(NOT_SCHEMA)]


def _differences(before: list[str], after: list[str]) -> str:
    return "\n".join(list(difflib.unified_diff(before, after, "0008", "after", lineterm=""))[:200])


def test_downgrade_of_0009_restores_revision_0008_exactly(
    make_database: Callable[..., str],
) -> None:
    url = make_database()
    database.upgrade(url, "0008")
    at_0008 = _schema(url)
    assert any("FUNCTION public.ledger_process_requests" in line for line in at_0008)

    database.upgrade(url, "0009")
    at_0009 = _schema(url)
    assert at_0009 != at_0008
    assert any("DOMAIN public.ledger_card_uid" in line for line in at_0009)

    database.downgrade(url, "0008")
    assert database.current_revision(url) == "0008"
    after = _schema(url)
    assert after == at_0008, _differences(at_0008, after)


def test_0009_up_down_up_with_money_on_the_cards(make_database: Callable[..., str]) -> None:
    """Rows written at 0008 and at 0009 survive both directions; each revision keeps working."""
    url = make_database()
    database.upgrade(url, "0008")
    engine = make_engine(url, pool_size=1)
    try:
        ledger = _LedgerOfEveryRevision(engine)
        ledger.add_kiosk("bar-1", PUBLIC_KEY, "bar")
        ledger.add_kiosk("checkpoint-1", PUBLIC_KEY, "checkpoint")
        cup = BarItem("Cup", 1, 200, is_deposit=True)
        # At 0008 through sp_process_batch (which both revisions have), in the protocol's form.
        assert all(o.approved for o in ledger.apply_batch([recharge("04AAAAAA", 5_000)]))
        assert ledger.apply_batch([bar_order("04AAAAAA", ("Beer", 1, 500), cup)])[0].approved
        at_0008 = _schema(url)

        database.upgrade(url, "0009")
        assert ledger.apply(bar_order("04AAAAAA", ("Wine", 1, 700))).new_balance_cents == 3_600
        assert ledger.block_card("04AAAAAA", "lost") and ledger.unblock_card("04AAAAAA")
        assert ledger.check() == []
        assert scalar(url, "SELECT pg_typeof(card_uid)::text FROM cards") == "ledger_card_uid"

        database.downgrade(url, "0008")
        assert _schema(url) == at_0008
        assert scalar(url, "SELECT pg_typeof(card_uid)::text FROM cards") == "text"
        back = BarItem("Cup", 1, 200, is_deposit=True, is_return=True)
        assert ledger.apply_batch([bar_order("04AAAAAA", back)])[0].new_balance_cents == 3_800
        assert ledger.deposit_balance_cents() == 0
        assert ledger.check() == []

        database.upgrade(url, "0009")
        assert ledger.apply(recharge("04BBBBBB", 1_000)).new_balance_cents == 1_000
        assert ledger.check() == []
        assert scalar(url, "SELECT count(*) FROM transactions") == 5
    finally:
        engine.dispose()


def test_the_ledger_suite_runs_at_head_with_revision_0009(database_url: str) -> None:
    """Every test of tests/ledger gets a copy of the session's template, migrated to head."""
    assert database.head_revision() >= "0009"
    assert database.current_revision(database_url) == database.head_revision()
    assert scalar(
        database_url,
        # revision 0011's signature (the price check), which replaced 0009's
        "SELECT to_regprocedure('ledger_decide_request(ledger_request, text,"
        " bigint, bigint, bigint, bigint, bigint, text)') IS NOT NULL",
    )
