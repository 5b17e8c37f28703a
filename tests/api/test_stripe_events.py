"""Stripe webhook signature checks and event classification (pure, no network)."""

from __future__ import annotations

import json
import time

import pytest
import stripe

from cloud.api.stripe_events import (
    Anomaly,
    CreditTopup,
    DisputeCharge,
    DisputeClosed,
    EventError,
    ExpireTopup,
    FailTopup,
    Ignore,
    RefundCharge,
    SignatureError,
    classify,
    parse_event,
    verify_signature,
)
from cloud.stripe_fake import (
    charge_dispute_closed_event,
    charge_dispute_created_event,
    charge_object,
    charge_refunded_event,
    checkout_session_async_payment_failed_event,
    checkout_session_async_payment_succeeded_event,
    checkout_session_completed_event,
    checkout_session_expired_event,
    checkout_session_object,
    dispute_object,
    encode_event,
    make_event,
    signature_header,
)

SECRET = "whsec_test_0123456789abcdef"
CARD = "04A1B2C3D4E5F6"


def paid_session(**overrides: object) -> dict[str, object]:
    fields: dict[str, object] = {
        "amount_total": 2500,
        "client_reference_id": CARD,
        "metadata": {"card_uid": CARD, "topup_id": "tu_1"},
        "status": "complete",
        "payment_status": "paid",
        "payment_intent": "pi_3AbCdEfGhIjKlMnOpQrStUv",
    }
    fields.update(overrides)
    return checkout_session_object(**fields)  # type: ignore[arg-type]


# --- signatures ------------------------------------------------------------------------------


def test_signature_made_by_the_fake_verifies_with_stripe_python_too() -> None:
    payload = encode_event(checkout_session_completed_event(paid_session()))
    header = signature_header(payload, SECRET)
    now = time.time()
    assert abs(verify_signature(payload, header, SECRET, now_s=now, tolerance_s=300) - now) < 5
    event = stripe.Webhook.construct_event(payload.decode(), header, SECRET)
    assert event["type"] == "checkout.session.completed"


def test_stripe_python_signature_verifies_with_ours() -> None:
    payload = b'{"id": "evt_1"}'
    timestamp = int(time.time())
    signature = stripe.WebhookSignature._compute_signature(
        f"{timestamp}.{payload.decode()}", SECRET
    )
    header = f"t={timestamp},v1={signature}"
    assert verify_signature(payload, header, SECRET, now_s=timestamp, tolerance_s=300) == timestamp


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (None, "missing"),
        ("", "missing"),
        ("garbage", "exactly one timestamp"),
        ("t=abc,v1=00", "not a number"),
        ("t=1,t=2,v1=00", "exactly one timestamp"),
        ("t=1700000000", "no v1"),
        ("t=1700000000,v0=abcd", "no v1"),
        ("t=1700000000,v1=" + "0" * 64, "no signature matches"),
        ("t=99999999999999999,v1=00", "not a number"),
    ],
)
def test_bad_headers_are_refused(header: str | None, message: str) -> None:
    with pytest.raises(SignatureError, match=message):
        verify_signature(b"{}", header, SECRET, now_s=1_700_000_000, tolerance_s=300)


def test_tampered_body_wrong_secret_and_non_ascii_signature_are_refused() -> None:
    payload = b'{"amount": 100}'
    header = signature_header(payload, SECRET, timestamp=1_700_000_000)
    with pytest.raises(SignatureError):
        verify_signature(b'{"amount": 900}', header, SECRET, now_s=1_700_000_000, tolerance_s=300)
    with pytest.raises(SignatureError):
        verify_signature(payload, header, "whsec_other", now_s=1_700_000_000, tolerance_s=300)
    with pytest.raises(SignatureError):
        verify_signature(
            payload, "t=1700000000,v1=\u00e9\u00e9", SECRET, now_s=1_700_000_000, tolerance_s=300
        )


def test_any_of_several_signatures_may_match_during_secret_rotation() -> None:
    payload = b"{}"
    good = signature_header(payload, SECRET, timestamp=1_700_000_000).split(",")[1]
    header = f"t=1700000000,v1={'f' * 64},{good}"
    assert verify_signature(payload, header, SECRET, now_s=1_700_000_000, tolerance_s=300)


