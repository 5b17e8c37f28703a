"""Issue 11 item 3 (and 9, 13): Stripe credits only the Checkout Sessions this API created.

Each attack is reproduced as it was found (a foreign paid session on the same Stripe account
became wristband credit; a blocked card's payment was kept), then shown refused: recorded as an
anomaly and answered 200, or refunded in full through the fake Stripe's POST /v1/refunds.
Sessions are opened through the real /api/topups/checkout and paid on the fake Stripe."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import Engine

from cloud.api import create_app
from cloud.ledger import Ledger
from cloud.stripe_fake import (
    FakeStripe,
    charge_dispute_closed_event,
    charge_dispute_created_event,
    charge_refunded_event,
    checkout_session_async_payment_succeeded_event,
    checkout_session_completed_event,
    checkout_session_expired_event,
    checkout_session_object,
    make_event,
)
from tests.api.conftest import (
    STRIPE_KEY,
    TEST_LIMITS,
    PostEvent,
    make_settings,
    rows,
    scalar,
)
from tests.api.stripe_helpers import new_topup_id
from tests.ledger.helpers import PUBLIC_KEY, bar_order
from tests.waiting import wait_until

CARD = "04A1B2C3D4E5F6"
FESTIVAL_CLOUD = Path(sys.executable).with_name("festival-cloud")
# stripe-python tries a call 1 + STRIPE_NETWORK_RETRIES_MAX times before giving up.
CLIENT_ATTEMPTS = 3


def open_checkout(client: TestClient, card_uid: str, amount_cents: int) -> str:
    response = client.post(
        "/api/topups/checkout",
        content=json.dumps({"card_uid": card_uid, "amount_cents": amount_cents}),
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 201, response.text
    return str(response.json()["session_id"])


def pay(client: TestClient, fake: FakeStripe, card_uid: str, amount_cents: int) -> dict[str, Any]:
    """The attendee opens a checkout and pays it on Stripe; returns the paid session."""
    return fake.complete_session(open_checkout(client, card_uid, amount_cents))


def balance(ledger: Ledger, card_uid: str = CARD) -> int | None:
    card = ledger.card(card_uid)
    return None if card is None else card.balance_cents


def refund_row(ledger: Ledger, session: dict[str, Any]) -> dict[str, object] | None:
    return ledger.topup_refund(str(session["metadata"]["topup_id"]))


def refund_done(ledger: Ledger, session: dict[str, Any]) -> dict[str, object] | None:
    row = refund_row(ledger, session)
    return row if row is not None and row["status"] == "succeeded" else None


def anomaly_logged(owner_engine: Engine, event_id: str) -> list[dict[str, Any]]:
    return rows(
        owner_engine,
        "SELECT status, details ->> 'message' AS message FROM app_transaction_log "
        "WHERE details ->> 'event_id' = :e",
        e=event_id,
    )


# --- foreign sessions are never credited --------------------------------------------------------


def test_a_payment_link_with_client_reference_id_is_not_credited(
    post_event: PostEvent, ledger: Ledger, owner_engine: Engine, fake_stripe: FakeStripe
) -> None:
    """The attack: a T-shirt bought through a Payment Link opened with
    ?client_reference_id=<UID> was credited to that wristband."""
    tshirt = checkout_session_object(
        amount_total=2500,
        client_reference_id=CARD,
        metadata={},
        status="complete",
        payment_status="paid",
        payment_intent="pi_3TShirt0001",
    )
    tshirt["payment_link"] = "plink_1TShirt0001"
    event = checkout_session_completed_event(tshirt)
    calls_before = len(fake_stripe.requests)
    response = post_event(event)
    assert response.status_code == 200 and response.json()["outcome"] == "anomaly"
    assert balance(ledger) is None
    assert scalar(owner_engine, "SELECT count(*) FROM topups") == 0
    # Recorded for a human, with the reason; and not refunded (it is the shop's sale).
    outcome = scalar(
        owner_engine, "SELECT outcome FROM stripe_events WHERE event_id = :e", e=event["id"]
    )
    assert outcome["status"] == "rejected" and "not credited" in outcome["message"]
    [logged] = anomaly_logged(owner_engine, event["id"])
    assert logged["status"] == "anomaly" and "no metadata.topup_id" in logged["message"]
    assert len(fake_stripe.requests) == calls_before
    assert post_event(event).json()["outcome"] == "anomaly"
    assert balance(ledger) is None and ledger.check() == []


def test_another_shops_order_and_unknown_topup_ids_are_not_credited(
    post_event: PostEvent, ledger: Ledger, owner_engine: Engine
) -> None:
    for metadata in (
        {"order": "shop-4711"},  # another shop's order on the same account
        {"card_uid": CARD},  # our card in the metadata, but no top-up of ours
        {"card_uid": CARD, "topup_id": new_topup_id()},  # a top-up id we never made
    ):
        session = checkout_session_object(
            amount_total=5000,
            client_reference_id=CARD,
            metadata=metadata,
            status="complete",
            payment_status="paid",
            payment_intent=f"pi_3Shop{time.time_ns()}",
        )
        event = checkout_session_completed_event(session)
        response = post_event(event)
        assert response.status_code == 200 and response.json()["outcome"] == "anomaly", metadata
        assert [row["status"] for row in anomaly_logged(owner_engine, event["id"])] == ["anomaly"]
    assert balance(ledger) is None
    assert scalar(owner_engine, "SELECT count(*) FROM topups") == 0
    assert scalar(owner_engine, "SELECT count(*) FROM topup_refunds") == 0


def test_a_session_that_does_not_match_its_topup_is_not_credited(
    client: TestClient, post_event: PostEvent, ledger: Ledger, fake_stripe: FakeStripe
) -> None:
    """Our top-up id in a session whose card, amount, currency or session id differ."""
    genuine = pay(client, fake_stripe, CARD, 2000)
    mismatches = [
        {"metadata": {**genuine["metadata"], "card_uid": "04FFFFFF"}},
        {"metadata": {"topup_id": genuine["metadata"]["topup_id"]}},  # no card at all
        {"amount_total": 200_000},
        {"currency": "usd"},
        {"id": "cs_test_" + "Z" * 58},  # another session carrying our top-up id
    ]
    for change in mismatches:
        forged = {**genuine, **change}
        response = post_event(checkout_session_completed_event(forged))
        assert response.status_code == 200 and response.json()["outcome"] == "anomaly", change
    assert balance(ledger) is None and balance(ledger, "04FFFFFF") is None
    # The genuine session is still credited, once.
    assert post_event(checkout_session_completed_event(genuine)).json()["outcome"] == "processed"
    assert balance(ledger) == 2000
    assert ledger.check() == []


def test_livemode_must_match_the_secret_key(
    client: TestClient,
    post_event: PostEvent,
    ledger: Ledger,
    owner_engine: Engine,
    fake_stripe: FakeStripe,
    service_database_url: str,
) -> None:
    """Item 13: a test-mode key (sk_test_) never credits a livemode event, and a live key never
    credits a test-mode one (e.g. a test webhook replayed to production)."""
    session = pay(client, fake_stripe, CARD, 1500)
    live = checkout_session_completed_event(dict(session, livemode=True), livemode=True)
    response = post_event(live)
    assert response.status_code == 200 and response.json()["outcome"] == "anomaly"
    assert balance(ledger) is None
    [logged] = anomaly_logged(owner_engine, live["id"])
    assert logged["status"] == "anomaly" and "livemode" in logged["message"]

    live_settings = make_settings(
        service_database_url, fake_stripe.base_url, stripe_secret_key="sk_live_0123456789abcdef"
    )
    from tests.api.conftest import signed_headers

    with TestClient(create_app(live_settings, ledger=ledger, limits=TEST_LIMITS)) as live_api:
        test_mode = checkout_session_completed_event(session)  # livemode false
        from cloud.stripe_fake import encode_event

        payload = encode_event(test_mode)
        refused = live_api.post("/stripe/webhook", content=payload, headers=signed_headers(payload))
        assert refused.status_code == 200 and refused.json()["outcome"] == "anomaly"
        assert balance(ledger) is None
    # The same session in the key's own mode is credited.
    assert post_event(checkout_session_completed_event(session)).json()["outcome"] == "processed"
    assert balance(ledger) == 1500
    assert STRIPE_KEY.startswith("sk_test_")


def test_every_event_type_is_processed_or_recorded_with_a_reason(
    post_event: PostEvent, owner_engine: Engine
) -> None:
    for event in (
        make_event("customer.created", {"id": "cus_1", "object": "customer"}),
        make_event("charge.dispute.updated", {"id": "du_1", "object": "dispute"}),
        make_event("refund.created", {"id": "re_1", "object": "refund"}),
    ):
        assert post_event(event).json()["outcome"] == "ignored"
        outcome = scalar(
            owner_engine, "SELECT outcome FROM stripe_events WHERE event_id = :e", e=event["id"]
        )
        assert outcome["status"] == "ignored" and event["type"] in outcome["message"]
        processed_at = scalar(
            owner_engine,
            "SELECT processed_at FROM stripe_events WHERE event_id = :e",
            e=event["id"],
        )
        assert processed_at is not None


# --- paid sessions that cannot be credited are refunded in full ---------------------------------


def test_a_blocked_cards_payment_is_refunded_in_full_through_stripe(
    client: TestClient,
    post_event: PostEvent,
    ledger: Ledger,
    owner_engine: Engine,
    fake_stripe: FakeStripe,
) -> None:
    """Before: the checkout refused the blocked card (revealing it), and a paid session for it
    was credited anyway. Now the checkout answers 201 and the payment goes back to the payer."""
    ledger.add_kiosk("checkpoint-1", PUBLIC_KEY, "checkpoint")
    from tests.ledger.helpers import recharge

    ledger.apply(recharge(CARD, 1000))
    ledger.block_card(CARD, "lost")
    session = pay(client, fake_stripe, CARD, 2500)
    event = checkout_session_completed_event(session)
    response = post_event(event)
    assert response.status_code == 200 and response.json()["outcome"] == "declined"
    assert balance(ledger) == 1000
    done = wait_until(lambda: refund_done(ledger, session), what="the refund")
    assert done["idempotency_key"] == f"refund-session-{session['id']}"
    [refund] = fake_stripe.refunds_of(str(session["payment_intent"]))
    assert refund["amount"] == 2500 and refund["status"] == "succeeded"
    assert done["refund_id"] == refund["id"]
    assert refund["metadata"]["topup_id"] == session["metadata"]["topup_id"]
    call = next(  # this session's refund (the fake is shared by the module's tests)
        c
        for c in fake_stripe.requests
        if c["path"] == "/v1/refunds"
        and c["params"].get("payment_intent") == session["payment_intent"]
    )
    assert call["headers"]["idempotency-key"] == f"refund-session-{session['id']}"
    assert "amount" not in call["params"]  # in full: whatever is left of the payment
    topup = rows(
        owner_engine,
        "SELECT status, credited_cents, outcome FROM topups WHERE session_id = :s",
        s=session["id"],
    )[0]
    assert topup["status"] == "declined" and topup["credited_cents"] == 0
    assert topup["outcome"]["error_code"] == "CARD_BLOCKED"
    assert "refunded in full" in topup["outcome"]["message"]
    # Stripe delivers the event again, and async_payment_succeeded too: the same decision,
    # nothing more.
    assert post_event(event).json()["outcome"] == "duplicate"
    again = checkout_session_async_payment_succeeded_event(session)
    assert post_event(again).json()["outcome"] == "declined"
    # Then Stripe's charge.refunded for our own refund: moves no money.
    refunded = charge_refunded_event(fake_stripe.charge_for(str(session["id"])))
    assert post_event(refunded).status_code == 200
    assert len(fake_stripe.refunds_of(str(session["payment_intent"]))) == 1
    assert balance(ledger) == 1000 and ledger.check() == []


def test_a_payment_over_the_maximum_balance_is_refunded_in_full(
    client: TestClient, post_event: PostEvent, ledger: Ledger, fake_stripe: FakeStripe
) -> None:
    first = pay(client, fake_stripe, CARD, 100_000)
    second = pay(client, fake_stripe, CARD, 60_000)  # 1,600.00 > the 1,500.00 maximum
    assert post_event(checkout_session_completed_event(first)).json()["outcome"] == "processed"
    response = post_event(checkout_session_completed_event(second))
    assert response.json()["outcome"] == "declined"
    wait_until(lambda: refund_done(ledger, second), what="the refund")
    [refund] = fake_stripe.refunds_of(str(second["payment_intent"]))
    assert refund["amount"] == 60_000
    assert fake_stripe.refunds_of(str(first["payment_intent"])) == []
    assert balance(ledger) == 100_000 and ledger.check() == []


def test_one_stripe_500_is_retried_with_the_same_idempotency_key_refunding_once(
    client: TestClient, post_event: PostEvent, ledger: Ledger, fake_stripe: FakeStripe
) -> None:
    ledger.add_kiosk("checkpoint-1", PUBLIC_KEY, "checkpoint")
    _card_then_block(ledger)
    session = pay(client, fake_stripe, CARD, 3000)
    calls_before = len(fake_stripe.requests)
    fake_stripe.fail_next(500)
    assert post_event(checkout_session_completed_event(session)).json()["outcome"] == "declined"
    wait_until(lambda: refund_done(ledger, session), what="the refund")
    calls = [c for c in fake_stripe.requests[calls_before:] if c["path"] == "/v1/refunds"]
    assert len(calls) == 2
    assert {c["headers"]["idempotency-key"] for c in calls} == {f"refund-session-{session['id']}"}
    assert len(fake_stripe.refunds_of(str(session["payment_intent"]))) == 1


def _card_then_block(ledger: Ledger) -> bool:
    """The card exists only once something was booked on it: create it, then block it."""
    from tests.ledger.helpers import recharge

    ledger.apply(recharge(CARD, 100))
    return ledger.block_card(CARD, "lost")


def test_a_refund_owed_while_stripe_is_away_is_retried_by_the_next_webhook(
    client: TestClient, post_event: PostEvent, ledger: Ledger, fake_stripe: FakeStripe
) -> None:
    """Stripe unreachable (500 on every attempt of the client): the refund is not lost. It was
    recorded as owed with the decline; the next webhook (any event) retries it once due."""
    ledger.add_kiosk("checkpoint-1", PUBLIC_KEY, "checkpoint")
    _card_then_block(ledger)
    session = pay(client, fake_stripe, CARD, 4000)
    for _ in range(CLIENT_ATTEMPTS):
        fake_stripe.fail_next(500)
    assert post_event(checkout_session_completed_event(session)).json()["outcome"] == "declined"
    owed = wait_until(
        lambda: (row := refund_row(ledger, session)) and row["attempts"] == 1 and row,
        what="the first failed attempt",
    )
    assert owed["status"] == "owed" and "APIError" in str(owed["last_error"])
    assert fake_stripe.refunds_of(str(session["payment_intent"])) == []
    assert ledger.refunds_owed() == 1
    # Its backoff (1 s) passes; the next event Stripe sends, whatever it is, retries it.
    wait_until(
        lambda: scalar(
            ledger.engine,
            "SELECT next_attempt_at <= now() FROM topup_refunds WHERE session_id = :s",
            s=session["id"],
        ),
        what="the refund to be due",
    )
    post_event(make_event("customer.created", {"id": "cus_2", "object": "customer"}))
    done = wait_until(lambda: refund_done(ledger, session), what="the retried refund")
    assert done["attempts"] == 2
    assert len(fake_stripe.refunds_of(str(session["payment_intent"]))) == 1
    assert ledger.refunds_owed() == 0 and ledger.check() == []


def test_cleanup_retries_owed_refunds_and_expires_unpaid_topups(
    client: TestClient,
    post_event: PostEvent,
    ledger: Ledger,
    database_url: str,
    owner_engine: Engine,
    fake_stripe: FakeStripe,
) -> None:
    ledger.add_kiosk("checkpoint-1", PUBLIC_KEY, "checkpoint")
    _card_then_block(ledger)
    session = pay(client, fake_stripe, CARD, 2000)
    for _ in range(CLIENT_ATTEMPTS):
        fake_stripe.fail_next(503)
    post_event(checkout_session_completed_event(session))
    wait_until(lambda: (row := refund_row(ledger, session)) and row["attempts"] == 1)
    unpaid = open_checkout(client, "04C0C0C0", 1000)
    with owner_engine.begin() as connection:
        from sqlalchemy import text

        connection.execute(
            text("UPDATE topups SET expires_at = now() - interval '1 s' WHERE session_id = :s"),
            {"s": unpaid},
        )
    environment = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("FESTIVAL_", "DATABASE_", "STRIPE_", "MQTT_"))
    }
    environment.update(
        DATABASE_URL=database_url,
        STRIPE_SECRET_KEY=STRIPE_KEY,
        STRIPE_API_BASE=fake_stripe.base_url,
    )
    result = subprocess.run(
        [str(FESTIVAL_CLOUD), "cleanup"],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].isdigit()  # the idempotency cache count, first as before
    assert "top-ups: 1 expired unpaid, 0 deleted after 30 days" in lines
    assert "stripe refunds: 1 done, 0 still owed, 0 refused by Stripe (refund by hand)" in lines
    assert STRIPE_KEY not in result.stdout + result.stderr
    assert refund_done(ledger, session) is not None
    assert len(fake_stripe.refunds_of(str(session["payment_intent"]))) == 1
    assert scalar(owner_engine, "SELECT status FROM topups WHERE session_id = :s", s=unpaid) == (
        "expired"
    )


# --- unpaid top-ups expire; a late payment is never lost ------------------------------------


def test_expired_topups_are_still_credited_or_refunded_when_paid_late(
    client: TestClient,
    post_event: PostEvent,
    ledger: Ledger,
    owner_engine: Engine,
    fake_stripe: FakeStripe,
) -> None:
    late = open_checkout(client, CARD, 1200)
    blocked_card = "04B0B0B0"
    ledger.add_kiosk("checkpoint-1", PUBLIC_KEY, "checkpoint")
    from tests.ledger.helpers import recharge

    ledger.apply(recharge(blocked_card, 100))
    ledger.block_card(blocked_card, "lost")
    late_blocked = open_checkout(client, blocked_card, 900)
    never = open_checkout(client, "04D0D0D0", 700)
    with owner_engine.begin() as connection:
        from sqlalchemy import text

        connection.execute(text("UPDATE topups SET expires_at = now() - interval '1 s'"))
    assert ledger.cleanup_topups() == {"expired": 3, "deleted": 0}
    # Stripe tells us one session expired (idempotent with the cleanup).
    expired_event = checkout_session_expired_event(fake_stripe.expire_session(never))
    assert post_event(expired_event).json()["outcome"] == "processed"
    # A delayed payment method confirms the other two after all.
    for session_id in (late, late_blocked):
        fake_stripe.complete_session(session_id, payment_status="unpaid")
        paid = fake_stripe.settle_async_payment(session_id)
        post_event(checkout_session_async_payment_succeeded_event(paid))
    assert balance(ledger) == 1200
    statuses = dict(
        (row["session_id"], row["status"])
        for row in rows(owner_engine, "SELECT session_id, status FROM topups")
    )
    assert statuses == {late: "credited", late_blocked: "declined", never: "expired"}
    wait_until(
        lambda: (
            ledger.topup_refund(
                str(
                    scalar(
                        owner_engine,
                        "SELECT topup_id FROM topups WHERE session_id = :s",
                        s=late_blocked,
                    )
                )
            )["status"]  # type: ignore[index]
            == "succeeded"
        ),
        what="the late payment's refund",
    )
    assert ledger.check() == []


def test_cleanup_deletes_only_old_topups_that_never_held_money(
    client: TestClient,
    post_event: PostEvent,
    ledger: Ledger,
    owner_engine: Engine,
    fake_stripe: FakeStripe,
) -> None:
    expired = open_checkout(client, CARD, 1000)
    recent = open_checkout(client, CARD, 1100)
    paid = pay(client, fake_stripe, CARD, 1300)
    post_event(checkout_session_completed_event(paid))
    ledger.add_kiosk("checkpoint-1", PUBLIC_KEY, "checkpoint")
    from tests.ledger.helpers import recharge

    ledger.apply(recharge("04B1B1B1", 100))
    ledger.block_card("04B1B1B1", "lost")
    refunded = pay(client, fake_stripe, "04B1B1B1", 1400)
    post_event(checkout_session_completed_event(refunded))
    wait_until(lambda: refund_done(ledger, refunded))
    with owner_engine.begin() as connection:
        from sqlalchemy import text

        # 31 days pass for all but `recent`.
        connection.execute(
            text(
                "UPDATE topups SET created_at = now() - interval '32 days', "
                "expires_at = now() - interval '31 days', updated_at = now() - interval '31 days' "
                "WHERE session_id <> :recent"
            ),
            {"recent": recent},
        )
    assert ledger.cleanup_topups() == {"expired": 1, "deleted": 0}  # expired just now
    with owner_engine.begin() as connection:
        connection.execute(
            text("UPDATE topups SET updated_at = now() - interval '31 days' WHERE session_id = :s"),
            {"s": expired},
        )
    assert ledger.cleanup_topups() == {"expired": 0, "deleted": 1}
    left = {row["session_id"] for row in rows(owner_engine, "SELECT session_id FROM topups")}
    assert left == {recent, paid["id"], refunded["id"]}
    assert ledger.check() == []


# --- lost disputes --------------------------------------------------------------------------


def test_a_lost_dispute_takes_the_rest_off_the_card_and_books_the_spent_part_as_a_loss(
    client: TestClient,
    post_event: PostEvent,
    ledger: Ledger,
    owner_engine: Engine,
    fake_stripe: FakeStripe,
) -> None:
    session = pay(client, fake_stripe, CARD, 5000)
    assert post_event(checkout_session_completed_event(session)).json()["outcome"] == "processed"
    ledger.add_kiosk("bar-1", PUBLIC_KEY, "bar")
    assert ledger.apply(bar_order(CARD, ("Round", 1, 3000))).approved
    assert balance(ledger) == 2000
    dispute = fake_stripe.dispute(str(session["id"]))
    assert post_event(charge_dispute_created_event(dispute)).json()["outcome"] == "processed"
    card = ledger.card(CARD)
    assert card is not None and card.status == "blocked" and card.balance_cents == 2000
    lost = charge_dispute_closed_event(dict(dispute, status="lost"))
    response = post_event(lost)
    assert response.status_code == 200 and response.json()["outcome"] == "processed"
    card = ledger.card(CARD)
    assert card is not None and card.status == "blocked" and card.balance_cents == 0

    def account(name: str) -> int:
        return int(
            scalar(
                owner_engine,
                "SELECT coalesce(sum(p.amount_cents), 0) FROM postings p "
                "JOIN accounts a ON a.account_id = p.account_id WHERE a.name = :n",
                n=name,
            )
        )

    # The 30.00 already spent at the bar is the festival's loss; the 20.00 left is taken back.
    assert account("loss:disputes") == -3000
    assert account("stripe:clearing") == 0  # in 50.00, out 50.00 (Stripe took it back)
    assert scalar(owner_engine, "SELECT kind FROM accounts WHERE name = 'loss:disputes'") == "loss"
    assert (
        scalar(owner_engine, "SELECT lost_cents FROM topups WHERE session_id = :s", s=session["id"])
        == 5000
    )
    # Stripe delivers it again, or a second closed event for the same dispute: nothing twice.
    assert post_event(lost).json()["outcome"] == "duplicate"
    assert post_event(charge_dispute_closed_event(dict(dispute, status="lost"))).status_code == 200
    assert account("loss:disputes") == -3000 and balance(ledger) == 0
    assert ledger.check() == []


def test_a_won_dispute_moves_no_money_and_the_card_stays_blocked(
    client: TestClient, post_event: PostEvent, ledger: Ledger, fake_stripe: FakeStripe
) -> None:
    session = pay(client, fake_stripe, CARD, 2500)
    post_event(checkout_session_completed_event(session))
    dispute = fake_stripe.dispute(str(session["id"]))
    post_event(charge_dispute_created_event(dispute))
    response = post_event(charge_dispute_closed_event(dict(dispute, status="won")))
    assert response.json()["outcome"] == "processed"
    card = ledger.card(CARD)
    assert card is not None and card.balance_cents == 2500 and card.status == "blocked"
    unknown = dict(dispute, id="du_1Unknown", payment_intent="pi_3NotOurs", status="lost")
    assert post_event(charge_dispute_closed_event(unknown)).json()["outcome"] == "anomaly"
    assert ledger.check() == []


def test_after_a_partial_refund_a_lost_dispute_reverses_only_the_rest(
    client: TestClient, post_event: PostEvent, ledger: Ledger, fake_stripe: FakeStripe
) -> None:
    session = pay(client, fake_stripe, CARD, 4000)
    post_event(checkout_session_completed_event(session))
    charge = fake_stripe.refund(str(session["id"]), 1000)
    assert post_event(charge_refunded_event(charge)).json()["outcome"] == "processed"
    assert balance(ledger) == 3000
    dispute = fake_stripe.dispute(str(session["id"]), status="lost")
    assert dispute["amount"] == 3000
    post_event(charge_dispute_closed_event(dispute))
    assert balance(ledger) == 0
    assert ledger.check() == []


def test_the_success_page_says_what_was_credited_and_the_balance(
    client: TestClient, post_event: PostEvent, ledger: Ledger, fake_stripe: FakeStripe
) -> None:
    """(issue 16 §1) Stripe sends the payer to the success URL with the session's id (its
    {CHECKOUT_SESSION_ID} template): before the webhook the page says the money is on its way,
    after it "credited X, balance Y"; a payment the card cannot take says it is refunded."""
    session = pay(client, fake_stripe, CARD, 2500)
    page = client.get(f"/topup?status=success&session_id={session['id']}").text
    assert "on its way" in page and "Reload this page" in page
    assert post_event(checkout_session_completed_event(session)).json()["outcome"] == "processed"
    page = client.get(f"/topup?status=success&session_id={session['id']}").text
    assert "25.00 EUR credited to your wristband; its balance is now 25.00 EUR." in page
    # Nothing for a session id that is not one, or one the festival never made.
    for other in ("cs_unknown_session", "not-a-session", "cs_" + "x" * 300):
        page = client.get(f"/topup?status=success&session_id={other}").text
        assert "credited" not in page and "on its way" in page
    # A blocked wristband: paid, not credited, refunded in full.
    ledger.block_card(CARD, "lost")
    refused = pay(client, fake_stripe, CARD, 1200)
    assert post_event(checkout_session_completed_event(refused)).json()["outcome"] == "declined"
    page = client.get(f"/topup?status=success&session_id={refused['id']}").text
    assert "cannot take it" in page and "12.00 EUR are refunded in full" in page


def test_the_fake_stripe_redirects_to_the_success_url_with_the_session_id(
    client: TestClient, fake_stripe: FakeStripe
) -> None:
    """The fake does what Stripe does with the template (checked against the gateway's URL)."""
    session_id = open_checkout(client, CARD, 1000)
    redirect = fake_stripe.pay_from_page(session_id)
    assert redirect == f"http://festival.test/topup?status=success&session_id={session_id}"
