"""Stripe refunds of payouts (issue 16 §2): the API process's runner refunds pending Stripe parts
through Stripe's API (the fake, over HTTP), the fake then posts charge.refunded to the API over
HTTP, and our own refund moves no money again while a dashboard refund still does. Real
PostgreSQL, the real app served by uvicorn with its lifespan (where the runner lives)."""

from __future__ import annotations

import dataclasses
import json
import os
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import Engine, text

from cloud.api import create_app
from cloud.api.limits import ApiLimits
from cloud.cli import main
from cloud.ledger import Ledger
from cloud.payouts import PayoutStore
from cloud.stripe_fake import (
    FakeStripe,
    charge_refunded_event,
    checkout_session_completed_event,
    deliver_event,
)
from tests.api.conftest import TEST_LIMITS, WEBHOOK_SECRET, admin_headers, make_settings, scalar
from tests.api.live import serve
from tests.waiting import wait_until

CARD = "04A1B2C3D4E5F6"
# The runner looks every 0.2 s, and retries after 1 s, 2 s: the test waits for conditions.
LIMITS = dataclasses.replace(
    TEST_LIMITS,
    payout_refund_interval_s=0.2,
    payout_refund_retry_min_s=1,
    payout_refund_retry_max_s=2,
)
assert isinstance(LIMITS, ApiLimits)
WAIT_S = 30.0  # DESIGN.md: refunded within 30 s of the request


@dataclass
class Live:
    base_url: str
    fake: FakeStripe
    engine: Engine  # festival_service: what the portal's payout route's procedure does


@pytest.fixture
def live(api_database_url: str, api_ledger: Ledger, engine: Engine) -> Iterator[Live]:
    """The API with its lifespan (the refund runner) and a fake Stripe that posts its webhooks
    to it, like Stripe posts to the endpoint configured in the dashboard."""
    fake = FakeStripe(port=0)
    fake.start()
    try:
        settings = make_settings(api_database_url, fake.base_url)
        app = create_app(settings, ledger=api_ledger, limits=LIMITS)
        with serve(app, lifespan="on") as base_url:
            fake.webhook_url = f"{base_url}/stripe/webhook"
            fake.webhook_secret = WEBHOOK_SECRET
            yield Live(base_url, fake, engine)
    finally:
        fake.stop()


