"""Seed-compatible point-of-sale endpoints for devices that cannot speak MQTT:
POST /functions/v1/process-bar-order and /functions/v1/process-checkpoint-recharge.

Behind `Authorization: Bearer <token of a registered, enabled POS device>` (`festival-cloud pos
add`; revision 1.1 - the shared POS_API_TOKEN grants nothing). The device is treated like a
kiosk: the body becomes the protocol request a kiosk would sign, under the device's id and with
the device's next seq; its role applies (OPERATION_NOT_ALLOWED, 403); its top-ups go to its own
drawer (a `checkpoint_id` naming another one is INVALID_REQUEST, 400); both refusals are stored
like a kiosk's rejections. The database decides all of it (revision 0025): the request goes to
sp_pos_handle_request with the bearer token as presented, which authenticates the device again
and applies only the device's own request, through the same ledger handler as a kiosk's, with
the same limits and the same global idempotency: `client_request_id` is the protocol's
`request_id`. The API's database role cannot apply a request any other way. Answers carry the
seed's fields; amounts are JSON numbers in euros with two decimals.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from cloud.api.auth import presented_token
from cloud.api.bodies import is_json, json_request_body
from cloud.api.errors import (
    SERVICE_UNAVAILABLE,
    UNAUTHORIZED,
    UNSUPPORTED_MEDIA_TYPE,
    request_id_of,
)
from cloud.api.seed_requests import (
    BAR_ORDER,
    CHECKPOINT_RECHARGE,
    Euros,
    http_status_for,
    parse_seed_request,
    render_json,
)
from cloud.api.services import services_of
from cloud.database import TransientDatabaseError
from cloud.logs import bind
from cloud.pos_devices import claimed_device_id
from protocol.errors import ProtocolError

if TYPE_CHECKING:
    from cloud.ledger_records import Outcome

log = logging.getLogger("cloud.api.pos")

BAR_ORDER_PATH = "/functions/v1/process-bar-order"
RECHARGE_PATH = "/functions/v1/process-checkpoint-recharge"

_MONEY = {"type": ["number", "null"], "description": "euros, two decimals"}
_ANSWER_SCHEMA = {
    "type": "object",
    "required": ["success", "error", "error_code", "request_id", "processing_time_ms"],
    "properties": {
        "success": {"type": "boolean"},
        "order_id": {"type": ["string", "null"]},
        "transaction_id": {"type": ["string", "null"]},
        "previous_balance": _MONEY,
        "new_balance": _MONEY,
        "error": {"type": ["string", "null"]},
        "error_code": {"type": ["string", "null"]},
        "request_id": {"type": ["string", "null"]},
        "processing_time_ms": {"type": "number"},
    },
}
_ANSWER = {"content": {"application/json": {"schema": _ANSWER_SCHEMA}}}


def _openapi(body_schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "security": [{"PosToken": []}],
        "requestBody": json_request_body(body_schema),
        "responses": {
            "200": {"description": "approved (or a replay of an approval)", **_ANSWER},
            "400": {"description": "INVALID_REQUEST", **_ANSWER},
            "401": {"description": "missing, unknown or disabled POS device token", **_ANSWER},
            "402": {"description": "INSUFFICIENT_FUNDS", **_ANSWER},
            "403": {"description": "CARD_BLOCKED or OPERATION_NOT_ALLOWED", **_ANSWER},
            "404": {"description": "CARD_NOT_FOUND", **_ANSWER},
            "409": {"description": "IDEMPOTENCY_CONFLICT", **_ANSWER},
            "413": {"description": "body too large"},
            "415": {"description": "not application/json", **_ANSWER},
            "422": {"description": "BALANCE_LIMIT_EXCEEDED", **_ANSWER},
            "503": {"description": "database unavailable, retry with the same id", **_ANSWER},
        },
    }


BAR_ORDER_OPENAPI = _openapi(
    {
        "type": "object",
        "required": ["card_id", "items", "total_amount", "client_request_id"],
        "properties": {
            "card_id": {"type": "string"},
            "items": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["name", "quantity", "unit_price"],
                    "properties": {
                        "name": {"type": "string"},
                        "quantity": {"type": "integer"},
                        "unit_price": {"type": "number"},
                    },
                },
            },
            "total_amount": {"type": "number"},
            "client_request_id": {"type": "string"},
            "staff_id": {"type": "string"},
        },
    }
)
RECHARGE_OPENAPI = _openapi(
    {
        "type": "object",
        "required": ["card_id", "amount", "payment_method", "staff_id", "client_request_id"],
        "properties": {
            "card_id": {"type": "string"},
            "amount": {"type": "number"},
            "payment_method": {"type": "string", "enum": ["cash", "card"]},
            "staff_id": {"type": "string"},
            "client_request_id": {"type": "string"},
            "checkpoint_id": {"type": "string"},
        },
    }
)


def _answer(
    request: Request,
    status_code: int,
    started_s: float,
    *,
    kind: str,
    success: bool,
    error: str | None,
    error_code: str | None,
    order_id: str | None = None,
    transaction_id: str | None = None,
    previous_balance_cents: int | None = None,
    new_balance_cents: int | None = None,
    replayed: bool = False,
    headers: dict[str, str] | None = None,
) -> Response:
    fields: list[tuple[str, object]] = [("success", success)]
    if kind == BAR_ORDER:
        fields.append(("order_id", order_id))
    fields += [
        ("transaction_id", transaction_id),
        (
            "previous_balance",
            None if previous_balance_cents is None else Euros(previous_balance_cents),
        ),
        ("new_balance", None if new_balance_cents is None else Euros(new_balance_cents)),
        ("error", error),
        ("error_code", error_code),
        ("replayed", replayed),
        ("request_id", request_id_of(request)),
        ("processing_time_ms", round((time.perf_counter() - started_s) * 1000, 3)),
    ]
    return Response(
        render_json(fields),
        status_code=status_code,
        media_type="application/json",
        headers=headers,
    )


async def _process(request: Request, kind: str) -> Response:
    started_s = time.perf_counter()
    services = services_of(request)
    endpoint = kind
    metrics = services.metrics

    def refuse(status_code: int, code: str, message: str, **extra: Any) -> Response:
        metrics.pos_requests.labels(endpoint, code).inc()
        return _answer(
            request,
            status_code,
            started_s,
            kind=kind,
            success=False,
            error=message,
            error_code=code,
            **extra,
        )

    def database_unavailable() -> Response:
        log.warning("pos request: database unavailable")
        return refuse(
            503,
            SERVICE_UNAVAILABLE,
            "database unavailable, retry with the same client_request_id",
            headers={"Retry-After": "1"},
        )

    def unauthorized() -> Response:
        # The id the token claims is no secret; the token itself is never logged.
        log.warning(
            "pos request refused: missing, unknown or disabled device token",
            extra={"context": {"claimed_device_id": claimed_device_id(presented_token(request))}},
        )
        return refuse(
            401,
            UNAUTHORIZED,
            "missing, unknown or disabled POS device token",
            headers={"WWW-Authenticate": 'Bearer realm="festival-pos"'},
        )

    try:
        # Every request asks the database, whatever its token: a database that is away is 503
        # for everyone (never a 401 a device would take as final), and a disable committed
        # before this runs refuses this very request.
        device = await services.ledger_call(
            "pos_authenticate", services.pos_devices.authenticate, presented_token(request)
        )
    except TransientDatabaseError:
        return database_unavailable()
    if device is None:
        return unauthorized()
    if not is_json(request.headers.get("content-type")):
        return refuse(415, UNSUPPORTED_MEDIA_TYPE, "send application/json")
    body = await request.body()
    with bind(pos_device_id=device.device_id):
        try:
            parsed = parse_seed_request(
                body,
                kind,
                kiosk_id=device.device_id,
                currency=services.settings.festival_currency,
                topup_cents_max=services.settings.festival_max_topup_cents,
                seq=device.seq,
                now_ms=int(services.clock_s() * 1000),
            )
        except ProtocolError as error:
            log.info("pos request invalid", extra={"context": {"reason": error.message}})
            return refuse(400, error.code.value, error.message)
        with bind(card_uid=parsed.request.card_uid, client_request_id=parsed.request.request_id):
            try:
                outcome = await _decide(services, request, kind, parsed)
            except TransientDatabaseError:
                return database_unavailable()
            if outcome is None:
                return unauthorized()
            return _outcome_answer(request, started_s, kind, outcome, metrics)


async def _decide(services: Any, request: Request, kind: str, parsed: Any) -> Outcome | None:
    """The ledger's outcome of this device's request, or None when its token no longer
    authenticates (disabled meanwhile: 401).

    The database decides (sp_pos_handle_request, revision 0025): it checks the token again,
    that the request is the device's own, the device's role (OPERATION_NOT_ALLOWED, 403) and
    its drawer (a top-up naming another checkpoint is INVALID_REQUEST, 400) - both stored under
    the request id like a kiosk's rejections - and applies the rest with the same limits and
    the same global idempotency as a kiosk's request. The API's role cannot apply a request
    any other way."""
    from cloud.ledger_records import LedgerRequest

    item = LedgerRequest(
        request=parsed.request,
        payload_sha256=parsed.payload_sha256,
        source="http",
        trace_id=request_id_of(request),
        # (1.1) sun mode: these endpoints cannot carry a SUN message, so the ledger declines
        # them CARD_NOT_GENUINE (HTTP 403), stored under the request id like any decline
        sun_failure="missing" if services.settings.sun_mode else None,
    )
    settings = services.settings
    outcome: Outcome | None = await services.ledger_call(
        kind,
        services.pos_devices.apply,
        presented_token(request),
        item,
        balance_cents_max=settings.festival_max_balance_cents,
        topup_cents_max=settings.festival_max_topup_cents,
        return_cents_max=settings.festival_return_max_cents,
        menu_grace_s=settings.festival_menu_grace_s,
    )
    return outcome


def _outcome_answer(
    request: Request, started_s: float, kind: str, outcome: Outcome, metrics: Any
) -> Response:
    """The seed's answer, read off the ledger's outcome as it is."""
    error_code = None if outcome.error_code is None else outcome.error_code.value
    approved = error_code is None
    metrics.pos_requests.labels(kind, error_code or "approved").inc()
    log.info(
        "pos request",
        extra={
            "context": {
                "kind": kind,
                "status": outcome.status.value,
                "error_code": error_code,
                "replayed": outcome.replayed,
                "transaction_id": outcome.transaction_id,
            }
        },
    )
    return _answer(
        request,
        http_status_for(error_code),
        started_s,
        kind=kind,
        success=approved,
        error=None if approved else outcome.message,
        error_code=error_code,
        order_id=outcome.order_id,
        transaction_id=outcome.transaction_id,
        previous_balance_cents=outcome.previous_balance_cents,
        new_balance_cents=outcome.new_balance_cents,
        replayed=bool(outcome.replayed),
    )


async def process_bar_order(request: Request) -> Response:
    return await _process(request, BAR_ORDER)


async def process_checkpoint_recharge(request: Request) -> Response:
    return await _process(request, CHECKPOINT_RECHARGE)


def router() -> APIRouter:
    routes = APIRouter(tags=["point of sale (seed-compatible)"])
    routes.add_api_route(
        BAR_ORDER_PATH,
        process_bar_order,
        methods=["POST"],
        summary="Charge a card for a bar order (seed body, decimal euros)",
        operation_id="process_bar_order",
        openapi_extra=BAR_ORDER_OPENAPI,
    )
    routes.add_api_route(
        RECHARGE_PATH,
        process_checkpoint_recharge,
        methods=["POST"],
        summary="Top up a card at a checkpoint (seed body, decimal euros)",
        operation_id="process_checkpoint_recharge",
        openapi_extra=RECHARGE_OPENAPI,
    )
    return routes
