"""Revision 0021 (offline sales whose SUN fails go to the loss account): the downgrade gives
back exactly what 0020 had, and is refused once a sale was charged to the loss account. The
behaviour itself: tests/ledger/test_r0014_sun.py (the SUN rules) and tests/contract."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from cloud import database
from cloud.ledger import Ledger
from tests.ledger.helpers import bar_order, scalar
from tests.ledger.test_r0009_migration import _differences, _schema
from tests.ledger.test_r0014_sun import _apply_offline, sun


def test_downgrade_of_0021_restores_revision_0020_exactly(
    make_database: Callable[..., str],
) -> None:
    url = make_database()
    database.upgrade(url, "0020")
    at_0020 = _schema(url)
    database.upgrade(url, "0021")
    assert any("loss_cents" in line for line in _schema(url))
    database.downgrade(url, "0020")
    assert _schema(url) == at_0020, _differences(at_0020, _schema(url))


def test_the_downgrade_is_refused_once_a_sale_went_to_the_loss_account(
    ledger: Ledger, service_database_url: str, database_url: str
) -> None:
    outcome = _apply_offline(
        service_database_url, sun(bar_order("04A1B2C3D4E5F6", ("Beer", 1, 500)), failure="missing")
    )
    assert outcome["status"] == "approved", outcome
    with pytest.raises(Exception, match="charged to the loss account"):
        database.downgrade(database_url, "0020")
    # later revisions (each its own transaction) went down; 0021's own downgrade was refused
    assert database.current_revision(database_url) == "0021"
    assert scalar(database_url, "SELECT sum(loss_cents) FROM offline_sales") == 500
