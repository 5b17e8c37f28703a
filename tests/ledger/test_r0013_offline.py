"""Revision 0013: offline sales (PROTOCOL.md 1.1 "Offline sales"). An offline sale the config
it cites allows is approved whatever the card holds: the card pays what it has, the rest is its
debt (a receivable, so postings still sum to zero); top-ups pay the debt first; OFFLINE_LIMIT_
EXCEEDED for a sale its config does not allow and beyond the kiosk's 24-hour bound; indebted
cards are on the deny-list; festival-cloud check compares the debts with their postings."""

from __future__ import annotations

import pytest

from cloud import database
from cloud.ledger import Ledger
from protocol.errors import ErrorCode, Status
from protocol.models import OfflinePolicy
from tests.ledger.helpers import bar_order, execute, recharge, same_id_other_payload, scalar

CARD = "04A1B2C3D4E5F6"
OTHER = "04A1B2C3D4E5F7"
POLICY = OfflinePolicy(sale_max_cents=2_000, card_max_cents=5_000, kiosk_max_cents=10_000)


def _publish(ledger: Ledger, kiosk_id: str, policy: OfflinePolicy | None) -> int:
    version = ledger.issue_kiosk_config(kiosk_id, offline=policy)
    assert version is not None
    ledger.mark_config_published(kiosk_id, version)
    return version


@pytest.fixture
def offline_version(ledger: Ledger) -> int:
    """bar-1 runs a published config allowing offline sales (version 1)."""
    return _publish(ledger, "bar-1", POLICY)


def _debt(url: str, card_uid: str) -> int:
    return int(scalar(url, "SELECT debt_cents FROM cards WHERE card_uid = :c", c=card_uid))


def _sums_to_zero(url: str) -> None:
    unbalanced = execute(
        url,
        "SELECT transaction_id FROM postings GROUP BY transaction_id HAVING sum(amount_cents) <> 0",
    )
    assert unbalanced == []


def test_an_offline_sale_the_card_covers_is_paid_from_the_balance(
    ledger: Ledger, offline_version: int, database_url: str
) -> None:
    ledger.apply(recharge(CARD, 1_000))
    outcome = ledger.apply(
        bar_order(CARD, ("Beer", 1, 600), config_version=offline_version, offline=True)
    )
    assert (outcome.status, outcome.error_code) == (Status.APPROVED, None)
    assert (outcome.previous_balance_cents, outcome.new_balance_cents) == (1_000, 400)
    assert outcome.debt_cents == 0
    assert _debt(database_url, CARD) == 0
    assert scalar(database_url, "SELECT shortfall_cents FROM offline_sales") == 0
    assert ledger.check() == []


def test_the_shortfall_becomes_a_debt_and_a_top_up_pays_it_first(
    ledger: Ledger, offline_version: int, database_url: str
) -> None:
    ledger.apply(recharge(CARD, 500))
    sale = ledger.apply(
        bar_order(CARD, ("Beer", 3, 600), config_version=offline_version, offline=True)
    )
    assert (sale.status, sale.error_code) == (Status.APPROVED, None)
    assert (sale.previous_balance_cents, sale.new_balance_cents, sale.debt_cents) == (500, 0, 1_300)
    card = ledger.card(CARD)
    assert card is not None and (card.balance_cents, card.debt_cents) == (0, 1_300)
    _sums_to_zero(database_url)
    assert ledger.check() == []
    # Online, a card with a debt has nothing to pay with.
    online = ledger.apply(bar_order(CARD, ("Water", 1, 100)))
    assert online.error_code is ErrorCode.INSUFFICIENT_FUNDS
    assert (online.new_balance_cents, online.debt_cents) == (0, 1_300)
    # A smaller top-up pays part of the debt, a larger one the rest and then the balance.
    part = ledger.apply(recharge(CARD, 1_000))
    assert (part.status, part.new_balance_cents, part.debt_cents) == (Status.APPROVED, 0, 300)
    rest = ledger.apply(recharge(CARD, 1_000))
    assert (rest.new_balance_cents, rest.debt_cents) == (700, 0)
    assert _debt(database_url, CARD) == 0
    assert (
        scalar(database_url, "SELECT balance_cents FROM cards WHERE card_uid = :c", c=CARD) == 700
    )
    _sums_to_zero(database_url)
    assert ledger.check() == []


