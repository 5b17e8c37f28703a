"""The attendee's portal (DESIGN.md "Attendee portal and payouts", issue 16 §1): the page at
GET /portal and its JSON API under /api/portal/.

Logging in takes the wristband's UID and the PIN printed on it. Every answer to a wrong pair is
the same 401, for an unknown card too, after the same work (one scrypt check, the same two
database calls: cloud/portal.py). The per-card lockout (5 failures within 15 minutes lock the card
for 15 minutes, the right PIN too) and the per-client rate limit live in PostgreSQL, like the
sessions, so any number of API processes behave as one.

The session is an opaque random token in a cookie: HttpOnly (no script reads it), SameSite=Strict
(no other site's page sends it), Secure when FESTIVAL_PORTAL_URL is https (then named with the
`__Host-` prefix, so no other host of the domain can set it), expiring with the session.

CSRF: every state-changing route (login, logout, block) needs, besides the SameSite cookie, the
header `X-Festival-Portal: 1` — a cross-site form cannot send a header, and a cross-site script
could only after a CORS preflight this API never grants — and, when the browser sends Origin or
Sec-Fetch-Site, an Origin of the portal itself and no `cross-site`. Login is protected too, so no
other site can log a visitor into a card of its choosing.

A session records how it was opened: `pin`, or `tap` (a genuine wristband touched by a phone,
GET /t). Both can look and block; a payout (POST /api/portal/payout) also needs the PIN from a
`tap` session, checked like a login (the same lockout: a tapped phone cannot guess PINs faster
than a login could).

A payout's request key is derived from the card's state, not sent by the page: `portal:` and the
newest transaction on the card that is not a payout. Two tabs (two concurrent POSTs, or the
second after the first) name the same key, so sp_payout_request returns the first request; money
that reaches the card later (a failed part coming back, a late credit) is a new transaction,
hence a new key and a new request.
"""

from __future__ import annotations

import logging
import re
import threading
import unicodedata
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response

from cloud.api.bodies import json_body, json_request_body
from cloud.api.errors import (
    RATE_LIMITED,
    SERVICE_UNAVAILABLE,
    UNAUTHORIZED,
    ApiError,
)
from cloud.api.limits import (
    ACCOUNT_HOLDER_LENGTH_MAX,
    DONATION_CENTS_MAX,
    EMAIL_LENGTH_MAX,
    PORTAL_BLOCK_REASON,
    PORTAL_CSRF_HEADER,
    PORTAL_FIELD_LENGTH_MAX,
    PORTAL_PIN_CHECK_WAIT_S,
    PORTAL_PIN_CHECKS_IN_FLIGHT_MAX,
    PORTAL_TRANSACTIONS_MAX,
    ApiLimits,
)
from cloud.api.pages import STATIC_DIR, page_headers
from cloud.api.ratelimit import retry_after_header
from cloud.api.services import RateLimiter, Services, services_of
from cloud.api.topups import client_key, normalise_wristband_number
from cloud.database import IntegrityError
from cloud.limits import PIN_LENGTH_MAX
from cloud.payouts import PayoutInvalid, PayoutRefused, PayoutStore, valid_iban
from cloud.portal import PortalStore, check_pin, new_session_token
from protocol.errors import ErrorCode
from protocol.limits import CARD_UID_PATTERN

log = logging.getLogger("cloud.api.portal")

PORTAL_HEADERS: Final = page_headers(
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)
COOKIE_NAME: Final = "festival_portal"
SECURE_COOKIE_NAME: Final = "__Host-festival_portal"
# secrets.token_urlsafe(32): 43 characters of base64url.
_TOKEN_SHAPE: Final = re.compile(r"\A[A-Za-z0-9_-]{43}\Z")
WRONG_PAIR: Final = "wrong wristband number or PIN"


