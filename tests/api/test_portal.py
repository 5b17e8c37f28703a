"""The attendee's portal over real HTTP (uvicorn on loopback, requests as the browser, the real
ledger on PostgreSQL as festival_api): login right, wrong and unknown (one answer), the lockout
and its end, the per-client limit, cookie flags, sessions shared by two API instances, logout,
expiry, CSRF refusals, the history against the ledger, blocking from the portal."""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import pytest
import requests
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from cloud.api import create_app
from cloud.api.limits import ApiLimits
from cloud.ledger import Ledger
from cloud.portal import PortalStore, hash_pin
from cloud.settings import CloudSettings
from tests.api.conftest import LOOPBACK_PEER, TEST_LIMITS, make_settings, pos_headers, scalar
from tests.api.live import serve
from tests.waiting import wait_until

UID = "04A1B2C3D4E5F6"
PIN = "K7P2X9QM"
OTHER_UID = "04B1B2C3"
PORTAL_HEADERS = {"X-Festival-Portal": "1"}
HTTP_TIMEOUT_S = 10


def portal_limits(**changes: Any) -> ApiLimits:
    fields = {
        **TEST_LIMITS.__dict__,
        "portal_login_burst": 1000,
        "portal_login_refill_per_s": 1000.0,
        "portal_login_global_burst": 10_000,
        "portal_login_global_refill_per_s": 10_000.0,
    }
    fields.update(changes)
    return ApiLimits(**fields)


def give_pin(engine: Engine, uid: str = UID, pin: str = PIN) -> None:
    PortalStore(engine).set_pin_hash(uid, hash_pin(pin))


@contextmanager
def portal_server(settings: CloudSettings, ledger: Ledger, **limits: Any) -> Iterator[str]:
    app = create_app(settings, ledger=ledger, limits=portal_limits(**limits))
    with serve(app) as base_url:
        yield base_url


def login(
    base_url: str, session: requests.Session | None = None, uid: str = UID, pin: str = PIN
) -> requests.Response:
    http = session or requests.Session()
    return http.post(
        f"{base_url}/api/portal/login",
        json={"card_uid": uid, "pin": pin},
        headers=PORTAL_HEADERS,
        timeout=HTTP_TIMEOUT_S,
    )


def card(base_url: str, session: requests.Session) -> requests.Response:
    return session.get(f"{base_url}/api/portal/card", timeout=HTTP_TIMEOUT_S)


@pytest.fixture
def base_url(settings: CloudSettings, api_ledger: Ledger, engine: Engine) -> Iterator[str]:
    give_pin(engine)
    with portal_server(settings, api_ledger) as url:
        yield url


def _without_request_id(response: requests.Response) -> dict[str, Any]:
    body = dict(response.json())
    body.pop("request_id", None)
    return body


def test_login_right_wrong_and_unknown(base_url: str) -> None:
    http = requests.Session()
    assert card(base_url, http).status_code == 401, "no session yet"
    right = login(base_url, http)
    assert right.status_code == 200, right.text
    assert right.json()["card_uid"] == UID and right.json()["session_kind"] == "pin"
    cookie = right.headers["set-cookie"]
    assert cookie.startswith("festival_portal=")
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie
    assert "Max-Age=43200" in cookie and "Secure" not in cookie, "http portal: no Secure"
    assert right.headers["cache-control"] == "no-store"
    shown = card(base_url, http)
    assert shown.status_code == 200
    body = shown.json()
    assert body["card_uid"] == UID and body["balance_cents"] == 0 and body["debt_cents"] == 0
    assert body["status"] == "active" and body["payouts"] == [] and body["currency"] == "EUR"
    assert body["session"]["kind"] == "pin"
    # What a phone's keyboard sends: lower case, spaces in the number.
    assert login(base_url, uid="04 a1 b2 c3 d4 e5 f6", pin=PIN.lower()).status_code == 200

    wrong = login(base_url, pin="K7P2X9QN")
    unknown = login(base_url, uid="04EEEEEE", pin=PIN)
    malformed_pin = login(base_url, pin="no!")
    assert wrong.status_code == unknown.status_code == malformed_pin.status_code == 401
    assert _without_request_id(wrong) == _without_request_id(unknown)
    assert _without_request_id(wrong) == _without_request_id(malformed_pin)
    assert "set-cookie" not in wrong.headers and "set-cookie" not in unknown.headers
    assert login(base_url, uid="not-a-uid").status_code == 400


