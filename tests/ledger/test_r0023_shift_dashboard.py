"""Revision 0023 (the dashboard closes a shift): the API's role may call sp_shift_close, and the
downgrade gives back exactly what 0022 had. The route itself: tests/api/test_shift_report.py."""

from __future__ import annotations

from collections.abc import Callable

from cloud import database
from tests.ledger.helpers import scalar
from tests.ledger.test_r0009_migration import _differences, _schema

CAN_CLOSE_SQL = (
    "SELECT has_function_privilege('festival_api', 'sp_shift_close(text, bigint, text)', 'EXECUTE')"
)


def test_downgrade_of_0023_restores_revision_0022_exactly(
    make_database: Callable[..., str],
) -> None:
    url = make_database()
    database.upgrade(url, "0022")
    at_0022 = _schema(url)
    assert scalar(url, CAN_CLOSE_SQL) is False
    database.upgrade(url, "0023")
    assert scalar(url, CAN_CLOSE_SQL) is True
    database.downgrade(url, "0022")
    assert scalar(url, CAN_CLOSE_SQL) is False
    assert _schema(url) == at_0022, _differences(at_0022, _schema(url))
