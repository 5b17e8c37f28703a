"""Online top-ups: POST /api/topups/checkout (public JSON API) and GET/POST /topup (a plain page).

The top-up is recorded as pending *before* Stripe is called, under an id we make; that id is the
Stripe idempotency key, so a retry can never open a second session for it. Public and
unauthenticated by design (attendees use it), hence strict validation and a per-client rate
limit; it never moves money itself (only the signed webhook does).
"""

from __future__ import annotations

import html
import logging
import re
import uuid
from decimal import Decimal, InvalidOperation
from string import Template
from typing import Any, Final
from urllib.parse import parse_qsl

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from cloud.api.bodies import json_request_body, parsed_body, require_json
from cloud.api.errors import (
    NOT_CONFIGURED,
    PAYMENT_PROVIDER_ERROR,
    RATE_LIMITED,
    UNSUPPORTED_MEDIA_TYPE,
    ApiError,
)
from cloud.api.limits import CHECKOUT_AMOUNT_CENTS_MIN, TOPUP_FORM_FIELD_LENGTH_MAX
from cloud.api.pages import STATIC_DIR, page_headers
from cloud.api.ratelimit import retry_after_header
from cloud.api.services import Services, services_of
from cloud.api.stripe_gateway import CheckoutSession, PaymentProviderError
from cloud.database import TransientDatabaseError
from cloud.settings import CloudSettings
from protocol.errors import ErrorCode, json_type_name, quote
from protocol.limits import CARD_UID_PATTERN

log = logging.getLogger("cloud.api.topups")

PAGE_HEADERS = page_headers(
    "default-src 'none'; style-src 'self'; form-action 'self' "
    "https://checkout.stripe.com; frame-ancestors 'none'; base-uri 'none'"
)
# What a human may type around the hex digits of a wristband number.
_SEPARATORS = re.compile(r"[\s:.-]+")


def checkout_openapi(amount_cents_max: int) -> dict[str, Any]:
    """The OpenAPI description of POST /api/topups/checkout, with this deployment's limit."""
    return {
        "requestBody": json_request_body(
            {
                "type": "object",
                "additionalProperties": False,
                "required": ["card_uid", "amount_cents"],
                "properties": {
                    "card_uid": {
                        "type": "string",
                        "pattern": "^([0-9A-F]{8}|[0-9A-F]{14}|[0-9A-F]{20})$",
                    },
                    "amount_cents": {
                        "type": "integer",
                        "minimum": CHECKOUT_AMOUNT_CENTS_MIN,
                        "maximum": amount_cents_max,
                    },
                },
            }
        ),
        "responses": {
            "201": {
                "description": "Checkout Session created",
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "required": ["session_id", "checkout_url"],
                            "properties": {
                                "session_id": {"type": "string"},
                                "checkout_url": {"type": "string"},
                            },
                        }
                    }
                },
            },
            "400": {"description": "invalid card uid or amount"},
            "413": {"description": "body too large"},
            "415": {"description": "not application/json"},
            "429": {"description": "too many checkouts from this client"},
            "502": {"description": "Stripe refused or could not be reached"},
            "503": {"description": "database unavailable or Stripe not configured"},
        },
    }


def _invalid(message: str) -> ApiError:
    return ApiError(400, ErrorCode.INVALID_REQUEST.value, message)


def validate_checkout(document: object, *, amount_cents_max: int) -> tuple[str, int]:
    """The strict body of POST /api/topups/checkout: exactly card_uid and amount_cents."""
    if type(document) is not dict:
        raise _invalid(f"body must be a JSON object, got {json_type_name(document)}")
    assert isinstance(document, dict)
    unknown = sorted(set(document) - {"card_uid", "amount_cents"})
    if unknown:
        raise _invalid(f"unknown field {quote(unknown[0])}")
    for name in ("card_uid", "amount_cents"):
        if name not in document:
            raise _invalid(f"missing field {name}")
    card_uid = document["card_uid"]
    if type(card_uid) is not str or not CARD_UID_PATTERN.match(card_uid):
        raise _invalid(f"card_uid must be 8, 14 or 20 upper-case hex digits, got {quote(card_uid)}")
    amount_cents = document["amount_cents"]
    if type(amount_cents) is not int:
        raise _invalid(
            f"amount_cents must be an integer number of cents, got {json_type_name(amount_cents)}"
        )
    if not CHECKOUT_AMOUNT_CENTS_MIN <= amount_cents <= amount_cents_max:
        raise _invalid(
            f"amount_cents must be between {CHECKOUT_AMOUNT_CENTS_MIN} and {amount_cents_max}, "
            f"got {quote(amount_cents)}"
        )
    assert isinstance(card_uid, str)
    return card_uid, amount_cents


def client_key(request: Request) -> str:
    # uvicorn rewrites the client address from X-Forwarded-For only for trusted proxies
    # (--forwarded-allow-ips), so a client cannot pick its own bucket by sending the header.
    return request.client.host if request.client else "unknown"


