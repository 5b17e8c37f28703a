"""Revision 0022: a card's cash-out at a checkpoint (issue 17 section 5, DESIGN.md
`card cash-out`, our `cash_out` request, docs/protocol.md).

The whole balance leaves the card in one `cash_out` transaction: the part refundable to its
Stripe top-ups becomes pending Stripe payout parts (refunded as a payout's), only the rest is
paid from the checkpoint's drawer (the shift's expected cash drops by it), and the card is
blocked `cashed out`. Refusals carry their reason; every outcome is idempotent by request id
and festival-cloud check passes after each test."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from cloud import database
from cloud.ledger import Ledger
from cloud.ledger_records import LedgerRequest, Outcome
from cloud.shifts import ShiftStore
from protocol.errors import ErrorCode, Status
from protocol.models import CashOut, OfflinePolicy
from tests.api.stripe_helpers import our_paid_session
from tests.ledger.helpers import (
    CURRENCY,
    bar_order,
    card_swap,
    execute,
    next_id,
    recharge,
    same_id_other_payload,
    scalar,
    sha256_of,
)
from tests.ledger.test_r0009_migration import _differences, _schema

REVISION = "0022"  # this revision: one place (the coordinator may renumber it)
PREVIOUS = "0021"
CARD = "04A1B2C3D4E5F6"
NEW = "04A1B2C3D4E5F7"
UNKNOWN = "04FFFFFFFFFFFF"


def cash_out(
    card_uid: str, *, kiosk_id: str = "checkpoint-1", request_id: str | None = None, seq: int = 9
) -> LedgerRequest:
    """A checkpoint kiosk's cash_out request for ``card_uid`` (uid mode)."""
    request = CashOut(
        request_id=request_id or next_id("cash-out"),
        kiosk_id=kiosk_id,
        seq=seq,
        created_at_ms=int(time.time() * 1000),
        card_uid=card_uid,
        currency=CURRENCY,
        staff_id="super-1",
    )
    return LedgerRequest(request, sha256_of(request))


def _stripe_topup(ledger: Ledger, card_uid: str, amount_cents: int) -> str:
    """A credited Stripe top-up of ``card_uid``; its payment intent."""
    session = our_paid_session(ledger, card_uid, amount_cents)
    outcome = ledger.handle_stripe_checkout(
        event_id=f"evt_1{session['id'][-20:]}",
        session_id=session["id"],
        topup_id=session["metadata"]["topup_id"],
        card_uid=card_uid,
        amount_cents=amount_cents,
        currency="EUR",
        payment_intent_id=session["payment_intent"],
    )
    assert outcome.outcome.status is Status.APPROVED
    return str(session["payment_intent"])


def _card(url: str, card_uid: str) -> tuple[int, int, str, str | None]:
    ((balance, debt, status, reason),) = execute(
        url,
        "SELECT balance_cents, debt_cents, status, blocked_reason FROM cards WHERE card_uid = :c",
        c=card_uid,
    )
    return int(balance), int(debt), status, reason


def _account(url: str, name: str) -> int:
    return int(
        scalar(
            url,
            "SELECT coalesce(sum(p.amount_cents), 0) FROM postings p"
            " JOIN accounts a ON a.account_id = p.account_id WHERE a.name = :n",
            n=name,
        )
    )


def _approved(outcome: Outcome | None) -> Outcome:
    assert outcome is not None
    assert (outcome.status, outcome.error_code) == (Status.APPROVED, None), outcome.message
    assert outcome.transaction_id is not None
    return outcome


def _declined(outcome: Outcome, code: ErrorCode) -> Outcome:
    assert (outcome.status, outcome.error_code) == (Status.DECLINED, code), outcome.message
    assert outcome.transaction_id is None
    assert outcome.previous_balance_cents == outcome.new_balance_cents
    return outcome


@pytest.fixture(autouse=True)
def _checked(ledger: Ledger) -> object:
    """festival-cloud check passes after every test of this module."""
    yield
    assert ledger.check() == []


# --- approved -----------------------------------------------------------------------------------


