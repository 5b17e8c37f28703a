"""Revision 0014: the SUN counter rule, decided in the transaction that applies a request
(PROTOCOL.md 1.1 "Genuine wristbands"): online a counter must be above every accepted one,
offline not accepted before; a fresh counter is accepted whatever the outcome; a failure is
CARD_NOT_GENUINE (declined, nothing moves, stored and replayed), except for an offline sale,
approved and charged to the loss account (revision 0021); two transactions cannot both
accept one counter; the downgrade gives back exactly what 0012 had."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import replace

import pytest
import sqlalchemy

from cloud import database
from cloud.database import make_engine
from cloud.ledger import Ledger
from cloud.ledger_records import LedgerRequest, request_document
from cloud.limits import SUN_COUNTER_WINDOW
from protocol.errors import ErrorCode, Status
from protocol.models import BarItem, Menu, MenuItem
from tests.ledger.helpers import bar_order, execute, recharge, scalar
from tests.ledger.test_r0009_migration import _differences, _schema
from tests.waiting import wait_until

CARD = "04A1B2C3D4E5F6"
OTHER = "04000000000001"


def sun(
    item: LedgerRequest, counter: int | None = None, failure: str | None = None
) -> LedgerRequest:
    return replace(item, sun_counter=counter, sun_failure=failure)


def _counters(url: str, card_uid: str = CARD) -> tuple[object, ...] | None:
    rows = execute(
        url,
        "SELECT counter_max, counters, stale_count FROM card_sun_counters WHERE card_uid = :c",
        c=card_uid,
    )
    return rows[0] if rows else None


def _balance(url: str, card_uid: str = CARD) -> object:
    return scalar(url, "SELECT balance_cents FROM cards WHERE card_uid = :c", c=card_uid)


@pytest.fixture
def funded(ledger: Ledger) -> Ledger:
    """CARD holds 100.00 (topped up in uid style: no SUN verdict)."""
    assert ledger.apply(recharge(CARD, 10_000)).status is Status.APPROVED
    return ledger


def test_a_genuine_band_is_approved_and_its_counter_accepted(
    funded: Ledger, service_database_url: str
) -> None:
    outcome = funded.apply(sun(bar_order(CARD, ("Beer", 1, 500)), counter=7))
    assert outcome.status is Status.APPROVED, outcome.message
    assert outcome.new_balance_cents == 9_500
    assert _counters(service_database_url) == (7, [7], 0)


@pytest.mark.parametrize(
    ("failure", "detail"),
    [
        ("missing", "no SUN message"),
        ("malformed", "malformed SUN message"),
        ("not_ours", "not a wristband of this festival"),
        ("wrong_uid", "SUN message of another wristband"),
        ("bad_mac", "SUN message does not verify"),
    ],
)
def test_a_failure_from_the_consumer_is_card_not_genuine_and_moves_nothing(
    funded: Ledger, service_database_url: str, failure: str, detail: str
) -> None:
    url = service_database_url
    item = sun(bar_order(CARD, ("Beer", 1, 500)), failure=failure)
    outcome = funded.apply(item)
    assert (outcome.status, outcome.error_code) == (Status.DECLINED, ErrorCode.CARD_NOT_GENUINE)
    assert outcome.message == f"Wristband not genuine: see the info desk ({detail})"
    assert (outcome.previous_balance_cents, outcome.new_balance_cents) == (10_000, 10_000)
    assert outcome.transaction_id is None and outcome.order_id is None
    assert _balance(url) == 10_000
    assert scalar(url, "SELECT count(*) FROM bar_orders") == 0
    assert _counters(url) is None, "nothing verified, nothing accepted"
    replay = funded.apply(item)
    assert replay.replayed and replay.error_code is ErrorCode.CARD_NOT_GENUINE
    assert execute(url, "SELECT reason, failures FROM sun_failure_minutes") == [(failure, 1)]


def test_online_a_counter_must_be_above_every_accepted_one(
    funded: Ledger, service_database_url: str
) -> None:
    url = service_database_url
    assert funded.apply(sun(bar_order(CARD, ("Beer", 1, 500)), counter=10)).approved
    for counter in (10, 9, 0):  # the replayed message, and older ones
        outcome = funded.apply(sun(bar_order(CARD, ("Beer", 1, 500)), counter=counter))
        assert outcome.error_code is ErrorCode.CARD_NOT_GENUINE, counter
        assert (
            outcome.message == "Wristband not genuine: see the info desk (SUN message already used)"
        )
    assert funded.apply(sun(bar_order(CARD, ("Beer", 1, 500)), counter=11)).approved
    assert _balance(url) == 9_000
    assert _counters(url) == (11, [10, 11], 3)
    assert execute(url, "SELECT reason, failures FROM sun_failure_minutes") == [
        ("stale_counter", 3)
    ]


def test_a_top_up_of_a_clone_on_an_unknown_card_creates_nothing(
    ledger: Ledger, service_database_url: str
) -> None:
    outcome = ledger.apply(sun(recharge(OTHER, 1_000), failure="missing"))
    assert (outcome.status, outcome.error_code) == (Status.DECLINED, ErrorCode.CARD_NOT_GENUINE)
    assert (outcome.previous_balance_cents, outcome.new_balance_cents) == (None, None)
    assert (
        scalar(service_database_url, "SELECT count(*) FROM cards WHERE card_uid = :c", c=OTHER) == 0
    )


def test_a_counter_counts_as_accepted_whatever_the_outcome(
    funded: Ledger, service_database_url: str
) -> None:
    """Declined for funds, rejected for its prices: the counter is used all the same."""
    funded.issue_kiosk_config("bar-1", menu=Menu("m", (MenuItem("beer", "Beer", 550),)))
    unpriced = funded.apply(sun(bar_order(CARD, ("Wine", 1, 500)), counter=3))
    assert unpriced.error_code is ErrorCode.PRICE_MISMATCH, "the price check comes first"

    def priced() -> LedgerRequest:
        return bar_order(CARD, BarItem("Beer", 1, 550, sku="beer"), config_version=1)

    assert funded.apply(sun(priced(), counter=3)).error_code is ErrorCode.CARD_NOT_GENUINE
    too_dear = bar_order(CARD, BarItem("Beer", 99, 550, sku="beer"), config_version=1)
    assert funded.apply(sun(too_dear, counter=4)).error_code is ErrorCode.INSUFFICIENT_FUNDS
    assert funded.apply(sun(priced(), counter=4)).error_code is ErrorCode.CARD_NOT_GENUINE
    assert funded.apply(sun(priced(), counter=5)).approved
    assert _counters(service_database_url) == (5, [3, 4, 5], 2)


def test_in_one_batch_the_second_use_of_a_counter_is_stale(funded: Ledger) -> None:
    first, second = (sun(bar_order(CARD, ("Beer", 1, 500)), counter=5) for _ in range(2))
    outcomes = funded.apply_batch([first, second])
    assert outcomes[0].approved
    assert outcomes[1].error_code is ErrorCode.CARD_NOT_GENUINE
    assert outcomes[1].previous_balance_cents == 9_500, "the balance as decided so far"


def test_a_replayed_request_is_answered_from_its_stored_outcome(funded: Ledger) -> None:
    """A kiosk resending its outbox is not a replayed SUN message: same request_id, same bytes."""
    item = sun(bar_order(CARD, ("Beer", 1, 500)), counter=5)
    assert funded.apply(item).approved
    again = funded.apply(item)
    assert again.replayed and again.approved


def _offline(item: LedgerRequest, config_version: int) -> str:
    return json.dumps(
        [{**request_document(item), "offline": True, "config_version": config_version}]
    )


def _offline_config(url: str, kiosk_id: str) -> int:
    """A published config of ``kiosk_id`` whose policy allows offline sales (revision 0013
    judges an offline sale by the config it cites)."""
    version = scalar(
        url,
        "SELECT max(version) FROM kiosk_configs WHERE kiosk_id = :k AND published_at IS NOT NULL"
        " AND document -> 'offline' <> 'null'::jsonb",
        k=kiosk_id,
    )
    if version is None:
        version = scalar(
            url,
            "SELECT sp_issue_kiosk_config(:k, 'EUR', false, NULL, true, CAST(:o AS jsonb))",
            k=kiosk_id,
            o=json.dumps(
                {"sale_max_cents": 2000, "card_max_cents": 4000, "kiosk_max_cents": 50000}
            ),
        )
        scalar(
            url,
            "SELECT count(*) FROM sp_mark_kiosk_config_published(:k, :v)",
            k=kiosk_id,
            v=version,
        )
    return int(version)


def _apply_offline(url: str, item: LedgerRequest) -> dict[str, object]:
    version = _offline_config(url, item.request.kiosk_id)
    outcomes = scalar(url, "SELECT sp_process_batch(CAST(:r AS jsonb))", r=_offline(item, version))
    assert isinstance(outcomes, list)
    return outcomes[0]  # type: ignore[no-any-return]


def _charged_to_loss(outcome: dict[str, object]) -> bool:
    return outcome["status"] == "approved" and str(outcome["message"]).startswith(
        "Paid (offline sale) by the festival's loss account"
    )


def test_offline_a_counter_is_fresh_when_not_accepted_before(
    funded: Ledger, service_database_url: str
) -> None:
    """The sale was made while the kiosk was cut off: an older counter than the latest online
    one is accepted, once (used again: stale, approved to the loss account, revision 0021)."""
    url = service_database_url
    assert funded.apply(sun(bar_order(CARD, ("Beer", 1, 500)), counter=10)).approved
    late = _apply_offline(url, sun(bar_order(CARD, ("Beer", 1, 500)), counter=8))
    assert late["status"] == "approved", late
    replayed = _apply_offline(url, sun(bar_order(CARD, ("Beer", 1, 500)), counter=8))
    assert replayed["status"] == "approved" and _charged_to_loss(replayed)
    online_seen = _apply_offline(url, sun(bar_order(CARD, ("Beer", 1, 500)), counter=10))
    assert _charged_to_loss(online_seen), "accepted online before"
    assert _balance(url) == 9_000, "only the online sale and the fresh offline one"
    assert _counters(url) == (10, [8, 10], 2)
    # the online rule still holds for what comes next
    assert funded.apply(sun(bar_order(CARD, ("Beer", 1, 500)), counter=9)).error_code is (
        ErrorCode.CARD_NOT_GENUINE
    )


def test_the_kept_counters_are_bounded_by_the_window(
    funded: Ledger, service_database_url: str
) -> None:
    url = service_database_url
    assert funded.apply(sun(bar_order(CARD, ("Beer", 1, 1)), counter=5)).approved
    high = 5 + SUN_COUNTER_WINDOW + 10
    assert funded.apply(sun(bar_order(CARD, ("Beer", 1, 1)), counter=high)).approved
    assert _counters(url) == (high, [high], 0), "5 is below the window: forgotten"
    too_old = _apply_offline(url, sun(bar_order(CARD, ("Beer", 1, 1)), counter=6))
    assert _charged_to_loss(too_old), "below the window: stale, to the loss account"
    inside = _apply_offline(url, sun(bar_order(CARD, ("Beer", 1, 1)), counter=high - 5))
    assert inside["status"] == "approved"


@pytest.mark.parametrize("failure", ["missing", "bad_mac", "wrong_uid", "stale_counter"])
def test_an_offline_sale_with_a_failing_sun_is_charged_to_the_loss_account(
    funded: Ledger, service_database_url: str, failure: str
) -> None:
    """Revision 0021: approved (the drink was handed over), the card untouched, the total on
    the festival's loss account; an unknown card is not created; the kiosk's 24-hour bound
    counts the loss."""
    url = service_database_url
    if failure == "stale_counter":
        assert funded.apply(sun(bar_order(CARD, ("Beer", 1, 1)), counter=8)).approved
        paid = 1
        item = sun(bar_order(CARD, ("Beer", 1, 500)), counter=8)
    else:
        paid = 0
        item = sun(bar_order(CARD, ("Beer", 1, 500)), failure=failure)
    outcome = _apply_offline(url, item)
    assert outcome["status"] == "approved", outcome
    assert outcome["error_code"] is None
    assert (outcome["previous_balance_cents"], outcome["new_balance_cents"]) == (
        10_000 - paid,
        10_000 - paid,
    )
    assert outcome["debt_cents"] == 0
    assert outcome["transaction_id"] is not None and outcome["order_id"] is not None
    assert str(outcome["message"]).startswith(
        "Paid (offline sale) by the festival's loss account: Wristband not genuine"
    )
    assert _balance(url) == 10_000 - paid, "the attendee is not charged"
    assert scalar(url, "SELECT debt_cents FROM cards WHERE card_uid = :c", c=CARD) == 0
    assert execute(
        url,
        "SELECT a.name, p.amount_cents FROM postings p JOIN accounts a USING (account_id)"
        " WHERE p.transaction_id = CAST(:t AS uuid) ORDER BY a.name",
        t=outcome["transaction_id"],
    ) == [(f"card:{CARD}", 0), ("loss:offline", -500), ("sales:bar-1", 500)]
    assert execute(url, "SELECT total_cents, shortfall_cents, loss_cents FROM offline_sales") == [
        (500, 0, 500)
    ]
    assert (failure, 1) in execute(url, "SELECT reason, failures FROM sun_failure_minutes")
    replay = _apply_offline(url, item)
    assert replay["replayed"] is True and replay["status"] == "approved"
    assert _balance(url) == 10_000 - paid
    assert funded.check() == []


def test_a_loss_sale_on_an_unknown_card_creates_no_card(
    ledger: Ledger, service_database_url: str
) -> None:
    url = service_database_url
    outcome = _apply_offline(url, sun(bar_order(OTHER, ("Beer", 1, 700)), failure="missing"))
    assert outcome["status"] == "approved", outcome
    assert (
        outcome["previous_balance_cents"],
        outcome["new_balance_cents"],
        outcome["debt_cents"],
    ) == (0, 0, 0)
    assert scalar(url, "SELECT count(*) FROM cards WHERE card_uid = :c", c=OTHER) == 0
    assert scalar(url, "SELECT count(*) FROM accounts WHERE name LIKE :n", n=f"%{OTHER}") == 0
    assert execute(
        url,
        "SELECT a.name, p.amount_cents FROM postings p JOIN accounts a USING (account_id)"
        " WHERE p.transaction_id = CAST(:t AS uuid) ORDER BY a.name",
        t=outcome["transaction_id"],
    ) == [("loss:offline", -700), ("sales:bar-1", 700)]
    assert ledger.check() == []


def test_a_loss_sale_with_cup_deposits_posts_them_as_any_sale(
    funded: Ledger, service_database_url: str
) -> None:
    """The cups handed over are a deposit like any other; the loss account pays the total."""
    url = service_database_url
    cup = BarItem("Cup", 2, 200, sku="cup", is_deposit=True)
    outcome = _apply_offline(url, sun(bar_order(CARD, ("Beer", 1, 500), cup), failure="wrong_uid"))
    assert outcome["status"] == "approved", outcome
    assert execute(
        url,
        "SELECT a.name, p.amount_cents FROM postings p JOIN accounts a USING (account_id)"
        " WHERE p.transaction_id = CAST(:t AS uuid) ORDER BY a.name",
        t=outcome["transaction_id"],
    ) == [
        (f"card:{CARD}", 0),
        ("deposit:cups", 400),
        ("loss:offline", -900),
        ("sales:bar-1", 500),
    ]
    assert _balance(url) == 10_000
    assert funded.check() == []


def test_the_kiosk_bound_counts_the_losses(ledger: Ledger, service_database_url: str) -> None:
    """More than twice kiosk_max_cents (here 2 x 5.00) of losses within 24 hours: the next
    offline sale of that kiosk is refused, whatever its SUN."""
    url = service_database_url
    version = scalar(
        url,
        "SELECT sp_issue_kiosk_config('bar-1', 'EUR', false, NULL, true, CAST(:o AS jsonb))",
        o=json.dumps({"sale_max_cents": 600, "card_max_cents": 600, "kiosk_max_cents": 500}),
    )
    scalar(url, "SELECT count(*) FROM sp_mark_kiosk_config_published('bar-1', :v)", v=version)

    def offline(index: int) -> dict[str, object]:
        item = sun(bar_order(f"0400000000010{index}", ("Beer", 1, 600)), failure="bad_mac")
        outcomes = scalar(
            url, "SELECT sp_process_batch(CAST(:r AS jsonb))", r=_offline(item, int(version))
        )
        assert isinstance(outcomes, list)
        return outcomes[0]  # type: ignore[no-any-return]

    assert [offline(i)["status"] for i in range(2)] == ["approved", "approved"]
    refused = offline(2)  # 12.00 of losses > 2 x 5.00
    assert refused["error_code"] == "OFFLINE_LIMIT_EXCEEDED", refused
    assert "12.00" in str(refused["message"])
    assert scalar(url, "SELECT sum(loss_cents) FROM offline_sales") == 1200
    assert ledger.check() == []


def test_two_transactions_cannot_both_accept_one_counter(
    ledger: Ledger, service_database_url: str, database_url: str
) -> None:
    """Both wait on the same wristband's row; whichever goes first accepts the counter, the
    other finds it used. An unknown card: no card row serialises them, only the counter row."""
    url = service_database_url
    holder = make_engine(database_url, pool_size=1, application_name="test-sun-holder")
    other_engine = make_engine(url, pool_size=1, application_name="test-sun-other")
    other = Ledger(other_engine)
    outcomes: list[object] = []
    try:
        with holder.connect() as connection:
            transaction = connection.begin()
            connection.execute(
                sqlalchemy.text(
                    "INSERT INTO card_sun_counters (card_uid, counter_max, counters)"
                    " VALUES (:c, -1, '{}')"
                ),
                {"c": OTHER},
            )
            threads = [
                threading.Thread(
                    target=lambda lg=lg: outcomes.append(
                        lg.apply(sun(bar_order(OTHER, ("Beer", 1, 500)), counter=42))
                    )
                )
                for lg in (ledger, other)
            ]
            for thread in threads:
                thread.start()
            wait_until(
                lambda: (
                    scalar(
                        database_url,
                        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                        " AND application_name IN ('test-ledger', 'test-sun-other')",
                    )
                    == 2
                ),
                timeout_s=20,
                what="both transactions waiting on the wristband's row",
            )
            transaction.rollback()
        for thread in threads:
            thread.join(timeout=30)
    finally:
        holder.dispose()
        other_engine.dispose()
    codes = sorted(str(o.error_code) for o in outcomes)  # type: ignore[attr-defined]
    assert codes == ["CARD_NOT_FOUND", "CARD_NOT_GENUINE"], codes
    assert _counters(url, OTHER) == (42, [42], 1)


def test_a_portal_login_accepts_the_counter_by_the_online_rule(
    funded: Ledger, service_database_url: str
) -> None:
    assert funded.accept_sun_counter(CARD, 4)
    assert not funded.accept_sun_counter(CARD, 4)
    assert funded.apply(sun(bar_order(CARD, ("Beer", 1, 500)), counter=4)).error_code is (
        ErrorCode.CARD_NOT_GENUINE
    )
    assert funded.apply(sun(bar_order(CARD, ("Beer", 1, 500)), counter=5)).approved
    assert [row["reason"] for row in funded.sun_failures(minutes=5)] == ["stale_counter"]
    assert [row["card_uid"] for row in funded.stale_sun_cards(minutes=5, limit=5)] == [CARD]


def test_uid_mode_requests_touch_no_counter(funded: Ledger, service_database_url: str) -> None:
    assert funded.apply(bar_order(CARD, ("Beer", 1, 500))).approved
    assert scalar(service_database_url, "SELECT count(*) FROM card_sun_counters") == 0


def test_an_unknown_failure_reason_fails_the_batch(funded: Ledger) -> None:
    with pytest.raises(sqlalchemy.exc.DataError, match="not a reason the consumer gives"):
        funded.apply(sun(bar_order(CARD, ("Beer", 1, 500)), failure="stale_counter"))


def test_downgrade_of_0014_restores_revision_0013_exactly(
    make_database: Callable[..., str],
) -> None:
    url = make_database()
    database.upgrade(url, "0013")
    at_0013 = _schema(url)
    database.upgrade(url, "0014")
    assert any("card_sun_counters" in line for line in _schema(url))
    database.downgrade(url, "0013")
    assert _schema(url) == at_0013, _differences(at_0013, _schema(url))
