"""Every revision's downgrade gives back its predecessor's schema exactly, and the ``--@restore``
lines of the downgrade files (cloud/migrations/sql.py) name what they claim to.

The revisions' own tests (test_r0009_migration.py, test_r0021_sun_loss.py, ...) check the
downgrades refused once data exists; this one walks the whole chain once, on an empty database."""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from cloud import database
from cloud.migrations import sql
from tests.ledger.test_migrations import _revision_ids
from tests.ledger.test_r0009_migration import _differences, _schema

VERSIONS = Path(sql.__file__).with_name("versions")


def test_every_downgrade_restores_the_previous_revision_exactly(
    make_database: Callable[..., str],
) -> None:
    url = make_database()
    revisions = sorted(_revision_ids())
    assert revisions[0] == "0001" and len(revisions) >= 26
    database.upgrade(url, revisions[0])
    for previous, revision in itertools.pairwise(revisions):
        before = _schema(url)
        database.upgrade(url, revision)
        assert database.current_revision(url) == revision
        database.downgrade(url, previous)
        assert database.current_revision(url) == previous
        after = _schema(url)
        assert after == before, f"{revision} down to {previous}:\n" + _differences(before, after)
        database.upgrade(url, revision)


def _downgrade_files() -> list[Path]:
    return sorted(VERSIONS.glob("r*_downgrade.sql"))


def test_downgrades_carry_no_copied_function_but_restore_by_name() -> None:
    """A downgrade restores a replaced function by naming it (one line); a copied body is how the
    copies drifted before. Kept apart from this rule: none today."""
    restores = 0
    for path in _downgrade_files():
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"^CREATE (OR REPLACE )?FUNCTION", text, re.MULTILINE), path.name
        restores += len(re.findall(r"^--@restore ", text, re.MULTILINE))
        # every directive expands, to statements that no longer hold a directive
        assert "--@" not in sql.expand(text, VERSIONS)
    assert restores >= 70


def test_a_restore_is_the_named_revisions_statement_as_create_or_replace() -> None:
    upgrade = (VERSIONS / "r0016_counter_upgrade.sql").read_text(encoding="utf-8")
    original = sql.function_statement(upgrade, "ledger_write_requests")
    restored = sql.restored("ledger_write_requests", "0016")
    assert restored.startswith("CREATE OR REPLACE FUNCTION ledger_write_requests(")
    assert restored.endswith(";") and original.endswith(";")
    # the same text after the head: the body, its settings, its comments
    assert restored.split("(", 1)[1] == original.split("(", 1)[1]
    renamed = sql.restored("ledger_process_requests", "0014", "ledger_process_plain_requests")
    assert renamed.startswith("CREATE OR REPLACE FUNCTION ledger_process_plain_requests(")
    assert "ledger_process_requests(" not in renamed.splitlines()[0]


def test_the_statement_ends_after_its_body_not_at_a_semicolon_inside_it() -> None:
    text = (
        "CREATE FUNCTION f(p integer) RETURNS integer\nLANGUAGE plpgsql AS $body$\n"
        "BEGIN\n    RETURN p; -- a ';' and '$$' inside\nEND\n$body$;\n"
        "CREATE FUNCTION g() RETURNS void LANGUAGE sql AS $$ SELECT 1; $$;\n"
    )
    assert sql.function_statement(text, "f").endswith("END\n$body$;")
    assert sql.function_statement(text, "g") == (
        "CREATE FUNCTION g() RETURNS void LANGUAGE sql AS $$ SELECT 1; $$;"
    )


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("--@restore no_such_function from 0016", "0 CREATE FUNCTION statements"),
        ("--@restore ledger_write_requests from 0099", "revision 0099: 0 upgrade files"),
        ("--@restore ledger_write_requests", "not a directive"),
        ("--@restor ledger_write_requests from 0016", "not a directive"),
    ],
)
def test_a_directive_that_names_nothing_fails_loudly(line: str, message: str) -> None:
    with pytest.raises(sql.RestoreError, match=re.escape(message)):
        sql.expand(f"SELECT 1;\n{line}\nSELECT 2;\n", VERSIONS)


def test_a_function_defined_twice_in_one_file_cannot_be_restored_from_it() -> None:
    text = "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS $$ SELECT 1 $$;\n" * 2
    with pytest.raises(sql.RestoreError, match="2 CREATE FUNCTION statements for f"):
        sql.function_statement(text, "f")
