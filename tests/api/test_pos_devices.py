"""Registered POS devices (issue 11 item 4): the shared POS_API_TOKEN minted top-ups for any
card under any checkpoint as an unregistered "pos-http" kiosk with no role that could not be
disabled. Now each device has its own token (shown once, stored hashed), a role, its own drawer
and seq, and can be disabled - through the real `festival-cloud pos` verbs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text
from sqlalchemy.exc import IntegrityError

from cloud.api import create_app
from cloud.ledger import Ledger
from cloud.pos_devices import PosDevices, token_sha256
from protocol.keys import generate_private_key, public_key_b64
from tests.api.conftest import (
    ADMIN_TOKEN,
    LOOPBACK_PEER,
    OLD_POS_API_TOKEN,
    POS_DEVICE_ID,
    POS_TOKEN,
    TEST_LIMITS,
    add_pos_device,
    admin_headers,
    make_settings,
    pos_headers,
    rows,
    scalar,
)

FESTIVAL_CLOUD = Path(sys.executable).with_name("festival-cloud")
CARD = "04A1B2C3"
BAR = "/functions/v1/process-bar-order"
RECHARGE = "/functions/v1/process-checkpoint-recharge"


def cli(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("DATABASE_")}
    environment["DATABASE_URL"] = database_url
    return subprocess.run(
        [str(FESTIVAL_CLOUD), *args],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def recharge(
    client: TestClient, token: str, request_id: str, cents: int = 1000, **extra: Any
) -> Any:
    body = {
        "card_id": CARD,
        "amount": cents / 100,
        "payment_method": "cash",
        "staff_id": "anna",
        "client_request_id": request_id,
        **extra,
    }
    return client.post(RECHARGE, json=body, headers=pos_headers(token))


def bar_order(client: TestClient, token: str, request_id: str, cents: int = 500) -> Any:
    body = {
        "card_id": CARD,
        "items": [{"name": "Beer", "quantity": 1, "unit_price": cents / 100}],
        "total_amount": cents / 100,
        "client_request_id": request_id,
    }
    return client.post(BAR, json=body, headers=pos_headers(token))


def test_the_old_shared_token_mints_nothing(
    client: TestClient, ledger: Ledger, owner_engine: Engine
) -> None:
    # The attack of item 4: +1,000.00 on any card under any checkpoint with POS_API_TOKEN.
    for checkpoint in (None, "gate-a", "checkpoint-1"):
        extra = {} if checkpoint is None else {"checkpoint_id": checkpoint}
        refused = recharge(client, OLD_POS_API_TOKEN, f"mint-{checkpoint}", 100_000, **extra)
        assert refused.status_code == 401 and refused.json()["error_code"] == "UNAUTHORIZED"
    assert ledger.card(CARD) is None
    assert scalar(owner_engine, "SELECT count(*) FROM processed_requests") == 0


def test_pos_verbs_register_list_and_disable_a_device(
    client: TestClient, database_url: str, ledger: Ledger, owner_engine: Engine
) -> None:
    added = cli(database_url, "pos", "add", "till-7", "--role", "checkpoint", "--json")
    assert added.returncode == 0, added.stderr
    answer = json.loads(added.stdout)
    assert set(answer) == {"device_id", "token"} and answer["device_id"] == "till-7"
    token = answer["token"]
    # Only the hash is stored.
    stored = scalar(owner_engine, "SELECT token_sha256 FROM pos_devices WHERE device_id = 'till-7'")
    assert bytes(stored) == token_sha256(token)
    assert token not in json.dumps(rows(owner_engine, "SELECT * FROM pos_devices"), default=str)

    assert recharge(client, token, "till-7-1").status_code == 200
    assert ledger.card(CARD).balance_cents == 1000  # type: ignore[union-attr]
    listed = cli(database_url, "pos", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    device = next(row for row in json.loads(listed.stdout) if row["device_id"] == "till-7")
    assert device["role"] == "checkpoint" and device["enabled"] is True
    assert device["last_seq"] == 1 and device["last_seen_at"] is not None
    assert "token" not in json.dumps(json.loads(listed.stdout))

    disabled = cli(database_url, "pos", "disable", "till-7")
    assert disabled.returncode == 0, disabled.stderr
    # The very next request is refused, and changes nothing.
    refused = recharge(client, token, "till-7-2")
    assert refused.status_code == 401 and refused.json()["error_code"] == "UNAUTHORIZED"
    assert ledger.card(CARD).balance_cents == 1000  # type: ignore[union-attr]
    assert "till-7 " in cli(database_url, "pos", "list").stdout
    assert cli(database_url, "pos", "disable", "no-such-till").returncode == 1
    # Re-adding gives a new token; the old one stays dead.
    again = json.loads(cli(database_url, "pos", "add", "till-7", "--role", "all", "--json").stdout)
    assert again["token"] != token
    assert recharge(client, token, "till-7-3").status_code == 401
    assert recharge(client, again["token"], "till-7-4").status_code == 200


def test_pos_add_refuses_bad_ids_and_roles(database_url: str) -> None:
    for device_id in ("Till", "7-till", "pos-http", "cloud", "x" * 33, "till_1"):
        result = cli(database_url, "pos", "add", device_id, "--role", "bar")
        assert result.returncode == 2 and "invalid device id" in result.stderr, device_id
    assert cli(database_url, "pos", "add", "till-1", "--role", "admin").returncode == 2


def test_kiosk_and_pos_device_ids_never_meet(database_url: str, owner_engine: Engine) -> None:
    key = public_key_b64(generate_private_key())
    assert cli(database_url, "kiosk", "add", "bar-9", "--public-key", key, "--role", "bar")
    refused = cli(database_url, "pos", "add", "bar-9", "--role", "bar")
    assert refused.returncode == 2 and "kiosk's id" in refused.stderr
    refused = cli(database_url, "kiosk", "add", POS_DEVICE_ID, "--public-key", key, "--role", "bar")
    assert refused.returncode != 0 and "POS device's id" in refused.stderr
    # The database holds the rule itself, whoever writes (even the owner, even concurrently).
    with pytest.raises(IntegrityError, match="POS device's id"), owner_engine.begin() as c:
        c.execute(text("SELECT sp_add_kiosk(:id, :key, 'bar')"), {"id": POS_DEVICE_ID, "key": key})
    with pytest.raises(IntegrityError, match="kiosk's id"), owner_engine.begin() as c:
        c.execute(text("SELECT sp_add_pos_device('bar-9', 'bar', :d)"), {"d": b"\0" * 32})


def test_role_applies_like_a_kiosks(
    client: TestClient, ledger: Ledger, owner_engine: Engine
) -> None:
    bar_till = add_pos_device(owner_engine, "bar-till", "bar")
    cash_desk = add_pos_device(owner_engine, "cash-desk", "checkpoint")
    # A bar device cannot mint a top-up: 403 OPERATION_NOT_ALLOWED, stored like a rejection.
    refused = recharge(client, bar_till, "bar-topup", 50_000)
    assert refused.status_code == 403
    assert refused.json()["error_code"] == "OPERATION_NOT_ALLOWED"
    assert ledger.card(CARD) is None
    replay = recharge(client, bar_till, "bar-topup", 50_000)
    assert replay.status_code == 403 and replay.json()["replayed"] is True
    stored = rows(
        owner_engine,
        "SELECT kiosk_id, source, status, error_code FROM processed_requests"
        " WHERE request_id = 'bar-topup'",
    )
    assert stored == [
        {
            "kiosk_id": "bar-till",
            "source": "http",
            "status": "rejected",
            "error_code": "OPERATION_NOT_ALLOWED",
        }
    ]
    # A checkpoint device cannot sell; each may do its own job.
    assert recharge(client, cash_desk, "desk-topup").status_code == 200
    sold = bar_order(client, cash_desk, "desk-sale")
    assert sold.status_code == 403 and sold.json()["error_code"] == "OPERATION_NOT_ALLOWED"
    assert bar_order(client, bar_till, "till-sale").status_code == 200
    assert ledger.card(CARD).balance_cents == 500  # type: ignore[union-attr]


def test_top_ups_go_to_the_devices_own_drawer(
    client: TestClient, ledger: Ledger, owner_engine: Engine
) -> None:
    cash_desk = add_pos_device(owner_engine, "cash-desk", "checkpoint")
    # Another drawer named in the body: INVALID_REQUEST, stored, nothing booked.
    crossed = recharge(client, cash_desk, "crossed", 2000, checkpoint_id="gate-b")
    assert crossed.status_code == 400 and crossed.json()["error_code"] == "INVALID_REQUEST"
    assert "drawer" in crossed.json()["error"]
    assert ledger.card(CARD) is None
    assert (
        scalar(
            owner_engine,
            "SELECT error_code FROM processed_requests WHERE request_id = 'crossed'",
        )
        == "INVALID_REQUEST"
    )
    # Its own drawer, named or not.
    assert recharge(client, cash_desk, "own-1", 2000).status_code == 200
    assert recharge(client, cash_desk, "own-2", 1000, checkpoint_id="cash-desk").status_code == 200
    drawers = rows(
        owner_engine,
        "SELECT checkpoint_id, kiosk_id, sum(amount_cents) AS cents FROM recharges GROUP BY 1, 2",
    )
    assert drawers == [{"checkpoint_id": "cash-desk", "kiosk_id": "cash-desk", "cents": 3000}]
    assert (
        scalar(
            owner_engine,
            "SELECT sum(p.amount_cents) FROM postings p JOIN accounts a USING (account_id)"
            " WHERE a.name = 'cash:cash-desk'",
        )
        == -3000
    )


def test_each_device_has_its_own_seq_and_a_place_in_monitoring(
    client: TestClient, owner_engine: Engine
) -> None:
    other = add_pos_device(owner_engine, "till-2", "all")
    for number in range(3):
        assert recharge(client, POS_TOKEN, f"one-{number}").status_code == 200
    assert recharge(client, other, "two-0").status_code == 200
    seqs = rows(
        owner_engine,
        "SELECT kiosk_id, (details ->> 'seq')::int AS seq FROM app_transaction_log ORDER BY id",
    )
    assert seqs == [
        {"kiosk_id": POS_DEVICE_ID, "seq": 1},
        {"kiosk_id": POS_DEVICE_ID, "seq": 2},
        {"kiosk_id": POS_DEVICE_ID, "seq": 3},
        {"kiosk_id": "till-2", "seq": 1},
    ]
    PosDevices(owner_engine).disable("till-2")
    listing = client.get("/api/monitoring/pos-devices", headers=admin_headers()).json()
    by_id = {row["device_id"]: row for row in listing}
    assert by_id[POS_DEVICE_ID]["last_seq"] == 3 and by_id[POS_DEVICE_ID]["enabled"] is True
    assert by_id["till-2"]["enabled"] is False and by_id["till-2"]["disabled_at"]
    assert all("token" not in key for row in listing for key in row)
    assert client.get("/api/monitoring/pos-devices").status_code == 401
    assert client.get("/api/monitoring/pos-devices", headers=pos_headers()).status_code == 401


def test_database_down_is_503_whatever_the_token(fake_stripe: Any) -> None:
    # Nothing listens on port 9 of loopback: every connection is refused, as when PostgreSQL
    # is down. A device must get "retry" (503), never a 401 it would take as final.
    settings = make_settings("postgresql://festival_api@127.0.0.1:9/festival", fake_stripe.base_url)
    with TestClient(create_app(settings, limits=TEST_LIMITS), client=LOOPBACK_PEER) as client:
        for token in (POS_TOKEN, OLD_POS_API_TOKEN, "nonsense", ADMIN_TOKEN):
            answer = recharge(client, token, "while-down")
            assert answer.status_code == 503, (token, answer.text)
            assert answer.json()["error_code"] == "SERVICE_UNAVAILABLE"
            assert answer.headers["retry-after"] == "1"
        missing = client.post(RECHARGE, json={}, headers={"Content-Type": "application/json"})
        assert missing.status_code == 503
