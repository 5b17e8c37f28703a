"""Revision 0016: at the counter (PROTOCOL.md 1.1 `void`, `card_swap`; issue 17 sections 1-2).

A void gives a bar kiosk's own order back within the window - first off what the card still
owes of it, the rest to the balance, its deposits out of the deposit account - once; a card swap
moves a wristband's balance and debt onto a new one and blocks the old one `replaced by <new>`,
an active old one only when presented. Every outcome is idempotent by request id, every posting
sums to zero and festival-cloud check passes after each."""

from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import exc as sa_exc

from cloud.database import make_engine
from cloud.ledger import Ledger
from cloud.ledger_records import LedgerRequest, Outcome
from protocol.errors import ErrorCode, ProtocolError, Status
from protocol.models import BarItem, CardSwap
from tests.ledger.helpers import (
    bar_order,
    card_swap,
    execute,
    next_id,
    recharge,
    same_id_other_payload,
    scalar,
    void,
)

CARD = "04A1B2C3"
NEW = "04B1B2C3"
OTHER = "04C1B2C3"
# sun mode needs 7-byte UIDs (the SUN message names the UID)
SUN_OLD = "04A1B2C3D4E5F6"
SUN_NEW = "04A1B2C3D4E5F7"
DEPOSIT = BarItem("Cup deposit", 1, 200, is_deposit=True)
RETURN = BarItem("Cup return", 1, 200, is_deposit=True, is_return=True)
MINUTE_MS = 60_000


def _now_ms() -> int:
    return int(time.time() * 1000)


def _card(url: str, card_uid: str) -> tuple[int, int, str, str | None, str | None]:
    rows = execute(
        url,
        "SELECT balance_cents, debt_cents, status, blocked_reason, replaced_by FROM cards"
        " WHERE card_uid = :c",
        c=card_uid,
    )
    assert len(rows) == 1
    balance, debt, status, reason, replaced_by = rows[0]
    return int(balance), int(debt), status, reason, replaced_by


def _account(url: str, name: str) -> int:
    return int(
        scalar(
            url,
            "SELECT coalesce(sum(p.amount_cents), 0) FROM postings p"
            " JOIN accounts a ON a.account_id = p.account_id WHERE a.name = :n",
            n=name,
        )
    )


def _approved(outcome: Outcome) -> Outcome:
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


# --- void ---------------------------------------------------------------------------------------


def test_a_void_within_the_window_gives_the_whole_order_back(
    ledger: Ledger, database_url: str
) -> None:
    _approved(ledger.apply(recharge(CARD, 2_000)))
    _approved(ledger.apply(bar_order(CARD, ("Cup deposit", 1, 200))))  # a cup to bring back
    order = bar_order(CARD, ("Beer", 2, 450), DEPOSIT)
    _approved(ledger.apply(order))
    assert _account(database_url, "sales:bar-1") == 900 + 200
    deposits_before = ledger.deposit_balance_cents()

    outcome = _approved(ledger.apply(void(order)))
    assert (outcome.previous_balance_cents, outcome.new_balance_cents) == (700, 1_800)
    assert outcome.debt_cents == 0 and outcome.card_uid == CARD and outcome.message == "Voided"
    assert _card(database_url, CARD)[:2] == (1_800, 0)
    assert _account(database_url, "sales:bar-1") == 200  # the first order's "sale" only
    assert ledger.deposit_balance_cents() == deposits_before - 200
    assert execute(
        database_url,
        "SELECT kind FROM transactions WHERE transaction_id = :t",
        t=outcome.transaction_id,
    ) == [("void",)]
    assert execute(
        database_url,
        "SELECT card_uid, credited_card_uid, amount_cents, debt_paid_cents, deposit_cents"
        " FROM voids",
    ) == [(CARD, CARD, 1_100, 0, 200)]