@dataclass
class PortalContext:
    """What the portal's routes share; built by create_app, hung on app.state.portal."""

    store: PortalStore
    login_limiter: RateLimiter
    limits: ApiLimits
    portal_url: str
    currency: str
    # A threading semaphore: the app may serve from more than one event loop (tests do).
    pin_checks: threading.BoundedSemaphore
    payouts: PayoutStore | None = None
    # FESTIVAL_PAYOUT_FEE_CENTS
    payout_fee_cents: int = 0

    @property
    def secure(self) -> bool:
        return urlsplit(self.portal_url).scheme == "https"

    @property
    def cookie_name(self) -> str:
        return SECURE_COOKIE_NAME if self.secure else COOKIE_NAME

    @property
    def origin(self) -> str:
        parts = urlsplit(self.portal_url)
        return f"{parts.scheme}://{parts.netloc}".lower()


def build_context(
    store: PortalStore,
    login_limiter: RateLimiter,
    limits: ApiLimits,
    *,
    portal_url: str,
    currency: str,
    payouts: PayoutStore | None = None,
    payout_fee_cents: int = 0,
) -> PortalContext:
    return PortalContext(
        store=store,
        login_limiter=login_limiter,
        limits=limits,
        portal_url=portal_url,
        currency=currency,
        pin_checks=threading.BoundedSemaphore(PORTAL_PIN_CHECKS_IN_FLIGHT_MAX),
        payouts=payouts,
        payout_fee_cents=payout_fee_cents,
    )


def portal_of(request: Request) -> PortalContext:
    context = request.app.state.portal
    assert isinstance(context, PortalContext)
    return context


# --- CSRF, sessions ------------------------------------------------------------------------------


def _own_origin(request: Request) -> str:
    return f"{request.url.scheme}://{request.url.netloc}".lower()


def require_same_origin(request: Request, portal: PortalContext) -> None:
    """Refuse a state-changing request that another site could have made (module docstring)."""
    if request.headers.get(PORTAL_CSRF_HEADER) != "1":
        raise ApiError(
            403,
            "CSRF_REFUSED",
            f"send the header {PORTAL_CSRF_HEADER}: 1 (the portal page does)",
        )
    if request.headers.get("sec-fetch-site", "same-origin") == "cross-site":
        raise ApiError(403, "CSRF_REFUSED", "a cross-site request")
    origin = request.headers.get("origin")
    if origin is not None and origin.lower() not in {portal.origin, _own_origin(request)}:
        raise ApiError(403, "CSRF_REFUSED", "a request from another origin")


def session_token(request: Request, portal: PortalContext) -> str:
    token = request.cookies.get(portal.cookie_name)
    if token is None or not _TOKEN_SHAPE.match(token):
        raise ApiError(401, UNAUTHORIZED, "not logged in")
    return token


def _set_cookie(response: Response, portal: PortalContext, token: str) -> None:
    response.set_cookie(
        portal.cookie_name,
        token,
        max_age=portal.limits.portal_session_ttl_s,
        path="/",
        secure=portal.secure,
        httponly=True,
        samesite="strict",
    )


def _clear_cookie(response: Response, portal: PortalContext) -> None:
    response.delete_cookie(
        portal.cookie_name, path="/", secure=portal.secure, httponly=True, samesite="strict"
    )


def _no_store(response: Response) -> Response:
    response.headers["Cache-Control"] = "no-store"
    return response


# --- login ---------------------------------------------------------------------------------------


def _invalid(message: str) -> ApiError:
    return ApiError(400, ErrorCode.INVALID_REQUEST.value, message)


async def _credentials(request: Request) -> tuple[str, str]:
    document = await json_body(request)
    if type(document) is not dict or set(document) != {"card_uid", "pin"}:
        raise _invalid('body must be {"card_uid": "...", "pin": "..."}')
    card_uid, pin = document["card_uid"], document["pin"]
    if type(card_uid) is not str or type(pin) is not str:
        raise _invalid("card_uid and pin must be strings")
    if len(card_uid) > PORTAL_FIELD_LENGTH_MAX or len(pin) > PORTAL_FIELD_LENGTH_MAX:
        raise _invalid("card_uid or pin too long")
    card_uid = normalise_wristband_number(card_uid)
    if not CARD_UID_PATTERN.match(card_uid):
        raise _invalid("card_uid must be 8, 14 or 20 hex digits (the number on the wristband)")
    # The PIN is upper case; a phone's keyboard starts in lower case.
    return card_uid, pin.strip().upper()[: PIN_LENGTH_MAX + 1]