def test_a_cash_out_pays_the_whole_balance_in_cash_and_blocks_the_card(
    ledger: Ledger, database_url: str
) -> None:
    _approved(ledger.apply(recharge(CARD, 2_000)))
    _approved(ledger.apply(bar_order(CARD, ("Beer", 1, 750))))
    item = cash_out(CARD)
    outcome = _approved(ledger.apply(item))
    assert (outcome.previous_balance_cents, outcome.new_balance_cents, outcome.debt_cents) == (
        1_250,
        0,
        0,
    )
    assert outcome.card_uid == CARD
    assert outcome.message == "Pay 12.50 in cash. Wristband blocked"
    assert _card(database_url, CARD) == (0, 0, "blocked", "cashed out")
    assert _account(database_url, "cash:checkpoint-1") == -2_000 + 1_250
    assert execute(
        database_url,
        "SELECT kind, request_id FROM transactions WHERE transaction_id = :t",
        t=outcome.transaction_id,
    ) == [("cash_out", item.request.request_id)]
    assert execute(
        database_url,
        "SELECT card_uid, cashed_card_uid, checkpoint_id, kiosk_id, staff_id, balance_cents,"
        " cash_cents, stripe_refund_cents FROM cash_outs",
    ) == [(CARD, CARD, "checkpoint-1", "checkpoint-1", "super-1", 1_250, 1_250, 0)]
    assert scalar(database_url, "SELECT count(*) FROM payouts") == 0
    # a blocked card buys nothing more
    _declined(ledger.apply(bar_order(CARD)), ErrorCode.CARD_BLOCKED)


def test_the_stripe_part_is_refunded_not_paid_in_cash(ledger: Ledger, database_url: str) -> None:
    intent = _stripe_topup(ledger, CARD, 2_000)
    _approved(ledger.apply(recharge(CARD, 1_250)))
    outcome = _approved(ledger.apply(cash_out(CARD)))
    assert outcome.previous_balance_cents == 3_250
    assert outcome.message == (
        "Pay 12.50 in cash; 20.00 refunded to the card used online. Wristband blocked"
    )
    assert execute(
        database_url, "SELECT kind, state, amount_cents, payment_intent_id FROM payouts"
    ) == [("stripe", "pending", 2_000, intent)]
    assert _account(database_url, "cash:checkpoint-1") == -1_250 + 1_250
    assert _account(database_url, "payout:pending") == 2_000
    assert ledger.cash_out_parts(str(outcome.request_id)) == (1_250, 2_000)


def test_spent_stripe_money_is_paid_in_cash_only_up_to_what_stripe_cannot_take(
    ledger: Ledger, database_url: str
) -> None:
    _stripe_topup(ledger, CARD, 2_000)
    _approved(ledger.apply(bar_order(CARD, ("Beer", 3, 500))))
    outcome = _approved(ledger.apply(cash_out(CARD)))
    # 5.00 left, all of it refundable to the top-up: nothing in cash
    assert outcome.message == (
        "Nothing in cash; 5.00 refunded to the card used online. Wristband blocked"
    )
    assert _account(database_url, "cash:checkpoint-1") == 0
    assert scalar(database_url, "SELECT sum(amount_cents) FROM payouts") == 500


def test_the_drawer_expects_less_cash_at_shift_close_after_a_cash_out(
    ledger: Ledger, database_url: str
) -> None:
    shifts = ShiftStore(ledger.engine)
    _approved(ledger.apply(recharge(CARD, 3_000)))
    _approved(ledger.apply(recharge(NEW, 1_000)))
    _approved(ledger.apply(bar_order(CARD, ("Beer", 1, 500))))
    _approved(ledger.apply(cash_out(CARD)))
    closed = shifts.close("checkpoint-1", 1_500, "super-1")
    assert (closed.expected_cents, closed.variance_cents) == (4_000 - 2_500, 0)


