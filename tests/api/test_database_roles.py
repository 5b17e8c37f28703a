"""Least privilege per process (issue 11 item 11): one database role served both the
internet-facing API and the consumer, so a compromised API process could apply kiosk requests
in bulk or register kiosks. The API now connects as festival_api, which cannot - neither in bulk
nor one by one (revision 0025: no sp_handle_request, no seed procedures, no rejections of its
own); its POS endpoints reach the ledger only through sp_pos_handle_request, which needs a
registered, enabled device's token and keeps the request to that device's role and drawer."""

from __future__ import annotations

import json
import logging

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError, ProgrammingError

from cloud.api.app import warn_about_database_privileges
from cloud.ledger import Ledger
from protocol.keys import generate_private_key, public_key_b64
from tests.api.conftest import (
    POS_DEVICE_ID,
    POS_TOKEN,
    add_pos_device,
    admin_headers,
    pos_headers,
    scalar,
)

INSUFFICIENT_PRIVILEGE = "42501"
INVALID_PARAMETER_VALUE = "22023"
KEY = public_key_b64(generate_private_key())
TOPUP = {
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
BATCH = json.dumps([TOPUP])
ONE_TOPUP = json.dumps({**TOPUP, "request_id": "single-1", "amount_cents": 50_000})
ITEMS = json.dumps([{"name": "Beer", "quantity": -99, "unit_price_cents": 200}])
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
    # (revision 0025) one by one: the wire form, the seed's procedures, a rejection of its own
    ("SELECT sp_handle_request(CAST(:request AS jsonb))", {"request": ONE_TOPUP}),
    (
        "SELECT sp_process_checkpoint_recharge(p_request_id => 'seed-1', p_card_uid => '04A1B2C3',"
        " p_amount_cents => 50000, p_payment_method => 'cash', p_staff_id => 'mallory',"
        " p_payload_sha256 => :sha, p_kiosk_id => 'checkpoint-1', p_seq => 1,"
        " p_checkpoint_id => 'checkpoint-2', p_source => 'mqtt')",
        {"sha": "00" * 32},
    ),
    (
        "SELECT sp_process_bar_order(p_request_id => 'seed-2', p_card_uid => '04A1B2C3',"
        " p_items => CAST(:items AS jsonb), p_total_cents => -19800, p_payload_sha256 => :sha,"
        " p_kiosk_id => 'bar-1', p_seq => 1, p_staff_id => 'mallory', p_source => 'mqtt')",
        {"items": ITEMS, "sha": "00" * 32},
    ),
    (
        "SELECT sp_record_rejection('r-1', 'bar-1', 1000000, NULL, :sha, 'INVALID_REQUEST', 'x')",
        {"sha": "00" * 32},
    ),
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
    # (revision 0025) one by one too: the single-request entry points are named as well
    assert "sp_handle_request" in caplog.text and "sp_process_checkpoint_recharge" in caplog.text
    assert "connect it as festival_api" in caplog.text


# --- revision 0025: sp_pos_handle_request, the API's only way to the ledger's requests ---------

POS_CALL = (
    "SELECT sp_pos_handle_request(:device_id, :token, CAST(:request AS jsonb), 150000, 100000)"
)


def _pos_topup(device_id: str, given_seq: int, **fields: object) -> str:
    return json.dumps(
        {
            **TOPUP,
            "request_id": f"pos-{device_id}-{given_seq}-{len(fields)}",
            "kiosk_id": device_id,
            "seq": given_seq,
            "source": "http",
            "amount_cents": 2_000,
            "checkpoint_id": device_id,
            **fields,
        }
    )


def _pos(api_engine: Engine, device_id: str, token: str, request: str) -> dict[str, object] | None:
    with api_engine.begin() as connection:
        answer: dict[str, object] | None = connection.execute(
            text(POS_CALL), {"device_id": device_id, "token": token, "request": request}
        ).scalar_one()
    return answer


def _seq(api_engine: Engine, token: str) -> int:
    """The device's next seq, as the API gets it (sp_pos_authenticate)."""
    from cloud.pos_devices import PosDevices

    device = PosDevices(api_engine).authenticate(token)
    assert device is not None
    return device.seq


def test_the_new_entry_point_applies_a_registered_devices_own_request(
    api_engine: Engine, owner_engine: Engine
) -> None:
    seq = _seq(api_engine, POS_TOKEN)
    outcome = _pos(api_engine, POS_DEVICE_ID, POS_TOKEN, _pos_topup(POS_DEVICE_ID, seq))
    assert outcome is not None and outcome["status"] == "approved", outcome
    assert scalar(owner_engine, "SELECT balance_cents FROM cards") == 2_000
    assert scalar(owner_engine, "SELECT checkpoint_id FROM recharges") == POS_DEVICE_ID


def test_the_new_entry_point_needs_an_enabled_devices_own_token(
    api_engine: Engine, owner_engine: Engine
) -> None:
    other_token = add_pos_device(owner_engine, "pos-till-2", "all")
    seq = _seq(api_engine, POS_TOKEN)
    request = _pos_topup(POS_DEVICE_ID, seq)
    wrong = POS_TOKEN[:-1] + ("x" if POS_TOKEN[-1] != "x" else "y")
    # a wrong token, no token, another device's token for this device's id: nothing applied
    assert _pos(api_engine, POS_DEVICE_ID, wrong, request) is None
    assert _pos(api_engine, POS_DEVICE_ID, "", request) is None
    assert _pos(api_engine, POS_DEVICE_ID, other_token, request) is None
    assert _pos(api_engine, "pos-till-2", POS_TOKEN, request) is None
    # the stored digest is no credential: the database hashes what it is given
    with owner_engine.connect() as connection:
        digest = connection.execute(
            text("SELECT encode(token_sha256, 'hex') FROM pos_devices WHERE device_id = :d"),
            {"d": POS_DEVICE_ID},
        ).scalar_one()
    assert _pos(api_engine, POS_DEVICE_ID, digest, request) is None
    # a disabled device's token
    with owner_engine.begin() as connection:
        connection.execute(text("SELECT sp_disable_pos_device(:d)"), {"d": POS_DEVICE_ID})
    assert _pos(api_engine, POS_DEVICE_ID, POS_TOKEN, request) is None
    assert scalar(owner_engine, "SELECT count(*) FROM processed_requests") == 0
    assert scalar(owner_engine, "SELECT count(*) FROM cards") == 0


@pytest.mark.parametrize(
    "fields",
    [
        {"kiosk_id": "checkpoint-1"},  # as a kiosk
        {"kiosk_id": "pos-till-2"},  # as another device
        {"source": "mqtt"},
        {"seq": 10_000},  # a seq the device was never given
        {"seq": None},
        {"offline": True},
        {"sun_counter": 7},
        {"sun_failure": None, "sun_counter": 1},
        {"type": "card_swap", "old_card_uid": "04A1B2C4"},
    ],
    ids=repr,
)
def test_the_new_entry_point_refuses_what_is_not_the_devices_own_request(
    api_engine: Engine, owner_engine: Engine, fields: dict[str, object]
) -> None:
    add_pos_device(owner_engine, "pos-till-2", "all")
    seq = _seq(api_engine, POS_TOKEN)
    with pytest.raises(DBAPIError) as refused:
        _pos(api_engine, POS_DEVICE_ID, POS_TOKEN, _pos_topup(POS_DEVICE_ID, seq, **fields))
    assert refused.value.orig is not None
    assert refused.value.orig.pgcode == INVALID_PARAMETER_VALUE, refused.value  # type: ignore[attr-defined]
    assert scalar(owner_engine, "SELECT count(*) FROM processed_requests") == 0


def test_the_new_entry_point_keeps_a_device_to_its_role_and_its_drawer(
    api_engine: Engine, owner_engine: Engine
) -> None:
    bar_token = add_pos_device(owner_engine, "pos-bar-1", "bar")
    seq = _seq(api_engine, POS_TOKEN)
    foreign = _pos(
        api_engine, POS_DEVICE_ID, POS_TOKEN, _pos_topup(POS_DEVICE_ID, seq, checkpoint_id="x")
    )
    assert foreign is not None
    assert (foreign["status"], foreign["error_code"]) == ("rejected", "INVALID_REQUEST")
    assert foreign["message"] == "checkpoint_id must be this device's own drawer 'pos-till-1'"
    bar_seq = _seq(api_engine, bar_token)
    topup = _pos(api_engine, "pos-bar-1", bar_token, _pos_topup("pos-bar-1", bar_seq))
    assert topup is not None
    assert (topup["status"], topup["error_code"]) == ("rejected", "OPERATION_NOT_ALLOWED")
    assert topup["message"] == "POS device pos-bar-1 has role bar: no checkpoint_recharge"
    # stored like a kiosk's rejections, nothing booked
    assert scalar(owner_engine, "SELECT count(*) FROM processed_requests") == 2
    assert scalar(owner_engine, "SELECT count(*) FROM recharges") == 0
    assert scalar(owner_engine, "SELECT count(*) FROM cards") == 0


def test_a_refused_pos_request_never_carries_the_token_in_its_error(
    api_engine: Engine, owner_engine: Engine
) -> None:
    """The token is a statement parameter of sp_pos_handle_request: an error the database
    raises (here a seq the device was never given) must not print it where a traceback is
    logged (cloud.database.hide_parameters)."""
    from cloud.ledger_records import LedgerRequest
    from cloud.pos_devices import PosDevices
    from protocol.models import CheckpointRecharge

    given = _seq(api_engine, POS_TOKEN)
    never_given = CheckpointRecharge(
        request_id="pos-never-given-1",
        kiosk_id=POS_DEVICE_ID,
        seq=given + 1000,
        created_at_ms=1_780_000_000_000,
        card_uid="04A1B2C3",
        currency="EUR",
        amount_cents=2_000,
        payment_method="cash",
        staff_id="till",
        checkpoint_id=POS_DEVICE_ID,
    )
    with pytest.raises(DBAPIError) as refused:
        PosDevices(api_engine).apply(
            POS_TOKEN,
            LedgerRequest(never_given, "00" * 32, source="http"),
            balance_cents_max=150_000,
            topup_cents_max=100_000,
            return_cents_max=2_000,
            menu_grace_s=600,
        )
    assert refused.value.orig.pgcode == INVALID_PARAMETER_VALUE  # type: ignore[union-attr]
    assert POS_TOKEN not in str(refused.value)
    assert POS_TOKEN not in repr(refused.value)
    assert scalar(owner_engine, "SELECT count(*) FROM processed_requests") == 0
