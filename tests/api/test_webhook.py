"""POST /stripe/webhook against a real migrated PostgreSQL, with events signed exactly like
Stripe signs them and shaped like Stripe's API objects (cloud.stripe_fake)."""

from __future__ import annotations

import time
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from cloud.api import create_app
from cloud.ledger import Ledger
from cloud.sandbox import free_port
from cloud.settings import CloudSettings
from cloud.stripe_fake import (
    FakeStripe,
    charge_dispute_created_event,
    charge_object,
    charge_refunded_event,
    checkout_session_async_payment_failed_event,
    checkout_session_async_payment_succeeded_event,
    checkout_session_completed_event,
    checkout_session_object,
    dispute_object,
    encode_event,
    make_event,
)
from tests.api.conftest import (
    TEST_LIMITS,
    PostEvent,
    admin_headers,
    make_settings,
    pos_headers,
    rows,
    scalar,
    signed_headers,
)
from tests.api.stripe_helpers import our_paid_session

CARD = "04A1B2C3D4E5F6"


def foreign_session(amount_total: int = 2500, **overrides: Any) -> dict[str, Any]:
    """A paid session this API did not create (its topup_id names no top-up of ours)."""
    fields: dict[str, Any] = {
        "amount_total": amount_total,
        "client_reference_id": CARD,
        "metadata": {"card_uid": CARD, "topup_id": f"tu_{time.time_ns()}"},
        "status": "complete",
        "payment_status": "paid",
        "payment_intent": f"pi_3Test{time.time_ns()}",
    }
    fields.update(overrides)
    return checkout_session_object(**fields)


def balance(ledger: Ledger, card_uid: str = CARD) -> int | None:
    card = ledger.card(card_uid)
    return None if card is None else card.balance_cents


def test_paid_session_credits_the_card_once(post_event: PostEvent, ledger: Ledger) -> None:
    session = our_paid_session(ledger, CARD, 2500)
    event = checkout_session_completed_event(session)
    first = post_event(event)
    assert first.status_code == 200
    assert first.json() == {"received": True, "event_id": event["id"], "outcome": "processed"}
    assert balance(ledger) == 2500
    again = post_event(event)
    assert again.status_code == 200 and again.json()["outcome"] == "duplicate"
    # Another event id for the same session (Stripe also sends async_payment_succeeded for
    # some methods): keyed by the session, it credits nothing.
    other = post_event(checkout_session_async_payment_succeeded_event(session))
    assert other.status_code == 200 and other.json()["outcome"] == "processed"
    assert balance(ledger) == 2500
    assert ledger.check() == []


def test_seed_path_alias_and_get_405(
    client: TestClient, post_event: PostEvent, ledger: Ledger
) -> None:
    response = post_event(
        checkout_session_completed_event(our_paid_session(ledger, CARD, 1000)),
        path="/functions/v1/stripe-webhook",
    )
    assert response.status_code == 200 and balance(ledger) == 1000
    for path in ("/stripe/webhook", "/functions/v1/stripe-webhook"):
        refused = client.get(path)
        assert refused.status_code == 405
        assert refused.json()["error_code"] == "METHOD_NOT_ALLOWED"


def test_delayed_payment_waits_then_credits_or_fails(
    post_event: PostEvent, ledger: Ledger, owner_engine: Engine
) -> None:
    pending = our_paid_session(ledger, CARD, 3000, payment_status="unpaid")
    response = post_event(checkout_session_completed_event(pending))
    assert response.json()["outcome"] == "ignored"
    assert balance(ledger) is None
    succeeded = dict(pending, payment_status="paid")
    response = post_event(checkout_session_async_payment_succeeded_event(succeeded))
    assert response.json()["outcome"] == "processed"
    assert balance(ledger) == 3000

    other_card = "04FFEEDD"
    failing = our_paid_session(ledger, other_card, 4000, payment_status="unpaid")
    response = post_event(checkout_session_async_payment_failed_event(failing))
    assert response.status_code == 200 and response.json()["outcome"] == "processed"
    status = scalar(
        owner_engine,
        "SELECT status FROM topups WHERE topup_id = :t",
        t=failing["metadata"]["topup_id"],
    )
    assert status == "failed"
    assert balance(ledger, other_card) is None