def test_the_operator_s_cash_out_pays_from_the_named_checkpoint(
    ledger: Ledger, database_url: str
) -> None:
    _approved(ledger.apply(recharge(CARD, 900, kiosk_id="checkpoint-1")))
    request_id = next_id("desk")
    outcome = _approved(
        ledger.cash_out(
            request_id=request_id, card_uid=CARD, checkpoint_id="checkpoint-2", staff_id="lead"
        )
    )
    assert outcome.message == "Pay 9.00 in cash. Wristband blocked"
    assert _account(database_url, "cash:checkpoint-2") == 900
    assert execute(database_url, "SELECT kiosk_id, staff_id, checkpoint_id FROM cash_outs") == [
        (None, "lead", "checkpoint-2")
    ]
    # the same request again: the same outcome, replayed, nothing paid twice
    again = ledger.cash_out(
        request_id=request_id, card_uid=CARD, checkpoint_id="checkpoint-2", staff_id="lead"
    )
    assert again is not None and again.replayed and again.transaction_id == outcome.transaction_id
    assert (
        ledger.cash_out(
            request_id=next_id("desk"), card_uid=CARD, checkpoint_id="nowhere", staff_id="lead"
        )
        is None
    )
    assert _account(database_url, "cash:checkpoint-2") == 900


def test_a_replaced_card_is_cashed_out_on_its_replacement(
    ledger: Ledger, database_url: str
) -> None:
    _approved(ledger.apply(recharge(CARD, 1_100)))
    _approved(ledger.apply(card_swap(CARD, NEW)))
    outcome = _approved(ledger.apply(cash_out(CARD)))
    assert outcome.previous_balance_cents == 1_100
    assert _card(database_url, NEW) == (0, 0, "blocked", "cashed out")
    assert scalar(database_url, "SELECT cashed_card_uid FROM cash_outs") == NEW


# --- refused ------------------------------------------------------------------------------------


def test_an_unknown_card_is_not_found(ledger: Ledger, database_url: str) -> None:
    outcome = _declined(ledger.apply(cash_out(UNKNOWN)), ErrorCode.CARD_NOT_FOUND)
    assert outcome.previous_balance_cents is None and outcome.debt_cents is None
    assert scalar(database_url, "SELECT count(*) FROM cards WHERE card_uid = :c", c=UNKNOWN) == 0


def test_a_blocked_card_is_refused_with_its_reason(ledger: Ledger) -> None:
    _approved(ledger.apply(recharge(CARD, 500)))
    assert ledger.block_card(CARD, "lost")
    outcome = _declined(ledger.apply(cash_out(CARD)), ErrorCode.CARD_BLOCKED)
    assert outcome.message == "Not paid out: wristband blocked (lost)"


def test_a_card_with_a_debt_is_refused(ledger: Ledger, database_url: str) -> None:
    version = ledger.issue_kiosk_config(
        "bar-1",
        offline=OfflinePolicy(sale_max_cents=2_000, card_max_cents=5_000, kiosk_max_cents=10_000),
    )
    assert version is not None
    ledger.mark_config_published("bar-1", version)
    _approved(ledger.apply(recharge(CARD, 300)))
    _approved(ledger.apply(bar_order(CARD, ("Beer", 1, 500), config_version=version, offline=True)))
    assert _card(database_url, CARD)[:2] == (0, 200)
    outcome = _declined(ledger.apply(cash_out(CARD)), ErrorCode.INSUFFICIENT_FUNDS)
    assert outcome.message == "Not paid out: the wristband owes 2.00"
    assert outcome.debt_cents == 200


def test_a_card_with_nothing_on_it_is_refused(ledger: Ledger) -> None:
    _approved(ledger.apply(recharge(CARD, 500)))
    _approved(ledger.apply(bar_order(CARD, ("Beer", 1, 500))))
    outcome = _declined(ledger.apply(cash_out(CARD)), ErrorCode.INSUFFICIENT_FUNDS)
    assert outcome.message == "Not paid out: the balance is 0.00"