def test_an_unknown_card_takes_as_long_as_a_wrong_pin(base_url: str) -> None:
    """The same work for both (one scrypt check each): an unknown card is not faster. Several
    cards, so no lockout interferes; medians, so one slow moment of the machine does not."""
    wrong: list[float] = []
    unknown: list[float] = []
    for index in range(4):  # four failures: the card stays below the lockout
        for uid, pin, times in (
            (UID, f"WRONG{index}A", wrong),
            (f"04EEEE{index:02d}", PIN, unknown),
        ):
            started = time.perf_counter()
            assert login(base_url, uid=uid, pin=pin).status_code == 401
            times.append(time.perf_counter() - started)
    ratio = statistics.median(unknown) / statistics.median(wrong)
    assert 0.5 < ratio < 2.0, (wrong, unknown)


def test_five_failures_lock_the_card_the_right_pin_too_until_the_window_passes(
    settings: CloudSettings, api_ledger: Ledger, engine: Engine
) -> None:
    give_pin(engine)
    # The window is injectable: 3 s here instead of 15 minutes, so its end is waited for.
    with portal_server(settings, api_ledger, portal_lockout_window_s=3) as base_url:
        for attempt in range(5):
            assert login(base_url, pin=f"WRONG{attempt}").status_code == 401
        locked = login(base_url)
        assert locked.status_code == 429, "the right PIN is refused while locked"
        assert locked.json()["error_code"] == "RATE_LIMITED"
        assert 1 <= int(locked.headers["retry-after"]) <= 3
        assert "set-cookie" not in locked.headers
        # Another card is not affected.
        give_pin(engine, OTHER_UID, "OTHER123")
        assert login(base_url, uid=OTHER_UID, pin="OTHER123").status_code == 200
        wait_until(
            lambda: login(base_url).status_code == 200,
            timeout_s=15,
            what="the lockout to end",
        )


def test_an_unknown_card_is_locked_out_the_same_way(base_url: str) -> None:
    for attempt in range(5):
        assert login(base_url, uid="04DDDDDD", pin=f"GUESS{attempt}").status_code == 401
    assert login(base_url, uid="04DDDDDD", pin="GUESS9").status_code == 429


def test_the_per_client_limit_applies_across_cards(
    settings: CloudSettings, api_ledger: Ledger, engine: Engine
) -> None:
    give_pin(engine)
    with portal_server(
        settings, api_ledger, portal_login_burst=3, portal_login_refill_per_s=0.001
    ) as base_url:
        answers = [
            login(base_url, uid=f"04CCCC{n:02d}", pin="GUESS1").status_code for n in range(3)
        ]
        assert answers == [401, 401, 401]
        refused = login(base_url)
        assert refused.status_code == 429 and "address" in refused.json()["error"]
        assert int(refused.headers["retry-after"]) >= 1


def test_the_cookie_is_secure_with_an_https_portal(
    api_database_url: str, fake_stripe: Any, api_ledger: Ledger, engine: Engine
) -> None:
    give_pin(engine)
    settings = make_settings(
        api_database_url, fake_stripe.base_url, festival_portal_url="https://pay.festival.test"
    )
    app = create_app(settings, ledger=api_ledger, limits=portal_limits())
    with TestClient(app, base_url="https://pay.festival.test", client=LOOPBACK_PEER) as client:
        answer = client.post(
            "/api/portal/login", json={"card_uid": UID, "pin": PIN}, headers=PORTAL_HEADERS
        )
        assert answer.status_code == 200, answer.text
        cookie = answer.headers["set-cookie"]
        assert cookie.startswith("__Host-festival_portal=")
        assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie
        assert "Domain" not in cookie
        assert client.get("/api/portal/card").status_code == 200