@pytest.mark.parametrize(
    ("timestamp_offset_s", "secret", "tamper"),
    [
        # 60 s beyond the 300-s tolerance either way: a loaded machine can take seconds between
        # signing the header here and the API reading its clock, which must not decide the test.
        (-360, None, False),  # too old
        (360, None, False),  # from the future: stripe-python would accept it, we do not
        (0, "whsec_someone_else", False),
        (0, None, True),
    ],
)
def test_bad_signatures_are_400_and_change_nothing(
    client: TestClient,
    ledger: Ledger,
    owner_engine: Engine,
    timestamp_offset_s: int,
    secret: str | None,
    tamper: bool,
) -> None:
    from tests.api.conftest import WEBHOOK_SECRET

    payload = encode_event(checkout_session_completed_event(our_paid_session(ledger, CARD, 5000)))
    headers = signed_headers(
        payload, timestamp=int(time.time()) + timestamp_offset_s, secret=secret or WEBHOOK_SECRET
    )
    if tamper:
        payload = payload.replace(b"5000", b"9000")
    response = client.post("/stripe/webhook", content=payload, headers=headers)
    assert response.status_code == 400
    assert response.json()["error_code"] == "INVALID_SIGNATURE"
    assert balance(ledger) is None
    assert scalar(owner_engine, "SELECT count(*) FROM stripe_events") == 0


def test_missing_signature_and_bodies_that_are_not_events(
    client: TestClient, ledger: Ledger
) -> None:
    body = encode_event(checkout_session_completed_event(our_paid_session(ledger, CARD)))
    assert client.post("/stripe/webhook", content=body).status_code == 400
    for payload in (b"", b"not json", b"[]", b'{"object": "event"}', b"\xff\xfe\x00"):
        response = client.post("/stripe/webhook", content=payload, headers=signed_headers(payload))
        assert response.status_code == 400, payload
        assert response.json()["error_code"] == "INVALID_REQUEST"
    broken = checkout_session_completed_event(our_paid_session(ledger, CARD, amount_total=10))
    broken["data"]["object"]["amount_total"] = "10"
    payload = encode_event(broken)
    response = client.post("/stripe/webhook", content=payload, headers=signed_headers(payload))
    assert response.status_code == 400
    assert balance(ledger) is None


def test_oversized_webhook_body_is_413(client: TestClient) -> None:
    event = checkout_session_completed_event(foreign_session())
    event["data"]["object"]["metadata"]["padding"] = "x" * (600 * 1024)
    payload = encode_event(event)
    response = client.post("/stripe/webhook", content=payload, headers=signed_headers(payload))
    assert response.status_code == 413
    assert response.json()["error_code"] == "PAYLOAD_TOO_LARGE"


def test_other_currency_than_the_topup_is_an_anomaly_not_credited(
    post_event: PostEvent, ledger: Ledger, owner_engine: Engine
) -> None:
    session = our_paid_session(ledger, CARD, 2000)
    session["currency"] = "usd"  # not what the checkout asked Stripe for
    response = post_event(checkout_session_completed_event(session))
    assert response.status_code == 200 and response.json()["outcome"] == "anomaly"
    assert not balance(ledger)
    topup = rows(
        owner_engine,
        "SELECT status, credited_cents FROM topups WHERE session_id = :s",
        s=session["id"],
    )
    # Our top-up is left as it was (the session that pays it may still come); nothing refunded.
    assert topup == [{"status": "open", "credited_cents": 0}]
    assert scalar(owner_engine, "SELECT count(*) FROM topup_refunds") == 0


def test_unhandled_event_types_are_stored_and_ignored(
    post_event: PostEvent, owner_engine: Engine
) -> None:
    event = make_event("customer.created", {"id": "cus_Test123", "object": "customer"})
    response = post_event(event)
    assert response.status_code == 200 and response.json()["outcome"] == "ignored"
    stored = scalar(
        owner_engine, "SELECT event_type FROM stripe_events WHERE event_id = :e", e=event["id"]
    )
    assert stored == "customer.created"


def test_refunds_take_back_the_cumulative_delta_and_block_on_shortfall(
    client: TestClient, post_event: PostEvent, ledger: Ledger
) -> None:
    session = our_paid_session(ledger, CARD, 5000)
    assert post_event(checkout_session_completed_event(session)).status_code == 200
    intent = session["payment_intent"]
    partial = charge_object(payment_intent=intent, amount=5000, amount_refunded=1000)
    refunded = charge_refunded_event(partial)
    assert post_event(refunded).json()["outcome"] == "processed"
    assert balance(ledger) == 4000
    # The same event delivered again, or another event with the same cumulative amount,
    # changes nothing: only the delta over what was already reversed is taken.
    assert post_event(refunded).json()["outcome"] == "duplicate"
    assert post_event(charge_refunded_event(partial)).status_code == 200
    assert balance(ledger) == 4000
    # The attendee spends 35.00 at a bar, then the rest of the payment is refunded: the card
    # cannot cover it, the shortfall is recorded and the card is blocked instead of failing.
    order = {
        "card_id": CARD,
        "items": [{"name": "Round", "quantity": 1, "unit_price": 35.0}],
        "total_amount": 35.0,
        "client_request_id": "bar-before-refund",
    }
    spent = client.post("/functions/v1/process-bar-order", json=order, headers=pos_headers())
    assert spent.status_code == 200 and balance(ledger) == 500
    full = charge_object(
        payment_intent=intent, amount=5000, amount_refunded=5000, charge_id=partial["id"]
    )
    response = post_event(charge_refunded_event(full, previous_amount_refunded=1000))
    assert response.status_code == 200
    card = ledger.card(CARD)
    assert card is not None and card.balance_cents == 0 and card.status == "blocked"
    assert ledger.check() == []


