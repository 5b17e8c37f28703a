"""GET /api/monitoring/payouts and the dashboard data's "payouts" (issue 16 §2, the operator's
view) against real PostgreSQL: payout parts by state with count and total, the Stripe refund
queue, the bank transfers to export, what the festival keeps, and the failed parts with their
reason, after real payout requests (sp_payout_request) and a failed bank transfer."""

from __future__ import annotations

from fastapi.testclient import TestClient
from sqlalchemy import Engine

from cloud.ledger import Ledger
from cloud.payouts import PayoutStore
from cloud.stripe_fake import checkout_session_completed_event
from tests.api.conftest import PostEvent, admin_headers
from tests.api.stripe_helpers import our_paid_session
from tests.ledger.helpers import recharge

IBAN = "DE89370400440532013000"
CASH_CARD = "04A1B2C3D4E5F6"
STRIPE_CARD = "04B1B2C3"
FAILING_CARD = "04C1C2C3"


def test_the_payouts_by_state_the_refund_queue_and_the_failures(
    client: TestClient, post_event: PostEvent, ledger: Ledger, engine: Engine
) -> None:
    empty = client.get("/api/monitoring/payouts", headers=admin_headers())
    assert empty.status_code == 200
    zero = {"count": 0, "amount_cents": 0}
    assert empty.json() == {
        "requests": 0,
        "by_state": {"pending": zero, "exported": zero, "paid": zero, "failed": zero},
        "by_kind_and_state": [],
        "refund_queue": zero,
        "bank_transfers_to_export": zero,
        "kept": {"donation_cents": 0, "fee_cents": 0},
        "failures": [],
    }
    assert client.get("/api/monitoring/payouts").status_code == 401

    store = PayoutStore(engine)
    assert ledger.apply(recharge(CASH_CARD, 2_000)).approved
    store.request(
        CASH_CARD,
        iban=IBAN,
        account_holder="Ada",
        donate_cents=300,
        fee_cents=100,
        request_key="cash",
    )  # donation 3.00, fee 1.00, bank 16.00
    session = our_paid_session(ledger, STRIPE_CARD, 2_500)
    assert post_event(checkout_session_completed_event(session)).status_code == 200
    store.request(
        STRIPE_CARD,
        iban=None,
        account_holder=None,
        donate_cents=0,
        fee_cents=100,
        request_key="stripe",
    )  # fee 1.00, Stripe 24.00
    assert ledger.apply(recharge(FAILING_CARD, 900)).approved
    store.request(
        FAILING_CARD,
        iban=IBAN,
        account_holder="Bob",
        donate_cents=0,
        fee_cents=0,
        request_key="fails",
    )  # bank 9.00, then failed
    [failing] = store.list(card_uid=FAILING_CARD)
    assert store.fail(failing.payout_id, "account closed") is not None

    body = client.get("/api/monitoring/payouts", headers=admin_headers()).json()
    assert body["requests"] == 3
    assert body["by_state"] == {
        "pending": {"count": 2, "amount_cents": 1_600 + 2_400},
        "exported": zero,
        "paid": {"count": 3, "amount_cents": 300 + 100 + 100},
        "failed": {"count": 1, "amount_cents": 900},
    }
    assert body["by_kind_and_state"] == [
        {"kind": "bank", "state": "failed", "count": 1, "amount_cents": 900},
        {"kind": "bank", "state": "pending", "count": 1, "amount_cents": 1_600},
        {"kind": "donation", "state": "paid", "count": 1, "amount_cents": 300},
        {"kind": "fee", "state": "paid", "count": 2, "amount_cents": 200},
        {"kind": "stripe", "state": "pending", "count": 1, "amount_cents": 2_400},
    ]
    assert body["refund_queue"] == {"count": 1, "amount_cents": 2_400}
    assert body["bank_transfers_to_export"] == {"count": 1, "amount_cents": 1_600}
    assert body["kept"] == {"donation_cents": 300, "fee_cents": 200}
    [failure] = body["failures"]
    assert failure["payout_id"] == failing.payout_id and failure["card_uid"] == FAILING_CARD
    assert (failure["kind"], failure["amount_cents"], failure["reason"]) == (
        "bank",
        900,
        "account closed",
    )
    assert failure["failed_at"].endswith("Z")

    dashboard = client.get("/api/monitoring/dashboard", headers=admin_headers())
    assert dashboard.status_code == 200
    assert dashboard.json()["payouts"] == body
