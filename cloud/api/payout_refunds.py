"""Stripe refunds of payout parts (issue 16 §2, DESIGN.md "Attendee portal and payouts").

A payout request (sp_payout_request) leaves a `pending` part of kind `stripe` for each top-up it
gives money back to. The runner here refunds each through Stripe's API:

  * it leases due parts in the database first (sp_payout_refund_claim: FOR UPDATE SKIP LOCKED and
    a lease, the attempt counted), so several API processes never call Stripe for one part at
    once and every attempt is on record before Stripe is called;
  * it calls `POST /v1/refunds` with the top-up's payment intent, the part's amount, metadata
    {"payout_id", "card_uid"} and the idempotency key payout-<payout id>: however often a part is
    retried (the client's own retries, a backoff, another process after a lease ran out), Stripe
    refunds it at most once;
  * it records Stripe's answer (sp_payout_refund_finish): `paid` with the refund id; a transient
    error (connection, 5xx, 429, a key Stripe refuses) is retried after a capped exponential
    backoff; a refusal for good (the charge already refunded, more than its unrefunded rest) makes
    the part `failed` and sp_payout_fail's rule gives the money back to the card.

Where it runs (docs/operations.md "Payouts"): a background task of every API process, started in
the FastAPI lifespan, polling every few seconds (a part is refunded within 30 s of its request);
and `festival-cloud payout refund` runs one pass from the command line.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol

from cloud.api.limits import (
    PAYOUT_REFUND_BATCH_MAX,
    PAYOUT_REFUND_LEASE_S,
    PAYOUT_REFUND_RETRY_MAX_S,
    PAYOUT_REFUND_RETRY_MIN_S,
)
from cloud.api.refunds import RefundErrors, retry_after_s
from cloud.api.stripe_gateway import PaymentProviderError
from cloud.database import Engine, text, translate_errors

if TYPE_CHECKING:
    import argparse

    from cloud.settings import CloudSettings

log = logging.getLogger("cloud.api.payout_refunds")
_ERRORS = RefundErrors(
    log,
    will_retry="stripe refund of a payout part failed, will retry",
    refused="stripe refused the refund of a payout part: its money is back on the card",
)


@dataclass(frozen=True, slots=True)
class ClaimedPart:
    """A pending Stripe payout part leased for one attempt (`attempts` counts this one)."""

    payout_id: str
    card_uid: str
    payment_intent_id: str
    amount_cents: int
    attempts: int


class RefundGateway(Protocol):
    def refund_part(
        self, *, payment_intent_id: str, amount_cents: int, payout_id: str, card_uid: str
    ) -> str: ...


class PayoutRefundStore:
    """The database side: the SECURITY DEFINER procedures of revision 0017."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def claim(self, *, limit: int, lease_s: int = PAYOUT_REFUND_LEASE_S) -> list[ClaimedPart]:
        with translate_errors(), self._engine.begin() as connection:
            rows = connection.execute(
                text(
                    "SELECT payout_id::text, card_uid, payment_intent_id, amount_cents, attempts"
                    " FROM sp_payout_refund_claim(:limit, :lease_s)"
                ),
                {"limit": limit, "lease_s": lease_s},
            ).all()
        return [ClaimedPart(*row) for row in rows]

    def finish(
        self,
        payout_id: str,
        result: str,
        *,
        refund_id: str | None = None,
        error: str | None = None,
        retry_after_s: int = 0,
    ) -> dict[str, Any] | None:
        """Record Stripe's answer: 'paid' (refund_id), 'retry' (error) or 'failed' (error)."""
        assert result in ("paid", "retry", "failed"), result
        with translate_errors(), self._engine.begin() as connection:
            outcome = connection.execute(
                text(
                    "SELECT sp_payout_refund_finish(CAST(:id AS uuid), :result, :refund_id,"
                    " :error, :retry)"
                ),
                {
                    "id": payout_id,
                    "result": result,
                    "refund_id": refund_id,
                    "error": error,
                    "retry": retry_after_s,
                },
            ).scalar_one()
        return _document(outcome)

    def seen(self, payment_intent_id: str, refunds: list[dict[str, Any]]) -> int:
        """charge.refunded listed these refunds ({"id", "amount", "payout_id"}): our pending
        parts among them are paid from now on. How many of them are ours."""
        with translate_errors(), self._engine.begin() as connection:
            ours = connection.execute(
                text("SELECT sp_payout_refunds_seen(:pi, CAST(:refunds AS jsonb))"),
                {"pi": payment_intent_id, "refunds": json.dumps(refunds)},
            ).scalar_one()
        return int(ours)