def test_a_void_beyond_the_window_is_not_allowed(ledger: Ledger, database_url: str) -> None:
    _approved(ledger.apply(recharge(CARD, 2_000)))
    old = bar_order(CARD, ("Beer", 1, 500), created_at_ms=_now_ms() - 15 * MINUTE_MS - 5_000)
    recent = bar_order(CARD, ("Beer", 1, 500), created_at_ms=_now_ms() - 14 * MINUTE_MS)
    _approved(ledger.apply(old))
    _approved(ledger.apply(recent))
    outcome = _declined(ledger.apply(void(old)), ErrorCode.VOID_NOT_ALLOWED)
    assert "older than 15" in outcome.message
    assert outcome.new_balance_cents == 1_000
    _approved(ledger.apply(void(recent)))
    assert _card(database_url, CARD)[0] == 1_500


def test_the_window_is_the_deployments(service_database_url: str) -> None:
    engine = make_engine(service_database_url, pool_size=1)
    try:
        ledger = Ledger(engine, void_window_s=60)
        ledger.add_kiosk("bar-1", "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo", "bar")
        _approved(ledger.apply(recharge(CARD, 2_000)))
        order = bar_order(CARD, ("Beer", 1, 500), created_at_ms=_now_ms() - 2 * MINUTE_MS)
        _approved(ledger.apply(order))
        _declined(ledger.apply(void(order)), ErrorCode.VOID_NOT_ALLOWED)
        assert ledger.check() == []
    finally:
        engine.dispose()


def test_an_order_is_voided_once_and_a_void_replays(ledger: Ledger, database_url: str) -> None:
    _approved(ledger.apply(recharge(CARD, 2_000)))
    order = bar_order(CARD, ("Beer", 1, 500))
    _approved(ledger.apply(order))
    first = void(order)
    approved = _approved(ledger.apply(first))

    replay = ledger.apply(first)
    assert replay.replayed and replay.transaction_id == approved.transaction_id
    assert replay.new_balance_cents == approved.new_balance_cents == 2_000
    conflict = ledger.apply(same_id_other_payload(first))
    assert conflict.error_code is ErrorCode.IDEMPOTENCY_CONFLICT

    again = _declined(ledger.apply(void(order)), ErrorCode.VOID_NOT_ALLOWED)
    assert "voided already" in again.message
    assert _card(database_url, CARD)[0] == 2_000
    assert scalar(database_url, "SELECT count(*) FROM voids") == 1


def test_only_the_kiosks_own_approved_order_on_its_card(ledger: Ledger, database_url: str) -> None:
    _approved(ledger.apply(recharge(CARD, 2_000)))
    _approved(ledger.apply(recharge(OTHER, 2_000)))
    order = bar_order(CARD, ("Beer", 1, 500))
    _approved(ledger.apply(order))
    declined_order = bar_order(CARD, ("Champagne", 1, 90_000))
    _declined(ledger.apply(declined_order), ErrorCode.INSUFFICIENT_FUNDS)
    topup = recharge(CARD, 100)
    _approved(ledger.apply(topup))

    other_kiosk = _declined(ledger.apply(void(order, kiosk_id="bar-2")), ErrorCode.VOID_NOT_ALLOWED)
    assert "no approved order of this kiosk" in other_kiosk.message
    other_card = _declined(ledger.apply(void(order, card_uid=OTHER)), ErrorCode.VOID_NOT_ALLOWED)
    assert "another wristband" in other_card.message
    assert other_card.new_balance_cents == 2_000  # the request's card's balance
    _declined(ledger.apply(void(declined_order)), ErrorCode.VOID_NOT_ALLOWED)
    _declined(ledger.apply(void(topup, kiosk_id="bar-1")), ErrorCode.VOID_NOT_ALLOWED)

    unknown = ledger.apply(void(bar_order("04D1D2D3"), card_uid="04D1D2D3"))
    assert unknown.error_code is ErrorCode.VOID_NOT_ALLOWED
    assert (unknown.previous_balance_cents, unknown.new_balance_cents, unknown.debt_cents) == (
        None,
        None,
        None,
    )
    assert _card(database_url, CARD)[0] == 1_600
    assert scalar(database_url, "SELECT count(*) FROM voids") == 0


