"""Revision 0007's functions run on PostgreSQL 15 too (Debian's; production may use it): POS
device authentication, the shared rate limiter, and the festival_api grants."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.exc import ProgrammingError

from cloud import database
from cloud.api.ratelimit import SharedRateLimiter
from cloud.database import make_engine, service_url
from cloud.pos_devices import PosDevices
from tests.ledger.test_postgres15 import postgres15_url  # noqa: F401 - the fixture


def test_pos_devices_rate_limits_and_the_api_role_on_postgresql_15(
    postgres15_url: str,  # noqa: F811
) -> None:
    database.upgrade(postgres15_url)
    owner = make_engine(postgres15_url, pool_size=1)
    api = make_engine(service_url(postgres15_url, "festival_api"), pool_size=2)
    try:
        _, token = PosDevices(owner).add("till-15", "bar")
        device = PosDevices(api).authenticate(token)
        assert device is not None and device.role == "bar" and device.seq == 1
        assert PosDevices(api).authenticate(token + "x") is None
        limiter = SharedRateLimiter(
            api,
            scope="pg15",
            burst=2,
            refill_per_s=0.001,
            global_burst=100,
            global_refill_per_s=1.0,
        )
        try:
            decisions = [limiter.take("2001:db8::1").allowed for _ in range(3)]
        finally:
            limiter.close()
        assert decisions == [True, True, False]
        with pytest.raises(ProgrammingError, match="permission denied"), api.begin() as c:
            c.execute(text("SELECT sp_process_batch('[]'::jsonb, 1, 1)"))
        database.downgrade(postgres15_url, "0006")
        database.upgrade(postgres15_url)
    finally:
        owner.dispose()
        api.dispose()
