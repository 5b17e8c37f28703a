"""POST /api/portal/payout over real HTTP (uvicorn on loopback, the real ledger on PostgreSQL as
festival_api, Stripe top-ups credited through the real webhook): the split of a card funded by
Stripe and cash with a partial spend, a donation and FESTIVAL_PAYOUT_FEE_CENTS; invalid fields are
400 and change nothing; a debt is 409; two tabs submitting at once make one payout; a session
opened by a wristband tap needs the PIN (DESIGN.md "Attendee portal and payouts")."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from cloud.api import create_app
from cloud.keys import generate_card_master_key, save_card_master_key
from cloud.ledger import Ledger
from cloud.payouts import PayoutStore
from cloud.settings import CloudSettings
from cloud.stripe_fake import FakeStripe, checkout_session_completed_event
from protocol.models import OfflinePolicy
from protocol.sun import CardKeyDerivation, sun_message
from tests.api.conftest import PostEvent, admin_headers, make_settings, scalar
from tests.api.live import serve
from tests.api.stripe_helpers import our_paid_session
from tests.api.test_portal import (
    HTTP_TIMEOUT_S,
    PIN,
    PORTAL_HEADERS,
    UID,
    card,
    give_pin,
    login,
    portal_limits,
)
from tests.ledger.helpers import PUBLIC_KEY, bar_order, recharge

IBAN = "DE89370400440532013000"
FEE_CENTS = 150


@pytest.fixture
def base_url(
    api_database_url: str, fake_stripe: FakeStripe, api_ledger: Ledger, engine: Engine
) -> Iterator[str]:
    give_pin(engine)
    settings = make_settings(
        api_database_url, fake_stripe.base_url, festival_payout_fee_cents=FEE_CENTS
    )
    with serve(create_app(settings, ledger=api_ledger, limits=portal_limits())) as url:
        yield url


def _logged_in(base_url: str) -> requests.Session:
    http = requests.Session()
    assert login(base_url, http).status_code == 200
    return http


def request_payout(
    base_url: str, http: requests.Session, body: dict[str, Any] | None = None
) -> requests.Response:
    return http.post(
        f"{base_url}/api/portal/payout",
        json=body if body is not None else {},
        headers=PORTAL_HEADERS,
        timeout=HTTP_TIMEOUT_S,
    )


def _balance(engine: Engine, uid: str = UID) -> int:
    return int(scalar(engine, "SELECT balance_cents FROM cards WHERE card_uid = :u", u=uid))


def _payout_rows(engine: Engine) -> int:
    return int(scalar(engine, "SELECT count(*) FROM payouts"))


def test_a_card_funded_by_stripe_and_cash_is_split_donation_fee_stripe_then_bank(
    base_url: str, post_event: PostEvent, ledger: Ledger, engine: Engine
) -> None:
    older = our_paid_session(ledger, UID, 2_000)
    assert post_event(checkout_session_completed_event(older)).status_code == 200
    assert ledger.apply(recharge(UID, 3_000)).approved  # cash at a checkpoint
    newer = our_paid_session(ledger, UID, 1_000)
    assert post_event(checkout_session_completed_event(newer)).status_code == 200
    assert ledger.apply(bar_order(UID, ("Beer", 3, 450))).approved  # a partial spend: 13.50
    assert _balance(engine) == 4_650
    http = _logged_in(base_url)
    answer = request_payout(
        base_url,
        http,
        {
            "iban": "de89 3704 0044 0532 0130 00",
            "account_holder": "Ada Lovelace",
            "email": "ada@example.org",
            "donate_cents": 200,
        },
    )
    assert answer.status_code == 201, answer.text
    body = answer.json()
    # 46.50 = 2.00 donation + 1.50 fee + Stripe (newest first: 10.00, then 20.00) + 13.00 bank.
    assert {key: value for key, value in body.items() if key != "payout_id"} == {
        "status": "pending",
        "amount_cents": 4_650,
        "donation_cents": 200,
        "fee_cents": FEE_CENTS,
        "stripe_refund_cents": 3_000,
        "bank_transfer_cents": 1_300,
    }
    assert _balance(engine) == 0
    parts = PayoutStore(engine).list(card_uid=UID)
    assert {part.request_id for part in parts} == {body["payout_id"]}
    stripe_parts = {
        part.payment_intent_id: part.amount_cents for part in parts if part.kind == "stripe"
    }
    assert stripe_parts == {newer["payment_intent"]: 1_000, older["payment_intent"]: 2_000}
    [bank] = [part for part in parts if part.kind == "bank"]
    assert (bank.iban, bank.account_holder, bank.state) == (IBAN, "Ada Lovelace", "pending")
    shown = card(base_url, http).json()
    assert shown["status"] == "blocked" and shown["balance_cents"] == 0
    [listed] = shown["payouts"]
    assert listed["payout_id"] == body["payout_id"] and listed["amount_cents"] == 4_650
    assert listed["state"] == "pending"
    assert sorted(part["kind"] for part in listed["parts"]) == [
        "bank",
        "donation",
        "fee",
        "stripe",
        "stripe",
    ]
    assert [part["iban_end"] for part in listed["parts"] if part["kind"] == "bank"] == ["3000"]
    assert "iban" not in str(listed).replace("iban_end", ""), "the page sees no whole IBAN"
    assert ledger.check() == []


def test_a_card_paid_by_stripe_alone_needs_no_iban(
    base_url: str, post_event: PostEvent, ledger: Ledger, engine: Engine
) -> None:
    session = our_paid_session(ledger, UID, 2_500)
    assert post_event(checkout_session_completed_event(session)).status_code == 200
    answer = request_payout(base_url, _logged_in(base_url))
    assert answer.status_code == 201, answer.text
    body = answer.json()
    assert (body["fee_cents"], body["stripe_refund_cents"], body["bank_transfer_cents"]) == (
        FEE_CENTS,
        2_500 - FEE_CENTS,
        0,
    )


@pytest.mark.parametrize(
    ("body", "why"),
    [
        ({"iban": "DE89370400440532013001", "account_holder": "Ada"}, "IBAN"),
        ({"iban": "not an iban", "account_holder": "Ada"}, "IBAN"),
        ({"iban": IBAN}, "account_holder"),  # the rest is a bank transfer: a holder is needed
        ({}, "iban"),
        ({"iban": IBAN, "account_holder": "Ada", "donate_cents": 2_001}, "donation"),
        ({"iban": IBAN, "account_holder": "Ada", "donate_cents": "100"}, "donate_cents"),
        ({"iban": IBAN, "account_holder": "Ada", "donate_cents": 1.5}, "donate_cents"),
        ({"iban": IBAN, "account_holder": "Ada", "donate_cents": True}, "donate_cents"),
        ({"iban": IBAN, "account_holder": "Ada", "donate_cents": -1}, "donate_cents"),
        ({"iban": 12, "account_holder": "Ada"}, "iban"),
        ({"iban": IBAN, "account_holder": "A" * 71}, "account_holder"),
        ({"iban": IBAN, "account_holder": "Ada\n"}, "account_holder"),
        ({"iban": IBAN, "account_holder": "Ada", "email": "no-at-sign"}, "email"),
        ({"iban": IBAN, "account_holder": "Ada", "amount_cents": 1}, "unknown"),
    ],
)
def test_an_invalid_field_is_400_and_changes_nothing(
    base_url: str, ledger: Ledger, engine: Engine, body: dict[str, Any], why: str
) -> None:
    assert ledger.apply(recharge(UID, 2_000)).approved
    http = _logged_in(base_url)
    answer = request_payout(base_url, http, body)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error_code"] == "INVALID_REQUEST"
    assert why.lower() in answer.json()["error"].lower()
    assert _balance(engine) == 2_000
    assert _payout_rows(engine) == 0
    assert card(base_url, http).json()["status"] == "active"


def test_a_body_that_is_not_a_json_object_is_refused(base_url: str) -> None:
    http = _logged_in(base_url)
    url = f"{base_url}/api/portal/payout"
    as_form = http.post(url, data={"iban": IBAN}, headers=PORTAL_HEADERS, timeout=HTTP_TIMEOUT_S)
    assert as_form.status_code == 415
    as_list = http.post(url, json=[IBAN], headers=PORTAL_HEADERS, timeout=HTTP_TIMEOUT_S)
    assert as_list.status_code == 400


def test_no_session_is_401_and_a_cross_site_request_is_403(
    base_url: str, ledger: Ledger, engine: Engine
) -> None:
    assert ledger.apply(recharge(UID, 2_000)).approved
    assert request_payout(base_url, requests.Session(), {"iban": IBAN}).status_code == 401
    http = _logged_in(base_url)
    forged = http.post(
        f"{base_url}/api/portal/payout",
        json={"iban": IBAN, "account_holder": "Mallory"},
        headers={**PORTAL_HEADERS, "Origin": "https://evil.example"},
        timeout=HTTP_TIMEOUT_S,
    )
    assert forged.status_code == 403 and forged.json()["error_code"] == "CSRF_REFUSED"
    no_header = http.post(
        f"{base_url}/api/portal/payout",
        json={"iban": IBAN, "account_holder": "Mallory"},
        timeout=HTTP_TIMEOUT_S,
    )
    assert no_header.status_code == 403
    assert _balance(engine) == 2_000 and _payout_rows(engine) == 0


def test_no_balance_and_a_debt_are_409(base_url: str, ledger: Ledger, engine: Engine) -> None:
    http = _logged_in(base_url)
    empty = request_payout(base_url, http, {"iban": IBAN, "account_holder": "Ada"})
    assert empty.status_code == 409 and empty.json()["error_code"] == "PAYOUT_REFUSED"
    assert "balance" in empty.json()["error"]
    # A debt: an offline sale of 18.00 on a card holding 5.00 (a real offline order).
    ledger.add_kiosk("bar-1", PUBLIC_KEY, "bar")
    policy = OfflinePolicy(sale_max_cents=2_000, card_max_cents=4_000, kiosk_max_cents=1_500)
    version = ledger.issue_kiosk_config("bar-1", offline=policy)
    assert version is not None
    ledger.mark_config_published("bar-1", version)
    assert ledger.apply(recharge(UID, 500)).approved
    sold = ledger.apply(bar_order(UID, ("Beer", 3, 600), config_version=version, offline=True))
    assert sold.approved
    assert int(scalar(engine, "SELECT debt_cents FROM cards WHERE card_uid = :u", u=UID)) > 0
    indebted = request_payout(base_url, http, {"iban": IBAN, "account_holder": "Ada"})
    assert indebted.status_code == 409 and "debt" in indebted.json()["error"]
    assert _payout_rows(engine) == 0


def test_two_tabs_submitting_at_once_make_one_payout(
    base_url: str, ledger: Ledger, engine: Engine
) -> None:
    assert ledger.apply(recharge(UID, 2_000)).approved
    first_tab = _logged_in(base_url)
    second_tab = requests.Session()
    second_tab.cookies.update(first_tab.cookies)
    body = {"iban": IBAN, "account_holder": "Ada"}
    answers: list[requests.Response] = []
    start = threading.Barrier(2)

    def submit(http: requests.Session) -> None:
        start.wait(timeout=HTTP_TIMEOUT_S)
        answers.append(request_payout(base_url, http, body))

    threads = [threading.Thread(target=submit, args=(tab,)) for tab in (first_tab, second_tab)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=2 * HTTP_TIMEOUT_S)
    assert [answer.status_code for answer in answers] == [201, 201], [a.text for a in answers]
    assert answers[0].json() == answers[1].json(), "the second tab gets the first request"
    assert int(scalar(engine, "SELECT count(DISTINCT request_id) FROM payouts")) == 1
    # A third submit after both (a reload): still the same request, not a 409 or a second one.
    third = request_payout(base_url, first_tab, body)
    assert third.status_code == 201 and third.json() == answers[0].json()
    assert _balance(engine) == 0
    assert ledger.check() == []


def test_after_a_failed_transfer_the_returned_money_can_be_paid_out_again(
    base_url: str, ledger: Ledger, engine: Engine
) -> None:
    assert ledger.apply(recharge(UID, 2_000)).approved
    http = _logged_in(base_url)
    first = request_payout(base_url, http, {"iban": IBAN, "account_holder": "Ada"})
    assert first.status_code == 201
    store = PayoutStore(engine)
    [bank] = [part for part in store.list(card_uid=UID) if part.kind == "bank"]
    assert store.fail(bank.payout_id, "account closed") is not None
    assert card(base_url, http).json()["payouts"][0]["state"] == "failed"
    second = request_payout(base_url, http, {"iban": IBAN, "account_holder": "Ada Lovelace"})
    assert second.status_code == 201, second.text
    assert second.json()["payout_id"] != first.json()["payout_id"]
    assert second.json()["amount_cents"] == 2_000 - FEE_CENTS
    assert [p["state"] for p in card(base_url, http).json()["payouts"]] == ["pending", "failed"]


@pytest.fixture
def master_key(tmp_path: Path) -> tuple[bytes, Path]:
    key = generate_card_master_key()
    path = tmp_path / "card-master.key"
    save_card_master_key(key, path)
    return key, path


@pytest.fixture
def sun_base_url(
    api_database_url: str,
    fake_stripe: FakeStripe,
    api_ledger: Ledger,
    engine: Engine,
    master_key: tuple[bytes, Path],
) -> Iterator[str]:
    give_pin(engine)
    settings = make_settings(
        api_database_url,
        fake_stripe.base_url,
        festival_card_auth="sun",
        card_master_key_file=master_key[1],
    )
    with serve(create_app(settings, ledger=api_ledger, limits=portal_limits())) as url:
        yield url


def _tapped(base_url: str, master: bytes, counter: int) -> requests.Session:
    """A phone that touched the band: GET /t with a fresh SUN message, a `tap` session."""
    derivation = CardKeyDerivation(master)
    message = sun_message(
        derivation.meta_key, derivation.file_key(UID), bytes.fromhex(UID), counter
    )
    http = requests.Session()
    answer = http.get(
        f"{base_url}/t?picc_data={message.picc_data}&cmac={message.cmac}",
        allow_redirects=False,
        timeout=HTTP_TIMEOUT_S,
    )
    assert answer.status_code == 303, answer.text
    assert card(base_url, http).json()["session"]["kind"] == "tap"
    return http


def test_a_tap_session_needs_the_pin_to_send_money_away(
    sun_base_url: str,
    ledger: Ledger,
    engine: Engine,
    owner_engine: Engine,
    master_key: tuple[bytes, Path],
) -> None:
    assert ledger.apply(recharge(UID, 2_000)).approved
    phone = _tapped(sun_base_url, master_key[0], 1)
    body = {"iban": IBAN, "account_holder": "Ada"}
    without = request_payout(sun_base_url, phone, body)
    assert without.status_code == 403 and without.json()["error_code"] == "PIN_REQUIRED"
    wrong = request_payout(sun_base_url, phone, {**body, "pin": "WRONG123"})
    assert wrong.status_code == 403
    assert _balance(engine) == 2_000 and _payout_rows(engine) == 0
    # The wrong PIN counted like a failed login (the lockout is shared).
    failures = scalar(
        owner_engine,
        "SELECT cardinality(failed_at) FROM portal_login_failures WHERE card_uid = :u",
        u=UID,
    )
    assert failures == 1
    right = request_payout(sun_base_url, phone, {**body, "pin": PIN.lower()})
    assert right.status_code == 201, right.text
    assert right.json()["bank_transfer_cents"] == 2_000
    assert card(sun_base_url, phone).json()["session"]["kind"] == "tap", "still the tap session"
    open_sessions = scalar(
        owner_engine,
        "SELECT count(*) FROM portal_sessions WHERE card_uid = :u AND revoked_at IS NULL",
        u=UID,
    )
    assert open_sessions == 1, "the PIN check's own session was revoked at once"


def test_a_pin_session_needs_no_pin_again(
    sun_base_url: str, ledger: Ledger, engine: Engine
) -> None:
    assert ledger.apply(recharge(UID, 1_000)).approved
    http = _logged_in(sun_base_url)
    answer = request_payout(sun_base_url, http, {"iban": IBAN, "account_holder": "Ada"})
    assert answer.status_code == 201, answer.text


def _liability(client: TestClient) -> dict[str, Any]:
    answer = client.get("/api/reports/liability", headers=admin_headers())
    assert answer.status_code == 200, answer.text
    report: dict[str, Any] = answer.json()
    assert report["reconciled"] is True
    return report


def test_a_payout_request_moves_money_from_balances_to_pending_payouts(
    settings: CloudSettings,
    client: TestClient,
    post_event: PostEvent,
    api_ledger: Ledger,
    ledger: Ledger,
    engine: Engine,
) -> None:
    """The liability (GET /api/reports/liability) is the same before and after the request: the
    balance became payouts not yet paid (no donation, no fee here), and stays the same when the
    bank part fails and its money goes back to the card."""
    give_pin(engine)
    session = our_paid_session(ledger, UID, 1_000)
    assert post_event(checkout_session_completed_event(session)).status_code == 200
    assert ledger.apply(recharge(UID, 3_000)).approved
    assert ledger.apply(bar_order(UID, ("Beer", 2, 450))).approved
    before = _liability(client)
    assert before["card_balances_cents"] == 3_100 and before["payouts_pending_cents"] == 0
    with serve(create_app(settings, ledger=api_ledger, limits=portal_limits())) as base_url:
        answer = request_payout(
            base_url, _logged_in(base_url), {"iban": IBAN, "account_holder": "Ada"}
        )
    assert answer.status_code == 201, answer.text
    assert answer.json()["fee_cents"] == 0, "FESTIVAL_PAYOUT_FEE_CENTS defaults to 0"
    after = _liability(client)
    assert after["liability_cents"] == before["liability_cents"]
    assert after["card_balances_cents"] == 0 and after["payouts_pending_cents"] == 3_100
    store = PayoutStore(engine)
    [bank] = [part for part in store.list(card_uid=UID) if part.kind == "bank"]
    assert bank.amount_cents == 2_100
    assert store.fail(bank.payout_id, "account closed") is not None
    returned = _liability(client)
    assert returned["liability_cents"] == before["liability_cents"]
    assert returned["card_balances_cents"] == 2_100 and returned["payouts_pending_cents"] == 1_000


def test_the_liability_subtracts_debts(client: TestClient, ledger: Ledger) -> None:
    ledger.add_kiosk("bar-1", PUBLIC_KEY, "bar")
    policy = OfflinePolicy(sale_max_cents=2_000, card_max_cents=4_000, kiosk_max_cents=1_500)
    version = ledger.issue_kiosk_config("bar-1", offline=policy)
    assert version is not None
    ledger.mark_config_published("bar-1", version)
    assert ledger.apply(recharge(UID, 500)).approved
    sold = ledger.apply(bar_order(UID, ("Beer", 3, 600), config_version=version, offline=True))
    assert sold.approved
    report = _liability(client)
    assert (report["card_balances_cents"], report["debts_cents"]) == (0, 1_300)
    assert report["liability_cents"] == -1_300


@pytest.fixture
def own_stripe() -> Iterator[FakeStripe]:
    """A fake Stripe of this test alone: the shared one's request log is read by other tests."""
    fake = FakeStripe(port=0)
    fake.start()
    yield fake
    fake.stop()