def test_a_card_with_an_unfinished_payout_is_refused(ledger: Ledger, database_url: str) -> None:
    from cloud.payouts import PayoutStore

    _stripe_topup(ledger, CARD, 1_000)
    PayoutStore(ledger.engine).request(
        CARD, iban=None, account_holder=None, donate_cents=0, fee_cents=0, request_key="tab-1"
    )
    # the payout blocked it; an operator unblocked it by mistake: still refused
    assert ledger.unblock_card(CARD)
    _approved(ledger.apply(recharge(CARD, 500)))
    outcome = _declined(ledger.apply(cash_out(CARD)), ErrorCode.CARD_BLOCKED)
    assert outcome.message == "Not paid out: a payout of this wristband is not finished"


def test_a_card_with_an_open_dispute_is_refused(ledger: Ledger, database_url: str) -> None:
    _stripe_topup(ledger, CARD, 1_000)
    assert ledger.block_card(CARD, "payment disputed")
    outcome = _declined(ledger.apply(cash_out(CARD)), ErrorCode.CARD_BLOCKED)
    assert outcome.message == "Not paid out: a Stripe payment of this wristband is disputed"
    assert scalar(database_url, "SELECT count(*) FROM cash_outs") == 0


# --- exactly once -------------------------------------------------------------------------------


def test_a_replayed_cash_out_pays_once(ledger: Ledger, database_url: str) -> None:
    _approved(ledger.apply(recharge(CARD, 800)))
    item = cash_out(CARD)
    first = _approved(ledger.apply(item))
    again = ledger.apply(item)
    assert again.replayed and again.transaction_id == first.transaction_id
    assert again.message == first.message
    conflict = ledger.apply(same_id_other_payload(item))
    assert (conflict.status, conflict.error_code) == (
        Status.REJECTED,
        ErrorCode.IDEMPOTENCY_CONFLICT,
    )
    assert scalar(database_url, "SELECT count(*) FROM cash_outs") == 1
    assert _account(database_url, "cash:checkpoint-1") == 0
    # a second cash-out of the card (another request id): it is blocked now
    second = _declined(ledger.apply(cash_out(CARD)), ErrorCode.CARD_BLOCKED)
    assert second.message == "Not paid out: the wristband was cashed out already"


def test_two_cash_outs_of_one_card_at_two_checkpoints_at_once_one_wins(
    ledger: Ledger, database_url: str
) -> None:
    _approved(ledger.apply(recharge(CARD, 1_000)))
    items = [cash_out(CARD, kiosk_id="checkpoint-1"), cash_out(CARD, kiosk_id="checkpoint-2")]
    barrier = threading.Barrier(len(items))
    outcomes: list[Outcome] = []
    lock = threading.Lock()

    def run(item: LedgerRequest) -> None:
        barrier.wait(timeout=10)
        outcome = ledger.apply(item)
        with lock:
            outcomes.append(outcome)

    threads = [threading.Thread(target=run, args=(item,)) for item in items]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(str(o.error_code) for o in outcomes) == ["CARD_BLOCKED", "None"]
    assert scalar(database_url, "SELECT count(*) FROM cash_outs") == 1
    paid = _account(database_url, "cash:checkpoint-1") + _account(database_url, "cash:checkpoint-2")
    assert paid == -1_000 + 1_000


# --- the revision -------------------------------------------------------------------------------


def test_the_downgrade_restores_the_previous_revision_exactly(
    make_database: Callable[..., str],
) -> None:
    url = make_database()
    database.upgrade(url, PREVIOUS)
    before = _schema(url)
    database.upgrade(url, REVISION)
    assert any("cash_outs" in line for line in _schema(url))
    database.downgrade(url, PREVIOUS)
    assert _schema(url) == before, _differences(before, _schema(url))


# --- the Stripe part, refunded by the payout refund runner ---------------------------------------