def test_dispute_blocks_the_card(post_event: PostEvent, ledger: Ledger) -> None:
    session = our_paid_session(ledger, CARD, 2000)
    post_event(checkout_session_completed_event(session))
    dispute = dispute_object(
        charge_id="ch_3Disputed0001", payment_intent=session["payment_intent"], amount=2000
    )
    response = post_event(charge_dispute_created_event(dispute))
    assert response.status_code == 200 and response.json()["outcome"] == "processed"
    card = ledger.card(CARD)
    assert card is not None and card.status == "blocked" and card.balance_cents == 2000
    unknown = dispute_object(charge_id="ch_3Other", payment_intent="pi_3NotOurs", amount=100)
    assert post_event(charge_dispute_created_event(unknown)).json()["outcome"] == "anomaly"


def test_request_id_reaches_the_transaction_log(
    post_event: PostEvent, owner_engine: Engine, ledger: Ledger
) -> None:
    session = our_paid_session(ledger, CARD, 1500)
    response = post_event(
        checkout_session_completed_event(session), headers={"X-Request-ID": "stripe-trace-42"}
    )
    assert response.headers["x-request-id"] == "stripe-trace-42"
    trace = scalar(
        owner_engine,
        "SELECT trace_id FROM app_transaction_log WHERE client_request_id = :s",
        s=session["id"],
    )
    assert trace == "stripe-trace-42"


def test_database_down_is_503_and_the_retry_applies_the_event_once(
    fake_stripe: FakeStripe, settings: CloudSettings, ledger: Ledger
) -> None:
    # A real database fault: the same app wiring pointed at a port where no server listens.
    dead_url = f"postgresql+psycopg2://festival_service@127.0.0.1:{free_port()}/nothing"
    dead_settings = make_settings(dead_url, fake_stripe.base_url)
    from cloud.api.app import build_ledger

    event = checkout_session_completed_event(our_paid_session(ledger, CARD, 2200))
    payload = encode_event(event)
    dead_app = create_app(dead_settings, ledger=build_ledger(dead_settings))
    with TestClient(dead_app, client=("127.0.0.1", 50000)) as dead:  # /metrics: loopback
        response = dead.post("/stripe/webhook", content=payload, headers=signed_headers(payload))
        assert response.status_code == 503
        assert response.headers["retry-after"] == "1"
        assert dead.get("/readyz").status_code == 503
        metrics = dead.get("/metrics").text
        assert (
            'festival_api_webhook_events_total{outcome="unavailable",'
            'type="checkout.session.completed"} 1.0' in metrics
        )
        assert "festival_ledger_up 0.0" in metrics
    # Stripe retries once the database is back: applied exactly once.
    with TestClient(create_app(settings, ledger=ledger, limits=TEST_LIMITS)) as live:
        for _ in range(2):
            retry = live.post("/stripe/webhook", content=payload, headers=signed_headers(payload))
            assert retry.status_code == 200
    assert balance(ledger) == 2200


def test_webhook_metrics_count_events_by_type_and_outcome(
    client: TestClient, post_event: PostEvent, ledger: Ledger
) -> None:
    event = checkout_session_completed_event(our_paid_session(ledger, CARD, 1200))
    post_event(event)
    post_event(event)
    post_event(make_event("invoice.paid", {"id": "in_1", "object": "invoice"}))
    text = client.get("/metrics").text
    assert (
        'festival_api_webhook_events_total{outcome="processed",'
        'type="checkout.session.completed"} 1.0' in text
    )
    assert (
        'festival_api_webhook_events_total{outcome="duplicate",'
        'type="checkout.session.completed"} 1.0' in text
    )
    assert 'festival_api_webhook_events_total{outcome="ignored",type="other"} 1.0' in text
    assert (
        'festival_api_webhook_processing_seconds_count{type="checkout.session.completed"} 2.0'
        in text
    )
    assert (
        'festival_api_requests_total{method="POST",route="/stripe/webhook",status="200"} 3.0'
        in text
    )
    card = client.get(f"/api/cards/{CARD}", headers=admin_headers()).json()
    assert card["balance_cents"] == 1200