def test_the_stripe_parts_of_a_portal_payout_are_refunded_at_once(
    api_database_url: str,
    own_stripe: FakeStripe,
    api_ledger: Ledger,
    engine: Engine,
    post_event: PostEvent,
) -> None:
    """The route wakes the API's refund runner: with the runner's own look an hour away, the
    Stripe part is refunded within seconds of the request (DESIGN.md: within 30 s)."""
    from tests.waiting import wait_until

    fake_stripe = own_stripe
    give_pin(engine)
    settings = make_settings(api_database_url, fake_stripe.base_url)
    limits = portal_limits(payout_refund_interval_s=3_600)
    with serve(create_app(settings, ledger=api_ledger, limits=limits), lifespan="on") as url:
        # A top-up the fake Stripe knows (it refunds only charges it made): checkout, payment.
        created = requests.post(
            f"{url}/api/topups/checkout",
            json={"card_uid": UID, "amount_cents": 2_500},
            timeout=HTTP_TIMEOUT_S,
        ).json()
        paid = fake_stripe.complete_session(created["session_id"])
        assert post_event(checkout_session_completed_event(paid)).status_code == 200
        answer = request_payout(url, _logged_in(url))
        assert answer.status_code == 201, answer.text
        assert answer.json()["stripe_refund_cents"] == 2_500
        wait_until(
            lambda: scalar(engine, "SELECT state FROM payouts WHERE kind = 'stripe'") == "paid",
            timeout_s=20,
            what="the Stripe part refunded",
        )
