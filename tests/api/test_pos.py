"""The seed-compatible point-of-sale endpoints, against the real ledger: bodies as the seed's
guide sends them, the seed's answer fields, its status mapping and exact decimal euros."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from cloud.ledger import Ledger
from protocol.keys import generate_private_key, public_key_b64
from protocol.models import Menu, MenuItem
from tests.api.conftest import (
    OLD_POS_API_TOKEN,
    POS_DEVICE_ID,
    POS_TOKEN,
    pos_headers,
    rows,
    scalar,
)

CARD = "04A1B2C3"
BAR = "/functions/v1/process-bar-order"
RECHARGE = "/functions/v1/process-checkpoint-recharge"


def post(client: TestClient, path: str, body: Any, **headers: str) -> Any:
    text = body if isinstance(body, str) else json.dumps(body)
    return client.post(
        path, content=text, headers=pos_headers(**{"Content-Type": "application/json", **headers})
    )


def recharge(client: TestClient, amount: Any = 10.00, request_id: str = "r-1", **extra: Any) -> Any:
    body = {
        "card_id": CARD,
        "amount": amount,
        "payment_method": "cash",
        "staff_id": "staff123",
        "client_request_id": request_id,
        **extra,
    }
    return post(client, RECHARGE, body)


def bar_order(
    client: TestClient,
    request_id: str = "b-1",
    unit_price: Any = 5.00,
    quantity: int = 1,
    total: Any = None,
) -> Any:
    body = {
        "card_id": CARD,
        "items": [{"name": "Test Item", "quantity": quantity, "unit_price": unit_price}],
        "total_amount": total if total is not None else unit_price,
        "client_request_id": request_id,
    }
    return post(client, BAR, body)


def test_recharge_then_bar_order_answer_the_seed_fields(client: TestClient, ledger: Ledger) -> None:
    topped = recharge(client, 10.00, checkpoint_id=POS_DEVICE_ID)  # its own drawer, named
    assert topped.status_code == 200
    assert '"previous_balance":0.00' in topped.text and '"new_balance":10.00' in topped.text
    body = topped.json()
    assert body["success"] is True and body["error"] is None and body["error_code"] is None
    assert body["transaction_id"] and body["request_id"] == topped.headers["x-request-id"]
    assert isinstance(body["processing_time_ms"], float | int)
    assert "order_id" not in body

    # The seed's own example body, to the byte (5.00 as written).
    sold = post(
        client,
        BAR,
        '{"card_id": "04A1B2C3", "items": [{"name": "Test Item", "quantity": 1, '
        '"unit_price": 5.00}], "total_amount": 5.00, "client_request_id": "test-1700000000"}',
    )
    assert sold.status_code == 200
    assert '"previous_balance":10.00' in sold.text and '"new_balance":5.00' in sold.text
    answer = sold.json()
    assert answer["success"] is True and answer["order_id"] and answer["transaction_id"]
    assert set(answer) >= {
        "success",
        "order_id",
        "transaction_id",
        "previous_balance",
        "new_balance",
        "error",
        "error_code",
        "request_id",
        "processing_time_ms",
    }
    card = ledger.card(CARD)
    assert card is not None and card.balance_cents == 500


def test_decimal_euros_are_exact(client: TestClient, ledger: Ledger) -> None:
    # 0.1 + 0.2 is not 0.3 in binary floating point; in cents it is 30.
    assert recharge(client, 0.3, "r-tenths").status_code == 200
    sold = post(
        client,
        BAR,
        {
            "card_id": CARD,
            "items": [
                {"name": "A", "quantity": 1, "unit_price": 0.1},
                {"name": "B", "quantity": 1, "unit_price": 0.2},
            ],
            "total_amount": 0.3,
            "client_request_id": "b-tenths",
        },
    )
    assert sold.status_code == 200 and '"new_balance":0.00' in sold.text
    assert ledger.card(CARD).balance_cents == 0  # type: ignore[union-attr]
    for amount in ("10.001", "10.000", "1e-3"):
        refused = post(
            client,
            RECHARGE,
            f'{{"card_id": "{CARD}", "amount": {amount}, "payment_method": "cash", '
            f'"staff_id": "s", "client_request_id": "r-{amount}"}}',
        )
        assert refused.status_code == 400 and refused.json()["error_code"] == "INVALID_REQUEST"
        assert "decimals" in refused.json()["error"]


def test_replay_and_conflict(client: TestClient, ledger: Ledger, owner_engine: Engine) -> None:
    first = recharge(client, 20.00, "r-same")
    replay = recharge(client, 20.0, "r-same")  # same meaning, other spelling: a replay
    assert replay.status_code == 200
    assert replay.json()["replayed"] is True
    assert replay.json()["transaction_id"] == first.json()["transaction_id"]
    conflict = recharge(client, 30.00, "r-same")
    assert conflict.status_code == 409 and conflict.json()["error_code"] == "IDEMPOTENCY_CONFLICT"
    assert ledger.card(CARD).balance_cents == 2000  # type: ignore[union-attr]
    # One namespace with the bar orders (and the kiosks): the same id on the other endpoint.
    other = bar_order(client, "r-same")
    assert other.status_code == 409
    assert scalar(owner_engine, "SELECT count(*) FROM recharges") == 1


@pytest.mark.parametrize(
    ("setup", "order", "status", "code"),
    [
        ("none", {"unit_price": 1.00}, 404, "CARD_NOT_FOUND"),
        ("ten", {"unit_price": 10.01}, 402, "INSUFFICIENT_FUNDS"),
        ("blocked", {"unit_price": 1.00}, 403, "CARD_BLOCKED"),
    ],
)
def test_declines_map_to_the_seed_statuses(
    client: TestClient, ledger: Ledger, setup: str, order: dict[str, Any], status: int, code: str
) -> None:
    if setup in ("ten", "blocked"):
        assert recharge(client, 10.00, "setup").status_code == 200
    if setup == "blocked":
        ledger.block_card(CARD, "stolen")
    response = bar_order(client, "decline-1", **order)
    assert response.status_code == status
    body = response.json()
    assert body["success"] is False and body["error_code"] == code and body["error"]
    expected_balance = None if setup == "none" else 10.0
    assert body["previous_balance"] == expected_balance and body["new_balance"] == expected_balance
    # A decline is stored too: replaying it answers the same, even after the card could pay.
    assert bar_order(client, "decline-1", **order).status_code == status


def test_balance_limit_is_422(client: TestClient) -> None:
    assert recharge(client, 1000.00, "big-1").status_code == 200
    over = recharge(client, 500.01, "big-2")
    assert over.status_code == 422 and over.json()["error_code"] == "BALANCE_LIMIT_EXCEEDED"
    assert recharge(client, 1000.01, "too-big").status_code == 400  # over the single top-up limit


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"card_id": CARD},
        {
            "card_id": "TEST1234",
            "items": [{"name": "x", "quantity": 1, "unit_price": 1}],
            "total_amount": 1,
            "client_request_id": "x",
        },
        {
            "card_id": CARD,
            "items": [{"name": "x", "quantity": 1, "unit_price": 1}],
            "total_amount": 2,
            "client_request_id": "x",
        },
        {
            "card_id": CARD,
            "items": [{"name": "x", "quantity": -1, "unit_price": 1}],
            "total_amount": -1,
            "client_request_id": "x",
        },
        {
            "card_id": CARD,
            "items": [{"name": "x", "quantity": 1, "unit_price": -1}],
            "total_amount": -1,
            "client_request_id": "x",
        },
        {
            "card_id": CARD,
            "items": [{"name": "x", "quantity": 1, "unit_price": 1e12}],
            "total_amount": 1e12,
            "client_request_id": "x",
        },
        {"card_id": CARD, "items": "beer", "total_amount": 1, "client_request_id": "x"},
        {
            "card_id": CARD,
            "items": [{"name": "x", "quantity": 1, "unit_price": "1.00"}],
            "total_amount": 1,
            "client_request_id": "x",
        },
        {
            "card_id": CARD,
            "items": [{"name": "x", "quantity": 1, "unit_price": 1}],
            "total_amount": 1,
            "client_request_id": "bad id!",
        },
        [1, 2, 3],
        "not an object",
    ],
)
def test_invalid_bodies_are_400_invalid_request(
    client: TestClient, owner_engine: Engine, body: Any
) -> None:
    response = post(client, BAR, json.dumps(body))
    assert response.status_code == 400
    assert response.json()["success"] is False
    assert response.json()["error_code"] == "INVALID_REQUEST"
    assert scalar(owner_engine, "SELECT count(*) FROM processed_requests") == 0


def test_token_content_type_size_and_method(client: TestClient) -> None:
    body = json.dumps(
        {
            "card_id": CARD,
            "amount": 1,
            "payment_method": "cash",
            "staff_id": "s",
            "client_request_id": "t",
        }
    )
    for headers in (
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": "Basic abc"},
        {"Authorization": "Bearer admin-token-for-tests-0123456789"},
        # Revision 1.1: the shared POS_API_TOKEN (set in these tests' settings) grants nothing.
        {"Authorization": f"Bearer {OLD_POS_API_TOKEN}"},
        # A device's id with a made-up secret, or another device's secret.
        {"Authorization": f"Bearer {POS_DEVICE_ID}.guessed-secret"},
        {"Authorization": f"Bearer other-till.{POS_TOKEN.partition('.')[2]}"},
    ):
        refused = client.post(
            RECHARGE, content=body, headers={"Content-Type": "application/json", **headers}
        )
        assert refused.status_code == 401
        assert refused.json()["error_code"] == "UNAUTHORIZED" and refused.json()["success"] is False
    as_form = client.post(
        RECHARGE, content=body, headers=pos_headers(**{"Content-Type": "text/plain"})
    )
    assert as_form.status_code == 415
    huge = client.post(
        RECHARGE, content=b" " * 70_000, headers=pos_headers(**{"Content-Type": "application/json"})
    )
    assert huge.status_code == 413
    for path in (BAR, RECHARGE):
        assert client.get(path).status_code == 405


def test_trace_id_and_source_in_the_transaction_log(
    client: TestClient, owner_engine: Engine
) -> None:
    response = client.post(
        RECHARGE,
        content=json.dumps(
            {
                "card_id": CARD,
                "amount": 5,
                "payment_method": "card",
                "staff_id": "s",
                "client_request_id": "traced",
            }
        ),
        headers=pos_headers(**{"Content-Type": "application/json", "X-Request-ID": "pos-trace-7"}),
    )
    assert response.json()["request_id"] == "pos-trace-7"
    log = rows(
        owner_engine,
        "SELECT trace_id, edge_function_name, kiosk_id, status FROM app_transaction_log"
        " WHERE client_request_id = 'traced'",
    )
    assert log == [
        {
            "trace_id": "pos-trace-7",
            "edge_function_name": "process-checkpoint-recharge",
            "kiosk_id": POS_DEVICE_ID,
            "status": "approved",
        }
    ]


def test_menus_do_not_apply_to_the_pos_endpoint(client: TestClient, ledger: Ledger) -> None:
    """(1.1) Its lines carry no SKU: a bar order over HTTP is not checked against any menu,
    even when every kiosk sells from one (docs/api.md). A POS device is never a kiosk (their ids
    never meet), so it has no menu of its own to be checked against either."""
    ledger.add_kiosk("bar-1", public_key_b64(generate_private_key()), "bar")
    menu = Menu("m", (MenuItem("beer", "Beer", 550),))
    assert ledger.issue_kiosk_config("bar-1", menu=menu) == 1
    assert ledger.kiosk(POS_DEVICE_ID) is None
    assert recharge(client, 10.00).status_code == 200
    sold = bar_order(client, "b-menu", unit_price=4.99)
    assert sold.status_code == 200, sold.text
    assert sold.json()["success"] is True
    card = ledger.card(CARD)
    assert card is not None and card.balance_cents == 501