def test_a_return_only_order_cannot_be_voided(ledger: Ledger) -> None:
    _approved(ledger.apply(recharge(CARD, 2_000)))
    _approved(ledger.apply(bar_order(CARD, DEPOSIT)))
    returned = bar_order(CARD, RETURN)
    _approved(ledger.apply(returned))
    outcome = _declined(ledger.apply(void(returned)), ErrorCode.VOID_NOT_ALLOWED)
    assert "returns only" in outcome.message


def test_deposits_returned_since_cannot_be_voided(ledger: Ledger, database_url: str) -> None:
    _approved(ledger.apply(recharge(CARD, 2_000)))
    order = bar_order(CARD, ("Beer", 1, 450), DEPOSIT)
    _approved(ledger.apply(order))
    _approved(ledger.apply(bar_order(CARD, RETURN)))  # the cup came back: the account is empty
    assert ledger.deposit_balance_cents() == 0
    outcome = _declined(ledger.apply(void(order)), ErrorCode.VOID_NOT_ALLOWED)
    assert "deposits were returned" in outcome.message
    assert _card(database_url, CARD)[0] == 2_000 - 650 + 200


def test_a_void_of_an_offline_sale_pays_its_debt_first(ledger: Ledger, database_url: str) -> None:
    version = ledger.issue_kiosk_config(
        "bar-1",
        offline=__import__("protocol.models").models.OfflinePolicy(
            sale_max_cents=2_000, card_max_cents=5_000, kiosk_max_cents=10_000
        ),
    )
    assert version is not None
    ledger.mark_config_published("bar-1", version)
    _approved(ledger.apply(recharge(CARD, 300)))
    sale = bar_order(CARD, ("Beer", 1, 500), config_version=version, offline=True)
    assert _approved(ledger.apply(sale)).debt_cents == 200
    assert _account(database_url, f"receivable:{CARD}") == -200

    outcome = _approved(ledger.apply(void(sale)))
    assert (outcome.previous_balance_cents, outcome.new_balance_cents) == (0, 300)
    assert outcome.debt_cents == 0
    assert _card(database_url, CARD)[:2] == (300, 0)
    assert _account(database_url, f"receivable:{CARD}") == 0
    assert scalar(database_url, "SELECT debt_paid_cents FROM voids") == 200


def test_a_void_in_the_batch_of_its_order(ledger: Ledger, database_url: str) -> None:
    order = bar_order(CARD, ("Beer", 1, 500))
    outcomes = ledger.apply_batch([recharge(CARD, 1_000), order, void(order)])
    assert [o.status for o in outcomes] == [Status.APPROVED] * 3
    assert outcomes[2].new_balance_cents == 1_000
    assert _card(database_url, CARD)[0] == 1_000


# --- card swap ----------------------------------------------------------------------------------


def test_a_swap_moves_the_balance_and_blocks_the_old_card(
    ledger: Ledger, database_url: str
) -> None:
    _approved(ledger.apply(recharge(CARD, 1_200)))
    outcome = _approved(ledger.apply(card_swap(CARD, NEW)))  # uid mode: presented, recorded
    assert outcome.card_uid == NEW and outcome.message == "Wristband replaced"
    assert (outcome.previous_balance_cents, outcome.new_balance_cents, outcome.debt_cents) == (
        0,
        1_200,
        0,
    )
    assert _card(database_url, NEW) == (1_200, 0, "active", None, None)
    assert _card(database_url, CARD) == (0, 0, "blocked", f"replaced by {NEW}", NEW)
    assert execute(
        database_url, "SELECT old_card_uid, new_card_uid, presence, balance_cents FROM card_swaps"
    ) == [(CARD, NEW, "uid", 1_200)]
    # the old band pays for nothing any more; the new one does
    _declined(ledger.apply(bar_order(CARD, ("Beer", 1, 500))), ErrorCode.CARD_BLOCKED)
    _approved(ledger.apply(bar_order(NEW, ("Beer", 1, 500))))