async def _take_login_token(request: Request, portal: PortalContext) -> None:
    decision = await run_in_threadpool(portal.login_limiter.take, client_key(request), 0.0)
    if not decision.allowed:
        services_of(request).metrics.rate_limited.labels("/api/portal/login").inc()
        raise ApiError(
            429,
            RATE_LIMITED,
            "too many logins from this address, try again shortly",
            headers={"Retry-After": retry_after_header(decision)},
        )


def _check_pin_bounded(portal: PortalContext, pin: str, stored: str | None) -> bool:
    """In a worker thread: wait for one of the few slots, then the slow check."""
    if not portal.pin_checks.acquire(timeout=PORTAL_PIN_CHECK_WAIT_S):
        raise ApiError(503, SERVICE_UNAVAILABLE, "busy, try again", headers={"Retry-After": "1"})
    try:
        return check_pin(pin, stored)
    finally:
        portal.pin_checks.release()


async def _check_pin(portal: PortalContext, pin: str, stored: str | None) -> bool:
    return await run_in_threadpool(_check_pin_bounded, portal, pin, stored)


async def _pin_login(
    services: Services, portal: PortalContext, card_uid: str, pin: str, token: str
) -> Any:
    """The card's PIN checked under the per-card lockout (429 while locked): the session
    ``token`` opened and its expiry when right, None when wrong (a failure counted)."""
    limits = portal.limits
    lockout = {
        "window_s": limits.portal_lockout_window_s,
        "failures_max": limits.portal_lockout_failures_max,
    }
    start = await services.ledger_call(
        "portal_login_begin", portal.store.login_begin, card_uid, **lockout
    )
    if not start.allowed:
        log.warning("portal login refused: card locked", extra={"context": {"card_uid": card_uid}})
        raise ApiError(
            429,
            RATE_LIMITED,
            "too many wrong PINs for this wristband, try again later",
            headers={"Retry-After": str(max(1, start.retry_after_s))},
        )
    ok = await _check_pin(portal, pin, start.pin_hash)
    return await services.ledger_call(
        "portal_login_finish",
        portal.store.login_finish,
        card_uid,
        ok=ok,
        token=token,
        ttl_s=limits.portal_session_ttl_s,
        **lockout,
    )


async def login(request: Request) -> Response:
    services = services_of(request)
    portal = portal_of(request)
    require_same_origin(request, portal)
    await _take_login_token(request, portal)
    card_uid, pin = await _credentials(request)
    token = new_session_token()
    expires_at = await _pin_login(services, portal, card_uid, pin, token)
    if expires_at is None:
        log.info("portal login failed", extra={"context": {"card_uid": card_uid}})
        raise ApiError(401, UNAUTHORIZED, WRONG_PAIR)
    log.info("portal login", extra={"context": {"card_uid": card_uid}})
    response = JSONResponse(
        {"card_uid": card_uid, "session_kind": "pin", "expires_at": _iso(expires_at)}
    )
    _set_cookie(response, portal, token)
    return _no_store(response)


def _iso(moment: Any) -> str:
    return str(moment.isoformat()).replace("+00:00", "Z")


async def logout(request: Request) -> Response:
    services = services_of(request)
    portal = portal_of(request)
    require_same_origin(request, portal)
    token = request.cookies.get(portal.cookie_name)
    if token is not None and _TOKEN_SHAPE.match(token):
        await services.ledger_call("portal_logout", portal.store.logout, token)
    response = JSONResponse({"logged_out": True})
    _clear_cookie(response, portal)
    return _no_store(response)


