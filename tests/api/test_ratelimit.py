"""Checkout rate limits (issue 11 item 9): they were per exact address and per process, so every
IPv6 address of a /64 and every API process had its own budget. Now a client is its IPv4 address
or its IPv6 /64, there is a global budget too, and the buckets live in PostgreSQL, shared by
every API process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text

from cloud.api import create_app
from cloud.api.limits import ApiLimits
from cloud.api.ratelimit import Decision, SharedRateLimiter, client_bucket, retry_after_header
from cloud.database import TransientDatabaseError
from cloud.sandbox import free_port
from cloud.settings import CloudSettings
from cloud.stripe_fake import FakeStripe
from tests.api.conftest import STRIPE_KEY, WEBHOOK_SECRET, make_settings, scalar
from tests.waiting import wait_until

FESTIVAL_CLOUD = Path(sys.executable).with_name("festival-cloud")
CARD = "04A1B2C3"
CHECKOUT = {"card_uid": CARD, "amount_cents": 1000}


def checkout(client: TestClient) -> int:
    return client.post("/api/topups/checkout", json=CHECKOUT).status_code


def app_client(settings: CloudSettings, limits: ApiLimits, address: str) -> TestClient:
    """An API app with its own engine and pool, as a separate process has."""
    return TestClient(create_app(settings, limits=limits), client=(address, 40000))


# --- pure: which bucket a client address belongs to -----------------------------------------


@pytest.mark.parametrize(
    ("address", "bucket"),
    [
        ("203.0.113.7", "ip:203.0.113.7"),
        ("2001:db8:1:2::1", "ip:2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff:ffff:ffff:ffff", "ip:2001:db8:1:2::/64"),
        ("2001:db8:1:3::1", "ip:2001:db8:1:3::/64"),
        ("::ffff:203.0.113.7", "ip:203.0.113.7"),
        ("testclient", "host:testclient"),
        ("x" * 200, "host:" + "x" * 59),
    ],
)
def test_a_client_is_its_ipv4_address_or_its_ipv6_slash_64(address: str, bucket: str) -> None:
    assert client_bucket(address) == bucket


def test_retry_after_is_whole_seconds_rounded_up() -> None:
    assert retry_after_header(Decision(False, 0.2)) == "1"
    assert retry_after_header(Decision(False, 5.01)) == "6"


# --- against PostgreSQL -------------------------------------------------------------------------


def test_two_api_processes_share_one_budget(
    api_database_url: str, fake_stripe: FakeStripe, tmp_path: Path
) -> None:
    """A real `festival-cloud api` process and an app in this process, production limits (a
    burst of 5 per client): together they let 5 checkouts of one client through, not 10."""
    port = free_port()
    environment = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("STRIPE_", "ADMIN_", "POS_", "DATABASE_"))
    }
    environment.update(
        {
            "DATABASE_URL": api_database_url,
            "STRIPE_SECRET_KEY": STRIPE_KEY,
            "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
            "STRIPE_API_BASE": fake_stripe.base_url,
            "FESTIVAL_ENVIRONMENT": "development",
        }
    )
    base = f"http://127.0.0.1:{port}"
    with (tmp_path / "api.log").open("wb") as log:
        process = subprocess.Popen(
            [str(FESTIVAL_CLOUD), "api", "--host", "127.0.0.1", "--port", str(port)],
            env=environment,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until(lambda: _get_status(f"{base}/healthz") == 200, timeout_s=20, what="the API")
        settings = make_settings(api_database_url, fake_stripe.base_url)
        # The same client (loopback) on both: 3 through the other process, 2 through this one.
        with app_client(settings, ApiLimits(), "127.0.0.1") as here:
            there = [_post_status(f"{base}/api/topups/checkout") for _ in range(3)]
            assert there == [201, 201, 201]
            assert [checkout(here) for _ in range(2)] == [201, 201]
            assert checkout(here) == 429
            assert _post_status(f"{base}/api/topups/checkout") == 429
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=20)


def _get_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - loopback
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return 0


def _post_status(url: str) -> int:
    request = urllib.request.Request(  # noqa: S310 - loopback
        url,
        data=b'{"card_uid": "04A1B2C3", "amount_cents": 1000}',
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code


def test_addresses_of_one_ipv6_slash_64_share_a_budget(settings: CloudSettings) -> None:
    limits = ApiLimits(checkout_burst=2, checkout_refill_per_s=0.001)
    with (
        app_client(settings, limits, "2001:db8:1:2::1") as first,
        app_client(settings, limits, "2001:db8:1:2:dead:beef:0:7") as same_network,
        app_client(settings, limits, "2001:db8:1:3::1") as next_network,
        app_client(settings, limits, "198.51.100.1") as ipv4,
        app_client(settings, limits, "198.51.100.2") as other_ipv4,
    ):
        assert [checkout(first), checkout(same_network)] == [201, 201]
        refused = first.post("/api/topups/checkout", json=CHECKOUT)
        assert refused.status_code == 429 and refused.json()["error_code"] == "RATE_LIMITED"
        assert int(refused.headers["retry-after"]) >= 1
        assert checkout(same_network) == 429
        # Another /64, and IPv4 addresses, each have their own budget.
        assert [checkout(next_network), checkout(next_network)] == [201, 201]
        assert [checkout(ipv4), checkout(ipv4), checkout(ipv4)] == [201, 201, 429]
        assert checkout(other_ipv4) == 201


def test_the_global_limit_trips_for_many_addresses(
    settings: CloudSettings, owner_engine: Engine
) -> None:
    limits = ApiLimits(
        checkout_burst=2,
        checkout_refill_per_s=0.001,
        checkout_global_burst=5,
        checkout_global_refill_per_s=0.001,
    )
    # One client over its own limit does not spend everybody's budget...
    with app_client(settings, limits, "192.0.2.1") as greedy:
        assert [checkout(greedy) for _ in range(6)] == [201, 201, 429, 429, 429, 429]
    # ...but many addresses together hit the global one.
    statuses = []
    for number in range(2, 10):
        with app_client(settings, limits, f"192.0.2.{number}") as one_of_many:
            statuses.append(checkout(one_of_many))
    assert statuses == [201, 201, 201, 429, 429, 429, 429, 429]
    # Refused while the global bucket is empty: those clients left no bucket behind.
    assert (
        scalar(owner_engine, "SELECT count(*) FROM rate_limit_buckets WHERE scope = 'checkout'")
        == 5
    )


@pytest.fixture
def limiter(api_engine: Engine) -> Iterator[SharedRateLimiter]:
    shared = SharedRateLimiter(
        api_engine,
        scope="test",
        burst=1,
        refill_per_s=1000.0,
        global_burst=1_000_000,
        global_refill_per_s=1000.0,
        timeout_s=0.5,
    )
    yield shared
    shared.close()


def test_buckets_that_filled_up_again_are_deleted(
    limiter: SharedRateLimiter, owner_engine: Engine
) -> None:
    for number in range(40):
        assert limiter.take(f"10.1.0.{number}").allowed
    count = "SELECT count(*) FROM rate_limit_buckets WHERE scope = 'test' AND bucket <> '*'"
    assert scalar(owner_engine, count) == 40
    with owner_engine.begin() as connection:
        connection.execute(
            text("UPDATE rate_limit_buckets SET updated_at = now() - interval '1 hour'")
        )
    limiter.take("10.2.0.1")
    assert scalar(owner_engine, count) == 40 + 1 - 16  # at most 16 per call
    for _ in range(3):
        limiter.take("10.2.0.1")
    assert scalar(owner_engine, count) == 1  # only the client seen just now


def test_a_database_that_does_not_answer_stalls_a_checkout_half_a_second_at_most(
    limiter: SharedRateLimiter, owner_engine: Engine
) -> None:
    assert limiter.take("10.3.0.1").allowed
    blocker = owner_engine.connect()
    transaction = blocker.begin()
    try:
        # Hold the global bucket's row lock, as a stuck transaction would.
        blocker.execute(text("SELECT 1 FROM rate_limit_buckets WHERE bucket = '*' FOR UPDATE"))
        started = threading.Event()
        errors: list[Any] = []

        def call() -> None:
            started.set()
            try:
                limiter.take("10.3.0.2")
            except TransientDatabaseError as error:
                errors.append(error)

        caller = threading.Thread(target=call)
        caller.start()
        caller.join(timeout=5)
        assert started.is_set() and not caller.is_alive()
        assert len(errors) == 1 and "within 0.5 s" in str(errors[0])
    finally:
        transaction.rollback()
        blocker.close()