def test_a_swap_moves_the_debt_and_nets_it(ledger: Ledger, database_url: str) -> None:
    version = ledger.issue_kiosk_config(
        "bar-1",
        offline=__import__("protocol.models").models.OfflinePolicy(
            sale_max_cents=2_000, card_max_cents=5_000, kiosk_max_cents=10_000
        ),
    )
    assert version is not None
    ledger.mark_config_published("bar-1", version)
    _approved(ledger.apply(recharge(CARD, 100)))
    _approved(ledger.apply(bar_order(CARD, ("Beer", 1, 400), config_version=version, offline=True)))
    assert _card(database_url, CARD)[:2] == (0, 300)
    _approved(ledger.apply(recharge(NEW, 500)))
    outcome = _approved(ledger.apply(card_swap(CARD, NEW)))
    assert (outcome.previous_balance_cents, outcome.new_balance_cents, outcome.debt_cents) == (
        500,
        200,
        0,
    )
    assert _card(database_url, CARD)[:2] == (0, 0)
    assert _account(database_url, f"receivable:{CARD}") == 0

    # a debt larger than the new card's balance stays a debt, on the new card
    _approved(
        ledger.apply(bar_order(OTHER, ("Beer", 1, 900), config_version=version, offline=True))
    )
    third = "04E1E2E3"
    _approved(ledger.apply(recharge(third, 100)))
    moved = _approved(ledger.apply(card_swap(OTHER, third)))
    assert (moved.new_balance_cents, moved.debt_cents) == (0, 800)
    assert _account(database_url, f"receivable:{third}") == -800


def test_swaps_the_protocol_refuses(ledger: Ledger, database_url: str) -> None:
    _approved(ledger.apply(recharge(CARD, 1_000)))
    _approved(ledger.apply(recharge(NEW, 100)))
    unknown = _declined(ledger.apply(card_swap("04F1F2F3", NEW)), ErrorCode.CARD_NOT_FOUND)
    assert (unknown.previous_balance_cents, unknown.new_balance_cents) == (None, None)
    assert unknown.debt_cents is None

    ledger.block_card(NEW, "lost")
    blocked_new = _declined(ledger.apply(card_swap(CARD, NEW)), ErrorCode.CARD_BLOCKED)
    assert "New wristband blocked" in blocked_new.message
    assert blocked_new.new_balance_cents == 100

    _approved(ledger.apply(recharge(OTHER, 100)))
    ledger.block_card(OTHER, "payment disputed")
    disputed = _declined(ledger.apply(card_swap(OTHER, "04E1E2E3")), ErrorCode.CARD_BLOCKED)
    assert "payment disputed" in disputed.message
    assert (disputed.previous_balance_cents, disputed.new_balance_cents) == (0, 0)  # unknown new

    _approved(ledger.apply(card_swap(CARD, "04E1E2E3")))
    replaced = _declined(ledger.apply(card_swap(CARD, "04E1E2E4")), ErrorCode.CARD_BLOCKED)
    assert "replaced by 04E1E2E3" in replaced.message

    with pytest.raises(ProtocolError, match="must differ"):
        card_swap(NEW, NEW)
    with pytest.raises(sa_exc.DBAPIError):
        ledger.swap_card(request_id=next_id("desk"), old_card_uid=NEW, new_card_uid=NEW)
    assert scalar(database_url, "SELECT count(*) FROM card_swaps") == 1


def test_over_the_maximum_balance_is_refused(ledger: Ledger, database_url: str) -> None:
    _approved(ledger.apply(recharge(CARD, 100_000)))
    _approved(ledger.apply(recharge(NEW, 60_000)))
    _declined(ledger.apply(card_swap(CARD, NEW)), ErrorCode.BALANCE_LIMIT_EXCEEDED)
    assert _card(database_url, CARD)[:3] == (100_000, 0, "active")


