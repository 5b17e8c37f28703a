"""Admin and monitoring endpoints (bearer ADMIN_TOKEN), health, readiness and metrics."""

from __future__ import annotations

import hashlib
import time
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import Engine

from cloud.ledger import Ledger
from cloud.ledger_records import LedgerRequest
from protocol.keys import generate_private_key, public_key_b64
from protocol.models import BarItem, BarOrder, KioskStatus, request_to_dict
from protocol.strict_json import dumps_canonical
from tests.api.conftest import (
    ADMIN_TOKEN,
    LOOPBACK_PEER,
    POS_DEVICE_ID,
    POS_TOKEN,
    add_pos_device,
    admin_headers,
    pos_headers,
)

CARD = "04A1B2C3D4E5F6A7B8C9"
ADMIN_GETS = [
    f"/api/cards/{CARD}",
    "/api/monitoring/processing-times",
    "/api/monitoring/error-rates",
    "/api/monitoring/idempotency",
    "/api/monitoring/nfc-scans",
    "/api/monitoring/kiosks",
    "/api/monitoring/offline",
    "/api/monitoring/ledger",
    "/api/monitoring/sales",
    "/api/monitoring/dashboard",
]


def topup(
    client: TestClient,
    cents: int,
    request_id: str,
    token: str = POS_TOKEN,
    method: str = "cash",
) -> None:
    """A top-up from the POS device of `token`, into its own drawer."""
    body = {
        "card_id": CARD,
        "amount": cents / 100,
        "payment_method": method,
        "staff_id": "s1",
        "client_request_id": request_id,
    }
    response = client.post(
        "/functions/v1/process-checkpoint-recharge", json=body, headers=pos_headers(token)
    )
    assert response.status_code == 200, response.text


def sell(client: TestClient, cents: int, request_id: str) -> int:
    body = {
        "card_id": CARD,
        "items": [{"name": "Beer", "quantity": 1, "unit_price": cents / 100}],
        "total_amount": cents / 100,
        "client_request_id": request_id,
    }
    response = client.post("/functions/v1/process-bar-order", json=body, headers=pos_headers())
    return response.status_code


BAD_AUTHORIZATIONS = [
    None,
    "Bearer wrong-token",
    f"Basic {ADMIN_TOKEN}",
    "Bearer",
    f"Bearer {ADMIN_TOKEN}x",
    f"Bearer {ADMIN_TOKEN[:-1]}",
]


def test_admin_endpoints_refuse_without_the_right_token(client: TestClient) -> None:
    for path in ADMIN_GETS:
        for authorization in BAD_AUTHORIZATIONS:
            headers = {} if authorization is None else {"Authorization": authorization}
            response = client.get(path, headers=headers)
            assert response.status_code == 401, (path, authorization)
            assert response.json()["error_code"] == "UNAUTHORIZED"
            assert response.headers["www-authenticate"].startswith("Bearer")
        # The POS token is not an admin token.
        assert client.get(path, headers=pos_headers()).status_code == 401


def test_admin_posts_refuse_without_the_token(client: TestClient) -> None:
    for action in ("block", "unblock"):
        assert client.post(f"/api/cards/{CARD}/{action}").status_code == 401
        assert (
            client.post(
                f"/api/cards/{CARD}/{action}", headers={"Authorization": "Bearer nope"}
            ).status_code
            == 401
        )


def test_card_view_block_and_unblock(client: TestClient, ledger: Ledger) -> None:
    assert client.get(f"/api/cards/{CARD}", headers=admin_headers()).status_code == 404
    assert client.get("/api/cards/04a1b2c3", headers=admin_headers()).status_code == 400
    assert (
        client.get("/api/cards/NOT-A-UID", headers=admin_headers()).json()["error_code"]
        == "INVALID_REQUEST"
    )
    topup(client, 2000, "t-1")
    assert sell(client, 450, "s-1") == 200
    card = client.get(f"/api/cards/{CARD}", headers=admin_headers()).json()
    assert card["card_uid"] == CARD and card["balance_cents"] == 1550 and card["status"] == "active"
    kinds = [(row["kind"], row["amount_cents"]) for row in card["transactions"]]
    assert kinds == [("bar_order", -450), ("checkpoint_recharge", 2000)]

    blocked = client.post(
        f"/api/cards/{CARD}/block", json={"reason": "reported stolen"}, headers=admin_headers()
    )
    assert blocked.status_code == 200 and blocked.json()["status"] == "blocked"
    assert sell(client, 100, "s-2") == 403
    unblocked = client.post(f"/api/cards/{CARD}/unblock", headers=admin_headers())
    assert unblocked.status_code == 200 and unblocked.json()["status"] == "active"
    assert sell(client, 100, "s-3") == 200
    assert client.post("/api/cards/04000000/block", headers=admin_headers()).status_code == 404
    bad_reason = client.post(
        f"/api/cards/{CARD}/block", json={"reason": 5}, headers=admin_headers()
    )
    assert bad_reason.status_code == 400
    assert client.get(f"/api/cards/{CARD}?limit=0", headers=admin_headers()).status_code == 400
    assert client.get(f"/api/cards/{CARD}/block", headers=admin_headers()).status_code == 405