# --- with a session ------------------------------------------------------------------------------


async def card(request: Request) -> Response:
    services = services_of(request)
    portal = portal_of(request)
    token = session_token(request, portal)
    document = await services.ledger_call(
        "portal_card", portal.store.card, token, transactions_max=PORTAL_TRANSACTIONS_MAX
    )
    if document is None:
        raise ApiError(401, UNAUTHORIZED, "not logged in (or the session expired)")
    session = {
        "kind": document.pop("session_kind"),
        "expires_at": document.pop("session_expires_at"),
    }
    payouts: list[dict[str, Any]] = []
    if portal.payouts is not None:
        payouts = await services.ledger_call(
            "portal_payouts", portal.payouts.card_requests, document["card_uid"]
        )
    body = {
        **document,
        "payouts": payouts,
        # What a payout would keep (FESTIVAL_PAYOUT_FEE_CENTS): the page says so before.
        "payout_fee_cents": portal.payout_fee_cents,
        "currency": portal.currency,
        "session": session,
    }
    return _no_store(JSONResponse(body))


async def block(request: Request) -> Response:
    services = services_of(request)
    portal = portal_of(request)
    require_same_origin(request, portal)
    token = session_token(request, portal)
    card_uid = await services.ledger_call(
        "portal_block", portal.store.block, token, PORTAL_BLOCK_REASON
    )
    if card_uid is None:
        raise ApiError(401, UNAUTHORIZED, "not logged in (or the session expired)")
    log.warning(
        "card blocked by its holder",
        extra={"context": {"card_uid": card_uid, "reason": PORTAL_BLOCK_REASON}},
    )
    return _no_store(JSONResponse({"card_uid": card_uid, "status": "blocked"}))


# --- the payout ----------------------------------------------------------------------------------

PAYOUT_FIELDS: Final = frozenset({"iban", "account_holder", "email", "donate_cents", "pin"})
_EMAIL_SHAPE: Final = re.compile(r"\A[^@\s]{1,64}@[^@\s]+\.[^@\s.]+\Z")
# Transactions read to find the newest one that is not a payout: a payout needs a balance, which
# only another transaction brings, so the second newest at the latest is one.
_KEY_TRANSACTIONS: Final = 2


@dataclass(frozen=True, slots=True)
class PayoutForm:
    iban: str | None
    account_holder: str | None
    email: str | None
    donate_cents: int
    pin: str | None


def _optional_string(document: dict[str, Any], name: str, length_max: int) -> str | None:
    value = document.get(name)
    if value is None:
        return None
    if type(value) is not str:
        raise _invalid(f"{name} must be a string")
    if any(unicodedata.category(char).startswith("C") for char in value):
        raise _invalid(f"{name} has control characters")
    value = value.strip()
    if len(value) > length_max:
        raise _invalid(f"{name} is longer than {length_max} characters")
    return value or None


async def _payout_form(request: Request) -> PayoutForm:
    """The body, every field checked (400 otherwise, before anything is read or written)."""
    document = await json_body(request)
    if type(document) is not dict:
        raise _invalid("body must be a JSON object")
    unknown = sorted(set(document) - PAYOUT_FIELDS)
    if unknown:
        raise _invalid(f"unknown fields: {', '.join(unknown)}")
    iban = _optional_string(document, "iban", PORTAL_FIELD_LENGTH_MAX)
    if iban is not None:
        compact = valid_iban(iban)
        if compact is None:
            raise _invalid("the IBAN is not valid (check its digits)")
        iban = compact
    holder = _optional_string(document, "account_holder", ACCOUNT_HOLDER_LENGTH_MAX)
    email = _optional_string(document, "email", EMAIL_LENGTH_MAX)
    if email is not None and not _EMAIL_SHAPE.match(email):
        raise _invalid("the email address is not valid")
    donate = document.get("donate_cents")
    if donate is None:
        donate = 0
    if type(donate) is not int or not 0 <= donate <= DONATION_CENTS_MAX:
        raise _invalid("donate_cents must be a whole number of cents, 0 or more")
    pin = document.get("pin")
    if pin is not None:
        if type(pin) is not str or len(pin) > PORTAL_FIELD_LENGTH_MAX:
            raise _invalid("pin must be a string")
        pin = pin.strip().upper()[: PIN_LENGTH_MAX + 1]
    return PayoutForm(iban, holder, email, donate, pin)