def test_two_api_instances_share_sessions_and_lockouts(
    settings: CloudSettings, api_database_url: str, engine: Engine
) -> None:
    from cloud.api.app import build_ledger

    give_pin(engine)
    second_settings = settings.model_copy(update={"database_url": api_database_url})
    with ExitStack() as stack:
        # Two apps, each with its own engine (its own connection pool), as two processes.
        first = stack.enter_context(
            serve(create_app(settings, ledger=build_ledger(settings), limits=portal_limits()))
        )
        second = stack.enter_context(
            serve(
                create_app(
                    second_settings, ledger=build_ledger(second_settings), limits=portal_limits()
                )
            )
        )
        http = requests.Session()
        assert login(first, http).status_code == 200
        token = http.cookies.get("festival_portal")
        other = requests.Session()
        other.cookies.set("festival_portal", token)
        assert card(second, other).status_code == 200, "the other process knows the session"
        assert (
            other.post(
                f"{second}/api/portal/logout", headers=PORTAL_HEADERS, timeout=HTTP_TIMEOUT_S
            ).status_code
            == 200
        )
        assert card(first, http).status_code == 401, "logged out everywhere"
        for attempt in range(3):
            assert login(first, pin=f"WRONG{attempt}").status_code == 401
        for attempt in range(2):
            assert login(second, pin=f"WRONG{attempt + 3}").status_code == 401
        assert login(first).status_code == 429, "five failures, counted across processes"


def test_logout_ends_the_session_and_clears_the_cookie(base_url: str) -> None:
    http = requests.Session()
    assert login(base_url, http).status_code == 200
    token = http.cookies.get("festival_portal")
    answer = http.post(f"{base_url}/api/portal/logout", headers=PORTAL_HEADERS, timeout=10)
    assert answer.status_code == 200
    assert 'festival_portal=""' in answer.headers["set-cookie"]
    assert "festival_portal" not in http.cookies
    replay = requests.Session()
    replay.cookies.set("festival_portal", token)
    assert card(base_url, replay).status_code == 401, "the old token is revoked, not just forgotten"
    assert (
        requests.post(
            f"{base_url}/api/portal/logout", headers=PORTAL_HEADERS, timeout=10
        ).status_code
        == 200
    ), "logging out twice is harmless"


def test_a_session_expires(settings: CloudSettings, api_ledger: Ledger, engine: Engine) -> None:
    give_pin(engine)
    with portal_server(settings, api_ledger, portal_session_ttl_s=2) as base_url:
        http = requests.Session()
        assert login(base_url, http).status_code == 200
        token = http.cookies.get("festival_portal")
        assert card(base_url, http).status_code == 200
        # The browser drops the cookie after Max-Age; the database refuses the token after it
        # too (a copied cookie does not outlive its session).
        replay = requests.Session()
        replay.cookies.set("festival_portal", token)
        wait_until(
            lambda: card(base_url, replay).status_code == 401,
            timeout_s=15,
            what="the session to expire",
        )


def test_state_changing_routes_refuse_cross_site_requests(
    base_url: str, api_ledger: Ledger
) -> None:
    body = {"card_uid": UID, "pin": PIN}
    url = f"{base_url}/api/portal/login"
    for headers in (
        {},
        {"X-Festival-Portal": "yes"},
        {**PORTAL_HEADERS, "Origin": "https://evil.example"},
        {**PORTAL_HEADERS, "Sec-Fetch-Site": "cross-site"},
    ):
        answer = requests.post(url, json=body, headers=headers, timeout=10)
        assert answer.status_code == 403, headers
        assert answer.json()["error_code"] == "CSRF_REFUSED"
    same_origin = requests.post(
        url, json=body, headers={**PORTAL_HEADERS, "Origin": base_url}, timeout=10
    )
    assert same_origin.status_code == 200
    http = requests.Session()
    assert login(base_url, http).status_code == 200
    for path in ("/api/portal/block", "/api/portal/logout"):
        assert http.post(f"{base_url}{path}", timeout=10).status_code == 403
        assert (
            http.post(
                f"{base_url}{path}", headers={**PORTAL_HEADERS, "Origin": "null"}, timeout=10
            ).status_code
            == 403
        )
    assert card(base_url, http).status_code == 200, "the refused logout did nothing"
    shown = api_ledger.card(UID)
    assert shown is not None and shown.status == "active", "the refused block did nothing"


