"""Run a revision's SQL file: `rNNNN_name.py` runs `rNNNN_name_upgrade.sql` / `_downgrade.sql`.

The stored procedures are SQL, so they live in .sql files a reviewer can read as SQL; the revision
scripts only name them.

A downgrade puts back the functions its upgrade replaced. Rather than carry a copy of each (a
300-line procedure copied into every later downgrade, where a copy can drift from the text it
claims to restore), a downgrade names the function and the revision whose upgrade wrote the text
it gets back, on a line of its own::

    --@restore ledger_write_requests from 0016
    --@restore ledger_process_requests from 0014 as ledger_process_plain_requests

The line becomes that revision's ``CREATE FUNCTION`` statement as written, as ``CREATE OR
REPLACE`` (so it serves whether the function was dropped or is still there) and, with ``as``, under
the name a later revision renamed it to. This is Alembic's "replaceable objects" recipe, done on
the SQL text. tests/ledger/test_downgrades.py checks that every revision's downgrade gives back its
predecessor's schema exactly (pg_dump before and after), so a wrong revision number fails there.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Literal

from alembic import op

VERSIONS = Path(__file__).with_name("versions")

# Hand-written rather than a SQL parser: our files follow one layout (a statement starts a line
# with CREATE [OR REPLACE] FUNCTION name(, its body is one dollar-quoted string, the statement ends
# at the first ';' after the body), and a directive that finds nothing or two matches fails loudly.
_DIRECTIVE = re.compile(r"^--@(?P<rest>.*)$", re.MULTILINE)
_RESTORE = re.compile(
    r"restore (?P<name>[a-z0-9_]+) from (?P<revision>\d{4})(?: as (?P<rename>[a-z0-9_]+))?"
)
_CREATE = r"^CREATE (?:OR REPLACE )?FUNCTION (?:public\.)?{name}\s*\("
_DOLLAR_QUOTE = re.compile(r"\$[A-Za-z_]*\$")


class RestoreError(ValueError):
    """A ``--@`` line that does not name exactly one function of an existing revision."""


def function_statement(sql: str, name: str) -> str:
    """The one ``CREATE FUNCTION name(...)`` statement of ``sql``, from CREATE to its ';'."""
    starts = list(re.finditer(_CREATE.format(name=re.escape(name)), sql, re.MULTILINE))
    if len(starts) != 1:
        raise RestoreError(f"{len(starts)} CREATE FUNCTION statements for {name}, not one")
    start = starts[0]
    opening = _DOLLAR_QUOTE.search(sql, start.end())
    if opening is None:
        raise RestoreError(f"CREATE FUNCTION {name}: no dollar-quoted body")
    closing = sql.find(opening.group(0), opening.end())
    end = sql.find(";", closing + len(opening.group(0))) if closing >= 0 else -1
    if end < 0:
        raise RestoreError(f"CREATE FUNCTION {name}: the body or the statement does not end")
    return sql[start.start() : end + 1]


@cache
def _upgrade_sql(revision: str, versions: Path) -> str:
    files = sorted(versions.glob(f"r{revision}_*_upgrade.sql"))
    if len(files) != 1:
        raise RestoreError(f"revision {revision}: {len(files)} upgrade files, not one")
    return files[0].read_text(encoding="utf-8")


def restored(name: str, revision: str, rename: str | None = None, versions: Path = VERSIONS) -> str:
    """Revision ``revision``'s statement creating ``name``, as CREATE OR REPLACE (renamed)."""
    statement = function_statement(_upgrade_sql(revision, versions), name)
    head = re.match(_CREATE.format(name=re.escape(name)), statement)
    assert head is not None  # function_statement found the statement by this very pattern
    return f"CREATE OR REPLACE FUNCTION {rename or name}(" + statement[head.end() :]


def expand(sql: str, versions: Path = VERSIONS) -> str:
    """``sql`` with every ``--@restore`` line replaced by the statement it names."""

    def one(line: re.Match[str]) -> str:
        directive = _RESTORE.fullmatch(line.group("rest").strip())
        if directive is None:
            raise RestoreError(f"not a directive: {line.group(0)!r}")
        return restored(
            directive.group("name"),
            directive.group("revision"),
            directive.group("rename"),
            versions,
        )

    return _DIRECTIVE.sub(one, sql)


def revision_sql(revision_file: str, direction: Literal["upgrade", "downgrade"]) -> str:
    """The SQL text a revision runs in that direction, its directives expanded."""
    path = Path(revision_file)
    text = path.with_name(f"{path.stem}_{direction}.sql").read_text(encoding="utf-8")
    return expand(text, path.parent)


def run_sql_file(revision_file: str, direction: Literal["upgrade", "downgrade"]) -> None:
    sql = revision_sql(revision_file, direction)
    # Straight to the driver's cursor, without parameters: psycopg2 then sends the text as is
    # (no %-formatting, no :name binds; SQLAlchemy's exec_driver_sql would pass an empty
    # parameter set and make psycopg2 read every % as a placeholder). The simple query protocol
    # runs many statements from one string, inside Alembic's transaction.
    cursor = op.get_bind().connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        cursor.execute(sql)
    finally:
        cursor.close()


def sql_revision(revision_file: str) -> tuple[Callable[[], None], Callable[[], None]]:
    """A revision's upgrade() and downgrade(): each runs the revision's SQL file of that name."""
    return (
        lambda: run_sql_file(revision_file, "upgrade"),
        lambda: run_sql_file(revision_file, "downgrade"),
    )