async def _check_payout_pin(
    request: Request, portal: PortalContext, card_uid: str, pin: str
) -> bool:
    """The PIN of a `tap` session's payout, checked like a login: the same per-card lockout
    (429 while locked) and per-client limit, the same slow check. A right PIN opens a throwaway
    `pin` session (what sp_portal_login_finish does), revoked at once: the tap session stays
    what it was."""
    services = services_of(request)
    # The per-client limit of logins too: a PIN check is a login attempt.
    await _take_login_token(request, portal)
    throwaway = new_session_token()
    expires_at = await _pin_login(services, portal, card_uid, pin, throwaway)
    if expires_at is not None:
        await services.ledger_call("portal_logout", portal.store.logout, throwaway)
        return True
    return False


def _request_key(document: dict[str, Any]) -> str:
    for transaction in document["transactions"]:
        if transaction["kind"] != "payout":
            return f"portal:{transaction['transaction_id']}"
    return "portal:none"


async def payout(request: Request) -> Response:
    services = services_of(request)
    portal = portal_of(request)
    require_same_origin(request, portal)
    token = session_token(request, portal)
    form = await _payout_form(request)
    if portal.payouts is None:
        raise ApiError(503, SERVICE_UNAVAILABLE, "payouts are not available")
    document = await services.ledger_call(
        "portal_card", portal.store.card, token, transactions_max=_KEY_TRANSACTIONS
    )
    if document is None:
        raise ApiError(401, UNAUTHORIZED, "not logged in (or the session expired)")
    card_uid: str = document["card_uid"]
    if document["session_kind"] != "pin":
        if form.pin is None:
            raise ApiError(403, "PIN_REQUIRED", "enter the PIN printed on the wristband")
        if not await _check_payout_pin(request, portal, card_uid, form.pin):
            log.info("portal payout: wrong PIN", extra={"context": {"card_uid": card_uid}})
            raise ApiError(403, "PIN_REQUIRED", "wrong PIN")
    try:
        outcome = await services.ledger_call(
            "payout_request",
            portal.payouts.request,
            card_uid,
            iban=form.iban,
            account_holder=form.account_holder,
            donate_cents=form.donate_cents,
            fee_cents=portal.payout_fee_cents,
            request_key=_request_key(document),
        )
    except PayoutRefused as refused:
        raise ApiError(409, "PAYOUT_REFUSED", str(refused)) from None
    except PayoutInvalid as invalid:
        raise _invalid(str(invalid)) from None
    except IntegrityError:
        # sp_payout_request's check_violation: a bank part is left and the IBAN or the holder
        # is missing. Its transaction rolled back: nothing changed.
        raise _invalid(
            "the rest goes by bank transfer: it needs a valid iban and the account_holder"
        ) from None
    status = "pending"
    if outcome["status"] == "replayed":
        parts = await services.ledger_call("portal_payouts", portal.payouts.card_requests, card_uid)
        status = next(
            (p["state"] for p in parts if p["payout_id"] == str(outcome["payout_id"])), status
        )
    log.warning(
        "payout requested by the holder",
        extra={
            "context": {
                "card_uid": card_uid,
                "payout_id": str(outcome["payout_id"]),
                "amount_cents": outcome["amount_cents"],
                "replayed": outcome["status"] == "replayed",
            }
        },
    )
    body = {
        "payout_id": str(outcome["payout_id"]),
        "status": status,
        **{
            name: int(outcome[name])
            for name in (
                "amount_cents",
                "donation_cents",
                "fee_cents",
                "stripe_refund_cents",
                "bank_transfer_cents",
            )
        },
    }
    runner = getattr(request.app.state, "payout_refunds", None)
    if runner is not None and body["stripe_refund_cents"]:
        runner.wake()  # its Stripe parts are refunded now, not at the runner's next look
    return _no_store(JSONResponse(body, status_code=201))


