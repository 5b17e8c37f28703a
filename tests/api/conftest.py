"""Fixtures for the API tests: a real migrated PostgreSQL database per test, the fake Stripe
server, and the app - which connects as the API's own least-privilege role festival_api, like
production. `ledger` and `engine` are the consumer's role festival_service: tests set up kiosks
and read results with them, as the consumer and the operator would."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text

from cloud.api import create_app
from cloud.api.limits import ApiLimits
from cloud.database import make_engine
from cloud.ledger import Ledger
from cloud.settings import CloudSettings
from cloud.stripe_fake import FakeStripe, encode_event, signature_header

ADMIN_TOKEN = "admin-token-for-tests-0123456789"
# The shared token of before revision 1.1: set in the tests' settings, it must grant nothing.
OLD_POS_API_TOKEN = "pos-token-for-tests-0123456789"
# The POS device every test database has (see _registered_pos_device) and its token.
POS_DEVICE_ID = "pos-till-1"
POS_TOKEN = f"{POS_DEVICE_ID}.known-token-for-the-tests-0123456789abcdefgh"
WEBHOOK_SECRET = "whsec_test_secret_for_the_api_tests"
STRIPE_KEY = "sk_test_api_tests_0123456789"
# Generous limits so that functional tests are not throttled; the rate-limit test sets its own.
TEST_LIMITS = ApiLimits(
    checkout_burst=1000,
    checkout_refill_per_s=1000.0,
    checkout_global_burst=10_000,
    checkout_global_refill_per_s=10_000.0,
    # The Stripe refund runner of payouts is off: a test that serves the app with pending
    # Stripe parts would otherwise race it (tests/api/test_payout_refunds.py turns it on).
    payout_refund_interval_s=0,
    # The first limiter query of a test opens the app's first connection to a fresh database,
    # and on a busy 2-core machine that took longer than the production 0.5 s (CI: a checkout
    # answered 503). Its timeout is not what these tests are about: tests/api/test_ratelimit.py
    # covers it with its own limits.
    rate_limit_timeout_s=5.0,
)


@pytest.fixture(scope="session")
def fake_stripe() -> Iterator[FakeStripe]:
    fake = FakeStripe(port=0)
    fake.start()
    yield fake
    fake.stop()


def make_settings(database_url: str, stripe_api_base: str, **overrides: Any) -> CloudSettings:
    fields: dict[str, Any] = {
        "database_url": database_url,
        "stripe_secret_key": STRIPE_KEY,
        "stripe_webhook_secret": WEBHOOK_SECRET,
        "stripe_api_base": stripe_api_base,
        "admin_token": ADMIN_TOKEN,
        "pos_api_token": OLD_POS_API_TOKEN,
        "festival_environment": "development",
        "topup_success_url": "http://festival.test/topup?status=success",
        "topup_cancel_url": "http://festival.test/topup?status=cancelled",
    }
    fields.update(overrides)
    return CloudSettings(**fields)


@pytest.fixture
def settings(api_database_url: str, fake_stripe: FakeStripe) -> CloudSettings:
    return make_settings(api_database_url, fake_stripe.base_url)


@pytest.fixture
def engine(service_database_url: str) -> Iterator[Engine]:
    engine = make_engine(service_database_url, application_name="api-tests")
    yield engine
    engine.dispose()


@pytest.fixture
def owner_engine(database_url: str) -> Iterator[Engine]:
    """The database owner's connection, for reading what the service role cannot change."""
    engine = make_engine(database_url, application_name="api-tests-owner")
    yield engine
    engine.dispose()


@pytest.fixture
def ledger(engine: Engine, settings: CloudSettings) -> Ledger:
    return Ledger(
        engine,
        max_balance_cents=settings.festival_max_balance_cents,
        max_topup_cents=settings.festival_max_topup_cents,
        currency=settings.festival_currency,
    )


@pytest.fixture
def api_engine(api_database_url: str) -> Iterator[Engine]:
    """What the API connects as: festival_api."""
    engine = make_engine(api_database_url, application_name="api-tests-api")
    yield engine
    engine.dispose()


@pytest.fixture
def api_ledger(api_engine: Engine, settings: CloudSettings) -> Ledger:
    return Ledger(
        api_engine,
        max_balance_cents=settings.festival_max_balance_cents,
        max_topup_cents=settings.festival_max_topup_cents,
        currency=settings.festival_currency,
    )


@pytest.fixture
def app(settings: CloudSettings, api_ledger: Ledger) -> FastAPI:
    return create_app(settings, ledger=api_ledger, limits=TEST_LIMITS)


@pytest.fixture(autouse=True)
def _registered_pos_device(request: pytest.FixtureRequest) -> None:
    """Every test with a database has POS device POS_DEVICE_ID (role `all`, token POS_TOKEN)
    registered, as `festival-cloud pos add` would (with a known token instead of a random one)."""
    if "database_url" not in request.fixturenames:
        return
    from cloud.pos_devices import token_sha256

    owner = make_engine(request.getfixturevalue("database_url"), pool_size=1)
    try:
        with owner.begin() as connection:
            connection.execute(
                text("SELECT sp_add_pos_device(:device_id, 'all', :digest)"),
                {"device_id": POS_DEVICE_ID, "digest": token_sha256(POS_TOKEN)},
            )
    finally:
        owner.dispose()


def add_pos_device(owner_engine: Engine, device_id: str, role: str) -> str:
    """Register a POS device through the CLI's code path; its fresh token."""
    from cloud.pos_devices import PosDevices

    _, token = PosDevices(owner_engine).add(device_id, role)
    return token


# The peer address of the `client` fixture: this host, as a local Prometheus or the TLS proxy
# (which adds X-Forwarded-For for its clients) would be.
LOOPBACK_PEER = ("127.0.0.1", 50000)


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app, client=LOOPBACK_PEER) as test_client:
        yield test_client


def admin_headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def pos_headers(token: str = POS_TOKEN, **extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", **extra}


def signed_headers(
    payload: bytes, *, timestamp: int | None = None, secret: str = WEBHOOK_SECRET
) -> dict[str, str]:
    return {
        "Content-Type": "application/json; charset=utf-8",
        "Stripe-Signature": signature_header(payload, secret, timestamp),
    }


PostEvent = Callable[..., Any]


@pytest.fixture
def post_event(client: TestClient) -> PostEvent:
    """POST a Stripe-shaped event, signed like Stripe signs it, to the webhook."""

    def post(
        event: dict[str, Any],
        *,
        path: str = "/stripe/webhook",
        timestamp: int | None = None,
        secret: str = WEBHOOK_SECRET,
        headers: dict[str, str] | None = None,
    ) -> Any:
        payload = encode_event(event)
        all_headers = {
            **signed_headers(payload, timestamp=timestamp, secret=secret),
            **(headers or {}),
        }
        return client.post(path, content=payload, headers=all_headers)

    return post


def scalar(engine: Engine, sql: str, **params: Any) -> Any:
    with engine.connect() as connection:
        return connection.execute(text(sql), params).scalar()


def rows(engine: Engine, sql: str, **params: Any) -> list[dict[str, Any]]:
    with engine.connect() as connection:
        return [dict(row._mapping) for row in connection.execute(text(sql), params)]
