"""Revision 0026: the sales reports' time of a sale (DESIGN.md: the sale's created_at_ms) has an
index of its own, so a report window "from X" does not read every order of the festival, and
its downgrade restores revision 0025 exactly.

Against the real PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import sqlalchemy

from cloud import database
from cloud.reports import (
    NET_SALES_LINES_SQL,
    SALES_SELECT_SQL,
    SalesGroup,
    SalesWindow,
    _window_sql,
)
from tests.ledger.test_r0009_migration import _differences, _schema

REVISION = "0026"
PREVIOUS = "0025"
INDEX = "bar_orders_sold_at_brin"


def _plan_names(url: str, group: SalesGroup, window: SalesWindow) -> set[str]:
    """The index names in the plan of the report's own statement, with sequential scans priced
    out, so the planner takes an index wherever one answers the window."""
    condition, params = _window_sql(window)
    sql = NET_SALES_LINES_SQL.format(window=condition) + SALES_SELECT_SQL[group]
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.begin() as connection:
            connection.execute(sqlalchemy.text("SET LOCAL enable_seqscan = off"))
            plan = connection.execute(
                sqlalchemy.text("EXPLAIN (FORMAT JSON) " + sql), params
            ).scalar_one()
    finally:
        engine.dispose()
    names: set[str] = set()

    def walk(node: dict[str, object]) -> None:
        if "Index Name" in node:
            names.add(str(node["Index Name"]))
        for child in node.get("Plans", []):  # type: ignore[attr-defined]
            walk(child)

    walk((plan if isinstance(plan, list) else json.loads(plan))[0]["Plan"])
    return names


def test_a_report_window_reads_through_the_index_of_the_sale_time(
    make_database: Callable[..., str],
) -> None:
    url = make_database()
    database.upgrade(url, REVISION)
    now = datetime.now(UTC)
    for group in (SalesGroup.PRODUCT, SalesGroup.KIOSK, SalesGroup.HOUR):
        assert INDEX in _plan_names(url, group, SalesWindow(now - timedelta(days=1), None))
        assert INDEX in _plan_names(url, group, SalesWindow(now - timedelta(days=1), now))
    # The whole festival has no window: nothing to look up.
    assert INDEX not in _plan_names(url, SalesGroup.PRODUCT, SalesWindow(None, None))


def test_downgrade_restores_revision_0025_exactly(make_database: Callable[..., str]) -> None:
    url = make_database()
    database.upgrade(url, PREVIOUS)
    before = _schema(url)
    database.upgrade(url, REVISION)
    after = _schema(url)
    assert any(INDEX in line for line in after) and not any(INDEX in line for line in before)
    database.downgrade(url, PREVIOUS)
    assert _schema(url) == before, _differences(before, _schema(url))
    database.upgrade(url, REVISION)
    assert database.current_revision(url) == REVISION