def portal_page() -> HTMLResponse:
    page = (STATIC_DIR / "portal.html").read_text(encoding="utf-8")
    return HTMLResponse(page, headers=PORTAL_HEADERS)


# --- the routes ----------------------------------------------------------------------------------

_CSRF_RESPONSES: dict[int | str, dict[str, Any]] = {
    403: {"description": f"no {PORTAL_CSRF_HEADER}: 1 header, or another site's request"},
}
_SESSION_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"description": "no valid session cookie"},
}


def router() -> APIRouter:
    routes = APIRouter(tags=["portal"])
    routes.add_api_route(
        "/portal",
        portal_page,
        methods=["GET"],
        summary="The attendee's page: balance, history, block a lost wristband",
        response_class=HTMLResponse,
    )
    routes.add_api_route(
        "/api/portal/login",
        login,
        methods=["POST"],
        summary="Log in with the wristband's number and PIN (sets the session cookie)",
        response_class=JSONResponse,
        openapi_extra={
            "requestBody": json_request_body(
                {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["card_uid", "pin"],
                    "properties": {
                        "card_uid": {"type": "string", "maxLength": 64},
                        "pin": {"type": "string", "maxLength": 64},
                    },
                }
            ),
            "responses": {
                "400": {"description": "malformed body or wristband number"},
                "401": {"description": "wrong wristband number or PIN (the same for both)"},
                "415": {"description": "not JSON"},
                "429": {"description": "this card is locked out, or this client sent too many"},
                **{str(code): value for code, value in _CSRF_RESPONSES.items()},
            },
        },
    )
    routes.add_api_route(
        "/api/portal/logout",
        logout,
        methods=["POST"],
        summary="End the session (clears the cookie)",
        response_class=JSONResponse,
        responses=_CSRF_RESPONSES,
    )
    routes.add_api_route(
        "/api/portal/card",
        card,
        methods=["GET"],
        summary="The session's card: balance, debt, status, history (newest first)",
        response_class=JSONResponse,
        responses=_SESSION_RESPONSES,
    )
    routes.add_api_route(
        "/api/portal/block",
        block,
        methods=["POST"],
        summary="The holder reports the wristband lost: blocked at once",
        response_class=JSONResponse,
        responses={**_SESSION_RESPONSES, **_CSRF_RESPONSES},
    )
    routes.add_api_route(
        "/api/portal/payout",
        payout,
        methods=["POST"],
        summary="Pay the whole balance out: donation, fee, Stripe refunds, bank transfer",
        response_class=JSONResponse,
        status_code=201,
        openapi_extra={
            "requestBody": json_request_body(
                {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "iban": {"type": "string", "maxLength": 64},
                        "account_holder": {
                            "type": "string",
                            "maxLength": ACCOUNT_HOLDER_LENGTH_MAX,
                        },
                        "email": {"type": "string", "maxLength": EMAIL_LENGTH_MAX},
                        "donate_cents": {"type": "integer", "minimum": 0},
                        "pin": {"type": "string", "maxLength": 64},
                    },
                }
            ),
            "responses": {
                "201": {"description": "the payout request (a repeated one: the first)"},
                "400": {"description": "an invalid field; nothing changed"},
                "403": {"description": "a tap session without the right PIN, or CSRF"},
                "409": {"description": "no balance, a debt, an open dispute, an unfinished payout"},
                "415": {"description": "not JSON"},
                "429": {"description": "this card is locked out (wrong PINs)"},
                **{str(code): value for code, value in _SESSION_RESPONSES.items()},
            },
        },
    )
    return routes