async def start_checkout(
    services: Services, *, card_uid: str, amount_cents: int
) -> CheckoutSession:
    """Record the pending top-up, open the session. The card is not looked at (DESIGN.md 1.1).

    Whatever the card's balance or status, a well-formed request gets its session: answering
    "blocked" or "at most N cents fit" would tell anyone who types a UID what that card holds.
    A paid session that cannot be credited (blocked, over the maximum balance) is refunded in
    full by the webhook instead.
    """
    settings = services.settings
    if services.checkout is None:
        services.metrics.checkout_sessions.labels("not_configured").inc()
        raise ApiError(503, NOT_CONFIGURED, "online top-ups are not configured")
    topup_id = f"tu_{uuid.uuid4().hex}"
    await services.ledger_call(
        "create_topup",
        services.ledger.create_topup,
        topup_id=topup_id,
        card_uid=card_uid,
        amount_cents=amount_cents,
        currency=settings.festival_currency,
    )
    checkout = services.checkout
    try:
        session = await services.ledger_call(
            "stripe_checkout",
            checkout.create_session,
            topup_id=topup_id,
            card_uid=card_uid,
            amount_cents=amount_cents,
        )
    except PaymentProviderError as error:
        services.metrics.checkout_sessions.labels("provider_error").inc()
        log.error(
            "stripe checkout failed",
            extra={"context": {"topup_id": topup_id, "reason": str(error)}},
        )
        raise ApiError(
            502, PAYMENT_PROVIDER_ERROR, "the payment provider is unavailable, try again"
        ) from error
    await services.ledger_call(
        "attach_checkout_session",
        services.ledger.attach_checkout_session,
        topup_id=topup_id,
        session_id=session.session_id,
    )
    services.metrics.checkout_sessions.labels("created").inc()
    log.info(
        "checkout session created",
        extra={
            "context": {
                "topup_id": topup_id,
                "card_uid": card_uid,
                "amount_cents": amount_cents,
                "session_id": session.session_id,
            }
        },
    )
    return session


def _rate_limit(request: Request, services: Services, route: str) -> None:
    decision = services.checkout_limiter.take(client_key(request), services.monotonic_s())
    if not decision.allowed:
        services.metrics.rate_limited.labels(route).inc()
        raise ApiError(
            429,
            RATE_LIMITED,
            "too many top-up attempts from this address, try again shortly",
            headers={"Retry-After": retry_after_header(decision)},
        )


async def create_checkout(request: Request) -> Response:
    services = services_of(request)
    require_json(request)
    _rate_limit(request, services, "/api/topups/checkout")
    document = await parsed_body(request)
    card_uid, amount_cents = validate_checkout(
        document, amount_cents_max=services.settings.festival_max_topup_cents
    )
    session = await start_checkout(services, card_uid=card_uid, amount_cents=amount_cents)
    return JSONResponse(
        {"session_id": session.session_id, "checkout_url": session.checkout_url},
        status_code=201,
    )


# --- the public page -------------------------------------------------------------------------


def normalise_wristband_number(text: str) -> str:
    """What an attendee types (spaces, colons, lower case) as a card UID."""
    return _SEPARATORS.sub("", text).upper()


def euros_text_to_cents(text: str) -> int | None:
    """ "25", "25.5", "25,50" -> cents; None when it is not an amount with <= 2 decimals."""
    cleaned = text.strip().replace("€", "").replace(",", ".").strip()
    if not cleaned or len(cleaned) > 12 or not re.fullmatch(r"\d+(\.\d{1,2})?", cleaned):
        return None
    try:
        return int(Decimal(cleaned).scaleb(2))
    except InvalidOperation:
        return None


def _cents_text(cents: int) -> str:
    return f"{cents // 100}.{cents % 100:02d}"


def render_page(
    services: Services,
    *,
    message: str = "",
    kind: str = "error",
    card_uid: str = "",
    amount: str = "",
) -> str:
    template = Template((STATIC_DIR / "topup.html").read_text(encoding="utf-8"))
    message_html = (
        f'<div class="message {kind}" role="status">{html.escape(message)}</div>' if message else ""
    )
    return template.substitute(
        message=message_html,
        card_uid=html.escape(card_uid, quote=True),
        amount=html.escape(amount, quote=True),
        currency=html.escape(services.settings.festival_currency),
        amount_min=_cents_text(CHECKOUT_AMOUNT_CENTS_MIN),
        amount_max=_cents_text(services.settings.festival_max_topup_cents),
    )


SUCCESS_MESSAGE: Final = (
    "Thank you! Your payment went through; the money is on its way. A payment the "
    "wristband cannot take (blocked, or over its maximum balance) is refunded in full."
)
# What Stripe puts where the success URL says {CHECKOUT_SESSION_ID} (a Checkout Session id).
_SESSION_ID: Final = re.compile(r"\Acs_[A-Za-z0-9_]{1,250}\Z")


