"""POST /stripe/webhook (alias /functions/v1/stripe-webhook): Stripe's events, exactly once.

Order of work: verify the signature over the raw body (400 if wrong or out of time), parse the
event (400 if it is not one), then hand it to the ledger in two transactions: the first stores
the event id (unique) and the event, the second applies its action (credit, refund, dispute, or
the reason it changes nothing); the action runs for a duplicate id too, and each procedure's own
idempotency key makes a true duplicate change nothing (see ``apply_event``). Refunds owed are
sent to Stripe in a background task after the answer. The answer is 200 for processed,
duplicate, ignored and anomaly (Stripe must stop resending), 503 when the database is away
(Stripe resends later, and the event id makes that harmless).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from cloud.api.bodies import json_request_body
from cloud.api.errors import (
    INVALID_REQUEST,
    INVALID_SIGNATURE,
    NOT_CONFIGURED,
    error_response,
    request_id_of,
)
from cloud.api.metrics import event_type_label
from cloud.api.middleware import annotate_request_log
from cloud.api.payout_refunds import PayoutRefundStore
from cloud.api.refunds import settle_refunds
from cloud.api.services import Services, services_of
from cloud.api.stripe_events import (
    Action,
    Anomaly,
    CreditTopup,
    DisputeCharge,
    DisputeClosed,
    EventError,
    ExpireTopup,
    FailTopup,
    Ignore,
    RefundCharge,
    SignatureError,
    StripeEvent,
    classify,
    parse_event,
    verify_signature,
)
from cloud.api.stripe_gateway import live_mode_of
from cloud.database import TransientDatabaseError
from cloud.ledger_records import Outcome
from cloud.logs import bind
from protocol.errors import Status

log = logging.getLogger("cloud.api.webhook")

WEBHOOK_PATHS = ("/stripe/webhook", "/functions/v1/stripe-webhook")
# app.state flag: this process failed to refund something, so its next webhooks retry what is due.
REFUNDS_OWED_STATE = "stripe_refunds_owed"

WEBHOOK_OPENAPI: dict[str, Any] = {
    "parameters": [
        {
            "name": "Stripe-Signature",
            "in": "header",
            "required": True,
            "schema": {"type": "string"},
            "description": "t=<unix seconds>,v1=<hex HMAC-SHA256 of '<t>.<raw body>'>",
        }
    ],
    "requestBody": json_request_body(
        {
            "type": "object",
            "required": ["id", "object", "type", "created", "data"],
            "properties": {
                "id": {"type": "string"},
                "object": {"type": "string", "enum": ["event"]},
                "type": {"type": "string"},
                "created": {"type": "integer"},
                "data": {"type": "object"},
            },
        }
    ),
    "responses": {
        "200": {"description": "processed, duplicate, ignored or recorded as an anomaly"},
        "400": {"description": "bad signature, timestamp outside 300 s, or not an event"},
        "413": {"description": "body too large"},
        "503": {"description": "database unavailable or webhook secret not configured"},
    },
}


@dataclass(frozen=True, slots=True)
class Applied:
    """The outcome label of one event, and the top-up whose full refund it made owed (if any)."""

    outcome: str
    refund_topup_id: str | None = None


def apply_event(
    services: Services, event: StripeEvent, action: Action, trace_id: str | None
) -> Applied:
    """Record the event, then apply its action; returns the outcome. Blocking (thread pool).

    The action runs for a duplicate event id too: recording and applying are two transactions,
    and if a fault struck between them (we answered 503), Stripe's retry must still apply it.
    Each ledger procedure is idempotent by its own key (the session, the cumulative refund,
    the dispute's event or id), so for a true duplicate it changes nothing. An event that changes
    nothing (ignored, anomaly) gets its reason stored on its row: nothing is ignored silently.
    """
    ledger = services.ledger
    fresh = bool(
        ledger.record_stripe_event(
            event_id=event.event_id, event_type=event.event_type, payload=dict(event.document)
        )
    )
    if isinstance(action, CreditTopup):
        result = ledger.handle_stripe_checkout(
            event_id=event.event_id,
            session_id=action.session_id,
            topup_id=action.topup_id,
            card_uid=action.card_uid,
            amount_cents=action.amount_cents,
            currency=action.currency,
            payment_intent_id=action.payment_intent_id,
            trace_id=trace_id,
        )
        outcome = result.outcome
        _log_outcome(
            "stripe top-up",
            outcome,
            amount_cents=action.amount_cents,
            session_id=action.session_id,
            topup_id=action.topup_id,
            refund_owed=result.refund_owed,
        )
        if not fresh and outcome.replayed:
            return Applied("duplicate")
        if result.anomaly:
            return Applied("anomaly")
        if outcome.status is Status.DECLINED:
            # Declined and refunded in full: the refund is owed in the ledger from now on.
            owed = result.refund_owed and not outcome.replayed
            return Applied("declined", result.topup_id if owed else None)
        return Applied(_label(fresh, outcome))
    if isinstance(action, RefundCharge):
        # (issue 16) Our own refunds of payout parts, named by their metadata: those parts are
        # paid from now on, and the refund procedure counts them as already off the card.
        payout_parts = 0
        if action.payout_refunds:
            payout_parts = PayoutRefundStore(ledger.engine).seen(
                action.payment_intent_id, [refund.as_dict() for refund in action.payout_refunds]
            )
        outcome = ledger.process_stripe_refund(
            event_id=event.event_id,
            payment_intent_id=action.payment_intent_id,
            amount_refunded_cents=action.amount_refunded_cents,
            trace_id=trace_id,
            card_uid=action.card_uid,
        )
        _log_outcome(
            "stripe refund",
            outcome,
            payment_intent_id=action.payment_intent_id,
            amount_refunded_cents=action.amount_refunded_cents,
            metadata_card_uid=action.card_uid,
            payout_parts=payout_parts,
        )
        return Applied(_label(fresh, outcome))
    if isinstance(action, DisputeCharge):
        outcome = ledger.process_stripe_dispute(
            event_id=event.event_id,
            payment_intent_id=action.payment_intent_id,
            trace_id=trace_id,
            card_uid=action.card_uid,
        )
        _log_outcome(
            "stripe dispute",
            outcome,
            payment_intent_id=action.payment_intent_id,
            metadata_card_uid=action.card_uid,
            level=30,
        )
        return Applied(_label(fresh, outcome))
    if isinstance(action, DisputeClosed):
        outcome = ledger.process_stripe_dispute_closed(
            event_id=event.event_id,
            dispute_id=action.dispute_id,
            payment_intent_id=action.payment_intent_id,
            status=action.status,
            amount_cents=action.amount_cents,
            trace_id=trace_id,
        )
        _log_outcome(
            "stripe dispute closed",
            outcome,
            dispute_id=action.dispute_id,
            payment_intent_id=action.payment_intent_id,
            dispute_status=action.status,
            amount_cents=action.amount_cents,
            level=30,
        )
        return Applied(_label(fresh, outcome))
    if isinstance(action, FailTopup):
        ledger.mark_topup_failed(session_id=action.session_id, event_id=event.event_id)
        return Applied("processed" if fresh else "duplicate")
    if isinstance(action, ExpireTopup):
        ledger.expire_checkout_session(session_id=action.session_id, event_id=event.event_id)
        return Applied("processed" if fresh else "duplicate")
    if isinstance(action, Anomaly):
        noted = ledger.record_stripe_note(
            event_id=event.event_id, disposition="anomaly", reason=action.reason, trace_id=trace_id
        )
        log.error("stripe event anomaly", extra={"context": {"reason": action.reason}})
        return Applied("anomaly" if fresh or noted else "duplicate")
    assert isinstance(action, Ignore)
    noted = ledger.record_stripe_note(
        event_id=event.event_id, disposition="ignored", reason=action.reason, trace_id=trace_id
    )
    return Applied("ignored" if fresh or noted else "duplicate")


def settle_refunds_after_webhook(
    state: Any, services: Services, refund_topup_id: str | None
) -> None:
    """The background task of a webhook: call Stripe for what is owed. Blocking (thread pool).

    This event's own refund first, whatever its backoff; then, when refunds were still owed
    after this process's last look (or it has not looked yet), every refund that is due. A
    failure here loses nothing: the refund stays owed in the ledger (cleanup retries it too).
    """
    checkout = services.checkout
    if checkout is None:
        return
    try:
        if refund_topup_id is not None:
            settle_refunds(
                services.ledger, checkout, limit=1, topup_id=refund_topup_id, due_only=False
            )
        if getattr(state, REFUNDS_OWED_STATE, True):
            settle_refunds(services.ledger, checkout)
        setattr(state, REFUNDS_OWED_STATE, _still_owed(services))
    except Exception:
        # Never into the void: the refund is owed in the ledger; cleanup and the next webhook
        # retry it.
        setattr(state, REFUNDS_OWED_STATE, True)
        log.exception("settling owed stripe refunds failed; they stay owed")


def _still_owed(services: Services) -> bool:
    return int(services.ledger.refunds_owed()) > 0


def _label(fresh: bool, outcome: Outcome) -> str:
    if not fresh and outcome.replayed:
        return "duplicate"
    if outcome.status is Status.REJECTED or outcome.error_code is not None:
        # Recorded but nothing done: an unknown payment intent (a refund linked only by the
        # card metadata: card blocked, nothing taken). The ledger keeps it for a human; Stripe
        # must stop.
        return "anomaly"
    return "processed"


def _log_outcome(what: str, outcome: Outcome, *, level: int = 20, **context: Any) -> None:
    log.log(
        level if outcome.error_code is None else 40,
        what,
        extra={
            "context": {
                **context,
                "card_uid": outcome.card_uid,
                "status": outcome.status.value,
                "error_code": None if outcome.error_code is None else outcome.error_code.value,
                "message": outcome.message,
                "replayed": outcome.replayed,
                "transaction_id": outcome.transaction_id,
            }
        },
    )


async def stripe_webhook(request: Request) -> Response:
    services = services_of(request)
    metrics = services.metrics
    started = time.perf_counter()
    secret = services.settings.stripe_webhook_secret
    if secret is None or not secret.get_secret_value():
        log.error("STRIPE_WEBHOOK_SECRET is not set: refusing webhooks until it is")
        return error_response(request, 503, NOT_CONFIGURED, "webhook secret not configured")
    payload = await request.body()
    try:
        verify_signature(
            payload,
            request.headers.get("stripe-signature"),
            secret.get_secret_value(),
            now_s=services.clock_s(),
            tolerance_s=services.limits.webhook_tolerance_s,
        )
    except SignatureError as error:
        metrics.webhook_events.labels("unknown", "invalid_signature").inc()
        log.warning("stripe webhook refused", extra={"context": {"reason": str(error)}})
        return error_response(request, 400, INVALID_SIGNATURE, str(error))
    try:
        event = parse_event(payload)
        action = classify(event, live_mode=live_mode_of(_secret_key(services)))
    except EventError as error:
        metrics.webhook_events.labels("unknown", "invalid").inc()
        log.warning("stripe webhook body refused", extra={"context": {"reason": str(error)}})
        return error_response(request, 400, INVALID_REQUEST, str(error))
    type_label = event_type_label(event.event_type)
    with bind(stripe_event_id=event.event_id, stripe_event_type=event.event_type):
        try:
            applied = await services.ledger_call(
                "stripe_event", apply_event, services, event, action, request_id_of(request)
            )
        except TransientDatabaseError:
            metrics.webhook_events.labels(type_label, "unavailable").inc()
            raise
        outcome = applied.outcome
        metrics.webhook_events.labels(type_label, outcome).inc()
        metrics.webhook_seconds.labels(type_label).observe(time.perf_counter() - started)
    # Into the request's one log line (middleware), rather than a line of its own.
    annotate_request_log(
        request,
        stripe_event_id=event.event_id,
        stripe_event_type=event.event_type,
        outcome=outcome,
    )
    background = None
    # Unknown (a fresh process: one that crashed may have left refunds owed) counts as owed.
    if services.checkout is not None and (
        applied.refund_topup_id is not None or getattr(request.app.state, REFUNDS_OWED_STATE, True)
    ):
        background = BackgroundTask(
            settle_refunds_after_webhook, request.app.state, services, applied.refund_topup_id
        )
    return JSONResponse(
        {"received": True, "event_id": event.event_id, "outcome": outcome}, background=background
    )


def _secret_key(services: Services) -> str | None:
    key = services.settings.stripe_secret_key
    return None if key is None else key.get_secret_value()


def router() -> APIRouter:
    routes = APIRouter(tags=["stripe"])
    for index, path in enumerate(WEBHOOK_PATHS):
        routes.add_api_route(
            path,
            stripe_webhook,
            methods=["POST"],
            summary="Stripe webhook" if index == 0 else "Stripe webhook (seed path)",
            operation_id="stripe_webhook" if index == 0 else "stripe_webhook_seed_path",
            openapi_extra=WEBHOOK_OPENAPI,
            response_class=JSONResponse,
        )
    return routes
