"""create_app(settings): the API's composition root. Everything the routes use is built here
(or passed in by a test) and hung on app.state; nothing is created at import time."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import Response

from cloud.api import menus, monitoring, portal, pos, reports, shifts, sun_tap, topups, webhook
from cloud.api.errors import (
    CODE_BY_STATUS,
    INVALID_REQUEST,
    SERVICE_UNAVAILABLE,
    ApiError,
    error_response,
)
from cloud.api.limits import ApiLimits
from cloud.api.metrics import ApiMetrics
from cloud.api.middleware import RequestContextMiddleware
from cloud.api.pages import STATIC_DIR
from cloud.api.payout_refunds import PayoutRefundRunner, PayoutRefundStore, RefundTally
from cloud.api.queries import DashboardQueries
from cloud.api.ratelimit import SharedRateLimiter
from cloud.api.services import Services
from cloud.api.stripe_gateway import (
    CheckoutGateway,
    PayoutRefundGateway,
    StripeClient,
    build_stripe_client,
)
from cloud.database import TransientDatabaseError
from cloud.ports import Ledger as LedgerPort
from cloud.pos_devices import PosDevices
from cloud.reports import Reports
from cloud.settings import CloudSettings
from cloud.shifts import ShiftStore

log = logging.getLogger("cloud.api")

API_APPLICATION_NAME = "festival-api"
API_POOL_SIZE = 10


def build_ledger(settings: CloudSettings) -> LedgerPort:
    from cloud.database import make_engine
    from cloud.ledger import Ledger

    settings.require("database_url")
    assert settings.database_url is not None
    engine = make_engine(
        settings.database_url, pool_size=API_POOL_SIZE, application_name=API_APPLICATION_NAME
    )
    # The POS endpoints (source http) are exempt from FESTIVAL_STAFF_REQUIRED (docs/protocol.md).
    return Ledger.from_settings(engine, settings, staff_required=False)


def _warn_about_missing_configuration(settings: CloudSettings) -> None:
    for name, consequence in (
        ("stripe_webhook_secret", "Stripe webhooks are answered 503"),
        ("stripe_secret_key", "online top-ups are answered 503"),
        ("admin_token", "admin and monitoring endpoints refuse every request"),
    ):
        value = getattr(settings, name)
        if value is None or not value.get_secret_value():
            log.warning(f"{name.upper()} is not set: {consequence}")
    if settings.pos_api_token is not None:
        # Revision 1.1: the shared token is gone; accepting the variable keeps an old
        # environment file from stopping the API, and saying so once tells the operator.
        log.warning(
            "POS_API_TOKEN is set but grants nothing: register each point-of-sale device with "
            "`festival-cloud pos add DEVICE_ID --role ...` and give it its own token"
        )


# Entry points the API must NOT be able to call (DESIGN.md "least privilege per process"):
# applying kiosk requests in bulk or one by one (revision 0025: POS requests go through
# sp_pos_handle_request, which checks the device's token itself), and registering kiosks.
FORBIDDEN_TO_THE_API = (
    "sp_process_batch",
    "sp_handle_request",
    "sp_process_bar_order",
    "sp_process_checkpoint_recharge",
    "sp_record_rejection",
    "sp_add_kiosk",
    "sp_disable_kiosk",
)


def warn_about_database_privileges(engine: Any) -> None:
    """Say once at start when the API's database role can do what only the consumer or the
    operator should (it connects as festival_service or the owner, not festival_api)."""
    from cloud.database import text

    try:
        with engine.connect() as connection:
            role, powers = connection.execute(
                text(
                    "SELECT current_user, array_agg(DISTINCT p.proname ORDER BY p.proname)"
                    "  FROM pg_proc p WHERE p.proname = ANY (:names)"
                    "   AND p.pronamespace = 'public'::regnamespace"
                    "   AND has_function_privilege(p.oid, 'EXECUTE')"
                ),
                {"names": list(FORBIDDEN_TO_THE_API)},
            ).one()
    except Exception as error:  # the database may be away at start; the API runs on
        log.warning(
            "could not check the database role's privileges",
            extra={"context": {"reason": str(error)}},
        )
        return
    if powers:
        log.warning(
            f"the API connects as database role {role!r}, which can call {', '.join(powers)}: "
            "connect it as festival_api (docs/operations.md)"
        )


def create_app(
    settings: CloudSettings,
    *,
    ledger: LedgerPort | None = None,
    stripe_client: StripeClient | None = None,
    limits: ApiLimits | None = None,
) -> FastAPI:
    """The FastAPI app. `ledger` (a cloud.ledger.Ledger) and `stripe_client` default to ones
    built from `settings`; `limits` to the production bounds."""
    limits = limits or ApiLimits()
    # The app disposes the engine it built when its lifespan ends; a caller's ledger is its own.
    owned_engine = None
    if ledger is None:
        ledger = build_ledger(settings)
        owned_engine = ledger.engine
    stripe_client = stripe_client or build_stripe_client(settings)
    checkout = (
        None
        if stripe_client is None
        else CheckoutGateway(
            stripe_client,
            currency=settings.festival_currency,
            success_url=settings.topup_success_url,
            cancel_url=settings.topup_cancel_url,
        )
    )
    metrics = ApiMetrics()
    queries = DashboardQueries(
        ledger.engine, return_cents_max=settings.festival_return_max_cents, check=ledger.check
    )
    # Through services.monotonic_s, so a test can move the cache's clock.
    metrics.add_ledger_totals(queries.ledger_totals, clock_s=lambda: services.monotonic_s())
    services = Services(
        settings=settings,
        ledger=ledger,
        checkout=checkout,
        metrics=metrics,
        limits=limits,
        checkout_limiter=SharedRateLimiter(
            ledger.engine,
            scope="checkout",
            burst=limits.checkout_burst,
            refill_per_s=limits.checkout_refill_per_s,
            global_burst=limits.checkout_global_burst,
            global_refill_per_s=limits.checkout_global_refill_per_s,
            timeout_s=limits.rate_limit_timeout_s,
        ),
        queries=queries,
        pos_devices=PosDevices(ledger.engine),
    )
    _warn_about_missing_configuration(settings)
    portal_context = _portal_context(settings, ledger.engine, limits)
    payout_refunds = _payout_refund_runner(stripe_client, ledger.engine, limits, metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if payout_refunds is not None:
            payout_refunds.start()
        yield
        if payout_refunds is not None:
            await payout_refunds.stop()
        if owned_engine is not None:
            # After uvicorn's graceful shutdown: no request holds a connection any more.
            owned_engine.dispose()
            log.info("database connections closed")

    app = FastAPI(
        title="Festival cashless API",
        version="1",
        description="Stripe top-ups and webhooks, monitoring, admin and seed-compatible "
        "point-of-sale endpoints. See docs/api.md.",
        # Swagger UI and ReDoc load their scripts from a CDN: not served (docs/api.md). The
        # machine-readable document stays at /openapi.json.
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.services = services
    app.state.portal = portal_context
    # (issue 16) The Stripe refunds of payout parts; a route that creates some may wake() it.
    app.state.payout_refunds = payout_refunds
    webhook_paths = set(webhook.WEBHOOK_PATHS)

    def body_limit_for(path: str) -> int:
        if path in webhook_paths:
            return limits.webhook_body_bytes_max
        if path == menus.MENUS_PATH:
            return limits.menu_body_bytes_max
        return limits.body_bytes_max

    app.add_middleware(RequestContextMiddleware, metrics=metrics, body_limit_for=body_limit_for)
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(TransientDatabaseError, _transient_error)

    app.include_router(webhook.router())
    app.include_router(topups.router(settings))
    app.include_router(pos.router())
    app.include_router(monitoring.router())
    app.include_router(menus.router())
    # (1.1) GET /t: the card master key in sun mode (SettingsError without a 0600 key file)
    app.include_router(sun_tap.router(settings.card_master_key()))
    app.include_router(reports.router(Reports(ledger.engine, currency=settings.festival_currency)))
    app.include_router(shifts.router(ShiftStore(ledger.engine)))
    app.include_router(portal.router())
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    _add_security_schemes(app)
    return app


def _portal_context(
    settings: CloudSettings, engine: Any, limits: ApiLimits
) -> portal.PortalContext:
    """The attendee portal's store and login limit (issue 16), on the API's own engine."""
    from cloud.payouts import PayoutStore
    from cloud.portal import PortalStore

    limiter = SharedRateLimiter(
        engine,
        scope="portal-login",
        burst=limits.portal_login_burst,
        refill_per_s=limits.portal_login_refill_per_s,
        global_burst=limits.portal_login_global_burst,
        global_refill_per_s=limits.portal_login_global_refill_per_s,
        timeout_s=limits.rate_limit_timeout_s,
    )
    return portal.build_context(
        PortalStore(engine),
        limiter,
        limits,
        portal_url=settings.festival_portal_url,
        currency=settings.festival_currency,
        payouts=PayoutStore(engine),
        payout_fee_cents=settings.festival_payout_fee_cents,
    )


def _payout_refund_runner(
    stripe_client: StripeClient | None, engine: Any, limits: ApiLimits, metrics: ApiMetrics
) -> PayoutRefundRunner | None:
    """The background task that refunds pending Stripe payout parts (docs/operations.md
    "Payouts"): in every API process, the database's row locks and leases keeping them apart."""
    if stripe_client is None or limits.payout_refund_interval_s <= 0:
        return None
    return PayoutRefundRunner(
        PayoutRefundStore(engine),
        PayoutRefundGateway(stripe_client),
        interval_s=limits.payout_refund_interval_s,
        retry_min_s=limits.payout_refund_retry_min_s,
        retry_max_s=limits.payout_refund_retry_max_s,
        on_tally=lambda tally: _count_payout_refunds(metrics, tally),
    )