def test_the_maximum_balance_applies_after_the_debt_is_paid(
    ledger: Ledger, offline_version: int
) -> None:
    ledger.apply(bar_order(CARD, ("Beer", 2, 1_000), config_version=offline_version, offline=True))
    # 150000 max: a top-up of 100000 twice after a debt of 2000 leaves 198000 > max.
    assert ledger.apply(recharge(CARD, 100_000)).status is Status.APPROVED
    over = ledger.apply(recharge(CARD, 100_000))
    assert over.error_code is ErrorCode.BALANCE_LIMIT_EXCEEDED
    exact = ledger.apply(recharge(CARD, 52_000))
    assert (exact.status, exact.new_balance_cents, exact.debt_cents) == (
        Status.APPROVED,
        150_000,
        0,
    )


def test_an_unknown_or_blocked_card_is_charged_all_the_same(
    ledger: Ledger, offline_version: int, database_url: str
) -> None:
    created = ledger.apply(
        bar_order(CARD, ("Beer", 1, 700), config_version=offline_version, offline=True)
    )
    assert (created.status, created.previous_balance_cents, created.new_balance_cents) == (
        Status.APPROVED,
        0,
        0,
    )
    assert created.debt_cents == 700
    ledger.apply(recharge(OTHER, 300))
    assert ledger.block_card(OTHER, "lost")
    blocked = ledger.apply(
        bar_order(OTHER, ("Beer", 1, 700), config_version=offline_version, offline=True)
    )
    assert (blocked.status, blocked.new_balance_cents, blocked.debt_cents) == (
        Status.APPROVED,
        0,
        400,
    )
    assert ledger.check() == []
    assert scalar(database_url, "SELECT count(*) FROM offline_sales") == 2


def test_two_kiosks_selling_to_one_card_make_one_debt_never_a_negative_balance(
    ledger: Ledger, offline_version: int, database_url: str
) -> None:
    other_version = _publish(ledger, "bar-2", POLICY)
    ledger.apply(recharge(CARD, 1_000))
    batch = ledger.apply_batch(
        [
            bar_order(CARD, ("Beer", 1, 800), config_version=offline_version, offline=True),
            bar_order(
                CARD,
                ("Beer", 1, 900),
                kiosk_id="bar-2",
                config_version=other_version,
                offline=True,
            ),
        ]
    )
    assert [o.status for o in batch] == [Status.APPROVED, Status.APPROVED]
    assert [(o.new_balance_cents, o.debt_cents) for o in batch] == [(200, 0), (0, 700)]
    assert (scalar(database_url, "SELECT min(balance_cents) FROM cards") or 0) >= 0
    assert ledger.check() == []


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ("none", "Offline sale refused: it cites no config_version"),
        ("unpublished", "Offline sale refused: config version 2 was never published to this kiosk"),
        ("no-policy", "Offline sale refused: config version 2 allows no offline sales"),
        ("over", "Offline sale refused: 25.00 is over the offline limit of 20.00 per sale"),
    ],
)
def test_an_offline_sale_its_config_does_not_allow_is_offline_limit_exceeded(
    ledger: Ledger, offline_version: int, database_url: str, config: str, message: str
) -> None:
    ledger.apply(recharge(CARD, 10_000))
    version, lines = offline_version, [("Beer", 1, 500)]
    if config == "none":
        version = None  # type: ignore[assignment]
    elif config == "unpublished":
        version = ledger.issue_kiosk_config("bar-1", offline=POLICY) or 0
    elif config == "no-policy":
        version = _publish(ledger, "bar-1", None)
    else:
        lines = [("Beer", 5, 500)]
    before = scalar(database_url, "SELECT count(*) FROM postings")
    item = bar_order(CARD, *lines, config_version=version, offline=True)
    outcome = ledger.apply(item)
    assert (outcome.status, outcome.error_code) == (
        Status.REJECTED,
        ErrorCode.OFFLINE_LIMIT_EXCEEDED,
    )
    assert outcome.message == message
    assert (outcome.previous_balance_cents, outcome.new_balance_cents, outcome.debt_cents) == (
        None,
        None,
        None,
    )
    assert scalar(database_url, "SELECT count(*) FROM postings") == before, "nothing charged"
    assert scalar(database_url, "SELECT count(*) FROM offline_sales") == 0
    replay = ledger.apply(item)
    assert (replay.replayed, replay.error_code) == (True, ErrorCode.OFFLINE_LIMIT_EXCEEDED)


