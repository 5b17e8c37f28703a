"""Revision 0024: staff members, their logins at kiosks and the roles (issue 17 section 3;
PROTOCOL.md 1.1 `staff_login`/`staff_logout`, STAFF_NOT_ALLOWED; DESIGN.md `staff`,
FESTIVAL_STAFF_REQUIRED).

Against the real PostgreSQL through the service role, as the consumer calls it: a login is
checked against the staff band, id and the consumer's verdict on the PIN (its scrypt hash);
five failures lock for 15 minutes; a login holds for its kiosk until logout or 12 hours; with
roles enforced every kiosk request is judged by the login of the staff member it names (an
offline sale by the login that held when it was made); the POS endpoints are exempt; nothing
keeps the PIN."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace

import pytest

from cloud import database
from cloud.database import make_engine
from cloud.ledger import Ledger
from cloud.ledger_records import LedgerRequest, Outcome
from cloud.staff import hash_pin, verify_pin
from protocol.errors import ErrorCode, Status
from protocol.models import CashOut, OfflinePolicy, StaffLogin, StaffLogout
from tests.ledger.conftest import KIOSKS
from tests.ledger.helpers import (
    CURRENCY,
    PUBLIC_KEY,
    bar_order,
    card_swap,
    execute,
    next_id,
    recharge,
    same_id_other_payload,
    scalar,
    sha256_of,
    void,
)
from tests.ledger.test_r0009_migration import _differences, _schema

REVISION = "0024"
PREVIOUS = "0023"
CARD = "04A1B2C3D4E5F6"
OTHER_CARD = "04A1B2C3D4E5F7"
BANDS = {"bea": "04B0000000000B", "carl": "04C0000000000C", "sue": "04D0000000000D"}
ROLES = {"bea": "bartender", "carl": "cashier", "sue": "supervisor"}
PINS = {"bea": "1234", "carl": "567890", "sue": "24680135"}


def login(
    ledger: Ledger,
    staff_id: str,
    *,
    kiosk_id: str = "bar-1",
    pin: str | None = None,
    band: str | None = None,
    created_at_ms: int | None = None,
    request_id: str | None = None,
) -> LedgerRequest:
    request = StaffLogin(
        request_id=request_id or next_id("login"),
        kiosk_id=kiosk_id,
        seq=50,
        created_at_ms=int(time.time() * 1000) if created_at_ms is None else created_at_ms,
        card_uid=band or BANDS[staff_id],
        currency=CURRENCY,
        staff_id=staff_id,
        pin=pin or PINS[staff_id],
    )
    # as the consumer does (cloud/consumer/decisions.py check_pins): the verdict, not the PIN
    stored = ledger.staff_pin_hashes([staff_id]).get(staff_id)
    return LedgerRequest(
        request,
        sha256_of(request),
        pin_verified=verify_pin(request.pin, stored),
        pin_hash_checked=stored,
    )


def logout(
    staff_id: str,
    *,
    kiosk_id: str = "bar-1",
    band: str | None = None,
    created_at_ms: int | None = None,
) -> LedgerRequest:
    request = StaffLogout(
        request_id=next_id("logout"),
        kiosk_id=kiosk_id,
        seq=51,
        created_at_ms=int(time.time() * 1000) if created_at_ms is None else created_at_ms,
        card_uid=band or BANDS[staff_id],
        currency=CURRENCY,
        staff_id=staff_id,
    )
    return LedgerRequest(request, sha256_of(request))


def cash_out(card_uid: str, *, kiosk_id: str = "checkpoint-1") -> LedgerRequest:
    request = CashOut(
        request_id=next_id("cash-out"),
        kiosk_id=kiosk_id,
        seq=9,
        created_at_ms=int(time.time() * 1000),
        card_uid=card_uid,
        currency=CURRENCY,
        staff_id="staff-1",
    )
    return LedgerRequest(request, sha256_of(request))


def by(item: LedgerRequest, staff_id: str) -> LedgerRequest:
    """The same request made by ``staff_id`` (a new payload, so a new hash)."""
    request = replace(item.request, staff_id=staff_id)  # type: ignore[call-arg]
    return replace(item, request=request, payload_sha256=sha256_of(request))


@pytest.fixture
def staff(ledger: Ledger) -> Ledger:
    for staff_id, role in ROLES.items():
        added = ledger.add_staff(
            staff_id=staff_id,
            name=staff_id.title(),
            role=role,
            card_uid=BANDS[staff_id],
            pin_hash=hash_pin(PINS[staff_id]),
        )
        assert added == "added"
    return ledger


@pytest.fixture
def enforcing(service_database_url: str, staff: Ledger) -> Ledger:
    """The same database, as a consumer with FESTIVAL_STAFF_REQUIRED=true calls it."""
    engine = make_engine(service_database_url, pool_size=2, application_name="test-staff")
    yield Ledger(engine, staff_required=True)  # type: ignore[misc]
    engine.dispose()


def _refused(outcome: Outcome, words: str = "") -> None:
    assert outcome.status is Status.REJECTED, outcome
    assert outcome.error_code is ErrorCode.STAFF_NOT_ALLOWED, outcome
    assert outcome.transaction_id is None and outcome.new_balance_cents is None
    assert words in outcome.message, outcome.message


def _moneyless(outcome: Outcome) -> None:
    assert outcome.status is Status.APPROVED, outcome
    assert outcome.transaction_id is None
    assert outcome.previous_balance_cents is None and outcome.new_balance_cents is None
    assert outcome.debt_cents is None


# --- staff add, pin, disable, list ---------------------------------------------------------------


def test_staff_add_keeps_a_bcrypt_hash_only_and_refuses_a_second_id_or_band(
    staff: Ledger, database_url: str
) -> None:
    hashes = [row[0] for row in execute(database_url, "SELECT pin_hash FROM staff_members")]
    assert len(hashes) == 3 and all(h.startswith("scrypt$16384$8$1$") for h in hashes)
    assert not any(pin in h for h in hashes for pin in PINS.values())
    assert (
        staff.add_staff(
            staff_id="bea", name="B", role="cashier", card_uid=CARD, pin_hash=hash_pin("1111")
        )
        == "exists"
    )
    assert (
        staff.add_staff(
            staff_id="new",
            name="N",
            role="cashier",
            card_uid=BANDS["bea"],
            pin_hash=hash_pin("1111"),
        )
        == "card in use"
    )
    listed = {m["staff_id"]: m for m in staff.staff_members()}
    assert listed["sue"]["role"] == "supervisor" and listed["sue"]["enabled"] is True
    assert "pin_hash" not in listed["sue"] and listed["sue"]["logged_in_at"] == []


def test_a_login_with_band_id_and_pin_moves_no_money_and_shows_in_the_list(staff: Ledger) -> None:
    item = login(staff, "bea")
    outcome = staff.apply(item)
    _moneyless(outcome)
    assert outcome.message == "Logged in: Bea (bartender)"
    listed = {m["staff_id"]: m for m in staff.staff_members()}
    assert [entry["kiosk_id"] for entry in listed["bea"]["logged_in_at"]] == ["bar-1"]
    until = (
        listed["bea"]["logged_in_at"][0]["until_ms"] - listed["bea"]["logged_in_at"][0]["since_ms"]
    )
    assert until == 12 * 3600 * 1000
    replayed = staff.apply(item)
    assert replayed.replayed and replayed.status is Status.APPROVED
    conflict = staff.apply(replace(item, payload_sha256=same_id_other_payload(item).payload_sha256))
    assert conflict.error_code is ErrorCode.IDEMPOTENCY_CONFLICT
    assert staff.check() == []


@pytest.mark.parametrize(
    ("staff_id", "pin", "band"),
    [
        ("bea", "9999", BANDS["bea"]),
        ("bea", PINS["bea"], OTHER_CARD),
        ("bea", PINS["bea"], BANDS["carl"]),
        ("nobody", PINS["bea"], BANDS["bea"]),
    ],
    ids=["wrong-pin", "unknown-band", "someone-elses-band", "unknown-id"],
)
def test_a_login_that_does_not_match_is_refused_without_saying_what(
    staff: Ledger, staff_id: str, pin: str, band: str
) -> None:
    _refused(
        staff.apply(login(staff, staff_id, pin=pin, band=band)),
        "staff id, band or PIN do not match",
    )
    assert {m["staff_id"]: m for m in staff.staff_members()}["bea"]["logged_in_at"] == []


def test_five_failures_lock_the_staff_member_for_15_minutes(
    staff: Ledger, database_url: str
) -> None:
    for _ in range(4):
        _refused(staff.apply(login(staff, "bea", pin="0000")), "do not match")
    _refused(
        staff.apply(login(staff, "bea", pin="0000")), "locked for 15 min after 5 failed logins"
    )
    # the right PIN does not help while locked
    _refused(
        staff.apply(login(staff, "bea")), "is locked after 5 failed logins; try again in 15 min"
    )
    # another staff member is not locked
    _moneyless(staff.apply(login(staff, "carl", kiosk_id="checkpoint-1")))
    # 15 minutes later (the lock moved into the past): the right PIN logs in, failures start again
    execute(
        database_url,
        "UPDATE staff_members SET locked_until = now() - interval '1 s' WHERE staff_id = 'bea'",
    )
    _moneyless(staff.apply(login(staff, "bea")))
    assert (
        scalar(database_url, "SELECT locked_until FROM staff_members WHERE staff_id = 'bea'")
        is None
    )
    assert scalar(database_url, "SELECT count(*) FROM staff_login_failures") == 0


def test_logout_needs_the_staff_band_and_ends_the_login(staff: Ledger) -> None:
    _moneyless(staff.apply(login(staff, "sue")))
    _refused(staff.apply(logout("sue", band=BANDS["bea"])), "not this staff member's band")
    outcome = staff.apply(logout("sue"))
    _moneyless(outcome)
    assert outcome.message == "Logged out: Sue"
    assert {m["staff_id"]: m for m in staff.staff_members()}["sue"]["logged_in_at"] == []
    # without enforcement a logout that ends nothing is harmless
    again = staff.apply(logout("sue"))
    _moneyless(again)
    assert again.message == "Sue was not logged in here"


def test_a_new_pin_or_disable_ends_the_logins(staff: Ledger) -> None:
    _moneyless(staff.apply(login(staff, "sue")))
    _moneyless(staff.apply(login(staff, "bea")))
    assert staff.set_staff_pin("sue", hash_pin("11223344")) is True
    assert staff.disable_staff("bea") is True
    assert (
        staff.set_staff_pin("nobody", hash_pin("1111")) is False
        and staff.disable_staff("nobody") is False
    )
    listed = {m["staff_id"]: m for m in staff.staff_members()}
    assert listed["sue"]["logged_in_at"] == [] and listed["bea"]["logged_in_at"] == []
    assert listed["bea"]["enabled"] is False
    _refused(staff.apply(login(staff, "sue")), "do not match")  # the old PIN
    _moneyless(staff.apply(login(staff, "sue", pin="11223344")))
    _refused(staff.apply(login(staff, "bea")), "bea is disabled")


# --- roles ---------------------------------------------------------------------------------------


def _requests_made_by(staff_id: str, ledger: Ledger) -> dict[str, LedgerRequest]:
    """One request of each kind a kiosk sends, made by ``staff_id`` (a bar order and its void
    from bar-1; a top-up, a swap and a cash-out from checkpoint-1)."""
    order = bar_order(CARD, ("Beer", 1, 500))
    return {
        "bar_order": by(order, staff_id),
        "checkpoint_recharge": by(recharge(CARD, 1_000), staff_id),
        "void": by(void(order), staff_id),
        "card_swap": by(card_swap(CARD, OTHER_CARD), staff_id),
        "cash_out": by(cash_out(CARD), staff_id),
    }


ALLOWED = {
    "bea": {"bar_order"},
    "carl": {"checkpoint_recharge"},
    "sue": {"bar_order", "checkpoint_recharge", "void", "card_swap", "cash_out"},
}


@pytest.mark.parametrize("staff_id", sorted(ROLES))
def test_each_role_against_each_request_type_with_enforcement_on_and_off(
    staff: Ledger, enforcing: Ledger, staff_id: str
) -> None:
    for kiosk_id in ("bar-1", "checkpoint-1"):
        _moneyless(staff.apply(login(staff, staff_id, kiosk_id=kiosk_id)))
    for kind in ("bar_order", "checkpoint_recharge", "void", "card_swap", "cash_out"):
        # the card has money for the order, and the order exists for the void
        staff.apply(recharge(CARD, 2_000, staff_id="setup"))
        requests = _requests_made_by(staff_id, staff)
        if kind == "void":
            staff.apply(requests["bar_order"])
        outcome = enforcing.apply(requests[kind])
        if kind in ALLOWED[staff_id]:
            assert outcome.error_code is not ErrorCode.STAFF_NOT_ALLOWED, (kind, outcome)
        else:
            _refused(outcome, f"A {ROLES[staff_id]} may not make a {kind.replace('_', ' ')}")
        # enforcement off: the same kind from the same staff member is never STAFF_NOT_ALLOWED
        other = _requests_made_by(staff_id, staff)[kind]
        assert staff.apply(other).error_code is not ErrorCode.STAFF_NOT_ALLOWED
        if kind in {"card_swap", "cash_out"}:
            return  # the card is gone (replaced or cashed out): the rest was checked before it
    assert staff.check() == []


def test_enforced_a_request_needs_a_login_at_the_sending_kiosk(
    staff: Ledger, enforcing: Ledger
) -> None:
    staff.apply(recharge(CARD, 5_000, staff_id="setup"))
    order = by(bar_order(CARD), "sue")
    _refused(enforcing.apply(order), "sue is not logged in at this kiosk")
    _refused(enforcing.apply(order), "")  # stored: its replay is the same rejection
    assert enforcing.apply(order).replayed
    _moneyless(enforcing.apply(login(enforcing, "sue", kiosk_id="bar-2")))
    _refused(enforcing.apply(by(bar_order(CARD), "sue")), "not logged in at this kiosk")
    _moneyless(enforcing.apply(login(enforcing, "sue")))
    approved = enforcing.apply(by(bar_order(CARD), "sue"))
    assert approved.status is Status.APPROVED
    _refused(enforcing.apply(by(bar_order(CARD), "nobody")), "nobody is not registered")
    unnamed = bar_order(CARD)
    unnamed = by(unnamed, "x")
    request = replace(unnamed.request, staff_id=None)  # type: ignore[call-arg]
    _refused(enforcing.apply(LedgerRequest(request, sha256_of(request))), "names no staff member")
    # logged out: refused; a logout when not logged in is refused too
    _moneyless(enforcing.apply(logout("sue")))
    _refused(enforcing.apply(by(bar_order(CARD), "sue")), "not logged in")
    _refused(enforcing.apply(logout("sue")), "not logged in")
    assert enforcing.check() == []


def test_enforced_the_12_hours_end_a_login(
    staff: Ledger, enforcing: Ledger, database_url: str
) -> None:
    staff.apply(recharge(CARD, 5_000, staff_id="setup"))
    _moneyless(enforcing.apply(login(enforcing, "bea")))
    assert enforcing.apply(by(bar_order(CARD), "bea")).status is Status.APPROVED
    execute(database_url, "UPDATE staff_logins SET expires_at = now() - interval '1 s'")
    _refused(enforcing.apply(by(bar_order(CARD), "bea")), "not logged in")


def test_enforced_a_replay_is_answered_before_the_staff_rule(
    staff: Ledger, enforcing: Ledger
) -> None:
    staff.apply(recharge(CARD, 5_000, staff_id="setup"))
    _moneyless(enforcing.apply(login(enforcing, "bea")))
    order = by(bar_order(CARD), "bea")
    first = enforcing.apply(order)
    assert first.status is Status.APPROVED
    _moneyless(enforcing.apply(logout("bea")))
    again = enforcing.apply(order)
    assert again.replayed and again.status is Status.APPROVED
    assert again.transaction_id == first.transaction_id


def test_enforced_an_offline_sale_is_judged_by_the_login_that_held_when_it_was_made(
    staff: Ledger, enforcing: Ledger
) -> None:
    staff.apply(recharge(CARD, 5_000, staff_id="setup"))
    version = staff.issue_kiosk_config(
        "bar-1",
        offline=OfflinePolicy(sale_max_cents=2_000, card_max_cents=5_000, kiosk_max_cents=10_000),
    )
    assert version is not None
    staff.mark_config_published("bar-1", version)
    now_ms = int(time.time() * 1000)

    def sale(created_at_ms: int) -> LedgerRequest:
        order = bar_order(CARD, created_at_ms=created_at_ms, offline=True, config_version=version)
        return by(order, "bea")

    _moneyless(enforcing.apply(login(enforcing, "bea", created_at_ms=now_ms - 60_000)))
    during = sale(now_ms - 30_000)
    before = sale(now_ms - 120_000)
    _moneyless(enforcing.apply(logout("bea", created_at_ms=now_ms - 10_000)))
    after = sale(now_ms - 5_000)
    # the network came back after the logout: the sale made during the login is applied
    outcomes = enforcing.apply_batch([during, before, after])
    assert outcomes[0].status is Status.APPROVED, outcomes[0]
    _refused(outcomes[1], "was not logged in at this kiosk when the sale was made")
    _refused(outcomes[2], "when the sale was made")
    assert enforcing.check() == []


def test_enforced_the_pos_endpoints_are_exempt(staff: Ledger, enforcing: Ledger) -> None:
    outcome = enforcing.apply(recharge(CARD, 1_000, source="http", staff_id="till-7"))
    assert outcome.status is Status.APPROVED


def test_a_batch_mixing_logins_and_requests_keeps_its_order(
    staff: Ledger, enforcing: Ledger
) -> None:
    staff.apply(recharge(CARD, 5_000, staff_id="setup"))
    outcomes = enforcing.apply_batch(
        [
            by(bar_order(CARD), "bea"),
            login(enforcing, "bea"),
            by(bar_order(CARD), "bea"),
            logout("bea"),
            by(bar_order(CARD), "bea"),
        ]
    )
    assert [o.error_code for o in outcomes] == [
        ErrorCode.STAFF_NOT_ALLOWED,
        None,
        None,
        None,
        ErrorCode.STAFF_NOT_ALLOWED,
    ]


def test_nothing_keeps_the_pin(staff: Ledger, enforcing: Ledger, database_url: str) -> None:
    pin = "90817263"
    staff.set_staff_pin("carl", hash_pin(pin))
    _moneyless(enforcing.apply(login(enforcing, "carl", kiosk_id="checkpoint-1", pin=pin)))
    _refused(enforcing.apply(login(enforcing, "carl", kiosk_id="checkpoint-1", pin="90817264")), "")
    tables = [
        row[0]
        for row in execute(
            database_url,
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'",
        )
    ]
    for table in tables:
        found = scalar(
            database_url,
            f'SELECT count(*) FROM "{table}" t WHERE t::text LIKE :pattern',
            pattern=f"%{pin[:7]}%",
        )
        assert found == 0, table


# --- the revision --------------------------------------------------------------------------------


def test_downgrade_restores_revision_0023_exactly_and_is_refused_once_staff_logged_in(
    make_database: Callable[..., str],
) -> None:
    url = make_database()
    database.upgrade(url, PREVIOUS)
    before = _schema(url)
    database.upgrade(url, REVISION)
    assert _schema(url) != before
    database.downgrade(url, PREVIOUS)
    assert _schema(url) == before, _differences(before, _schema(url))

    database.upgrade(url, REVISION)
    engine = make_engine(database.service_url(url), pool_size=1)
    try:
        ledger = Ledger(engine)
        for kiosk_id, role in KIOSKS.items():
            ledger.add_kiosk(kiosk_id, PUBLIC_KEY, role)
        ledger.add_staff(
            staff_id="bea",
            name="Bea",
            role="bartender",
            card_uid=BANDS["bea"],
            pin_hash=hash_pin("1234"),
        )
        _moneyless(ledger.apply(login(ledger, "bea")))
    finally:
        engine.dispose()
    with pytest.raises(Exception, match="staff logins are recorded"):
        database.downgrade(url, PREVIOUS)
    assert database.current_revision(url) == REVISION
