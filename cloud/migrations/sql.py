"""Run a revision's SQL file: `rNNNN_name.py` runs `rNNNN_name_upgrade.sql` / `_downgrade.sql`.

The stored procedures are SQL, so they live in .sql files a reviewer can read as SQL; the revision
scripts only name them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Literal

from alembic import op


def run_sql_file(revision_file: str, direction: Literal["upgrade", "downgrade"]) -> None:
    path = Path(revision_file)
    sql = path.with_name(f"{path.stem}_{direction}.sql").read_text(encoding="utf-8")
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