@pytest.mark.parametrize(
    ("offset_s", "ok"), [(-300, True), (-301, False), (300, True), (301, False)]
)
def test_timestamps_outside_the_tolerance_are_refused_both_ways(offset_s: int, ok: bool) -> None:
    now = 1_700_000_000
    payload = b"{}"
    header = signature_header(payload, SECRET, timestamp=now + offset_s)
    if ok:
        assert (
            verify_signature(payload, header, SECRET, now_s=now, tolerance_s=300) == now + offset_s
        )
    else:
        with pytest.raises(SignatureError, match=r"too old|future"):
            verify_signature(payload, header, SECRET, now_s=now, tolerance_s=300)


# --- parsing -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b"[]",
        b'{"object": "event"}',
        b'{"object": "charge", "id": "evt_1", "type": "x", "created": 1, "data": {"object": {}}}',
        b'{"object": "event", "id": "ch_1", "type": "x", "created": 1, "data": {"object": {}}}',
        b'{"object": "event", "id": "evt_1", "type": "X Y", "created": 1, "data": {"object": {}}}',
        b'{"object": "event", "id": "evt_1", "type": "a.b", "created": 1, "data": {}}',
        b'{"object": "event", "id": "evt_1", "type": "a.b", "created": 1.5, '
        b'"data": {"object": {}}}',
        b'{"object": "event", "object": "event"}',
        b"\xff\xfe",
    ],
)
def test_bodies_that_are_not_events_are_refused(body: bytes) -> None:
    with pytest.raises(EventError):
        parse_event(body)


def test_a_real_shaped_event_parses() -> None:
    event = parse_event(encode_event(checkout_session_completed_event(paid_session())))
    assert event.event_id.startswith("evt_")
    assert event.event_type == "checkout.session.completed"
    assert event.livemode is False
    assert event.data_object["object"] == "checkout.session"


# --- classification ----------------------------------------------------------------------------


def classify_event(event: dict[str, object]) -> object:
    return classify(parse_event(encode_event(event)))


def test_completed_paid_session_credits_the_card() -> None:
    session = paid_session()
    action = classify_event(checkout_session_completed_event(session))
    assert action == CreditTopup(
        session_id=str(session["id"]),
        card_uid=CARD,
        amount_cents=2500,
        currency="EUR",
        payment_intent_id="pi_3AbCdEfGhIjKlMnOpQrStUv",
        topup_id="tu_1",
    )


def test_completed_but_unpaid_session_waits_for_the_async_result() -> None:
    session = paid_session(payment_status="unpaid")
    assert isinstance(classify_event(checkout_session_completed_event(session)), Ignore)
    succeeded = checkout_session_async_payment_succeeded_event(paid_session())
    assert isinstance(classify_event(succeeded), CreditTopup)
    failed = checkout_session_async_payment_failed_event(session)
    assert classify_event(failed) == FailTopup(str(session["id"]))


def test_client_reference_id_never_names_the_card() -> None:
    # A Payment Link opened with ?client_reference_id=<UID> (a T-shirt, another shop's order):
    # no metadata of ours, so the ledger gets no card and no top-up id, and records an anomaly.
    session = paid_session(metadata={})
    action = classify_event(checkout_session_completed_event(session))
    assert isinstance(action, CreditTopup)
    assert action.card_uid is None and action.topup_id is None


def test_sessions_without_a_valid_card_go_to_the_ledger_without_one() -> None:
    no_card = paid_session(metadata={"card_uid": "04a1b2c3", "topup_id": "tu_1"})
    action = classify_event(checkout_session_completed_event(no_card))
    assert isinstance(action, CreditTopup) and action.card_uid is None


def test_another_currency_goes_to_the_ledger_which_records_the_anomaly() -> None:
    usd = paid_session(currency="usd")
    action = classify_event(checkout_session_completed_event(usd))
    assert isinstance(action, CreditTopup) and action.currency == "USD"


def test_a_foreign_topup_id_is_not_passed_on() -> None:
    session = paid_session(metadata={"card_uid": CARD, "topup_id": "x" * 300})
    action = classify_event(checkout_session_completed_event(session))
    assert isinstance(action, CreditTopup) and action.topup_id is None


def test_expanded_payment_intent_is_accepted() -> None:
    session = paid_session(payment_intent=None)
    session["payment_intent"] = {"id": "pi_3Expanded000", "object": "payment_intent"}
    action = classify_event(checkout_session_completed_event(session))
    assert isinstance(action, CreditTopup) and action.payment_intent_id == "pi_3Expanded000"


