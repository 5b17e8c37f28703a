"""Refunds the festival owes: a paid Checkout Session of ours that could not be credited.

The webhook records the refund as owed in the same database transaction that declines the
top-up (sp_handle_stripe_checkout); only then is Stripe called, here. A refund is never lost:
  * Stripe is called right after the webhook has answered (a background task of that request);
  * when the call fails (Stripe away, 5xx after the client's own retries), the refund stays owed
    with a backoff; the next webhook handled by the same process retries what is due, and every
    `festival-cloud cleanup` retries everything owed;
  * every attempt for one session carries the same idempotency key (refund-session-<id>) and the
    same parameters, so however often it is retried, Stripe refunds at most once.
Stripe refusing a refund for good (invalid request) marks it failed, with Stripe's message, for a
human: that is the one case that is not retried.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from typing import Protocol

from cloud.api.limits import REFUND_RETRY_DELAY_MAX_S, REFUND_RETRY_DELAY_MIN_S, SWEEP_REFUNDS_MAX
from cloud.api.stripe_gateway import CheckoutGateway, PaymentProviderError
from cloud.ports import RefundLedger

log = logging.getLogger("cloud.api.refunds")


@dataclass
class RefundTally:
    succeeded: int = 0
    retry: int = 0
    failed: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"succeeded": self.succeeded, "retry": self.retry, "failed": self.failed}


def retry_after_s(
    attempts: int,
    *,
    minimum_s: int = REFUND_RETRY_DELAY_MIN_S,
    maximum_s: int = REFUND_RETRY_DELAY_MAX_S,
) -> int:
    """Capped exponential backoff after `attempts` failed attempts: min, then doubling, at most
    max (1 s, 2 s, 4 s, ... 1 h for an owed refund; the payout refund runner passes its own)."""
    return int(min(minimum_s * 2 ** max(attempts - 1, 0), maximum_s))


class FinishRefund(Protocol):
    """Records how one refund attempt ended (its ledger procedure, the refund named already)."""

    def __call__(self, *, result: str, error: str, retry_after_s: int = ...) -> object: ...


class ErrorCounts(Protocol):
    retry: int
    failed: int


@dataclass(frozen=True, slots=True)
class RefundErrors:
    """How a kind of refund records a Stripe call that did not refund: the rule is the same for
    owed refunds and payout parts (retry a transient error after a backoff, fail a refusal for
    good); the logger and the words of its two log lines are the kind's own."""

    log: logging.Logger
    will_retry: str
    refused: str

    def record(
        self,
        error: PaymentProviderError,
        *,
        finish: FinishRefund,
        wait_s: int,
        tally: ErrorCounts,
        context: Mapping[str, object],
    ) -> None:
        """A transient error: `retry` after `wait_s`, a warning; a refusal: `failed`, an error."""
        if error.retryable:
            finish(result="retry", error=str(error), retry_after_s=wait_s)
            tally.retry += 1
            self.log.warning(
                self.will_retry,
                extra={"context": {**context, "reason": str(error), "retry_after_s": wait_s}},
            )
        else:
            finish(result="failed", error=str(error))
            tally.failed += 1
            self.log.error(self.refused, extra={"context": {**context, "reason": str(error)}})


_ERRORS = RefundErrors(
    log,
    will_retry="stripe refund owed, will retry",
    refused="stripe refused the refund: refund it by hand",
)


def settle_refunds(
    ledger: RefundLedger,
    gateway: CheckoutGateway,
    *,
    limit: int = SWEEP_REFUNDS_MAX,
    topup_id: str | None = None,
    due_only: bool = True,
) -> RefundTally:
    """Call Stripe for owed refunds (leased from the ledger) and record each answer. Blocking."""
    tally = RefundTally()
    for owed in ledger.claim_topup_refunds(limit=limit, topup_id=topup_id, due_only=due_only):
        context = {
            "topup_id": owed.topup_id,
            "session_id": owed.session_id,
            "payment_intent_id": owed.payment_intent_id,
            "amount_cents": owed.amount_cents,
            "attempt": owed.attempts,
        }
        if owed.payment_intent_id is None:
            ledger.finish_topup_refund(
                topup_id=owed.topup_id, result="failed", error="no payment intent to refund"
            )
            tally.failed += 1
            continue
        try:
            result = gateway.refund_in_full(
                payment_intent_id=owed.payment_intent_id,
                idempotency_key=owed.idempotency_key,
                topup_id=owed.topup_id,
                session_id=owed.session_id,
                card_uid=owed.card_uid,
            )
        except PaymentProviderError as error:
            _ERRORS.record(
                error,
                finish=partial(ledger.finish_topup_refund, topup_id=owed.topup_id),
                wait_s=retry_after_s(owed.attempts),
                tally=tally,
                context=context,
            )
            continue
        ledger.finish_topup_refund(
            topup_id=owed.topup_id,
            result="succeeded",
            refund_id=result.refund_id,
            error=None,
        )
        tally.succeeded += 1
        log.info(
            "stripe refund done",
            extra={
                "context": {
                    **context,
                    "refund_id": result.refund_id,
                    "already_refunded": result.already_refunded,
                }
            },
        )
    return tally
