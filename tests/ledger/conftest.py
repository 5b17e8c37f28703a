"""Ledger fixtures: a Ledger over a fresh migrated database, connected as the service role."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from cloud.database import make_engine
from cloud.ledger import Ledger
from tests.ledger.helpers import PUBLIC_KEY

KIOSKS = {
    "bar-1": "bar",
    "bar-2": "bar",
    "checkpoint-1": "checkpoint",
    "checkpoint-2": "checkpoint",
}


@pytest.fixture
def ledger(service_database_url: str) -> Iterator[Ledger]:
    """A Ledger as production runs it: through the least-privilege service role."""
    engine = make_engine(service_database_url, pool_size=4, application_name="test-ledger")
    ledger = Ledger(engine, max_balance_cents=150_000, max_topup_cents=100_000)
    for kiosk_id, role in KIOSKS.items():
        ledger.add_kiosk(kiosk_id, PUBLIC_KEY, role)
    yield ledger
    engine.dispose()
