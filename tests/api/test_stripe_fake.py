"""The fake Stripe server itself (tests, benchmarks and the demo rely on it): it speaks the
wire format stripe-python uses, keeps idempotency like Stripe, and its hosted page completes a
payment and delivers the signed webhook."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import stripe

from cloud.stripe_fake import (
    FakeStripe,
    charge_refunded_event,
    checkout_session_completed_event,
    decode_form,
    deliver_event,
    encode_event,
    signature_header,
)

# Any: stripe-python types params as TypedDicts; these dicts are built to be changed.
PARAMS: Any = {
    "mode": "payment",
    "line_items": [
        {
            "quantity": 2,
            "price_data": {
                "currency": "eur",
                "unit_amount": 1250,
                "product_data": {"name": "Top-up"},
            },
        }
    ],
    "success_url": "http://festival.test/ok",
    "client_reference_id": "04A1B2C3",
    "metadata": {"card_uid": "04A1B2C3", "topup_id": "tu_1"},
}


@pytest.fixture
def fake() -> Iterator[FakeStripe]:
    server = FakeStripe(port=0)
    server.start()
    yield server
    server.stop()


def client_for(
    fake: FakeStripe, key: str = "sk_test_fake", retries: int = 0
) -> stripe.StripeClient:
    return stripe.StripeClient(
        key, base_addresses={"api": fake.base_url}, max_network_retries=retries
    )


def test_decode_form_reads_stripe_brackets() -> None:
    body = b"a[0][b]=1&a[1][b]=2&m[k]=v&x=y&e="
    assert decode_form(body) == {"a": [{"b": "1"}, {"b": "2"}], "m": {"k": "v"}, "x": "y", "e": ""}


def test_sessions_are_created_retrieved_and_idempotent(fake: FakeStripe) -> None:
    client = client_for(fake)
    session = client.v1.checkout.sessions.create(params=PARAMS, options={"idempotency_key": "k1"})
    assert session.object == "checkout.session" and session.amount_total == 2500
    assert (
        session.currency == "eur"
        and session.status == "open"
        and session.payment_status == "unpaid"
    )
    assert session.url == f"{fake.base_url}/c/pay/{session.id}"
    assert session.metadata is not None
    assert session.metadata.to_dict() == {"card_uid": "04A1B2C3", "topup_id": "tu_1"}
    same = client.v1.checkout.sessions.create(params=PARAMS, options={"idempotency_key": "k1"})
    assert same.id == session.id and len(fake.sessions) == 1
    with pytest.raises(stripe.IdempotencyError):
        other: Any = {**PARAMS, "client_reference_id": "04FFFFFF"}
        client.v1.checkout.sessions.create(params=other, options={"idempotency_key": "k1"})
    assert client.v1.checkout.sessions.retrieve(session.id).id == session.id
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.checkout.sessions.retrieve("cs_test_missing")


def test_bad_keys_and_bad_parameters_are_refused_like_stripe(fake: FakeStripe) -> None:
    with pytest.raises(stripe.AuthenticationError):
        client_for(fake, key="pk_test_publishable").v1.checkout.sessions.create(params=PARAMS)
    client = client_for(fake)
    for broken in (
        {**PARAMS, "mode": None},
        {**PARAMS, "line_items": []},
        {**PARAMS, "success_url": ""},
    ):
        with pytest.raises(stripe.InvalidRequestError):
            params: Any = {k: v for k, v in broken.items() if v is not None}
            client.v1.checkout.sessions.create(params=params)
    tiny = json.loads(json.dumps(PARAMS))
    tiny["line_items"][0]["price_data"]["unit_amount"] = 10
    tiny["line_items"][0]["quantity"] = 1
    with pytest.raises(stripe.InvalidRequestError, match="at least"):
        client.v1.checkout.sessions.create(params=tiny)


def test_fail_next_makes_one_call_fail(fake: FakeStripe) -> None:
    fake.fail_next(500)
    with pytest.raises(stripe.APIError):
        client_for(fake).v1.checkout.sessions.create(params=PARAMS)
    assert client_for(fake).v1.checkout.sessions.create(params=PARAMS).id


def test_state_changes_produce_consistent_objects(fake: FakeStripe) -> None:
    session = client_for(fake).v1.checkout.sessions.create(params=PARAMS)
    completed = fake.complete_session(session.id)
    assert completed["status"] == "complete" and completed["payment_status"] == "paid"
    assert completed["payment_intent"].startswith("pi_") and completed["url"] is None
    charge = fake.refund(session.id, 1000)
    assert charge["payment_intent"] == completed["payment_intent"]
    assert charge["amount_refunded"] == 1000 and charge["refunded"] is False
    charge = fake.refund(session.id, 5000)
    assert charge["amount_refunded"] == 2500 and charge["refunded"] is True
    dispute = fake.dispute(session.id)
    assert (
        dispute["charge"] == charge["id"] and dispute["payment_intent"] == charge["payment_intent"]
    )
    event = charge_refunded_event(charge, previous_amount_refunded=1000)
    assert event["data"]["previous_attributes"]["amount_refunded"] == 1000


def test_hosted_page_pays_and_delivers_the_signed_webhook(fake: FakeStripe) -> None:
    received: list[tuple[bytes, str]] = []
    receiver = FakeStripe(port=0)  # any HTTP server will do; reuse ours as a sink

    def sink(method: str, path: str, headers: Any, body: bytes) -> tuple[int, dict[str, Any]]:
        received.append((body, headers.get("stripe-signature", "")))
        return 200, {"received": True}

    receiver.handle_api = sink  # type: ignore[method-assign]
    receiver.start()
    try:
        fake.webhook_url = f"{receiver.base_url}/webhook"
        fake.webhook_secret = "whsec_page"
        session = client_for(fake).v1.checkout.sessions.create(params=PARAMS)
        assert session.url is not None
        with urllib.request.urlopen(session.url, timeout=10) as page:  # noqa: S310 - loopback
            assert b"Fake Stripe Checkout" in page.read()

        class NoRedirect(urllib.request.HTTPRedirectHandler):
            def redirect_request(self, *args: Any, **kwargs: Any) -> None:
                return None

        pay = urllib.request.Request(session.url, data=b"", method="POST")  # noqa: S310
        with pytest.raises(urllib.error.HTTPError) as redirect:
            urllib.request.build_opener(NoRedirect).open(pay, timeout=10)
        with redirect.value as answer:
            assert answer.code == 303
            assert answer.headers["Location"] == "http://festival.test/ok"
        assert len(received) == 1
        body, header = received[0]
        event = stripe.Webhook.construct_event(body.decode(), header, "whsec_page")
        assert event["type"] == "checkout.session.completed"
        assert event["data"]["object"]["id"] == session.id
        assert event["data"]["object"]["payment_status"] == "paid"
    finally:
        receiver.stop()


def test_deliver_event_reports_status_and_body(fake: FakeStripe) -> None:
    event = checkout_session_completed_event(
        fake.sessions.get("x") or {"id": "cs_1", "object": "checkout.session"}
    )
    status, body = deliver_event(f"{fake.base_url}/v1/nowhere", event, "whsec_x")
    assert status == 401 and b"API key" in body
    payload = encode_event(event)
    header = signature_header(payload, "whsec_x", timestamp=1_700_000_000)
    assert header.startswith("t=1700000000,v1=") and len(header.split("v1=")[1]) == 64


def _paid_session(fake: FakeStripe, client: stripe.StripeClient) -> dict[str, Any]:
    session = client.v1.checkout.sessions.create(params=PARAMS)
    return fake.complete_session(str(session.id))


def test_refunds_by_payment_intent_in_full_and_idempotent_like_stripe(fake: FakeStripe) -> None:
    client = client_for(fake)
    session = _paid_session(fake, client)
    intent = session["payment_intent"]
    params: Any = {
        "payment_intent": intent,
        "reason": "requested_by_customer",
        "metadata": {"topup_id": "tu_1"},
    }
    refund = client.v1.refunds.create(params=params, options={"idempotency_key": "r1"})
    assert refund.object == "refund" and refund.status == "succeeded"
    assert refund.amount == 2500 and refund.payment_intent == intent and refund.currency == "eur"
    assert str(refund.id).startswith("re_")
    # The same key and parameters: the same refund, not a second one.
    same = client.v1.refunds.create(params=params, options={"idempotency_key": "r1"})
    assert same.id == refund.id and len(fake.refunds_of(intent)) == 1
    # The same key with other parameters: Stripe's idempotency_error.
    with pytest.raises(stripe.IdempotencyError):
        client.v1.refunds.create(
            params={**params, "reason": "duplicate"}, options={"idempotency_key": "r1"}
        )
    charge = fake.charge_for(str(session["id"]))
    assert charge["amount_refunded"] == 2500 and charge["refunded"] is True
    # Nothing left: a new key gets charge_already_refunded.
    with pytest.raises(stripe.InvalidRequestError) as already:
        client.v1.refunds.create(params=params, options={"idempotency_key": "r2"})
    assert already.value.code == "charge_already_refunded" and already.value.http_status == 400


def test_partial_refunds_and_refused_refunds(fake: FakeStripe) -> None:
    client = client_for(fake)
    session = _paid_session(fake, client)
    intent = session["payment_intent"]
    partial = client.v1.refunds.create(params={"payment_intent": intent, "amount": 1000})
    assert partial.amount == 1000
    with pytest.raises(stripe.InvalidRequestError) as too_much:
        client.v1.refunds.create(params={"payment_intent": intent, "amount": 1501})
    assert too_much.value.code == "amount_too_large"
    rest = client.v1.refunds.create(params={"payment_intent": intent})
    assert rest.amount == 1500
    with pytest.raises(stripe.InvalidRequestError) as unknown:
        client.v1.refunds.create(params={"payment_intent": "pi_3NoSuchIntent"})
    assert unknown.value.http_status == 404 and unknown.value.code == "resource_missing"
    unpaid = client.v1.checkout.sessions.create(params=PARAMS)
    opened = fake.complete_session(str(unpaid.id), payment_status="unpaid")
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.refunds.create(params={"payment_intent": opened["payment_intent"]})
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.refunds.create(params={})


def test_a_500_on_a_refund_is_retried_by_the_client_with_the_same_key(fake: FakeStripe) -> None:
    client = client_for(fake, retries=2)
    session = _paid_session(fake, client)
    fake.fail_next(500)
    refund = client.v1.refunds.create(
        params={"payment_intent": session["payment_intent"]}, options={"idempotency_key": "r9"}
    )
    calls = [call for call in fake.requests if call["path"] == "/v1/refunds"]
    assert [call["headers"]["idempotency-key"] for call in calls] == ["r9", "r9"]
    assert len(fake.refunds_of(session["payment_intent"])) == 1 and refund.amount == 2500


def test_session_expiry_is_bounded_like_stripe(fake: FakeStripe) -> None:
    import time

    client = client_for(fake)
    now = int(time.time())
    ok = client.v1.checkout.sessions.create(params={**PARAMS, "expires_at": now + 23 * 3600})
    assert ok.expires_at == now + 23 * 3600
    for expires_at in (now + 24 * 3600 + 60, now + 60):
        with pytest.raises(stripe.InvalidRequestError) as refused:
            client.v1.checkout.sessions.create(params={**PARAMS, "expires_at": expires_at})
        assert refused.value.param == "expires_at"
    expired = fake.expire_session(str(ok.id))
    assert expired["status"] == "expired" and expired["url"] is None