def test_the_price_check_comes_before_the_offline_check(
    ledger: Ledger, offline_version: int
) -> None:
    from protocol.models import Menu, MenuItem

    menu = Menu("m", (MenuItem("beer", "Beer", 550),))
    version = ledger.issue_kiosk_config("bar-1", menu=menu)
    assert version is not None
    ledger.mark_config_published("bar-1", version)
    outcome = ledger.apply(bar_order(CARD, ("Beer", 9, 550), config_version=version, offline=True))
    # No sku: PRICE_MISMATCH decides, though the total is over the offline limit as well.
    assert outcome.error_code is ErrorCode.PRICE_MISMATCH
    # A version never issued to this kiosk is the price check's too ("never sent to this
    # kiosk"); one issued but not yet published is the offline check's (the test above).
    elsewhere = bar_order(
        CARD, ("Beer", 1, 500), kiosk_id="bar-2", config_version=offline_version, offline=True
    )
    assert ledger.apply(elsewhere).error_code is ErrorCode.PRICE_MISMATCH


def test_the_kiosk_bound_stops_offline_sales_after_twice_its_limit_of_debts_in_24_hours(
    ledger: Ledger, database_url: str
) -> None:
    policy = OfflinePolicy(sale_max_cents=2_000, card_max_cents=2_000, kiosk_max_cents=3_000)
    version = _publish(ledger, "bar-1", policy)
    other = _publish(ledger, "bar-2", policy)
    cards = [f"04A1B2C3D4E6{n:02X}" for n in range(8)]
    # 2000 of debts each: 3 sales make 6000 = 2 x 3000, not more: the 4th is approved
    # (7000 after it is over), and the 5th is refused — in one batch and in the next.
    batch = ledger.apply_batch(
        [
            bar_order(cards[n], ("Beer", 2, 1_000), config_version=version, offline=True)
            for n in range(4)
        ]
    )
    assert [o.status for o in batch] == [Status.APPROVED] * 4
    after = ledger.apply(
        bar_order(cards[4], ("Beer", 1, 100), config_version=version, offline=True)
    )
    assert after.error_code is ErrorCode.OFFLINE_LIMIT_EXCEEDED
    assert "within 24 hours" in after.message
    # A sale the card covers is refused too once the bound is passed; online sales go on; the
    # other kiosk has its own bound.
    ledger.apply(recharge(cards[5], 5_000))
    covered = bar_order(cards[5], ("Beer", 1, 100), config_version=version, offline=True)
    assert ledger.apply(covered).error_code is ErrorCode.OFFLINE_LIMIT_EXCEEDED
    assert ledger.apply(bar_order(cards[5], ("Beer", 1, 100))).status is Status.APPROVED
    elsewhere = bar_order(
        cards[6], ("Beer", 2, 1_000), kiosk_id="bar-2", config_version=other, offline=True
    )
    assert ledger.apply(elsewhere).status is Status.APPROVED
    # Debts older than 24 hours no longer count (applied_at moved back by the owner).
    execute(
        database_url,
        "ALTER TABLE offline_sales DISABLE TRIGGER offline_sales_immutable;"
        " UPDATE offline_sales SET applied_at = applied_at - interval '25 hours';"
        " ALTER TABLE offline_sales ENABLE TRIGGER offline_sales_immutable",
    )
    again = bar_order(cards[7], ("Beer", 1, 100), config_version=version, offline=True)
    assert ledger.apply(again).status is Status.APPROVED