def test_a_lost_card_is_swapped_without_being_present_in_sun_mode(
    ledger: Ledger, database_url: str
) -> None:
    _approved(ledger.apply(recharge(SUN_OLD, 700)))
    ledger.block_card(SUN_OLD, "lost")
    outcome = _approved(
        ledger.apply(card_swap(SUN_OLD, SUN_NEW, sun_counter=3, old_sun_failure="missing"))
    )
    assert outcome.new_balance_cents == 700
    assert scalar(database_url, "SELECT presence FROM card_swaps") == "lost"


def test_an_active_card_only_when_presented_in_sun_mode(ledger: Ledger, database_url: str) -> None:
    _approved(ledger.apply(recharge(SUN_OLD, 700)))
    absent = ledger.apply(card_swap(SUN_OLD, SUN_NEW, sun_counter=3, old_sun_failure="missing"))
    assert "not presented" in _declined(absent, ErrorCode.CARD_BLOCKED).message
    forged = ledger.apply(card_swap(SUN_OLD, SUN_NEW, sun_counter=4, old_sun_failure="bad_mac"))
    _declined(forged, ErrorCode.CARD_BLOCKED)
    not_genuine = ledger.apply(
        card_swap(SUN_OLD, SUN_NEW, sun_failure="wrong_uid", old_sun_counter=9)
    )
    assert _declined(not_genuine, ErrorCode.CARD_NOT_GENUINE).new_balance_cents is None
    stale_old = ledger.apply(card_swap(SUN_OLD, SUN_NEW, sun_counter=5, old_sun_counter=9))
    _declined(stale_old, ErrorCode.CARD_BLOCKED)  # counter 9 was accepted just before
    presented = ledger.apply(card_swap(SUN_OLD, SUN_NEW, sun_counter=6, old_sun_counter=10))
    assert _approved(presented).new_balance_cents == 700
    assert scalar(database_url, "SELECT presence FROM card_swaps") == "sun"


def test_the_info_desks_swap_goes_through_the_same_procedure(
    ledger: Ledger, database_url: str
) -> None:
    _approved(ledger.apply(recharge(CARD, 900)))
    request_id = next_id("desk")
    outcome = _approved(
        ledger.swap_card(request_id=request_id, old_card_uid=CARD, new_card_uid=NEW)
    )
    assert outcome.new_balance_cents == 900
    again = ledger.swap_card(request_id=request_id, old_card_uid=CARD, new_card_uid=NEW)
    assert again.replayed and again.transaction_id == outcome.transaction_id
    assert execute(database_url, "SELECT presence, kiosk_id FROM card_swaps") == [
        ("operator", None)
    ]


def test_a_replaced_cards_void_lands_on_its_replacement(ledger: Ledger, database_url: str) -> None:
    _approved(ledger.apply(recharge(CARD, 1_000)))
    order = bar_order(CARD, ("Beer", 1, 400))
    _approved(ledger.apply(order))
    _approved(ledger.apply(card_swap(CARD, NEW)))
    _approved(ledger.apply(card_swap(NEW, OTHER)))  # replaced twice: followed to the end
    outcome = _approved(ledger.apply(void(order)))
    assert outcome.card_uid == CARD  # the request's card, echoed
    assert (outcome.previous_balance_cents, outcome.new_balance_cents) == (600, 1_000)
    assert _card(database_url, OTHER)[0] == 1_000
    assert _card(database_url, CARD)[0] == 0
    assert scalar(database_url, "SELECT credited_card_uid FROM voids") == OTHER


def test_two_swaps_of_one_old_card_at_once_one_wins(ledger: Ledger, database_url: str) -> None:
    _approved(ledger.apply(recharge(CARD, 1_000)))
    swaps = [
        card_swap(CARD, NEW, kiosk_id="checkpoint-1"),
        card_swap(CARD, OTHER, kiosk_id="checkpoint-2"),
    ]
    barrier = threading.Barrier(len(swaps))
    outcomes: list[Outcome] = []
    lock = threading.Lock()

    def run(item: LedgerRequest) -> None:
        barrier.wait(timeout=10)
        outcome = ledger.apply(item)
        with lock:
            outcomes.append(outcome)

    threads = [threading.Thread(target=run, args=(item,)) for item in swaps]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(outcomes) == 2
    codes = sorted(str(o.error_code) for o in outcomes)
    assert codes == ["CARD_BLOCKED", "None"]
    winner = next(o for o in outcomes if o.approved)
    assert _card(database_url, winner.card_uid or "")[0] == 1_000
    assert scalar(database_url, "SELECT count(*) FROM card_swaps") == 1
    assert int(scalar(database_url, "SELECT sum(balance_cents) FROM cards")) == 1_000


