"""Least privilege per process (issue 11 item 11): one database role served both the
internet-facing API and the consumer, so a compromised API process could apply kiosk requests
in bulk or register kiosks. The API now connects as festival_api, which cannot."""

from __future__ import annotations

import json
import logging

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text
from sqlalchemy.exc import ProgrammingError

from cloud.api.app import warn_about_database_privileges
from cloud.ledger import Ledger
from protocol.keys import generate_private_key, public_key_b64
from tests.api.conftest import admin_headers, pos_headers, scalar

INSUFFICIENT_PRIVILEGE = "42501"
KEY = public_key_b64(generate_private_key())
BATCH = json.dumps(
    [
        {
            "type": "checkpoint_recharge",
            "request_id": "bulk-1",
            "payload_sha256": "00" * 32,
            "kiosk_id": "checkpoint-1",
            "seq": 1,
            "card_uid": "04A1B2C3",
            "source": "mqtt",
            "amount_cents": 100_000,
            "payment_method": "cash",
            "staff_id": "mallory",
            "checkpoint_id": "checkpoint-1",
        }
    ]
)
# What a compromised API process would try; every one must be refused by the database.
FORBIDDEN = [
    ("SELECT sp_process_batch(CAST(:batch AS jsonb), 150000, 100000)", {"batch": BATCH}),
    ("SELECT sp_add_kiosk('evil-1', :key, 'all')", {"key": KEY}),
    ("SELECT sp_disable_kiosk('bar-1')", {}),
    ("SELECT sp_add_pos_device('evil-2', 'all', :digest)", {"digest": b"\0" * 32}),
    ("SELECT sp_disable_pos_device('pos-till-1')", {}),
    ("SELECT sp_record_dead_letter('t', 'x', 'INVALID_REQUEST', 'r', NULL)", {}),
    ("SELECT sp_record_kiosk_status('bar-1', 'online', 0, NULL, 0)", {}),
    ("SELECT cleanup_expired_idempotency_keys()", {}),
    ("UPDATE cards SET balance_cents = 150000", {}),
    (
        "INSERT INTO kiosks (kiosk_id, public_key_b64, role) VALUES ('evil-3', :key, 'all')",
        {"key": KEY},
    ),
    ("DELETE FROM processed_requests", {}),
    ("UPDATE pos_devices SET enabled = true", {}),
    ("UPDATE rate_limit_buckets SET tokens = 1000", {}),
    ("DELETE FROM rate_limit_buckets", {}),
    ("SELECT token_sha256 FROM pos_devices", {}),
    ("SELECT payload FROM dead_letters", {}),
    ("SELECT payload FROM stripe_events", {}),
    ("SELECT password_hash FROM kiosk_mqtt_credentials", {}),
    ("SELECT sp_set_kiosk_mqtt_password('bar-1', '{}'::jsonb)", {}),
]


@pytest.mark.parametrize(("statement", "params"), FORBIDDEN, ids=[s for s, _ in FORBIDDEN])
def test_the_api_role_cannot(api_engine: Engine, statement: str, params: dict[str, object]) -> None:
    with pytest.raises(ProgrammingError) as refused, api_engine.begin() as connection:
        connection.execute(text(statement), params)
    assert refused.value.orig is not None
    assert refused.value.orig.pgcode == INSUFFICIENT_PRIVILEGE, refused.value  # type: ignore[attr-defined]


def test_the_consumer_role_keeps_what_it_had(engine: Engine, owner_engine: Engine) -> None:
    with engine.begin() as connection:
        connection.execute(text("SELECT sp_add_kiosk('checkpoint-1', :key, 'all')"), {"key": KEY})
        outcomes = connection.execute(
            text("SELECT sp_process_batch(CAST(:batch AS jsonb), 150000, 100000)"),
            {"batch": BATCH},
        ).scalar_one()
    assert outcomes[0]["status"] == "approved"
    assert scalar(owner_engine, "SELECT balance_cents FROM cards") == 100_000


def test_the_api_works_end_to_end_as_festival_api(
    client: TestClient, app: object, ledger: Ledger
) -> None:
    engine = app.state.services.ledger.engine  # type: ignore[attr-defined]
    assert scalar(engine, "SELECT current_user") == "festival_api"
    body = {
        "card_id": "04A1B2C3",
        "amount": 20,
        "payment_method": "card",
        "staff_id": "anna",
        "client_request_id": "as-api-1",
    }
    topped = client.post(
        "/functions/v1/process-checkpoint-recharge", json=body, headers=pos_headers()
    )
    assert topped.status_code == 200, topped.text
    order = {
        "card_id": "04A1B2C3",
        "items": [{"name": "Beer", "quantity": 2, "unit_price": 4.5}],
        "total_amount": 9,
        "client_request_id": "as-api-2",
    }
    sold = client.post("/functions/v1/process-bar-order", json=order, headers=pos_headers())
    assert sold.status_code == 200, sold.text
    assert client.post("/api/cards/04A1B2C3/block", headers=admin_headers()).status_code == 200
    assert client.post("/api/cards/04A1B2C3/unblock", headers=admin_headers()).status_code == 200
    for path in (
        "/api/cards/04A1B2C3",
        "/api/monitoring/processing-times",
        "/api/monitoring/error-rates",
        "/api/monitoring/idempotency",
        "/api/monitoring/nfc-scans",
        "/api/monitoring/kiosks",
        "/api/monitoring/pos-devices",
        "/api/monitoring/ledger",
        "/api/monitoring/sales",
        "/api/monitoring/dashboard",
    ):
        assert client.get(path, headers=admin_headers()).status_code == 200, path
    assert client.get("/readyz").status_code == 200
    assert "festival_ledger_up 1.0" in client.get("/metrics").text
    checkout = client.post(
        "/api/topups/checkout", json={"card_uid": "04A1B2C3", "amount_cents": 500}
    )
    assert checkout.status_code == 201, checkout.text
    assert ledger.card("04A1B2C3").balance_cents == 1100  # type: ignore[union-attr]


def test_an_api_connected_with_too_much_power_says_so(
    engine: Engine, api_engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="cloud.api"):
        warn_about_database_privileges(api_engine)
        assert not caplog.records
        warn_about_database_privileges(engine)
    assert "festival_service" in caplog.text and "sp_process_batch" in caplog.text
    assert "connect it as festival_api" in caplog.text
