"""A Stripe refund call that did not refund, for both kinds of refund (cloud/api/refunds.py
RefundErrors): an owed refund of a declined top-up and a payout part. A transient error is
recorded for a retry after the kind's backoff with a warning; a refusal for good is recorded
failed (no wait passed: each procedure keeps its own default) with an error. What is recorded
and logged, by which logger and in which words, is pinned here for each kind."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest

from cloud.api.payout_refunds import ClaimedPart, refund_due_parts
from cloud.api.refunds import retry_after_s, settle_refunds
from cloud.api.stripe_gateway import PaymentProviderError
from cloud.ledger_records import OwedRefund

_TRANSIENT = PaymentProviderError("APIConnectionError: Stripe away")
_REFUSED = PaymentProviderError("InvalidRequestError: charge_already_refunded", retryable=False)


class _Raises:
    def __init__(self, error: PaymentProviderError) -> None:
        self._error = error

    def refund_in_full(self, **_: object) -> Any:
        raise self._error

    def refund_part(self, **_: object) -> str:
        raise self._error


class _Books:
    """Both ports' claim and finish (the owed refunds' ledger, the payout parts' store): leases
    `claimed`, and keeps each finish as the procedure would get it."""

    def __init__(self, claimed: list[Any]) -> None:
        self._claimed = claimed
        self.finished: list[dict[str, object]] = []

    def claim_topup_refunds(self, **_: object) -> list[Any]:
        return self._claimed

    def claim(self, **_: object) -> list[Any]:
        return self._claimed

    def finish_topup_refund(self, **kwargs: object) -> bool:
        self.finished.append(kwargs)
        return True

    def finish(self, payout_id: str, result: str, **kwargs: object) -> None:
        self.finished.append({"payout_id": payout_id, "result": result, **kwargs})


_OWED = OwedRefund(
    topup_id="tu-1",
    session_id="cs_test_1",
    payment_intent_id="pi_1",
    card_uid="04A1B2C3D4E5F6",
    amount_cents=2500,
    currency="eur",
    idempotency_key="refund-session-cs_test_1",
    attempts=3,
)
_OWED_CONTEXT = {
    "topup_id": "tu-1",
    "session_id": "cs_test_1",
    "payment_intent_id": "pi_1",
    "amount_cents": 2500,
    "attempt": 3,
}
_PART = ClaimedPart(
    payout_id="0190-part",
    card_uid="04A1B2C3D4E5F6",
    payment_intent_id="pi_2",
    amount_cents=700,
    attempts=2,
)
_PART_CONTEXT = {
    "payout_id": "0190-part",
    "card_uid": "04A1B2C3D4E5F6",
    "payment_intent_id": "pi_2",
    "amount_cents": 700,
    "attempt": 2,
}


def test_the_backoff_doubles_from_its_minimum_up_to_its_maximum() -> None:
    assert [retry_after_s(n) for n in (0, 1, 2, 3, 13, 40)] == [1, 1, 2, 4, 3600, 3600]
    assert [retry_after_s(n, minimum_s=5, maximum_s=600) for n in (1, 2, 8, 9)] == [
        5,
        10,
        600,
        600,
    ]


def _settle(books: _Books, gateway: _Raises) -> dict[str, int]:
    return settle_refunds(books, gateway).as_dict()  # type: ignore[arg-type]


def _refund_parts(books: _Books, gateway: _Raises) -> dict[str, int]:
    tally = refund_due_parts(books, gateway, retry_min_s=7, retry_max_s=100)  # type: ignore[arg-type]
    return tally.as_dict()


# Each kind: how it runs, what it leases, the id its finish names, its log context, logger, the
# tally's word for done, its backoff after this attempt, and its two log lines' words.
_KINDS = {
    "owed refund": (
        _settle,
        _OWED,
        {"topup_id": "tu-1"},
        _OWED_CONTEXT,
        "cloud.api.refunds",
        "succeeded",
        4,  # the 3rd attempt: 1 s, 2 s, 4 s
        "stripe refund owed, will retry",
        "stripe refused the refund: refund it by hand",
    ),
    "payout part": (
        _refund_parts,
        _PART,
        {"payout_id": "0190-part"},
        _PART_CONTEXT,
        "cloud.api.payout_refunds",
        "paid",
        14,  # the 2nd attempt: 7 s, 14 s
        "stripe refund of a payout part failed, will retry",
        "stripe refused the refund of a payout part: its money is back on the card",
    ),
}


@pytest.mark.parametrize("error", [_TRANSIENT, _REFUSED], ids=["transient", "refused"])
@pytest.mark.parametrize(
    ("run", "claimed", "named", "context", "logger", "done", "wait_s", "will_retry", "refused"),
    _KINDS.values(),
    ids=_KINDS.keys(),
)
def test_a_refund_stripe_did_not_make_is_recorded_counted_and_logged(
    run: Callable[[_Books, _Raises], dict[str, int]],
    claimed: object,
    named: dict[str, str],
    context: dict[str, object],
    logger: str,
    done: str,
    wait_s: int,
    will_retry: str,
    refused: str,
    error: PaymentProviderError,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Transient: `retry` with the backoff, a warning. Refused: `failed` with no wait passed (the
    procedure's own default), an error."""
    books = _Books([claimed])
    with caplog.at_level(logging.INFO):
        tally = run(books, _Raises(error))
    retry = error.retryable
    wait = {"retry_after_s": wait_s} if retry else {}
    assert tally == {done: 0, "retry": int(retry), "failed": int(not retry)}
    assert books.finished == [
        {**named, "result": "retry" if retry else "failed", "error": str(error), **wait}
    ]
    assert [
        (record.name, record.levelno, record.getMessage(), getattr(record, "context", None))
        for record in caplog.records
        if record.name.startswith("cloud.api")
    ] == [
        (
            logger,
            logging.WARNING if retry else logging.ERROR,
            will_retry if retry else refused,
            {**context, "reason": str(error), **wait},
        )
    ]