def test_a_swap_request_names_both_cards() -> None:
    swap = card_swap(CARD, NEW).request
    assert isinstance(swap, CardSwap) and swap.old_card_uid == CARD and swap.card_uid == NEW


# --- the revision -------------------------------------------------------------------------------


def test_the_downgrade_restores_0015_and_is_refused_once_voids_exist(
    ledger: Ledger, database_url: str
) -> None:
    from cloud import database

    signatures = (
        "SELECT p.oid::regprocedure::text FROM pg_proc p"
        " WHERE p.proname IN ('sp_process_batch', 'ledger_process_requests') ORDER BY 1"
    )
    _approved(ledger.apply(recharge(CARD, 1_000)))
    database.downgrade(database_url, "0015")
    assert [row[0] for row in execute(database_url, signatures)] == [
        "ledger_process_requests(jsonb,bigint,bigint,bigint,integer)",
        "sp_process_batch(jsonb,bigint,bigint,bigint,integer)",
    ]
    assert scalar(database_url, "SELECT to_regclass('voids')") is None
    database.upgrade(database_url)
    ledger.engine.dispose()  # sessions cache the procedures' plans: new ones after a migration
    order = bar_order(CARD, ("Beer", 1, 400))
    _approved(ledger.apply(order))
    _approved(ledger.apply(void(order)))
    with pytest.raises(Exception, match="cannot be downgraded"):
        database.downgrade(database_url, "0015")


# --- festival-cloud card swap (the info desk) ----------------------------------------------------


def test_card_swap_on_the_command_line(ledger: Ledger, database_url: str) -> None:
    import json

    from tests.ledger.test_cli import cli

    _approved(ledger.apply(recharge(CARD, 1_234)))
    swapped = cli(database_url, "card", "swap", CARD, NEW, "--json")
    assert swapped.returncode == 0, swapped.stderr
    answer = json.loads(swapped.stdout)
    assert answer["status"] == "approved" and answer["error_code"] is None
    assert (answer["old_card_uid"], answer["card_uid"]) == (CARD, NEW)
    assert (answer["balance_cents"], answer["debt_cents"]) == (1_234, 0)
    assert _card(database_url, CARD) == (0, 0, "blocked", f"replaced by {NEW}", NEW)
    assert execute(database_url, "SELECT presence FROM card_swaps") == [("operator",)]

    again = cli(database_url, "card", "swap", CARD, OTHER)
    assert again.returncode == 1 and "CARD_BLOCKED" in again.stderr
    text = cli(database_url, "card", "swap", NEW, OTHER)
    assert text.returncode == 0 and f"replaced by {OTHER}: balance 12.34" in text.stdout
    assert cli(database_url, "card", "swap", OTHER, OTHER).returncode == 2
    assert cli(database_url, "card", "swap", "04a1b2c3", OTHER).returncode == 2
    unknown = cli(database_url, "card", "swap", "04F0F0F0", "04F0F0F1", "--json")
    assert unknown.returncode == 1
    assert json.loads(unknown.stdout)["error_code"] == "CARD_NOT_FOUND"
    # a replaced card stays blocked: its money is elsewhere
    assert cli(database_url, "card", "unblock", CARD).returncode != 0
    assert _card(database_url, CARD)[2] == "blocked"


