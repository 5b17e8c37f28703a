"""Admin and monitoring endpoints behind `Authorization: Bearer $ADMIN_TOKEN`, the dashboard
page, the unauthenticated health endpoints, and /metrics (loopback or `METRICS_TOKEN`)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, date, datetime
from decimal import Decimal
from enum import Enum
from typing import Any
from uuid import UUID

from fastapi import APIRouter, Depends, Path, Query
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response

from cloud.api.auth import is_loopback_request, require_token
from cloud.api.errors import ApiError
from cloud.api.limits import (
    BLOCK_REASON_LENGTH_MAX,
    CARD_TRANSACTIONS_MAX,
    DASHBOARD_MINUTES_MAX,
    SUN_ALARM_WINDOW_MINUTES,
    SUN_FAILURES_SHOWN_MINUTES,
    SUN_STALE_CARDS_MAX,
)
from cloud.api.metrics import CONTENT_TYPE
from cloud.api.pages import STATIC_DIR, page_headers
from cloud.api.services import services_of
from protocol.errors import ErrorCode, ProtocolError, quote
from protocol.limits import CARD_UID_PATTERN
from protocol.strict_json import loads_strict

log = logging.getLogger("cloud.api.monitoring")

DASHBOARD_HEADERS = page_headers(
    "default-src 'none'; script-src 'self'; style-src 'self'; "
    "connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; "
    "form-action 'none'"
)

# Only for the OpenAPI document (the "Authorize" button); the check itself is require_admin.
_bearer_scheme = HTTPBearer(auto_error=False, scheme_name="AdminToken")


def require_admin(
    request: Request,
    _credentials: HTTPAuthorizationCredentials | None = Depends(_bearer_scheme),
) -> None:
    require_token(request, services_of(request).settings.admin_token, "festival-admin")


def to_json_value(value: Any) -> Any:
    """Database values as JSON: Decimal sums of cents stay integers, timestamps become ISO."""
    if isinstance(value, dict):
        return {str(key): to_json_value(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [to_json_value(item) for item in value]
    if isinstance(value, Decimal):
        # Integral Decimals are sums of bigint cents (PostgreSQL sum() returns numeric);
        # fractional ones are averages and percentages, never money.
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=UTC)
        return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, Enum):
        return to_json_value(value.value)
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    if hasattr(value, "__dataclass_fields__"):
        return {name: to_json_value(getattr(value, name)) for name in value.__dataclass_fields__}
    if hasattr(value, "_asdict"):
        return to_json_value(value._asdict())
    return value


def json_response(value: Any, status_code: int = 200) -> JSONResponse:
    return JSONResponse(to_json_value(value), status_code=status_code)


CARD_UID_REGEX = "^([0-9A-F]{8}|[0-9A-F]{14}|[0-9A-F]{20})$"
# In the OpenAPI document (clients and schemathesis see the rule); a mismatch is answered 400.
UID_PATH = Path(
    pattern=CARD_UID_REGEX,
    description="card UID: 8, 14 or 20 upper-case hex digits",
    examples=["04A1B2C3D4E5F6"],
)


def valid_uid(uid: str) -> str:
    if not CARD_UID_PATTERN.match(uid):
        raise ApiError(
            400,
            ErrorCode.INVALID_REQUEST.value,
            f"card uid must be 8, 14 or 20 upper-case hex digits, got {quote(uid)}",
        )
    return uid


# --- health ------------------------------------------------------------------------------------


def healthz() -> JSONResponse:
    return JSONResponse({"status": "ok"})


def readyz(request: Request) -> JSONResponse:
    services = services_of(request)
    try:
        services.queries.ping()
    except Exception as error:
        log.warning("not ready: database unreachable", extra={"context": {"reason": str(error)}})
        return JSONResponse(
            {"status": "unavailable", "database": "unreachable"},
            status_code=503,
            headers={"Retry-After": "1"},
        )
    return JSONResponse({"status": "ok", "database": "ok"})


def metrics(request: Request) -> Response:
    """Loopback clients, and others with `Authorization: Bearer $METRICS_TOKEN` when it is set
    (DESIGN.md); the figures behind it are cached (cloud/api/metrics.py)."""
    services = services_of(request)
    if not is_loopback_request(request):
        require_token(request, services.settings.metrics_token, "festival-metrics")
    return Response(services.metrics.render(), media_type=CONTENT_TYPE)


# --- cards -------------------------------------------------------------------------------------


def _card_json(card: Any) -> dict[str, Any]:
    status = getattr(card, "status", "active")
    return {
        "card_uid": card.card_uid,
        "balance_cents": int(card.balance_cents),
        # (1.1) what offline sales left it owing (never with a balance above 0)
        "debt_cents": int(getattr(card, "debt_cents", 0)),
        "status": str(getattr(status, "value", status)),
    }


def get_card(
    request: Request,
    uid: str = UID_PATH,
    limit: int = Query(20, ge=1, le=CARD_TRANSACTIONS_MAX),
) -> JSONResponse:
    ledger = services_of(request).ledger
    card = ledger.card(valid_uid(uid))
    if card is None:
        raise ApiError(404, ErrorCode.CARD_NOT_FOUND.value, "unknown card")
    body = _card_json(card)
    body["transactions"] = ledger.card_transactions(uid, limit=limit)
    return json_response(body)


async def _block_reason(request: Request) -> str:
    body = await request.body()
    if not body.strip():
        return "blocked by an operator"
    try:
        document = loads_strict(body)
    except ProtocolError as error:
        raise ApiError(400, ErrorCode.INVALID_REQUEST.value, error.message) from None
    if type(document) is not dict or set(document) - {"reason"}:
        raise ApiError(400, ErrorCode.INVALID_REQUEST.value, 'body must be {"reason": "..."}')
    reason = document.get("reason", "blocked by an operator")
    if type(reason) is not str or not 1 <= len(reason) <= BLOCK_REASON_LENGTH_MAX:
        raise ApiError(
            400,
            ErrorCode.INVALID_REQUEST.value,
            f"reason must be 1-{BLOCK_REASON_LENGTH_MAX} characters",
        )
    return reason


async def block_card(request: Request, uid: str = UID_PATH) -> JSONResponse:
    services = services_of(request)
    valid_uid(uid)
    reason = await _block_reason(request)
    found = await services.ledger_call("block_card", services.ledger.block_card, uid, reason)
    if not found:
        raise ApiError(404, ErrorCode.CARD_NOT_FOUND.value, "unknown card")
    log.warning("card blocked", extra={"context": {"card_uid": uid, "reason": reason}})
    card = await services.ledger_call("card", services.ledger.card, uid)
    return json_response(_card_json(card))


async def unblock_card(request: Request, uid: str = UID_PATH) -> JSONResponse:
    services = services_of(request)
    valid_uid(uid)
    found = await services.ledger_call("unblock_card", services.ledger.unblock_card, uid)
    if not found:
        raise ApiError(404, ErrorCode.CARD_NOT_FOUND.value, "unknown card")
    log.warning("card unblocked", extra={"context": {"card_uid": uid}})
    card = await services.ledger_call("card", services.ledger.card, uid)
    return json_response(_card_json(card))


# --- monitoring ----------------------------------------------------------------------------------


def _ledger_view(method: str) -> Callable[[Request], JSONResponse]:
    def view(request: Request) -> JSONResponse:
        return json_response(getattr(services_of(request).ledger, method)())

    view.__name__ = f"monitoring_{method}"
    return view


def pos_devices(request: Request) -> JSONResponse:
    """Every registered POS device (disabled ones too): role, enabled, its seq, last seen."""
    return json_response(services_of(request).pos_devices.listing())


def ledger_check(request: Request) -> JSONResponse:
    violations = list(services_of(request).ledger.check())
    return json_response({"ok": not violations, "violations": violations})


# (1.1) What each kiosk runs and what was issued to it (DashboardQueries.kiosk_configs), for a
# kiosk the query does not know yet (registered between the two reads).
NO_CONFIG: dict[str, Any] = {
    "config_version": None,
    "config_version_at": None,
    "latest_config_version": None,
    "latest_config_published": False,
    "latest_config_published_at": None,
    "menu_id": None,
    "offline_policy": None,
}


def normalise_kiosk(row: dict[str, Any]) -> dict[str, Any]:
    """The API's view of a kiosk row: the fields every client relies on, normalised, and every
    other column the ledger or the config query adds kept as it is (checkpoint_id, the config
    versions, ...), so a new column reaches the dashboard without a change here."""
    state = row.get("state") or ("online" if row.get("online") else "unknown")
    normalised = {key: value for key, value in row.items() if key not in ("online", "last_seen")}
    normalised.update(
        {
            "kiosk_id": row.get("kiosk_id"),
            "role": row.get("role"),
            "enabled": bool(row.get("enabled", True)),
            "state": state,
            "last_seen_at": row.get("last_seen_at") or row.get("last_seen"),
            "last_seq": row.get("last_seq"),
            "missing_seq_ranges": row.get("missing_seq_ranges") or [],
        }
    )
    return normalised


def kiosk_rows(services: Any) -> list[dict[str, Any]]:
    """Every registered kiosk (disabled ones too): the ledger's overview (presence, seq gaps)
    with the config version it runs, the latest issued to it and whether that one is published,
    its menu id and offline policy."""
    configs = services.queries.kiosk_configs()
    return [
        normalise_kiosk(
            to_json_value({**NO_CONFIG, **configs.get(str(row.get("kiosk_id")), {}), **row})
        )
        for row in services.ledger.kiosk_overview()
    ]


def monitoring_kiosks(request: Request) -> JSONResponse:
    return json_response(kiosk_rows(services_of(request)))


def monitoring_offline(request: Request) -> JSONResponse:
    return json_response(services_of(request).queries.offline_overview())


def monitoring_payouts(request: Request) -> JSONResponse:
    return json_response(services_of(request).queries.payouts_overview())


def sun_summary(services: Any, now: datetime) -> dict[str, Any]:
    """(1.1) Genuine wristbands on the dashboard: SUN failures of the last hour by reason, and
    the cloning alarm, raised when the stale-counter failures of the last window outnumber
    those of the window before it (a clone, or a sniffed message, being tried again and again).
    A few stale counters are normal (a request queued at one kiosk overtaken by a later tap at
    another): a steady trickle does not alarm, a rise does."""
    rows = services.ledger.sun_failures(minutes=SUN_FAILURES_SHOWN_MINUTES)
    by_reason: dict[str, int] = {}
    recent = before = 0
    window_s = SUN_ALARM_WINDOW_MINUTES * 60
    for row in rows:
        failures = int(row["failures"])
        by_reason[str(row["reason"])] = by_reason.get(str(row["reason"]), 0) + failures
        if row["reason"] != "stale_counter":
            continue
        age_s = (now - datetime.fromisoformat(str(row["minute"]))).total_seconds()
        if age_s < window_s:
            recent += failures
        elif age_s < 2 * window_s:
            before += failures
    return {
        "card_auth": services.settings.festival_card_auth,
        "failures_by_reason": by_reason,
        "alarm_window_minutes": SUN_ALARM_WINDOW_MINUTES,
        "stale_counter_recent": recent,
        "stale_counter_before": before,
        "cloning_alarm": recent > before,
        "stale_cards": services.ledger.stale_sun_cards(
            minutes=SUN_FAILURES_SHOWN_MINUTES, limit=SUN_STALE_CARDS_MAX
        ),
    }


def dashboard_data(
    request: Request, minutes: int = Query(60, ge=1, le=DASHBOARD_MINUTES_MAX)
) -> JSONResponse:
    services = services_of(request)
    now = datetime.now(UTC)
    queries = services.queries
    points = queries.sales_per_minute(minutes, now)
    kiosks = kiosk_rows(services)
    body = {
        "generated_at": now,
        # FESTIVAL_CURRENCY: the page formats every amount in it (Intl.NumberFormat).
        "currency": services.settings.festival_currency,
        "window_minutes": minutes,
        "sales_per_minute": points,
        "sales": {
            "orders": sum(point["orders"] for point in points),
            "amount_cents": sum(point["amount_cents"] for point in points),
        },
        "topups": queries.topups(minutes, now),
        "kiosks": kiosks,
        "error_rates": services.ledger.error_rates(),
        "recent_declines": queries.recent_declines(),
        "return_alerts": queries.return_alerts(),
        # (1.1) offline sales: exposure, synced today, open debts (GET /api/monitoring/offline)
        "offline": queries.offline_overview(),
        # (1.1) payouts after the festival (GET /api/monitoring/payouts)
        "payouts": queries.payouts_overview(),
        "sun": sun_summary(services, now),
    }
    return json_response(body)


def dashboard_page() -> HTMLResponse:
    page = (STATIC_DIR / "dashboard.html").read_text(encoding="utf-8")
    return HTMLResponse(page, headers=DASHBOARD_HEADERS)


def router() -> APIRouter:
    public = APIRouter(tags=["health"])
    public.add_api_route("/healthz", healthz, methods=["GET"], summary="Process alive")
    public.add_api_route(
        "/readyz",
        readyz,
        methods=["GET"],
        summary="Database reachable (else 503)",
        responses={503: {"description": "database unreachable"}},
    )
    public.add_api_route(
        "/metrics",
        metrics,
        methods=["GET"],
        summary="Prometheus metrics (loopback, or bearer METRICS_TOKEN)",
        response_class=Response,
        responses={
            200: {"content": {CONTENT_TYPE.split(";")[0]: {}}},
            401: {"description": "not loopback and no (or a wrong) METRICS_TOKEN"},
        },
    )
    public.add_api_route(
        "/dashboard",
        dashboard_page,
        methods=["GET"],
        summary="Live operations dashboard (asks for the admin token)",
        response_class=HTMLResponse,
    )

    unauthorized: dict[int | str, dict[str, Any]] = {
        401: {"description": "missing or wrong admin token"}
    }
    card_responses: dict[int | str, dict[str, Any]] = {
        **unauthorized,
        400: {"description": "malformed card uid"},
        404: {"description": "unknown card"},
    }
    admin = APIRouter(tags=["admin"], dependencies=[Depends(require_admin)])
    admin.add_api_route(
        "/api/cards/{uid}",
        get_card,
        methods=["GET"],
        summary="Balance, status and recent transactions of a card",
        responses=card_responses,
    )
    admin.add_api_route(
        "/api/cards/{uid}/block",
        block_card,
        methods=["POST"],
        summary='Block a card (lost, stolen); optional body {"reason": "..."}',
        responses=card_responses,
    )
    admin.add_api_route(
        "/api/cards/{uid}/unblock",
        unblock_card,
        methods=["POST"],
        summary="Unblock a card",
        responses=card_responses,
    )
    for path, method, summary in (
        ("processing-times", "processing_times", "Average processing time by function"),
        ("error-rates", "error_rates", "Outcome breakdown of the last hour"),
        ("idempotency", "idempotency_usage", "Idempotency key usage of the last hour"),
        ("nfc-scans", "nfc_scan_activity", "NFC scan outcomes of the last hour"),
        ("sales", "sales_report", "Sales per bar; cash and card per checkpoint"),
    ):
        admin.add_api_route(
            f"/api/monitoring/{path}",
            _ledger_view(method),
            methods=["GET"],
            summary=summary,
            responses=unauthorized,
        )
    admin.add_api_route(
        "/api/monitoring/kiosks",
        monitoring_kiosks,
        methods=["GET"],
        summary="Every kiosk: role, enabled, online, last seen, seq gaps, config versions, menu",
        responses=unauthorized,
    )
    admin.add_api_route(
        "/api/monitoring/offline",
        monitoring_offline,
        methods=["GET"],
        summary="Offline sales: kiosks offline now, worst-case exposure, synced today, debts",
        responses=unauthorized,
    )
    admin.add_api_route(
        "/api/monitoring/payouts",
        monitoring_payouts,
        methods=["GET"],
        summary="Payouts: parts by state (count, total), the refund queue, what is kept, failures",
        responses=unauthorized,
    )
    admin.add_api_route(
        "/api/monitoring/pos-devices",
        pos_devices,
        methods=["GET"],
        summary="Every POS device of the seed-compatible endpoints: role, enabled, seq, last seen",
        responses=unauthorized,
    )
    admin.add_api_route(
        "/api/monitoring/ledger",
        ledger_check,
        methods=["GET"],
        summary="Ledger invariant check",
        responses=unauthorized,
    )
    admin.add_api_route(
        "/api/monitoring/dashboard",
        dashboard_data,
        methods=["GET"],
        summary="Everything the dashboard shows, in one call",
        responses={**unauthorized, 400: {"description": "minutes out of range"}},
    )
    routes = APIRouter()
    routes.include_router(public)
    routes.include_router(admin)
    return routes
