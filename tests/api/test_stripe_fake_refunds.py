"""The fake Stripe's refunds as the payout refunds rely on them (issue 16 §2): each refund listed
in its charge with its own metadata, the charge.refunded it POSTs to the webhook afterwards,
failures N times, dropped connections and lost answers, and one request per idempotency key at a
time."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import stripe

from cloud.api.stripe_events import RefundCharge, classify, parse_event, verify_signature
from cloud.stripe_fake import FakeStripe, charge_refunded_event, encode_event
from tests.api.test_stripe_fake import _paid_session, client_for
from tests.waiting import wait_until

SECRET = "whsec_fake_refunds"


@pytest.fixture
def fake() -> Iterator[FakeStripe]:
    server = FakeStripe(port=0)
    server.start()
    yield server
    server.stop()


class _Endpoint:
    """A webhook endpoint that keeps what it was sent (the body and Stripe-Signature)."""

    def __init__(self) -> None:
        self.received: list[tuple[bytes, str]] = []
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                endpoint.received.append((body, self.headers["Stripe-Signature"]))
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/stripe/webhook"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def test_each_refund_is_listed_with_its_metadata_and_charge_refunded_follows(
    fake: FakeStripe,
) -> None:
    endpoint = _Endpoint()
    try:
        fake.webhook_url, fake.webhook_secret = endpoint.url, SECRET
        client = client_for(fake)
        session = _paid_session(fake, client)
        intent = session["payment_intent"]
        first = client.v1.refunds.create(
            params={"payment_intent": intent, "amount": 1000, "metadata": {"payout_id": "p1"}},
            options={"idempotency_key": "payout-p1"},
        )
        second = client.v1.refunds.create(
            params={"payment_intent": intent, "amount": 500, "metadata": {"payout_id": "p2"}},
            options={"idempotency_key": "payout-p2"},
        )
        assert first.metadata.to_dict() == {"payout_id": "p1"} and first.amount == 1000
        wait_until(lambda: len(fake.deliveries) == 2, 10, 0.02, "two charge.refunded")
        assert [d["status"] for d in fake.deliveries] == [200, 200]
        wait_until(lambda: len(endpoint.received) == 2, 10, 0.02, "two bodies")
        events = []
        for body, signature in endpoint.received:
            verify_signature(body, signature, SECRET, now_s=time.time(), tolerance_s=300)
            events.append(parse_event(body))
        last = max(events, key=lambda e: int(e.data_object["amount_refunded"]))
        charge = last.data_object
        assert last.event_type == "charge.refunded"
        assert charge["amount_refunded"] == 1500 and charge["refunded"] is False
        assert last.document["data"]["previous_attributes"]["amount_refunded"] == 1000
        listed = charge["refunds"]["data"]
        assert [(r["id"], r["amount"], r["metadata"]) for r in listed] == [
            (second.id, 500, {"payout_id": "p2"}),
            (first.id, 1000, {"payout_id": "p1"}),
        ]
        assert charge["refunds"]["total_count"] == 2
        action = classify(last)
        assert isinstance(action, RefundCharge) and action.amount_refunded_cents == 1500
        # "p1" is no payout id (ours are uuids): not taken for one of ours.
        assert action.payout_refunds == ()
        # More than the unrefunded rest is refused, as Stripe does.
        with pytest.raises(stripe.InvalidRequestError) as too_much:
            client.v1.refunds.create(params={"payment_intent": intent, "amount": 1001})
        assert too_much.value.code == "amount_too_large"
    finally:
        endpoint.close()


def test_classify_reads_our_payout_refunds_from_the_list(fake: FakeStripe) -> None:
    client = client_for(fake)
    session = _paid_session(fake, client)
    payout_id = "0190f0a2-7b1c-7d3e-8f00-0123456789ab"
    fake.refund(str(session["id"]), 700, metadata={"payout_id": payout_id.upper()})
    charge = fake.refund(str(session["id"]), 300)  # a dashboard refund: no payout id
    action = classify(parse_event(encode_event(charge_refunded_event(charge))))
    assert isinstance(action, RefundCharge)
    assert [(r.amount_cents, r.payout_id) for r in action.payout_refunds] == [(700, payout_id)]
    assert action.payout_refunds[0].refund_id == charge["refunds"]["data"][1]["id"]


def test_failures_n_times_drops_and_lost_answers(fake: FakeStripe) -> None:
    client = client_for(fake, retries=0)
    session = _paid_session(fake, client)
    intent = session["payment_intent"]
    params: Any = {"payment_intent": intent, "amount": 100}
    fake.fail_next(503, times=2)
    for _ in range(2):
        with pytest.raises(stripe.APIError) as unavailable:
            client.v1.refunds.create(params=params, options={"idempotency_key": "k"})
        assert unavailable.value.http_status == 503
    fake.drop_next()
    with pytest.raises(stripe.APIConnectionError):
        client.v1.refunds.create(params=params, options={"idempotency_key": "k"})
    assert fake.refunds_of(intent) == []
    fake.lose_answer_next()
    with pytest.raises(stripe.APIConnectionError):
        client.v1.refunds.create(params=params, options={"idempotency_key": "k"})
    (made,) = fake.refunds_of(intent)  # carried out, the answer lost
    again = client.v1.refunds.create(params=params, options={"idempotency_key": "k"})
    assert again.id == made["id"] and len(fake.refunds_of(intent)) == 1


def test_one_request_per_idempotency_key_at_a_time(fake: FakeStripe) -> None:
    client = client_for(fake)
    session = _paid_session(fake, client)
    headers = {"authorization": "Bearer sk_test_x", "idempotency-key": "busy"}
    fake._in_flight.add("busy")  # a first request under way
    status, body = fake.handle_api(
        "POST", "/v1/refunds", headers, f"payment_intent={session['payment_intent']}".encode()
    )
    assert status == 409 and body["error"]["code"] == "idempotency_key_in_use"
    fake._in_flight.discard("busy")
    status, body = fake.handle_api(
        "POST", "/v1/refunds", headers, f"payment_intent={session['payment_intent']}".encode()
    )
    assert status == 200 and json.loads(json.dumps(body))["object"] == "refund"