def _post_json(url: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(  # noqa: S310 - our loopback server
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
        document = json.loads(response.read())
    assert isinstance(document, dict)
    return document


def _card(live: Live) -> dict[str, Any]:
    request = urllib.request.Request(  # noqa: S310 - our loopback server
        f"{live.base_url}/api/cards/{CARD}", headers=admin_headers()
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
        document = json.loads(response.read())
    assert isinstance(document, dict)
    return document


def _metrics(live: Live) -> str:
    with urllib.request.urlopen(f"{live.base_url}/metrics", timeout=10) as response:  # noqa: S310
        return str(response.read().decode())


def _metrics_with(live: Live, line: str) -> str | None:
    """The metrics text once it has `line` (counted when the runner's pass ends)."""
    text_ = _metrics(live)
    return text_ if line in text_ else None


def stripe_topup(live: Live, amount_cents: int) -> dict[str, Any]:
    """An attendee's online top-up, the whole way: checkout, payment, the signed webhook."""
    created = _post_json(
        f"{live.base_url}/api/topups/checkout", {"card_uid": CARD, "amount_cents": amount_cents}
    )
    session = live.fake.complete_session(created["session_id"])
    status, body = deliver_event(
        f"{live.base_url}/stripe/webhook", checkout_session_completed_event(session), WEBHOOK_SECRET
    )
    assert status == 200 and json.loads(body)["outcome"] == "processed", body
    return session


def request_payout(live: Live, *, donate_cents: int = 0, key: str = "tab-1") -> dict[str, Any]:
    return PayoutStore(live.engine).request(
        CARD,
        iban=None,
        account_holder=None,
        donate_cents=donate_cents,
        fee_cents=0,
        request_key=key,
    )


def stripe_parts(engine: Engine) -> list[dict[str, Any]]:
    with engine.connect() as connection:
        rows = connection.execute(
            text(
                "SELECT payout_id::text AS payout_id, payment_intent_id, amount_cents, state,"
                " stripe_refund_id, refund_attempts FROM payouts WHERE kind = 'stripe'"
                " ORDER BY amount_cents DESC"
            )
        ).mappings()
        return [dict(row) for row in rows]


def _all_settled(engine: Engine) -> list[dict[str, Any]] | None:
    parts = stripe_parts(engine)
    return parts if parts and all(p["state"] in ("paid", "failed") for p in parts) else None


def _webhooks_answered(fake: FakeStripe, count: int) -> bool:
    return len(fake.deliveries) >= count


def _refund_requests(fake: FakeStripe) -> list[dict[str, Any]]:
    return [r for r in fake.requests if r["path"] == "/v1/refunds" and r["method"] == "POST"]


def _check(monkeypatch: pytest.MonkeyPatch, url: str) -> int:
    """`festival-cloud check` in this process (the shared venv's script runs main's checkout)."""
    for key in list(os.environ):
        if key.startswith(("FESTIVAL_", "DATABASE_", "STRIPE_", "MQTT_")):
            monkeypatch.delenv(key)
    monkeypatch.setenv("DATABASE_URL", url)
    return main(["check"])


def test_a_payout_refunds_both_stripe_topups_newest_first_and_the_webhooks_move_nothing(
    live: Live, service_database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    older = stripe_topup(live, 3000)
    newer = stripe_topup(live, 2000)
    assert _card(live)["balance_cents"] == 5000
    outcome = request_payout(live, donate_cents=500)
    assert outcome["stripe_refund_cents"] == 4500 and outcome["bank_transfer_cents"] == 0

    parts = wait_until(lambda: _all_settled(live.engine), WAIT_S, 0.05, "both parts refunded")
    assert [(p["payment_intent_id"], p["amount_cents"], p["state"]) for p in parts] == [
        (older["payment_intent"], 2500, "paid"),
        (newer["payment_intent"], 2000, "paid"),
    ]
    by_intent = {p["payment_intent_id"]: p for p in parts}
    # Stripe was asked newest top-up first, each part once, under its own idempotency key.
    refunds = list(live.fake.refunds.values())
    assert [(r["payment_intent"], r["amount"]) for r in refunds] == [
        (newer["payment_intent"], 2000),
        (older["payment_intent"], 2500),
    ]
    for refund in refunds:
        part = by_intent[refund["payment_intent"]]
        assert refund["metadata"] == {"payout_id": part["payout_id"], "card_uid": CARD}
        assert part["stripe_refund_id"] == refund["id"]
    keys = [r["headers"]["idempotency-key"] for r in _refund_requests(live.fake)]
    assert keys == [f"payout-{by_intent[r['payment_intent']]['payout_id']}" for r in refunds]

    # The charge.refunded events Stripe sends after our refunds: answered, recorded, no money.
    wait_until(lambda: _webhooks_answered(live.fake, 2), WAIT_S, 0.05, "two webhooks")
    assert [d["status"] for d in live.fake.deliveries] == [200, 200]
    card = _card(live)
    assert card["balance_cents"] == 0 and card["status"] == "blocked"
    messages = [
        scalar(
            live.engine,
            "SELECT outcome ->> 'message' FROM stripe_events WHERE event_id = :e",
            e=delivery["event_id"],
        )
        for delivery in live.fake.deliveries
    ]
    assert messages == ["Refund of a payout: its money left the card with the payout request"] * 2
    assert (
        scalar(live.engine, "SELECT count(*) FROM transactions WHERE kind = 'stripe_refund'") == 0
    )
    assert scalar(live.engine, "SELECT sum(refunded_cents) FROM topups") == 0
    assert _check(monkeypatch, service_database_url) == 0
    # Counted when the runner's pass ends (just after the parts were recorded).
    paid = 'festival_api_payout_refunds_total{result="paid"} 2.0'
    wait_until(lambda: paid in _metrics(live), WAIT_S, 0.05, "the refunds counted")


def test_stripe_down_for_the_first_tries_is_retried_and_refunds_exactly_once(
    live: Live, service_database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    session = stripe_topup(live, 2500)
    # The first attempt: the client's three calls fail (503, a dropped connection, 503); the
    # runner records it, waits its backoff and tries again under the same idempotency key.
    live.fake.fail_next(503)
    live.fake.drop_next()
    live.fake.fail_next(503)
    request_payout(live)

    parts = wait_until(lambda: _all_settled(live.engine), WAIT_S, 0.05, "the part refunded")
    assert [(p["state"], p["amount_cents"]) for p in parts] == [("paid", 2500)]
    assert parts[0]["refund_attempts"] == 2
    refunds = live.fake.refunds_of(str(session["payment_intent"]))
    assert len(refunds) == 1 and refunds[0]["amount"] == 2500
    assert parts[0]["stripe_refund_id"] == refunds[0]["id"]
    calls = _refund_requests(live.fake)
    assert len(calls) == 4
    assert {c["headers"]["idempotency-key"] for c in calls} == {f"payout-{parts[0]['payout_id']}"}
    metrics = wait_until(
        lambda: _metrics_with(live, 'festival_api_payout_refunds_total{result="paid"} 1.0'),
        WAIT_S,
        0.05,
        "the refund counted",
    )
    assert 'festival_api_payout_refunds_total{result="retry"} 1.0' in metrics
    reasons = _audit_reasons(live.engine)
    assert any(reason.startswith("stripe refund attempt 1:") for reason in reasons), reasons
    # Paid once, by whichever came first: the runner recording Stripe's answer, or the
    # charge.refunded webhook the fake sends right after the refund (on a loaded machine it
    # can overtake the answer); the other finds the part paid and changes nothing.
    paid = [
        reason for reason in reasons if reason.startswith(f"stripe refund {refunds[0]['id']} (")
    ]
    assert paid in (
        [f"stripe refund {refunds[0]['id']} (refunds API)"],
        [f"stripe refund {refunds[0]['id']} (charge.refunded webhook)"],
    ), reasons

    wait_until(lambda: _webhooks_answered(live.fake, 1), WAIT_S, 0.05, "the webhook")
    assert live.fake.deliveries[0]["status"] == 200
    assert _card(live)["balance_cents"] == 0
    assert (
        scalar(live.engine, "SELECT count(*) FROM transactions WHERE kind = 'stripe_refund'") == 0
    )
    assert _check(monkeypatch, service_database_url) == 0


def test_a_refund_whose_answer_was_lost_is_not_made_twice(
    live: Live, service_database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    session = stripe_topup(live, 2500)
    # Stripe carries the refund out but the answer is lost (three times: the client's retries
    # get the stored answer's connection dropped too), so the runner knows nothing. Stripe's
    # charge.refunded names the part (metadata.payout_id): the webhook makes it paid, or else the
    # runner's retry gets the stored refund back under the same key. One refund either way.
    live.fake.lose_answer_next(3)
    request_payout(live)

    parts = wait_until(lambda: _all_settled(live.engine), WAIT_S, 0.05, "the part refunded")
    refunds = live.fake.refunds_of(str(session["payment_intent"]))
    assert len(refunds) == 1 and refunds[0]["amount"] == 2500
    assert [(p["state"], p["stripe_refund_id"]) for p in parts] == [("paid", refunds[0]["id"])]
    wait_until(lambda: _webhooks_answered(live.fake, 1), WAIT_S, 0.05, "the webhook")
    assert [d["status"] for d in live.fake.deliveries] == [200]
    assert _card(live)["balance_cents"] == 0
    assert (
        scalar(live.engine, "SELECT count(*) FROM transactions WHERE kind = 'stripe_refund'") == 0
    )
    assert _check(monkeypatch, service_database_url) == 0


def _audit_reasons(engine: Engine) -> list[str]:
    with engine.connect() as connection:
        return [
            str(row[0])
            for row in connection.execute(text("SELECT reason FROM payout_audit ORDER BY audit_id"))
        ]


def test_a_dashboard_refund_still_takes_the_money_off_the_card(live: Live) -> None:
    session = stripe_topup(live, 3000)
    charge = live.fake.refund(str(session["id"]), 1000)
    status, _ = deliver_event(
        f"{live.base_url}/stripe/webhook", charge_refunded_event(charge), WEBHOOK_SECRET
    )
    assert status == 200
    assert _card(live)["balance_cents"] == 2000


def test_a_dashboard_refund_after_a_payout_refund_still_moves_its_own_money(live: Live) -> None:
    session = stripe_topup(live, 3000)
    request_payout(live, donate_cents=1000)
    wait_until(lambda: _all_settled(live.engine), WAIT_S, 0.05, "the part refunded")
    wait_until(lambda: _webhooks_answered(live.fake, 1), WAIT_S, 0.05, "our webhook")
    # Someone refunds the rest in the dashboard: Stripe's cumulative 3000 is 2000 of ours and
    # 1000 of theirs; the card (empty since the payout) cannot cover it: a shortfall, blocked.
    charge = live.fake.refund(str(session["id"]), 1000)
    assert charge["amount_refunded"] == 3000 and len(charge["refunds"]["data"]) == 2
    status, body = deliver_event(
        f"{live.base_url}/stripe/webhook",
        charge_refunded_event(charge, previous_amount_refunded=2000),
        WEBHOOK_SECRET,
    )
    assert status == 200, body
    assert scalar(live.engine, "SELECT refunded_cents FROM topups") == 1000
    assert scalar(live.engine, "SELECT shortfall_cents FROM topups") == 1000
    assert (
        scalar(live.engine, "SELECT count(*) FROM transactions WHERE kind = 'stripe_refund'") == 1
    )


def test_a_permanent_stripe_error_fails_the_part_and_the_money_is_back_on_the_card(
    live: Live, service_database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    session = stripe_topup(live, 2500)
    # Refunded in full in the dashboard, its webhook not (yet) here: Stripe refuses ours.
    live.fake.refund(str(session["id"]), 2500)
    request_payout(live)
    assert _card(live)["balance_cents"] == 0

    parts = wait_until(lambda: _all_settled(live.engine), WAIT_S, 0.05, "the part settled")
    assert [(p["state"], p["refund_attempts"]) for p in parts] == [("failed", 1)]
    card = _card(live)
    assert card["balance_cents"] == 2500 and card["status"] == "active"
    error = scalar(live.engine, "SELECT refund_last_error FROM payouts WHERE kind = 'stripe'")
    assert "already been refunded" in error
    assert live.fake.refunds == {} and len(_refund_requests(live.fake)) == 1
    assert _check(monkeypatch, service_database_url) == 0