def test_the_stripe_part_of_a_cash_out_is_refunded_through_stripe_once(
    ledger: Ledger, service_database_url: str, database_url: str
) -> None:
    import stripe

    from cloud.api.payout_refunds import PayoutRefundStore, refund_due_parts
    from cloud.api.stripe_gateway import PayoutRefundGateway
    from cloud.stripe_fake import FakeStripe, checkout_session_object

    intent = _stripe_topup(ledger, CARD, 1_800)
    _approved(ledger.apply(recharge(CARD, 700)))
    _approved(ledger.apply(cash_out(CARD)))
    with FakeStripe(port=0) as fake:
        session = checkout_session_object(
            amount_total=1_800, status="complete", payment_status="paid", payment_intent=intent
        )
        fake.sessions[session["id"]] = session
        gateway = PayoutRefundGateway(
            stripe.StripeClient("sk_test_cash_out", base_addresses={"api": fake.base_url})
        )
        store = PayoutRefundStore(ledger.engine)
        assert refund_due_parts(store, gateway).as_dict() == {"paid": 1, "retry": 0, "failed": 0}
        assert refund_due_parts(store, gateway).as_dict() == {"paid": 0, "retry": 0, "failed": 0}
        (refund,) = fake.refunds_of(intent)
    assert refund["amount"] == 1_800
    assert execute(database_url, "SELECT state, stripe_refund_id FROM payouts") == [
        ("paid", refund["id"])
    ]
    # the cash paid was only what the top-up at the counter brought in
    assert _account(database_url, "cash:checkpoint-1") == 0
    assert _card(database_url, CARD) == (0, 0, "blocked", "cashed out")


# --- festival-cloud card cash-out -----------------------------------------------------------------