def test_replays_are_applied_once(ledger: Ledger, offline_version: int, database_url: str) -> None:
    item = bar_order(CARD, ("Beer", 1, 900), config_version=offline_version, offline=True)
    first = ledger.apply(item)
    again = ledger.apply_batch([item, item])
    assert [o.replayed for o in again] == [True, True]
    assert {o.debt_cents for o in again} == {first.debt_cents} == {900}
    assert _debt(database_url, CARD) == 900
    assert scalar(database_url, "SELECT count(*) FROM offline_sales") == 1
    conflict = ledger.apply(same_id_other_payload(item))
    assert conflict.error_code is ErrorCode.IDEMPOTENCY_CONFLICT


def test_cards_with_a_debt_are_on_the_denylist_until_it_is_paid(
    ledger: Ledger, offline_version: int, database_url: str
) -> None:
    changes = scalar(database_url, "SELECT changes FROM denylist_state")
    ledger.apply(bar_order(CARD, ("Beer", 1, 500), config_version=offline_version, offline=True))
    assert scalar(database_url, "SELECT changes FROM denylist_state") == changes + 1
    assert ledger.denylist_stale()
    version = ledger.issue_denylist()
    assert version is not None
    issued = ledger.unpublished_denylist()
    assert issued is not None and CARD in issued.card_uids
    ledger.apply(recharge(CARD, 200))  # still owes 300: no change
    assert scalar(database_url, "SELECT changes FROM denylist_state") == changes + 1
    ledger.apply(recharge(CARD, 300))
    assert scalar(database_url, "SELECT changes FROM denylist_state") == changes + 2
    assert ledger.issue_denylist() == version + 1
    latest = ledger.unpublished_denylist()
    assert latest is not None and CARD not in latest.card_uids


def test_check_reports_a_cached_debt_that_differs_from_its_postings(
    ledger: Ledger, offline_version: int, database_url: str
) -> None:
    ledger.apply(bar_order(CARD, ("Beer", 1, 500), config_version=offline_version, offline=True))
    assert ledger.check() == []
    execute(database_url, "UPDATE cards SET debt_cents = 400 WHERE card_uid = :c", c=CARD)
    problems = ledger.check()
    assert any("cached debt 400 cents" in line for line in problems), problems


def test_the_balance_and_a_debt_cannot_be_held_at_once(
    ledger: Ledger, offline_version: int, database_url: str
) -> None:
    ledger.apply(recharge(CARD, 500))
    with pytest.raises(Exception, match="cards_balance_or_debt"):
        execute(database_url, "UPDATE cards SET debt_cents = 1 WHERE card_uid = :c", c=CARD)


def test_the_downgrade_is_refused_once_debts_exist(
    ledger: Ledger, offline_version: int, database_url: str
) -> None:
    ledger.apply(bar_order(CARD, ("Beer", 1, 500), config_version=offline_version, offline=True))
    with pytest.raises(Exception, match="cannot be downgraded"):
        database.downgrade(database_url, "0012")


def test_a_stripe_top_up_pays_the_debt_first(
    ledger: Ledger, offline_version: int, database_url: str
) -> None:
    ledger.apply(bar_order(CARD, ("Beer", 1, 700), config_version=offline_version, offline=True))
    ledger.create_topup(topup_id="tu_debt", card_uid=CARD, amount_cents=2_000, currency="EUR")
    result = ledger.handle_stripe_checkout(
        event_id="evt_debt",
        session_id="cs_debt",
        topup_id="tu_debt",
        card_uid=CARD,
        amount_cents=2_000,
        currency="EUR",
        payment_intent_id="pi_cs_debt",
    )
    assert result.outcome.approved
    card = ledger.card(CARD)
    assert card is not None and (card.balance_cents, card.debt_cents) == (1_300, 0)
    receivable = scalar(
        database_url,
        "SELECT sum(p.amount_cents) FROM postings p JOIN accounts a USING (account_id)"
        " WHERE a.name = :name",
        name=f"receivable:{CARD}",
    )
    assert receivable == 0
    _sums_to_zero(database_url)
    assert ledger.check() == []
