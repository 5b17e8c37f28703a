"""/metrics (issue 11 item 10): it was public on the API's port and every scrape ran full-table
queries. Now it answers loopback clients, and others only with `Authorization: Bearer
$METRICS_TOKEN` when that is set; the figures that need queries are read at most once per 10 s."""

from __future__ import annotations

import logging
import threading
import urllib.error
import urllib.request

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import event

from cloud.api import create_app
from cloud.api.limits import METRICS_CACHE_S
from cloud.ledger import Ledger
from cloud.settings import CloudSettings
from cloud.stripe_fake import FakeStripe
from tests.api.conftest import (
    ADMIN_TOKEN,
    LOOPBACK_PEER,
    TEST_LIMITS,
    make_settings,
    pos_headers,
)
from tests.api.live import serve

METRICS_TOKEN = "metrics-token-for-the-tests-0123456789"
REMOTE_PEER = ("203.0.113.9", 41000)


def metrics_status(client: TestClient, **headers: str) -> int:
    return client.get("/metrics", headers=headers).status_code


def test_remote_clients_need_the_metrics_token(settings: CloudSettings, api_ledger: Ledger) -> None:
    assert settings.database_url and settings.stripe_api_base
    with_token = make_settings(
        settings.database_url, settings.stripe_api_base, metrics_token=METRICS_TOKEN
    )
    app = create_app(with_token, ledger=api_ledger, limits=TEST_LIMITS)
    with TestClient(app, client=REMOTE_PEER) as remote:
        refused = remote.get("/metrics")
        assert refused.status_code == 401 and refused.json()["error_code"] == "UNAUTHORIZED"
        assert refused.headers["www-authenticate"].startswith("Bearer")
        assert "festival_ledger" not in refused.text
        for wrong in (f"Bearer {METRICS_TOKEN}x", f"Bearer {ADMIN_TOKEN}", METRICS_TOKEN):
            assert metrics_status(remote, Authorization=wrong) == 401, wrong
        answer = remote.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
        assert answer.status_code == 200 and "festival_ledger_up 1.0" in answer.text
    with TestClient(app, client=LOOPBACK_PEER) as local:
        assert metrics_status(local) == 200  # loopback needs no token, even when one is set


def test_without_a_metrics_token_only_loopback_is_answered(app: FastAPI) -> None:
    with TestClient(app, client=REMOTE_PEER) as remote:
        assert metrics_status(remote) == 401
        assert metrics_status(remote, Authorization="Bearer ") == 401
    for peer in (("::1", 1), ("127.0.0.1", 1), ("127.8.9.10", 1), ("::ffff:127.0.0.1", 1)):
        with TestClient(app, client=peer) as local:
            assert metrics_status(local) == 200, peer
    for peer in (("testclient", 1), ("10.0.0.5", 1), ("::ffff:10.0.0.5", 1)):
        with TestClient(app, client=peer) as other:
            assert metrics_status(other) == 401, peer


def test_through_a_proxy_a_client_is_not_local(app: FastAPI) -> None:
    """Over a real socket to uvicorn: a request from loopback is answered; the same request
    carrying the forwarding header of a proxy on this host is not (its client is elsewhere)."""
    with serve(app) as base_url:
        assert _status(f"{base_url}/metrics") == 200
        for header in ("X-Forwarded-For", "Forwarded", "X-Real-IP"):
            value = "for=203.0.113.9" if header == "Forwarded" else "203.0.113.9"
            assert _status(f"{base_url}/metrics", {header: value}) == 401, header
        # Even a proxy that claims its client is loopback: through a proxy is not local.
        assert _status(f"{base_url}/metrics", {"X-Forwarded-For": "127.0.0.1"}) == 401


def _status(url: str, headers: dict[str, str] | None = None) -> int:
    request = urllib.request.Request(url, headers=headers or {})  # noqa: S310 - loopback
    try:
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code


def reads(text: str) -> float:
    line = next(
        line for line in text.splitlines() if line.startswith("festival_ledger_totals_reads")
    )
    return float(line.split()[-1])


def test_a_scrape_burst_costs_one_query_round_per_ten_seconds(
    app: FastAPI, client: TestClient
) -> None:
    services = app.state.services
    now = [1000.0]
    services.monotonic_s = lambda: now[0]
    rounds = [0]

    def count_totals_queries(_c: object, _cursor: object, statement: str, *_args: object) -> None:
        if "FILTER (WHERE status = 'blocked')" in statement:  # the first totals query
            rounds[0] += 1

    # Count the statements the database receives, below the cache.
    event.listen(services.ledger.engine, "before_cursor_execute", count_totals_queries)
    texts: list[str] = []

    def scrape() -> None:
        texts.append(client.get("/metrics").text)

    threads = [threading.Thread(target=scrape) for _ in range(25)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(texts) == 25 and all("festival_ledger_up 1.0" in text for text in texts)
    assert rounds[0] == 1 and reads(client.get("/metrics").text) == 1.0

    # A top-up shows after at most 10 s, with one more query round.
    body = {
        "card_id": "04A1B2C3",
        "amount": 12.34,
        "payment_method": "cash",
        "staff_id": "anna",
        "client_request_id": "metrics-1",
    }
    client.post("/functions/v1/process-checkpoint-recharge", json=body, headers=pos_headers())
    now[0] += METRICS_CACHE_S - 0.5
    assert "festival_ledger_card_balance_cents 0.0" in client.get("/metrics").text
    assert rounds[0] == 1
    now[0] += 0.5
    text = client.get("/metrics").text
    assert "festival_ledger_card_balance_cents 1234.0" in text and reads(text) == 2.0
    assert "festival_ledger_totals_age_seconds 0.0" in text and rounds[0] == 2


def test_a_database_that_is_away_is_not_hammered_either(
    fake_stripe: FakeStripe, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings("postgresql://festival_api@127.0.0.1:9/festival", fake_stripe.base_url)
    app = create_app(settings, limits=TEST_LIMITS)
    now = [50.0]
    app.state.services.monotonic_s = lambda: now[0]
    with (
        caplog.at_level(logging.WARNING, logger="cloud.api.metrics"),
        TestClient(app, client=LOOPBACK_PEER) as client,
    ):
        for _ in range(5):
            assert "festival_ledger_up 0.0" in client.get("/metrics").text
        assert caplog.text.count("ledger totals unavailable") == 1
        now[0] += METRICS_CACHE_S
        client.get("/metrics")
        assert caplog.text.count("ledger totals unavailable") == 2