@pytest.mark.parametrize(
    "change",
    [
        {"amount_total": "2500"},
        {"amount_total": 25.0},
        {"amount_total": -1},
        {"amount_total": None},
        {"currency": 978},
        {"id": "not-a-session"},
        {"object": "charge"},
        {"payment_intent": "ch_wrong_prefix"},
    ],
)
def test_malformed_handled_events_are_event_errors(change: dict[str, object]) -> None:
    session = paid_session()
    session.update(change)
    with pytest.raises(EventError):
        classify_event(checkout_session_completed_event(session))


def test_refund_carries_the_cumulative_amount_and_the_payment_intent() -> None:
    charge = charge_object(payment_intent="pi_3Refund0001", amount=2500, amount_refunded=1000)
    action = classify_event(charge_refunded_event(charge))
    assert action == RefundCharge(
        payment_intent_id="pi_3Refund0001",
        charge_id=str(charge["id"]),
        amount_refunded_cents=1000,
        currency="EUR",
    )
    orphan = charge_object(payment_intent="pi_3x", amount=100, amount_refunded=100)
    orphan["payment_intent"] = None
    assert isinstance(classify_event(charge_refunded_event(orphan)), Anomaly)


def test_dispute_created_blocks_and_closed_carries_status_and_amount() -> None:
    dispute = dispute_object(
        charge_id="ch_3Disputed01", payment_intent="pi_3Disputed01", amount=900
    )
    action = classify_event(charge_dispute_created_event(dispute))
    assert action == DisputeCharge(
        payment_intent_id="pi_3Disputed01", charge_id="ch_3Disputed01", reason="fraudulent"
    )
    closed = charge_dispute_closed_event(dict(dispute, status="lost"))
    assert classify_event(closed) == DisputeClosed(
        dispute_id=str(dispute["id"]),
        payment_intent_id="pi_3Disputed01",
        status="lost",
        amount_cents=900,
    )
    updated = make_event("charge.dispute.updated", dispute)
    assert isinstance(classify_event(updated), Ignore)
    for status in (None, 7, "no such status!", "x" * 40):
        with pytest.raises(EventError):
            classify_event(charge_dispute_closed_event(dict(dispute, status=status)))


def test_expired_session_expires_the_topup() -> None:
    session = paid_session(status="expired", payment_status="unpaid")
    assert classify_event(checkout_session_expired_event(session)) == ExpireTopup(
        str(session["id"])
    )


@pytest.mark.parametrize("live_key", [False, True])
def test_events_of_the_other_mode_than_the_key_are_anomalies(live_key: bool) -> None:
    """A test-mode payment must never become real credit under a live key, nor the reverse."""
    session = paid_session(livemode=not live_key)
    event = checkout_session_completed_event(session, livemode=not live_key)
    action = classify(parse_event(encode_event(event)), live_mode=live_key)
    assert isinstance(action, Anomaly) and "livemode" in action.reason
    # The event's mode matches but the object inside claims the other one: also refused.
    mixed = checkout_session_completed_event(session, livemode=live_key)
    assert isinstance(classify(parse_event(encode_event(mixed)), live_mode=live_key), Anomaly)
    same = checkout_session_completed_event(paid_session(livemode=live_key), livemode=live_key)
    assert isinstance(classify(parse_event(encode_event(same)), live_mode=live_key), CreditTopup)
    # Any type of the other mode, not only payments.
    other = make_event("customer.created", {"id": "cus_1"}, livemode=not live_key)
    assert isinstance(classify(parse_event(encode_event(other)), live_mode=live_key), Anomaly)


def test_live_mode_of_the_secret_key() -> None:
    from cloud.api.stripe_gateway import live_mode_of

    assert live_mode_of("sk_live_abc") and live_mode_of("rk_live_abc")
    assert not live_mode_of("sk_test_abc") and not live_mode_of(None) and not live_mode_of("")


def test_unhandled_types_are_ignored() -> None:
    event = make_event("customer.created", {"id": "cus_1", "object": "customer"})
    action = classify_event(event)
    assert isinstance(action, Ignore) and "customer.created" in action.reason


def test_events_round_trip_through_json_unchanged() -> None:
    event = checkout_session_completed_event(paid_session())
    assert json.loads(encode_event(event)) == event
