"""Revision 0017 (Stripe refunds of payouts) on a real PostgreSQL: the lease, Stripe's answers,
the webhook's recognition of our refunds, privileges, an exact downgrade, and
`festival-cloud payout refund` against the fake Stripe over HTTP."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import exc as sa_exc

from cloud import database
from cloud.api.payout_refunds import PayoutRefundStore, refund_due_parts
from cloud.api.refunds import retry_after_s
from cloud.api.stripe_gateway import PaymentProviderError
from cloud.cli import main
from cloud.database import Engine, make_engine
from cloud.ledger import Ledger
from cloud.payouts import PayoutStore
from cloud.stripe_fake import FakeStripe, checkout_session_object
from tests.api.stripe_helpers import our_paid_session
from tests.ledger.helpers import execute, scalar
from tests.ledger.test_r0009_migration import _differences, _schema

REVISION = "0017"  # this revision: one place (the coordinator may renumber it)
PREVIOUS = "0016"
UID = "04A1B2C3D4E5F6"


def test_downgrade_of_the_payout_refunds_revision_restores_the_previous_one_exactly(
    make_database: Callable[..., str],
) -> None:
    url = make_database()
    database.upgrade(url, PREVIOUS)
    before = _schema(url)
    database.upgrade(url, REVISION)
    assert any("sp_payout_refund_claim" in line for line in _schema(url))
    database.downgrade(url, PREVIOUS)
    assert _schema(url) == before, _differences(before, _schema(url))


_engines: list[Engine] = []


@pytest.fixture(autouse=True)
def _dispose_engines() -> Iterator[None]:
    yield
    while _engines:
        _engines.pop().dispose()


def _engine(url: str) -> Engine:
    engine = make_engine(url, pool_size=2, application_name="test-payout-refunds")
    _engines.append(engine)
    return engine


def _stripe_topup(ledger: Ledger, amount_cents: int) -> str:
    """A credited Stripe top-up of UID; its payment intent."""
    session = our_paid_session(ledger, UID, amount_cents)
    outcome = ledger.handle_stripe_checkout(
        event_id=f"evt_1{session['id'][-20:]}",
        session_id=session["id"],
        topup_id=session["metadata"]["topup_id"],
        card_uid=UID,
        amount_cents=amount_cents,
        currency="EUR",
        payment_intent_id=session["payment_intent"],
    )
    assert outcome.outcome.status.value == "approved"
    return str(session["payment_intent"])


def _payout(url: str, donate_cents: int = 0) -> None:
    PayoutStore(_engine(url)).request(
        UID,
        iban=None,
        account_holder=None,
        donate_cents=donate_cents,
        fee_cents=0,
        request_key="k",
    )


def test_parts_are_leased_newest_top_up_first_and_each_attempt_is_counted(
    ledger: Ledger, service_database_url: str, api_database_url: str
) -> None:
    older = _stripe_topup(ledger, 3000)
    newer = _stripe_topup(ledger, 2000)
    _payout(service_database_url, donate_cents=500)
    store = PayoutRefundStore(_engine(api_database_url))  # the API's role runs the runner
    claimed = store.claim(limit=10)
    assert [(c.payment_intent_id, c.amount_cents, c.attempts) for c in claimed] == [
        (newer, 2000, 1),
        (older, 2500, 1),
    ]
    # Leased: another process (or pass) gets nothing while the attempt is under way.
    assert store.claim(limit=10) == []
    first = claimed[0]
    assert store.finish(first.payout_id, "retry", error="503", retry_after_s=3600) == {
        "payout_id": first.payout_id,
        "state": "pending",
        "refund_id": None,
        "attempts": 1,
    }
    assert store.claim(limit=10) == [], "not due before its backoff"
    store.finish(first.payout_id, "retry", error="503 again", retry_after_s=0)
    again = store.claim(limit=10)
    assert [(c.payout_id, c.attempts) for c in again] == [(first.payout_id, 2)]
    paid = store.finish(first.payout_id, "paid", refund_id="re_3First")
    assert paid == {"payout_id": first.payout_id, "state": "paid", "refund_id": "re_3First"}
    # A repeated answer changes nothing.
    repeated = store.finish(first.payout_id, "paid", refund_id="re_3First")
    assert repeated is not None and repeated["state"] == "paid"
    assert store.finish(first.payout_id, "failed", error="late") == {
        "payout_id": first.payout_id,
        "state": "paid",
        "refund_id": "re_3First",
        "attempts": 2,
    }
    assert _balance(service_database_url) == 0
    assert ledger.check() == []


def _balance(url: str) -> int:
    return int(scalar(url, "SELECT balance_cents FROM cards WHERE card_uid = :u", u=UID))


def test_a_refusal_for_good_gives_the_money_back_and_the_card_its_status(
    ledger: Ledger, service_database_url: str
) -> None:
    _stripe_topup(ledger, 2500)
    _payout(service_database_url)
    store = PayoutRefundStore(_engine(service_database_url))
    (part,) = store.claim(limit=10)
    outcome = store.finish(part.payout_id, "failed", error="charge_already_refunded")
    assert outcome == {"payout_id": part.payout_id, "state": "failed", "returned_cents": 2500}
    assert _balance(service_database_url) == 2500
    assert scalar(service_database_url, "SELECT status FROM cards") == "active"
    assert scalar(service_database_url, "SELECT refund_last_error FROM payouts") == (
        "charge_already_refunded"
    )
    # Stripe's late success for a failed part is recorded for a human, nothing moves.
    late = store.finish(part.payout_id, "paid", refund_id="re_3Late")
    assert late is not None and late["state"] == "failed"
    assert _balance(service_database_url) == 2500
    reasons = [row[0] for row in execute(service_database_url, "SELECT reason FROM payout_audit")]
    assert any("arrived after the part failed" in str(reason) for reason in reasons)
    assert ledger.check() == []


def test_the_webhook_recognises_only_our_parts_by_payment_intent_and_amount(
    ledger: Ledger, service_database_url: str
) -> None:
    intent = _stripe_topup(ledger, 2500)
    _payout(service_database_url)
    store = PayoutRefundStore(_engine(service_database_url))
    payout_id = str(scalar(service_database_url, "SELECT payout_id FROM payouts"))
    assert store.seen(intent, [{"id": "re_3X", "amount": 2400, "payout_id": payout_id}]) == 0
    assert store.seen("pi_3Other", [{"id": "re_3X", "amount": 2500, "payout_id": payout_id}]) == 0
    assert scalar(service_database_url, "SELECT state FROM payouts") == "pending"
    assert store.seen(intent, [{"id": "re_3Ours", "amount": 2500, "payout_id": payout_id}]) == 1
    assert scalar(service_database_url, "SELECT stripe_refund_id FROM payouts") == "re_3Ours"
    assert scalar(service_database_url, "SELECT state FROM payouts") == "paid"
    # charge.refunded of it: nothing more leaves the card (it is empty since the payout).
    outcome = ledger.process_stripe_refund(
        event_id="evt_1OurRefund", payment_intent_id=intent, amount_refunded_cents=2500
    )
    assert outcome.status.value == "approved" and outcome.transaction_id is None
    assert "Refund of a payout" in outcome.message
    assert _balance(service_database_url) == 0
    assert scalar(service_database_url, "SELECT status FROM cards") == "blocked"
    assert ledger.check() == []


def test_the_procedures_are_the_api_s_and_the_helper_nobody_s(api_database_url: str) -> None:
    assert PayoutRefundStore(_engine(api_database_url)).claim(limit=1) == []
    with pytest.raises(sa_exc.ProgrammingError, match="permission denied"):
        execute(
            api_database_url,
            "SELECT ledger_payout_refund_paid(CAST(:id AS uuid), 're_3X', 'test')",
            id="00000000-0000-7000-8000-000000000000",
        )


def test_the_backoff_is_exponential_and_capped() -> None:
    assert [retry_after_s(n, minimum_s=5, maximum_s=60) for n in (1, 2, 3, 4, 5)] == [
        5,
        10,
        20,
        40,
        60,
    ]


class _Refuses:
    def refund_part(self, **_: object) -> str:
        raise PaymentProviderError("InvalidRequestError: amount_too_large", retryable=False)


def test_one_pass_with_a_refusing_stripe_fails_the_part(
    ledger: Ledger, service_database_url: str
) -> None:
    _stripe_topup(ledger, 1200)
    _payout(service_database_url)
    tally = refund_due_parts(PayoutRefundStore(_engine(service_database_url)), _Refuses())
    assert tally.as_dict() == {"paid": 0, "retry": 0, "failed": 1}
    assert _balance(service_database_url) == 1200


def test_the_cli_refunds_due_parts_through_stripe_once(
    ledger: Ledger,
    service_database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    intent = _stripe_topup(ledger, 1800)
    _payout(service_database_url)
    with FakeStripe(port=0) as fake:
        session = checkout_session_object(
            amount_total=1800, status="complete", payment_status="paid", payment_intent=intent
        )
        fake.sessions[session["id"]] = session
        for key in list(os.environ):
            if key.startswith(("FESTIVAL_", "DATABASE_", "STRIPE_", "MQTT_")):
                monkeypatch.delenv(key)
        monkeypatch.setenv("DATABASE_URL", service_database_url)
        monkeypatch.setenv("STRIPE_SECRET_KEY", "sk_test_cli_0123456789")
        monkeypatch.setenv("STRIPE_API_BASE", fake.base_url)
        capsys.readouterr()
        assert main(["payout", "refund"]) == 0
        assert json.loads(capsys.readouterr().out) == {"paid": 1, "retry": 0, "failed": 0}
        assert main(["payout", "refund"]) == 0
        assert json.loads(capsys.readouterr().out) == {"paid": 0, "retry": 0, "failed": 0}
        (refund,) = fake.refunds_of(intent)
    assert refund["amount"] == 1800
    assert scalar(service_database_url, "SELECT stripe_refund_id FROM payouts") == refund["id"]


def test_a_webhook_without_a_refunds_list_during_an_attempt_takes_nothing(
    ledger: Ledger, service_database_url: str
) -> None:
    """API versions whose charge carries no refunds list: a part under way (or waiting for its
    retry) counts as ours, so Stripe's charge.refunded of it takes nothing; a dashboard refund of
    the rest of the payment still does."""
    intent = _stripe_topup(ledger, 3000)
    _payout(service_database_url, donate_cents=1000)
    store = PayoutRefundStore(_engine(service_database_url))
    (part,) = store.claim(limit=10)
    assert part.amount_cents == 2000
    ours = ledger.process_stripe_refund(
        event_id="evt_1OursNoList", payment_intent_id=intent, amount_refunded_cents=2000
    )
    assert ours.transaction_id is None and "Refund of a payout" in ours.message
    store.finish(part.payout_id, "paid", refund_id="re_3Ours")
    again = ledger.process_stripe_refund(
        event_id="evt_1OursNoList", payment_intent_id=intent, amount_refunded_cents=2000
    )
    assert again.transaction_id is None
    assert _balance(service_database_url) == 0
    # Someone refunds 500 more in the dashboard: cumulative 2500, of which 500 are theirs.
    theirs = ledger.process_stripe_refund(
        event_id="evt_1Dashboard", payment_intent_id=intent, amount_refunded_cents=2500
    )
    assert theirs.transaction_id is not None and theirs.message.startswith("Refunded 500 cents")
    assert scalar(service_database_url, "SELECT refunded_cents FROM topups") == 500
    assert ledger.check() == []


def test_two_api_processes_refund_each_part_once(
    ledger: Ledger, service_database_url: str, api_database_url: str
) -> None:
    """Two runners (as in two API processes) passing at the same time: the row locks and leases
    give each part to one of them; Stripe gets one call per part."""
    import threading

    import stripe

    from cloud.api.stripe_gateway import PayoutRefundGateway

    amounts = [1000, 1100, 1200, 1300, 1400, 1500]
    intents = [_stripe_topup(ledger, amount) for amount in amounts]
    _payout(service_database_url)
    with FakeStripe(port=0) as fake:
        for intent, amount in zip(intents, amounts, strict=True):
            session = checkout_session_object(
                amount_total=amount, status="complete", payment_status="paid", payment_intent=intent
            )
            fake.sessions[session["id"]] = session
        gateway = PayoutRefundGateway(
            stripe.StripeClient("sk_test_two_processes", base_addresses={"api": fake.base_url})
        )
        start = threading.Barrier(2)
        tallies: list[dict[str, int]] = []

        def one_process() -> None:
            store = PayoutRefundStore(_engine(api_database_url))
            start.wait()
            tallies.append(refund_due_parts(store, gateway, limit=2).as_dict())
            tallies.append(refund_due_parts(store, gateway, limit=2).as_dict())

        threads = [threading.Thread(target=one_process) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        calls = [r for r in fake.requests if r["path"] == "/v1/refunds"]
        refunded = {intent: fake.refunds_of(intent) for intent in intents}
    assert sum(t["paid"] for t in tallies) == len(amounts)
    assert len(calls) == len(amounts)
    assert len({c["headers"]["idempotency-key"] for c in calls}) == len(amounts)
    assert all(len(refunds) == 1 for refunds in refunded.values())
    assert scalar(service_database_url, "SELECT count(*) FROM payouts WHERE state = 'paid'") == 6
