"""(1.1) ``GET /t?picc_data=…&cmac=…``: the URL a genuine wristband gives a phone (DESIGN.md).

The wristband's URL carries no UID: it is inside ``picc_data``. The route decrypts it, verifies
the message for that UID exactly as the consumer does (protocol/sun.py), and in one transaction
accepts its counter by the online rule (a portal login uses up the counter like a tap at a
kiosk, PROTOCOL.md) and opens a ``tap`` session of the attendee portal
(``sp_portal_tap_login``, revision 0014): 303 to /portal with the session cookie. A genuine band
that has no card yet (never topped up) has nothing to log in to: a page saying so, 200.
Anything else — uid mode, a malformed, foreign, forged or used message — 403 with a page that
says only "not accepted" (which check failed is for the logs and metrics, not for whoever holds
the link).
"""

from __future__ import annotations

import html
import logging
import threading

from fastapi import APIRouter, Query
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from cloud.api.pages import page_headers
from cloud.api.portal import _set_cookie, portal_of
from cloud.api.services import services_of
from cloud.portal import new_session_token
from protocol.sun import SUN_UID_BYTES, SunError, SunVerifier

log = logging.getLogger("cloud.api.sun_tap")

PAGE_HEADERS = page_headers(
    "default-src 'none'; style-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
    "form-action 'none'"
)
_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title><link rel="stylesheet" href="/static/festival.css"></head>
<body><main class="tap"><h1>{title}</h1>{body}</main></body></html>
"""
NOT_ACCEPTED = (
    "<p>This wristband link was not accepted. Tap your wristband with your phone again; if it"
    " keeps failing, see the info desk.</p>"
)


class _Verifiers(threading.local):
    """One SunVerifier per thread (its OpenSSL contexts are not shared across threads)."""

    verifier: SunVerifier | None = None


def _page(title: str, body: str, status_code: int) -> HTMLResponse:
    return HTMLResponse(
        _PAGE.format(title=html.escape(title), body=body),
        status_code=status_code,
        headers=PAGE_HEADERS,
    )


def router(master_key: bytes | None) -> APIRouter:
    """``master_key``: the card master key in sun mode; None in uid mode (every tap: 403)."""
    verifiers = _Verifiers()

    def verify(picc_data: str, cmac: str) -> tuple[str, int] | None:
        if master_key is None:
            return None
        if verifiers.verifier is None:
            verifiers.verifier = SunVerifier(master_key)
        verifier = verifiers.verifier
        try:
            uid, _ = verifier.decrypt_picc_data(picc_data)
            assert len(uid) == SUN_UID_BYTES
            verified = verifier.verify(uid.hex().upper(), picc_data, cmac)
        except SunError as error:
            log.info("tap not accepted", extra={"context": {"reason": error.reason.value}})
            return None
        return verified.uid, verified.counter

    async def tap(
        request: Request,
        picc_data: str = Query(""),
        cmac: str = Query(""),
    ) -> Response:
        services = services_of(request)
        verified = verify(picc_data, cmac)
        if verified is None:
            return _page("Not accepted", NOT_ACCEPTED, 403)
        card_uid, counter = verified
        portal = portal_of(request)
        token = new_session_token()
        accepted, expires_at = await services.ledger_call(
            "portal_tap_login",
            portal.store.tap_login,
            card_uid,
            counter,
            token=token,
            ttl_s=portal.limits.portal_session_ttl_s,
        )
        if not accepted:
            log.info("tap not accepted", extra={"context": {"reason": "stale_counter"}})
            return _page("Not accepted", NOT_ACCEPTED, 403)
        if expires_at is None:
            body = "<p>This wristband has no balance yet: top it up at a checkpoint.</p>"
            return _page("Your wristband", body, 200)
        log.info("portal login", extra={"context": {"card_uid": card_uid, "kind": "tap"}})
        response: Response = RedirectResponse("/portal", status_code=303)
        _set_cookie(response, portal, token)
        response.headers["Cache-Control"] = "no-store"
        return response

    routes = APIRouter(tags=["portal"])
    routes.add_api_route(
        "/t",
        tap,
        methods=["GET"],
        summary="A genuine wristband's URL (SUN message): a `tap` portal session, 303 to /portal",
        response_class=HTMLResponse,
        status_code=303,
        responses={
            200: {"description": "genuine, but the band has no card yet"},
            403: {"description": "not a valid, fresh SUN message (or uid mode)"},
        },
    )
    return routes