def test_only_a_kiosks_mqtt_request_may_be_a_void_or_a_swap(ledger: Ledger) -> None:
    """sp_handle_request is the API's too (the POS endpoints): a void or a swap from there, not
    from a kiosk over MQTT, is refused as a caller's bug and nothing is stored."""
    _approved(ledger.apply(recharge(CARD, 1_000)))
    order = bar_order(CARD, ("Beer", 1, 400))
    _approved(ledger.apply(order))
    for item in (void(order), card_swap(CARD, NEW)):
        with pytest.raises(sa_exc.DBAPIError, match="malformed void or card swap"):
            ledger.apply(LedgerRequest(item.request, item.payload_sha256, source="http"))
    assert _card_balance(ledger, CARD) == 600


def _card_balance(ledger: Ledger, card_uid: str) -> int:
    card = ledger.card(card_uid)
    assert card is not None
    return card.balance_cents


def _stripe_top_up(ledger: Ledger, card_uid: str, amount_cents: int, name: str) -> str:
    ledger.create_topup(
        topup_id=f"tu_{name}", card_uid=card_uid, amount_cents=amount_cents, currency="EUR"
    )
    result = ledger.handle_stripe_checkout(
        event_id=f"evt_{name}",
        session_id=f"cs_{name}",
        topup_id=f"tu_{name}",
        card_uid=card_uid,
        amount_cents=amount_cents,
        currency="EUR",
        payment_intent_id=f"pi_{name}",
    )
    assert result.outcome.approved, result.outcome
    return f"pi_{name}"


def test_the_old_cards_stripe_top_ups_follow_the_new_card(
    ledger: Ledger, database_url: str
) -> None:
    intent = _stripe_top_up(ledger, CARD, 2_000, "swap")
    _approved(ledger.apply(card_swap(CARD, NEW)))
    assert scalar(database_url, "SELECT card_uid FROM topups WHERE topup_id = 'tu_swap'") == NEW
    refund = ledger.process_stripe_refund(
        event_id="evt_swap_refund", payment_intent_id=intent, amount_refunded_cents=500
    )
    assert refund.approved and refund.card_uid == NEW
    assert _card(database_url, NEW)[:3] == (1_500, 0, "active")
    assert _card(database_url, CARD)[:3] == (0, 0, "blocked")


def test_check_reports_a_replaced_card_holding_money(ledger: Ledger, database_url: str) -> None:
    _approved(ledger.apply(recharge(CARD, 500)))
    _approved(ledger.apply(card_swap(CARD, NEW)))
    assert ledger.check() == []
    execute(database_url, "UPDATE cards SET balance_cents = 7 WHERE card_uid = :c", c=CARD)
    problems = ledger.check()
    assert f"card {CARD} was replaced by {NEW} but holds a balance of 7 cents" in problems
    execute(database_url, "UPDATE cards SET balance_cents = 0 WHERE card_uid = :c", c=CARD)


def test_a_late_offline_sale_on_a_replaced_band_follows_the_replacement(
    ledger: Ledger, database_url: str
) -> None:
    from protocol.models import OfflinePolicy

    version = ledger.issue_kiosk_config(
        "bar-1",
        offline=OfflinePolicy(sale_max_cents=2_000, card_max_cents=5_000, kiosk_max_cents=10_000),
    )
    assert version is not None
    ledger.mark_config_published("bar-1", version)
    _approved(ledger.apply(recharge(CARD, 1_000)))
    _approved(ledger.apply(card_swap(CARD, NEW)))
    late = bar_order(
        CARD,
        ("Beer", 1, 400),
        config_version=version,
        offline=True,
        created_at_ms=_now_ms() - MINUTE_MS,
    )
    outcome = _approved(ledger.apply(late))
    assert (outcome.previous_balance_cents, outcome.new_balance_cents) == (1_000, 600)
    assert _card(database_url, NEW)[:2] == (600, 0)
    assert _card(database_url, CARD)[:2] == (0, 0)
    assert ledger.apply(late).replayed
    # an online order on the replaced band is still refused
    _declined(ledger.apply(bar_order(CARD, ("Beer", 1, 400))), ErrorCode.CARD_BLOCKED)