def test_monitoring_endpoints_answer_the_seed_queries_with_real_rows(
    client: TestClient, ledger: Ledger, owner_engine: Engine
) -> None:
    kiosk_key = public_key_b64(generate_private_key())
    ledger.add_kiosk("bar-1", kiosk_key, "bar")
    ledger.add_kiosk("checkpoint-9", kiosk_key, "checkpoint")
    ledger.disable_kiosk("checkpoint-9")
    gate_a = add_pos_device(owner_engine, "gate-a", "checkpoint")
    gate_b = add_pos_device(owner_engine, "gate-b", "checkpoint")
    topup(client, 5000, "t-1", gate_a, method="cash")
    topup(client, 3000, "t-2", gate_b, method="card")
    assert sell(client, 700, "s-1") == 200
    assert sell(client, 99_999, "s-2") == 402

    def get(path: str) -> Any:
        response = client.get(f"/api/monitoring/{path}", headers=admin_headers())
        assert response.status_code == 200, response.text
        return response.json()

    times = get("processing-times")
    assert {row["edge_function_name"] for row in times} >= {
        "process-bar-order",
        "process-checkpoint-recharge",
    }
    rates = {row["status"]: row["count"] for row in get("error-rates")}
    assert rates["approved"] == 3 and rates["declined"] == 1
    usage = get("idempotency")
    assert {row["source_function"] for row in usage} >= {"process-bar-order"}
    assert get("nfc-scans") == []
    kiosks = {row["kiosk_id"]: row for row in get("kiosks")}
    assert set(kiosks) == {"bar-1", "checkpoint-9"}
    assert kiosks["checkpoint-9"]["enabled"] is False and kiosks["bar-1"]["role"] == "bar"
    assert get("ledger") == {"ok": True, "violations": []}
    sales = get("sales")
    assert sales["bars"] == [{"kiosk_id": POS_DEVICE_ID, "orders": 1, "sales_cents": 700}]
    checkpoints = {row["checkpoint_id"]: row for row in sales["checkpoints"]}
    assert (
        checkpoints["gate-a"]["cash_cents"] == 5000 and checkpoints["gate-b"]["card_cents"] == 3000
    )

    dashboard = get("dashboard")
    assert dashboard["window_minutes"] == 60
    assert len(dashboard["sales_per_minute"]) == 60
    assert dashboard["sales"] == {"orders": 1, "amount_cents": 700}
    assert dashboard["topups"]["amount_cents"] == 8000
    assert dashboard["topups"]["by_method"] == {"cash": 5000, "card": 3000}
    declines = dashboard["recent_declines"]
    assert declines[0]["error_code"] == "INSUFFICIENT_FUNDS" and declines[0]["card_uid"] == CARD
    assert {kiosk["kiosk_id"] for kiosk in dashboard["kiosks"]} == {"bar-1", "checkpoint-9"}
    assert (
        client.get("/api/monitoring/dashboard?minutes=500", headers=admin_headers()).status_code
        == 400
    )


def test_health_readiness_and_metrics_need_no_token(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ok", "database": "ok"}
    topup(client, 1234, "t-metrics")
    metrics = client.get("/metrics")
    assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
    text = metrics.text
    assert 'festival_api_requests_total{method="GET",route="/healthz",status="200"} 1.0' in text
    assert (
        'festival_api_pos_requests_total{endpoint="checkpoint_recharge",outcome="approved"} 1.0'
        in text
    )
    assert 'festival_api_request_duration_seconds_bucket{le="0.005",route="/readyz"}' in text
    assert 'festival_api_ledger_call_seconds_count{operation="checkpoint_recharge"} 1.0' in text
    assert "festival_ledger_up 1.0" in text
    assert "festival_ledger_card_balance_cents 1234.0" in text
    assert "festival_ledger_cards 1.0" in text


def test_two_apps_keep_separate_metrics(
    client: TestClient, settings: object, ledger: Ledger
) -> None:
    from cloud.api import create_app

    app = create_app(settings, ledger=ledger)  # type: ignore[arg-type]
    with TestClient(app, client=LOOPBACK_PEER) as other:
        client.get("/healthz")
        client.get("/healthz")
        assert 'route="/healthz"' not in other.get("/metrics").text
        other.get("/healthz")
        assert 'route="/healthz",status="200"} 1.0' in other.get("/metrics").text
        assert 'route="/healthz",status="200"} 2.0' in client.get("/metrics").text


def test_kiosk_view_reports_online_state_and_missing_seq_ranges(
    client: TestClient, ledger: Ledger
) -> None:
    """Kiosk orders over MQTT with seq 1, 2, 5 and 9: 3-4 and 6-8 went missing."""
    ledger.add_kiosk("bar-7", public_key_b64(generate_private_key()), "bar")
    topup(client, 5000, "t-seq")
    now_ms = int(time.time() * 1000)
    ledger.record_kiosk_status(
        KioskStatus(kiosk_id="bar-7", state="online", at_ms=now_ms, firmware="1.2.3"),
        received_at_ms=now_ms,
    )
    for seq in (1, 2, 5, 9):
        order = BarOrder(
            request_id=f"bar-7-{seq}",
            kiosk_id="bar-7",
            seq=seq,
            created_at_ms=now_ms,
            card_uid=CARD,
            currency="EUR",
            items=(BarItem(name="Beer", quantity=1, unit_price_cents=450),),
            total_cents=450,
        )
        payload = hashlib.sha256(dumps_canonical(request_to_dict(order))).hexdigest()
        assert ledger.apply(LedgerRequest(request=order, payload_sha256=payload)).approved
    response = client.get("/api/monitoring/kiosks", headers=admin_headers())
    kiosk = next(row for row in response.json() if row["kiosk_id"] == "bar-7")
    assert kiosk["state"] == "online" and kiosk["enabled"] is True
    assert kiosk["last_seen_at"] is not None and kiosk["last_seq"] == 9
    assert kiosk["missing_seq_ranges"] == [[3, 4], [6, 8]]
    dashboard = client.get("/api/monitoring/dashboard", headers=admin_headers()).json()
    shown = next(row for row in dashboard["kiosks"] if row["kiosk_id"] == "bar-7")
    assert shown["missing_seq_ranges"] == [[3, 4], [6, 8]]
