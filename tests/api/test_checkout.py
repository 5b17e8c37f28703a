"""Online top-ups: POST /api/topups/checkout against the fake Stripe server (STRIPE_API_BASE)
and the real ledger, the public /topup page, and the whole pay-then-webhook flow over HTTP."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from cloud.api import create_app
from cloud.api.limits import ApiLimits
from cloud.ledger import Ledger
from cloud.settings import CloudSettings
from cloud.stripe_fake import FakeStripe, checkout_session_completed_event, deliver_event
from tests.api.conftest import WEBHOOK_SECRET, admin_headers, rows, scalar
from tests.api.live import serve

CARD = "04A1B2C3D4E5F6"


def checkout(client: TestClient, body: Any) -> Any:
    return client.post(
        "/api/topups/checkout",
        content=json.dumps(body),
        headers={"Content-Type": "application/json"},
    )


def test_checkout_creates_a_stripe_session_and_records_the_pending_topup(
    client: TestClient, fake_stripe: FakeStripe, owner_engine: Engine
) -> None:
    response = checkout(client, {"card_uid": CARD, "amount_cents": 2500})
    assert response.status_code == 201
    body = response.json()
    assert set(body) == {"session_id", "checkout_url"}
    session_id = body["session_id"]
    assert session_id.startswith("cs_test_")
    assert body["checkout_url"] == f"{fake_stripe.base_url}/c/pay/{session_id}"

    params = fake_stripe.created_with[session_id]
    topup = rows(owner_engine, "SELECT * FROM topups WHERE session_id = :s", s=session_id)[0]
    assert topup["status"] == "open" and topup["amount_cents"] == 2500 and topup["card_uid"] == CARD
    assert params["mode"] == "payment"
    assert params["client_reference_id"] == CARD
    assert params["metadata"] == {"card_uid": CARD, "topup_id": topup["topup_id"]}
    assert params["payment_intent_data"]["metadata"]["card_uid"] == CARD
    assert params["success_url"] == (
        "http://festival.test/topup?status=success&session_id={CHECKOUT_SESSION_ID}"
    )
    assert params["cancel_url"] == "http://festival.test/topup?status=cancelled"
    line = params["line_items"][0]
    assert line["quantity"] == "1"
    assert line["price_data"]["unit_amount"] == "2500" and line["price_data"]["currency"] == "eur"
    call = next(c for c in fake_stripe.requests if c["params"] == params)
    assert call["headers"]["idempotency-key"] == topup["topup_id"]
    assert call["headers"]["authorization"] == "Bearer sk_test_api_tests_0123456789"


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"card_uid": "04a1b2c3", "amount_cents": 1000}, 400),
        ({"card_uid": "04A1B2C", "amount_cents": 1000}, 400),
        ({"card_uid": "04A1B2C3G", "amount_cents": 1000}, 400),
        ({"card_uid": 4, "amount_cents": 1000}, 400),
        ({"card_uid": CARD}, 400),
        ({"amount_cents": 1000}, 400),
        ({"card_uid": CARD, "amount_cents": -100}, 400),
        ({"card_uid": CARD, "amount_cents": 0}, 400),
        ({"card_uid": CARD, "amount_cents": 49}, 400),
        ({"card_uid": CARD, "amount_cents": 100_001}, 400),
        ({"card_uid": CARD, "amount_cents": 10**30}, 400),
        ({"card_uid": CARD, "amount_cents": 10.5}, 400),
        ({"card_uid": CARD, "amount_cents": "1000"}, 400),
        ({"card_uid": CARD, "amount_cents": True}, 400),
        ({"card_uid": CARD, "amount_cents": 1000, "extra": 1}, 400),
        ([CARD, 1000], 400),
        (None, 400),
    ],
)
def test_bad_checkout_bodies_are_categorised_400s(
    client: TestClient, owner_engine: Engine, body: Any, status: int
) -> None:
    response = checkout(client, body)
    assert response.status_code == status
    assert response.json()["error_code"] == "INVALID_REQUEST"
    assert response.json()["request_id"] == response.headers["x-request-id"]
    assert scalar(owner_engine, "SELECT count(*) FROM topups") == 0


def test_wrong_content_type_and_size_and_method(client: TestClient) -> None:
    body = json.dumps({"card_uid": CARD, "amount_cents": 1000})
    as_text = client.post(
        "/api/topups/checkout", content=body, headers={"Content-Type": "text/plain"}
    )
    assert as_text.status_code == 415 and as_text.json()["error_code"] == "UNSUPPORTED_MEDIA_TYPE"
    no_type = client.post("/api/topups/checkout", content=body.encode())
    assert no_type.status_code == 415
    huge = client.post(
        "/api/topups/checkout",
        content=b'{"card_uid": "' + b"A" * 70_000 + b'"}',
        headers={"Content-Type": "application/json"},
    )
    assert huge.status_code == 413
    assert client.get("/api/topups/checkout").status_code == 405
    malformed = client.post(
        "/api/topups/checkout", content=b"{", headers={"Content-Type": "application/json"}
    )
    assert malformed.status_code == 400


def test_checkout_reveals_nothing_about_the_card(
    client: TestClient, ledger: Ledger, fake_stripe: FakeStripe
) -> None:
    """Attack (issue 11 item 8): asking for 1,000.00 answered "at most 88766 cents fit" (the
    exact balance) and 403 for a blocked card. Now every well-formed request gets the same 201,
    whatever the card holds or its status; a paid session it cannot take is refunded."""
    from tests.ledger.helpers import PUBLIC_KEY, recharge

    # A checkpoint top-up creates the card with 887.66; the maximum balance is 1500.00.
    ledger.add_kiosk("checkpoint-1", PUBLIC_KEY, "checkpoint")
    assert ledger.apply(recharge(CARD, 88_766)).approved
    blocked_card, unknown_card = "04BB0000", "04EE0000"
    assert ledger.apply(recharge(blocked_card, 88_766)).approved
    ledger.block_card(blocked_card, "lost")
    created_before = len(fake_stripe.sessions)
    answers = []
    for card_uid, amount_cents in [
        (CARD, 100_000),  # far over what fits: used to answer "at most 61234 cents fit"
        (CARD, 61_234),  # exactly what fits
        (CARD, 61_235),  # one cent too many
        (blocked_card, 1_000),  # used to answer 403 CARD_BLOCKED
        (unknown_card, 1_000),
    ]:
        response = checkout(client, {"card_uid": card_uid, "amount_cents": amount_cents})
        answers.append((response.status_code, sorted(response.json()), response.headers.keys()))
        assert response.status_code == 201, response.text
        assert "cents" not in response.text and "blocked" not in response.text
    assert all(answer[:2] == answers[0][:2] for answer in answers)
    assert len(fake_stripe.sessions) == created_before + 5
    assert (
        'festival_api_checkout_sessions_total{outcome="created"} 5.0' in client.get("/metrics").text
    )


def test_checkout_sessions_expire_within_24_hours(
    client: TestClient, fake_stripe: FakeStripe, owner_engine: Engine
) -> None:
    """Unpaid top-ups expire after 24 h (item 9): the session carries expires_at <= 24 h, the
    top-up row its own expiry 24 h after creation (never before Stripe's)."""
    import time

    before = int(time.time())
    response = checkout(client, {"card_uid": CARD, "amount_cents": 1000})
    assert response.status_code == 201
    session_id = response.json()["session_id"]
    expires_at = int(fake_stripe.created_with[session_id]["expires_at"])
    assert before + 23 * 3600 <= expires_at <= int(time.time()) + 24 * 3600
    assert fake_stripe.sessions[session_id]["expires_at"] == expires_at
    row_expiry = scalar(
        owner_engine,
        "SELECT extract(epoch FROM expires_at)::bigint FROM topups WHERE session_id = :s",
        s=session_id,
    )
    assert expires_at <= row_expiry <= int(time.time()) + 24 * 3600 + 1


def test_stripe_failure_is_502_and_nothing_is_credited(
    client: TestClient, fake_stripe: FakeStripe, owner_engine: Engine
) -> None:
    # 400 is not retried by the client (a 500 would be, with the same idempotency key).
    fake_stripe.fail_next(400)
    response = checkout(client, {"card_uid": CARD, "amount_cents": 1000})
    assert response.status_code == 502
    assert response.json()["error_code"] == "PAYMENT_PROVIDER_ERROR"
    assert scalar(owner_engine, "SELECT status FROM topups") == "pending"
    assert (
        'festival_api_checkout_sessions_total{outcome="provider_error"} 1.0'
        in client.get("/metrics").text
    )


def test_stripe_server_error_is_retried_with_the_same_idempotency_key(
    client: TestClient, fake_stripe: FakeStripe
) -> None:
    fake_stripe.fail_next(500)
    calls_before = len(fake_stripe.requests)
    response = checkout(client, {"card_uid": CARD, "amount_cents": 1500})
    assert response.status_code == 201
    calls = fake_stripe.requests[calls_before:]
    assert len(calls) == 2
    assert calls[0]["headers"]["idempotency-key"] == calls[1]["headers"]["idempotency-key"]


def test_checkout_is_rate_limited_per_client(settings: CloudSettings, ledger: Ledger) -> None:
    limits = ApiLimits(checkout_burst=3, checkout_refill_per_s=0.01)
    app = create_app(settings, ledger=ledger, limits=limits)
    with TestClient(app, client=("127.0.0.1", 50000)) as client:  # /metrics: loopback
        statuses = [
            checkout(client, {"card_uid": CARD, "amount_cents": 1000}).status_code for _ in range(3)
        ]
        assert statuses == [201, 201, 201]
        refused = checkout(client, {"card_uid": CARD, "amount_cents": 1000})
        assert refused.status_code == 429
        assert refused.json()["error_code"] == "RATE_LIMITED"
        assert int(refused.headers["retry-after"]) >= 1
        # Invalid bodies count too: the bucket is spent before the body is read.
        assert checkout(client, {"card_uid": "bad"}).status_code == 429
        assert (
            'festival_api_rate_limited_total{route="/api/topups/checkout"} 2.0'
            in client.get("/metrics").text
        )


def test_checkout_without_stripe_configuration_is_503(
    service_database_url: str, ledger: Ledger
) -> None:
    from tests.api.conftest import make_settings

    settings = make_settings(service_database_url, "http://127.0.0.1:9", stripe_secret_key=None)
    with TestClient(create_app(settings, ledger=ledger)) as client:
        response = checkout(client, {"card_uid": CARD, "amount_cents": 1000})
        assert response.status_code == 503 and response.json()["error_code"] == "NOT_CONFIGURED"


# --- the public page -------------------------------------------------------------------------


def test_topup_page_renders_and_escapes(client: TestClient) -> None:
    page = client.get("/topup")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert 'name="card_uid"' in page.text and 'name="amount"' in page.text
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert "Thank you" in client.get("/topup?status=success").text
    refused = client.post(
        "/topup",
        data={"card_uid": '"><script>alert(1)</script>', "amount": "10"},
    )
    assert refused.status_code == 400
    assert "<script>alert(1)</script>" not in refused.text
    assert "&lt;script&gt;" in refused.text


def test_topup_form_normalises_what_people_type_and_redirects_to_checkout(
    client: TestClient, fake_stripe: FakeStripe
) -> None:
    response = client.post(
        "/topup",
        data={"card_uid": "04 a1 b2 c3 d4 e5 f6", "amount": "25,50"},
        follow_redirects=False,
    )
    assert response.status_code == 303
    location = response.headers["location"]
    session_id = location.rsplit("/", 1)[1]
    assert location.startswith(fake_stripe.base_url)
    assert fake_stripe.sessions[session_id]["amount_total"] == 2550
    assert fake_stripe.sessions[session_id]["client_reference_id"] == CARD
    for amount in ("0.10", "abc", "10.005", "100000", ""):
        again = client.post("/topup", data={"card_uid": CARD, "amount": amount})
        assert again.status_code == 400 and "amount between" in again.text
    json_body = client.post("/topup", json={"card_uid": CARD, "amount": "10"})
    assert json_body.status_code == 415


def test_pay_through_the_fake_checkout_page_and_the_webhook_credits_the_card(
    settings: CloudSettings, ledger: Ledger, fake_stripe: FakeStripe
) -> None:
    """The whole online flow over real HTTP: page form -> Stripe (fake) -> signed webhook."""
    app = create_app(settings, ledger=ledger)
    with serve(app) as base_url:
        form = urllib.request.Request(  # noqa: S310 - our loopback server
            f"{base_url}/topup",
            data=f"card_uid={CARD}&amount=30".encode(),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
            method="POST",
        )

        class NoRedirect(urllib.request.HTTPRedirectHandler):
            def redirect_request(self, *args: Any, **kwargs: Any) -> None:
                return None

        opener = urllib.request.build_opener(NoRedirect)
        try:
            opener.open(form, timeout=10)
            raise AssertionError("expected a redirect")
        except urllib.error.HTTPError as redirect:
            with redirect:
                assert redirect.code == 303
                checkout_url = redirect.headers["Location"]
        session_id = checkout_url.rsplit("/", 1)[1]
        # The attendee pays on Stripe; Stripe posts the signed event to our webhook.
        session = fake_stripe.complete_session(session_id)
        status, body = deliver_event(
            f"{base_url}/stripe/webhook", checkout_session_completed_event(session), WEBHOOK_SECRET
        )
        assert status == 200 and json.loads(body)["outcome"] == "processed"
        card = urllib.request.Request(  # noqa: S310 - our loopback server
            f"{base_url}/api/cards/{CARD}", headers=admin_headers()
        )
        with urllib.request.urlopen(card, timeout=10) as response:  # noqa: S310
            assert json.loads(response.read())["balance_cents"] == 3000