def _cli(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], url: str, *args: str
) -> tuple[int, str, str]:
    import os

    from cloud.cli import main

    for key in list(os.environ):
        if key.startswith(("FESTIVAL_", "DATABASE_", "STRIPE_", "MQTT_")):
            monkeypatch.delenv(key)
    monkeypatch.setenv("DATABASE_URL", url)
    capsys.readouterr()
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_card_cash_out_on_the_command_line(
    ledger: Ledger,
    service_database_url: str,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import json

    _stripe_topup(ledger, CARD, 2_000)
    _approved(ledger.apply(recharge(CARD, 1_250)))
    code, out, err = _cli(
        monkeypatch, capsys, service_database_url,
        "card", "cash-out", CARD, "--checkpoint", "checkpoint-1", "--staff", "lead-1",
    )  # fmt: skip
    assert code == 0, err
    assert out.strip() == (
        f"card {CARD} cashed out at checkpoint-1: hand out 12.50 in cash,"
        " 20.00 refunded to Stripe, card blocked"
    )
    assert _card(database_url, CARD)[2:] == ("blocked", "cashed out")
    assert execute(database_url, "SELECT kiosk_id, staff_id FROM cash_outs") == [(None, "lead-1")]

    code, out, err = _cli(
        monkeypatch, capsys, service_database_url,
        "card", "cash-out", CARD, "--checkpoint", "checkpoint-1", "--staff", "lead-1", "--json",
    )  # fmt: skip
    assert code == 1
    answer = json.loads(out)
    assert (answer["status"], answer["error_code"]) == ("declined", "CARD_BLOCKED")
    assert answer["message"] == "Not paid out: the wristband was cashed out already"
    assert (answer["cash_cents"], answer["stripe_refund_cents"]) == (0, 0)

    code, out, err = _cli(
        monkeypatch, capsys, service_database_url,
        "card", "cash-out", UNKNOWN, "--checkpoint", "checkpoint-1", "--staff", "lead-1",
    )  # fmt: skip
    assert code == 1 and "CARD_NOT_FOUND" in err and "Unknown wristband" in err
    code, out, err = _cli(
        monkeypatch, capsys, service_database_url,
        "card", "cash-out", NEW, "--checkpoint", "nowhere", "--staff", "lead-1",
    )  # fmt: skip
    assert code == 1 and "nowhere" in err
    code, out, err = _cli(
        monkeypatch, capsys, service_database_url,
        "card", "cash-out", "04a1b2c3", "--checkpoint", "checkpoint-1", "--staff", "lead-1",
    )  # fmt: skip
    assert code == 2
    code, out, err = _cli(
        monkeypatch, capsys, service_database_url,
        "card", "cash-out", NEW, "--checkpoint", "checkpoint-1", "--staff", "bad\nid",
    )  # fmt: skip
    assert code == 2 and "--staff" in err


# --- reports ------------------------------------------------------------------------------------


def test_the_z_report_and_the_liability_show_the_cash_paid_out(
    ledger: Ledger, database_url: str
) -> None:
    from datetime import UTC, datetime

    from cloud.reports import Reports, parse_day

    _stripe_topup(ledger, NEW, 400)
    _approved(ledger.apply(recharge(CARD, 2_000)))
    _approved(ledger.apply(recharge(NEW, 600, kiosk_id="checkpoint-2")))
    _approved(ledger.apply(cash_out(CARD)))
    _approved(ledger.apply(cash_out(NEW, kiosk_id="checkpoint-2")))
    reports = Reports(ledger.engine, currency="EUR")
    today = datetime.now(UTC).date().isoformat()
    report = reports.day(parse_day(today))
    assert [
        (c["checkpoint_id"], c["cash_cents"], c["cash_outs"], c["cash_out_cents"])
        for c in report["checkpoints"]
    ] == [("checkpoint-1", 2_000, 1, 2_000), ("checkpoint-2", 600, 1, 600)]
    assert report["total"]["cash_out_cents"] == 2_600
    liability = reports.liability()
    # the Stripe part is still owed until Stripe refunds it; the cash is paid
    assert liability["card_balances_cents"] == 0
    assert liability["payouts_pending_cents"] == 400
    assert liability["money"]["balanced"]


def test_in_sun_mode_a_band_whose_sun_message_fails_is_not_paid_out(ledger: Ledger) -> None:
    _approved(ledger.apply(recharge(CARD, 500)))
    item = cash_out(CARD)
    forged = LedgerRequest(item.request, item.payload_sha256, sun_failure="bad_mac")
    outcome = _declined(ledger.apply(forged), ErrorCode.CARD_NOT_GENUINE)
    assert "does not verify" in outcome.message
    fresh = LedgerRequest(item.request, item.payload_sha256, sun_counter=7)
    # the same request id was answered for good: replayed, not paid out
    assert ledger.apply(fresh).replayed
    genuine = cash_out(CARD)
    _approved(ledger.apply(LedgerRequest(genuine.request, genuine.payload_sha256, sun_counter=8)))
    # a SUN message used before (its counter not above the band's highest): refused
    _approved(ledger.apply(recharge(NEW, 100)))
    first = cash_out(NEW)
    second = cash_out(NEW)
    assert ledger.apply(LedgerRequest(first.request, first.payload_sha256, sun_counter=3)).approved
    # (NEW is blocked now; a stale counter is checked before the card's state)
    outcome = _declined(
        ledger.apply(LedgerRequest(second.request, second.payload_sha256, sun_counter=3)),
        ErrorCode.CARD_NOT_GENUINE,
    )
    assert "already used" in outcome.message


def test_the_downgrade_is_refused_once_a_card_was_cashed_out(
    ledger: Ledger, database_url: str
) -> None:
    _approved(ledger.apply(recharge(CARD, 500)))
    _approved(ledger.apply(cash_out(CARD)))
    database.downgrade(database_url, REVISION)  # the revisions after this one, if any
    with pytest.raises(Exception, match="check constraint"):
        database.downgrade(database_url, PREVIOUS)
    assert database.current_revision(database_url) == REVISION
    assert scalar(database_url, "SELECT count(*) FROM cash_outs") == 1


def test_festival_cloud_check_finds_a_cash_out_that_does_not_add_up(
    ledger: Ledger, database_url: str
) -> None:
    _approved(ledger.apply(recharge(CARD, 900)))
    item = cash_out(CARD)
    _approved(ledger.apply(item))
    assert ledger.check() == []
    # as the owner, the append-only trigger off: the record claims more cash than was posted
    execute(
        database_url,
        "SET LOCAL session_replication_role = replica;"
        " UPDATE cash_outs SET cash_cents = 1000, balance_cents = 1000",
    )
    (violation,) = ledger.check()
    assert violation.startswith(f"cash-out {item.request.request_id}: card 900, drawer 900")
    execute(
        database_url,
        "SET LOCAL session_replication_role = replica;"
        " UPDATE cash_outs SET cash_cents = 900, balance_cents = 900",
    )