def _seed_history(client: TestClient) -> None:
    """A cash top-up and two bar orders through the seed-compatible POS endpoints."""
    answer = client.post(
        "/functions/v1/process-checkpoint-recharge",
        json={
            "card_id": UID,
            "amount": 30,
            "payment_method": "cash",
            "staff_id": "anna",
            "client_request_id": "portal-topup-1",
        },
        headers=pos_headers(),
    )
    assert answer.status_code == 200, answer.text
    for number, items in enumerate(
        (
            [{"name": "Beer", "quantity": 2, "unit_price": 4.5}],
            [{"name": "Fries", "quantity": 1, "unit_price": 5.0}],
        )
    ):
        total = sum(item["quantity"] * item["unit_price"] for item in items)  # type: ignore[operator]
        answer = client.post(
            "/functions/v1/process-bar-order",
            json={
                "card_id": UID,
                "items": items,
                "total_amount": total,
                "client_request_id": f"portal-order-{number}",
            },
            headers=pos_headers(),
        )
        assert answer.status_code == 200, answer.text


def test_the_history_matches_the_ledger(
    app: FastAPI, client: TestClient, base_url: str, ledger: Ledger
) -> None:
    _seed_history(client)
    http = requests.Session()
    assert login(base_url, http).status_code == 200
    body = card(base_url, http).json()
    expected = ledger.card_transactions(UID, limit=50)
    assert [t["transaction_id"] for t in body["transactions"]] == [
        t["transaction_id"] for t in expected
    ]
    ledger_amounts = [t["amount_cents"] for t in expected]
    assert [t["amount_cents"] for t in body["transactions"]] == ledger_amounts
    assert ledger_amounts == [-500, -900, 3000]
    assert body["balance_cents"] == 3000 - 900 - 500
    fries, beer, topup = body["transactions"]
    assert fries["kind"] == "bar_order" and fries["items"][0]["name"] == "Fries"
    assert beer["items"] == [
        {
            "name": "Beer",
            "sku": None,
            "quantity": 2,
            "unit_price_cents": 450,
            "line_total_cents": 900,
            "is_deposit": False,
            "is_return": False,
        }
    ]
    assert beer["kiosk_id"] == fries["kiosk_id"] == beer["where"]
    assert topup["kind"] == "checkpoint_recharge" and topup["payment_method"] == "cash"
    assert topup["where"] and topup["at"].endswith("Z")


def test_the_holder_blocks_the_band_and_the_deny_list_follows(
    base_url: str, ledger: Ledger, engine: Engine
) -> None:
    http = requests.Session()
    assert (
        requests.post(
            f"{base_url}/api/portal/block", headers=PORTAL_HEADERS, timeout=10
        ).status_code
        == 401
    ), "no session, no block"
    assert login(base_url, http).status_code == 200
    answer = http.post(f"{base_url}/api/portal/block", headers=PORTAL_HEADERS, timeout=10)
    assert answer.status_code == 200 and answer.json() == {"card_uid": UID, "status": "blocked"}
    shown = ledger.card(UID)
    assert shown is not None and shown.status == "blocked"
    assert "reported lost by the holder" in str(
        scalar(engine, "SELECT blocked_reason FROM cards WHERE card_uid = :u", u=UID)
    )
    assert card(base_url, http).json()["status"] == "blocked", "the page still opens"
    # What the publisher's loop does next (B1): a new deny-list version with the card on it.
    assert ledger.denylist_stale()
    assert ledger.issue_denylist() is not None
    issued = ledger.unpublished_denylist()
    assert issued is not None and UID in issued.card_uids