async def _success_message(services: Services, session_id: str | None) -> str:
    """The success page's sentence: "credited X, balance Y" once the webhook has credited the
    session's top-up; "on its way" before; "refunded" when the wristband could not take it."""
    if session_id is None or not _SESSION_ID.match(session_id):
        return SUCCESS_MESSAGE
    try:
        outcome = await services.ledger_call(
            "checkout_outcome", services.queries.checkout_outcome, session_id
        )
    except TransientDatabaseError:
        return SUCCESS_MESSAGE  # the database is away: the payment still went through
    if outcome is None:
        return SUCCESS_MESSAGE
    currency = str(outcome["currency"])
    if outcome["status"] == "credited" and outcome["balance_cents"] is not None:
        return (
            f"Thank you! {_cents_text(int(outcome['credited_cents']))} {currency} credited to "
            f"your wristband; its balance is now {_cents_text(int(outcome['balance_cents']))} "
            f"{currency}."
        )
    if outcome["status"] in ("declined", "anomaly"):
        return (
            "Your payment went through, but this wristband cannot take it (blocked, or over its "
            f"maximum balance): the {_cents_text(int(outcome['amount_cents']))} {currency} are "
            "refunded in full to your card."
        )
    return SUCCESS_MESSAGE + " Reload this page in a few seconds to see it credited."


async def topup_page(request: Request) -> Response:
    services = services_of(request)
    status = request.query_params.get("status")
    message, kind = "", "error"
    if status == "success":
        message = await _success_message(services, request.query_params.get("session_id"))
        kind = "ok"
    elif status == "cancelled":
        message = "The payment was cancelled; nothing was charged."
    return HTMLResponse(render_page(services, message=message, kind=kind), headers=PAGE_HEADERS)


async def topup_form(request: Request) -> Response:
    services = services_of(request)
    content_type = (request.headers.get("content-type") or "").split(";", 1)[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        raise ApiError(415, UNSUPPORTED_MEDIA_TYPE, "send the form")
    body = await request.body()
    try:
        fields = dict(parse_qsl(body.decode("utf-8"), max_num_fields=10))
    except (UnicodeDecodeError, ValueError):
        fields = {}
    raw_card = fields.get("card_uid", "")[:TOPUP_FORM_FIELD_LENGTH_MAX]
    raw_amount = fields.get("amount", "")[:TOPUP_FORM_FIELD_LENGTH_MAX]

    def again(message: str, status_code: int) -> Response:
        page = render_page(services, message=message, card_uid=raw_card, amount=raw_amount)
        return HTMLResponse(page, status_code=status_code, headers=PAGE_HEADERS)

    card_uid = normalise_wristband_number(raw_card)
    if not CARD_UID_PATTERN.match(card_uid):
        return again("That wristband number is not valid: 8, 14 or 20 characters 0-9 and A-F.", 400)
    amount_cents = euros_text_to_cents(raw_amount)
    maximum = services.settings.festival_max_topup_cents
    if amount_cents is None or not CHECKOUT_AMOUNT_CENTS_MIN <= amount_cents <= maximum:
        return again(
            f"Please enter an amount between {_cents_text(CHECKOUT_AMOUNT_CENTS_MIN)} and "
            f"{_cents_text(maximum)}.",
            400,
        )
    try:
        _rate_limit(request, services, "/topup")
        session = await start_checkout(services, card_uid=card_uid, amount_cents=amount_cents)
    except ApiError as error:
        return again(_page_message(error), error.status_code)
    return RedirectResponse(session.checkout_url, status_code=303, headers=PAGE_HEADERS)


def _page_message(error: ApiError) -> str:
    if error.error_code == RATE_LIMITED:
        return "Too many attempts; please wait a moment and try again."
    return "Online top-up is unavailable right now; please try again or visit a checkpoint."


def router(settings: CloudSettings) -> APIRouter:
    routes = APIRouter(tags=["top-ups"])
    routes.add_api_route(
        "/api/topups/checkout",
        create_checkout,
        methods=["POST"],
        status_code=201,
        summary="Create a Stripe Checkout Session for a wristband top-up (public)",
        operation_id="create_checkout",
        openapi_extra=checkout_openapi(settings.festival_max_topup_cents),
        response_class=JSONResponse,
    )
    routes.add_api_route(
        "/topup",
        topup_page,
        methods=["GET"],
        summary="The public top-up page",
        operation_id="topup_page",
        response_class=HTMLResponse,
        include_in_schema=True,
    )
    routes.add_api_route(
        "/topup",
        topup_form,
        methods=["POST"],
        summary="Submit the top-up page's form (redirects to Stripe Checkout)",
        operation_id="topup_form",
        response_class=HTMLResponse,
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/x-www-form-urlencoded": {
                        "schema": {
                            "type": "object",
                            "properties": {
                                "card_uid": {"type": "string"},
                                "amount": {"type": "string"},
                            },
                        }
                    }
                },
            },
            "responses": {
                "303": {"description": "redirect to Stripe Checkout"},
                "400": {"description": "the page again, with what to fix"},
                "415": {"description": "not a form"},
            },
        },
    )
    return routes