def _count_payout_refunds(metrics: ApiMetrics, tally: RefundTally) -> None:
    for result, count in tally.as_dict().items():
        if count:
            metrics.payout_refunds.labels(result).inc(count)


def _add_security_schemes(app: FastAPI) -> None:
    """Make the OpenAPI document say what the API does: the POS token scheme (the admin one
    comes from the HTTPBearer dependency), and 400 with our error shape where FastAPI would
    document its default 422 for parameter errors (our handler answers those 400)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            components = schema.setdefault("components", {})
            components.setdefault("securitySchemes", {})["PosToken"] = {
                "type": "http",
                "scheme": "bearer",
            }
            for path_item in schema.get("paths", {}).values():
                for operation in path_item.values():
                    responses = operation.get("responses", {})
                    if "422" in responses and "HTTPValidationError" in str(responses["422"]):
                        del responses["422"]
                        responses.setdefault("400", {"description": "invalid parameter"})
            for name in ("HTTPValidationError", "ValidationError"):
                components.get("schemas", {}).pop(name, None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


async def _api_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, ApiError)
    return error_response(
        request, error.status_code, error.error_code, error.message, error.headers, error.field
    )


async def _http_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, StarletteHTTPException)
    code = CODE_BY_STATUS.get(error.status_code, "HTTP_ERROR")
    message = str(error.detail) if error.detail else code.lower().replace("_", " ")
    headers = dict(error.headers or {})
    if error.status_code == 405:
        headers["Allow"] = ", ".join(_allowed_methods(request))
    return error_response(request, error.status_code, code, message, headers)


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route serves on this path (Starlette names only the first route's,
    and GET /topup and POST /topup are two routes)."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        route_methods = getattr(route, "methods", None)
        path_regex = getattr(route, "path_regex", None)
        if route_methods and path_regex is not None and path_regex.match(request.url.path):
            methods |= set(route_methods)
    return sorted(methods)


async def _validation_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, RequestValidationError)
    first = error.errors()[0] if error.errors() else {}
    where = ".".join(str(part) for part in first.get("loc", ()))
    message = f"{where}: {first.get('msg', 'invalid')}" if where else "invalid request"
    return error_response(request, 400, INVALID_REQUEST, message[:200])


async def _transient_error(request: Request, error: Exception) -> Response:
    log.warning("database unavailable", extra={"context": {"reason": str(error)}})
    return error_response(
        request,
        503,
        SERVICE_UNAVAILABLE,
        "database unavailable, try again",
        {"Retry-After": "1"},
    )