def _document(value: object) -> dict[str, Any] | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = json.loads(value)
    assert isinstance(value, dict)
    return value


@dataclass
class RefundTally:
    paid: int = 0
    retry: int = 0
    failed: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"paid": self.paid, "retry": self.retry, "failed": self.failed}


def refund_due_parts(
    store: PayoutRefundStore,
    gateway: RefundGateway,
    *,
    limit: int = PAYOUT_REFUND_BATCH_MAX,
    retry_min_s: int = PAYOUT_REFUND_RETRY_MIN_S,
    retry_max_s: int = PAYOUT_REFUND_RETRY_MAX_S,
) -> RefundTally:
    """One pass: lease the due pending Stripe parts, refund each, record each answer. Blocking."""
    tally = RefundTally()
    for part in store.claim(limit=limit):
        context = {
            "payout_id": part.payout_id,
            "card_uid": part.card_uid,
            "payment_intent_id": part.payment_intent_id,
            "amount_cents": part.amount_cents,
            "attempt": part.attempts,
        }
        try:
            refund_id = gateway.refund_part(
                payment_intent_id=part.payment_intent_id,
                amount_cents=part.amount_cents,
                payout_id=part.payout_id,
                card_uid=part.card_uid,
            )
        except PaymentProviderError as error:
            _ERRORS.record(
                error,
                finish=partial(store.finish, part.payout_id),
                wait_s=retry_after_s(part.attempts, minimum_s=retry_min_s, maximum_s=retry_max_s),
                tally=tally,
                context=context,
            )
            continue
        store.finish(part.payout_id, "paid", refund_id=refund_id)
        tally.paid += 1
        log.info("payout part refunded", extra={"context": {**context, "refund_id": refund_id}})
    return tally


class PayoutRefundRunner:
    """The API process's background task: a pass every `interval_s` (and at once when woken)."""

    def __init__(
        self,
        store: PayoutRefundStore,
        gateway: RefundGateway,
        *,
        interval_s: float,
        retry_min_s: int = PAYOUT_REFUND_RETRY_MIN_S,
        retry_max_s: int = PAYOUT_REFUND_RETRY_MAX_S,
        on_tally: Callable[[RefundTally], None] | None = None,
    ) -> None:
        self._on_tally = on_tally
        self._store = store
        self._gateway = gateway
        self._interval_s = interval_s
        self._retry_min_s = retry_min_s
        self._retry_max_s = retry_max_s
        # Made in start(), in the loop that runs the task (an app may be served by several
        # loops one after another, as tests do).
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None

    def wake(self) -> None:
        """Run a pass now (a payout was just requested). Call from the event loop's thread."""
        if self._wake is not None:
            self._wake.set()

    def start(self) -> None:
        self._wake = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(
            self._run(self._wake), name="payout-refunds"
        )

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
            self._wake = None

    async def _run(self, wake: asyncio.Event) -> None:
        from starlette.concurrency import run_in_threadpool

        while True:
            wake.clear()
            try:
                tally = await run_in_threadpool(
                    refund_due_parts,
                    self._store,
                    self._gateway,
                    retry_min_s=self._retry_min_s,
                    retry_max_s=self._retry_max_s,
                )
                if self._on_tally is not None:
                    self._on_tally(tally)
                # A full batch: more may be due at once.
                if tally.paid + tally.retry + tally.failed >= PAYOUT_REFUND_BATCH_MAX:
                    continue
            except asyncio.CancelledError:
                raise
            except Exception as error:
                # The database or Stripe away: nothing is lost (the parts stay pending and
                # leased parts come back when their lease ends); the next pass tries again.
                log.warning("payout refund pass failed", extra={"context": {"reason": str(error)}})
            try:
                await asyncio.wait_for(wake.wait(), timeout=self._interval_s)
            except TimeoutError:
                pass


# --- the CLI: `festival-cloud payout refund` ------------------------------------------------------


def payout_refund(args: argparse.Namespace, settings: CloudSettings) -> int:
    """One pass of the runner (what every API process does every few seconds); prints the tally."""
    from cloud.admin import _url
    from cloud.api.stripe_gateway import PayoutRefundGateway, build_stripe_client
    from cloud.database import make_engine

    client = build_stripe_client(settings)
    if client is None:
        print("festival-cloud: STRIPE_SECRET_KEY is not set: no refunds", file=sys.stderr)
        return 1
    engine = make_engine(_url(settings), pool_size=1, application_name="festival-cloud")
    try:
        tally = refund_due_parts(
            PayoutRefundStore(engine), PayoutRefundGateway(client), limit=args.limit
        )
    finally:
        engine.dispose()
    print(json.dumps(tally.as_dict()))
    return 0
