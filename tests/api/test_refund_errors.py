"""A Stripe refund call that did not refund, for both kinds of refund (cloud/api/refunds.py
RefundErrors): an owed refund of a declined top-up and a payout part. A transient error is
recorded for a retry after the kind's backoff with a warning; a refusal for good is recorded
failed (no wait passed: each procedure keeps its own default) with an error. What is recorded
and logged, by which logger and in which words, is pinned here for each kind."""

from __future__ import annotations

import logging
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


class _OwedLedger:
    def __init__(self, owed: OwedRefund) -> None:
        self._owed = owed
        self.finished: list[dict[str, object]] = []

    def claim_topup_refunds(self, **_: object) -> list[OwedRefund]:
        return [self._owed]

    def finish_topup_refund(self, **kwargs: object) -> bool:
        self.finished.append(kwargs)
        return True


class _PartStore:
    def __init__(self, part: ClaimedPart) -> None:
        self._part = part
        self.finished: list[dict[str, object]] = []

    def claim(self, **_: object) -> list[ClaimedPart]:
        return [self._part]

    def finish(
        self,
        payout_id: str,
        result: str,
        *,
        refund_id: str | None = None,
        error: str | None = None,
        retry_after_s: int = 0,
    ) -> None:
        """PayoutRefundStore.finish's signature; what the procedure would get."""
        self.finished.append(
            {
                "id": payout_id,
                "result": result,
                "refund_id": refund_id,
                "error": error,
                "retry": retry_after_s,
            }
        )


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


def _lines(caplog: pytest.LogCaptureFixture) -> list[tuple[str, int, str, object]]:
    return [
        (record.name, record.levelno, record.getMessage(), getattr(record, "context", None))
        for record in caplog.records
        if record.name.startswith("cloud.api")
    ]


def test_the_backoff_doubles_from_its_minimum_up_to_its_maximum() -> None:
    assert [retry_after_s(n) for n in (0, 1, 2, 3, 13, 40)] == [1, 1, 2, 4, 3600, 3600]
    assert [retry_after_s(n, minimum_s=5, maximum_s=600) for n in (1, 2, 8, 9)] == [
        5,
        10,
        600,
        600,
    ]


def test_an_owed_refund_stripe_could_not_make_is_retried_after_its_backoff(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ledger = _OwedLedger(_OWED)
    with caplog.at_level(logging.INFO):
        tally = settle_refunds(ledger, _Raises(_TRANSIENT))  # type: ignore[arg-type]
    assert tally.as_dict() == {"succeeded": 0, "retry": 1, "failed": 0}
    assert ledger.finished == [
        {"topup_id": "tu-1", "result": "retry", "error": str(_TRANSIENT), "retry_after_s": 4}
    ]
    assert _lines(caplog) == [
        (
            "cloud.api.refunds",
            logging.WARNING,
            "stripe refund owed, will retry",
            {**_OWED_CONTEXT, "reason": str(_TRANSIENT), "retry_after_s": 4},
        )
    ]


def test_an_owed_refund_stripe_refuses_fails_for_a_human(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ledger = _OwedLedger(_OWED)
    with caplog.at_level(logging.INFO):
        tally = settle_refunds(ledger, _Raises(_REFUSED))  # type: ignore[arg-type]
    assert tally.as_dict() == {"succeeded": 0, "retry": 0, "failed": 1}
    assert ledger.finished == [{"topup_id": "tu-1", "result": "failed", "error": str(_REFUSED)}]
    assert _lines(caplog) == [
        (
            "cloud.api.refunds",
            logging.ERROR,
            "stripe refused the refund: refund it by hand",
            {**_OWED_CONTEXT, "reason": str(_REFUSED)},
        )
    ]


def test_a_payout_part_stripe_could_not_refund_is_retried_after_the_runner_s_backoff(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = _PartStore(_PART)
    with caplog.at_level(logging.INFO):
        tally = refund_due_parts(
            store,  # type: ignore[arg-type]
            _Raises(_TRANSIENT),
            retry_min_s=7,
            retry_max_s=100,
        )
    assert tally.as_dict() == {"paid": 0, "retry": 1, "failed": 0}
    assert store.finished == [
        {
            "id": "0190-part",
            "result": "retry",
            "refund_id": None,
            "error": str(_TRANSIENT),
            "retry": 14,
        }
    ]
    assert _lines(caplog) == [
        (
            "cloud.api.payout_refunds",
            logging.WARNING,
            "stripe refund of a payout part failed, will retry",
            {**_PART_CONTEXT, "reason": str(_TRANSIENT), "retry_after_s": 14},
        )
    ]


def test_a_payout_part_stripe_refuses_fails(caplog: pytest.LogCaptureFixture) -> None:
    store = _PartStore(_PART)
    with caplog.at_level(logging.INFO):
        tally = refund_due_parts(store, _Raises(_REFUSED))  # type: ignore[arg-type]
    assert tally.as_dict() == {"paid": 0, "retry": 0, "failed": 1}
    assert store.finished == [
        {
            "id": "0190-part",
            "result": "failed",
            "refund_id": None,
            "error": str(_REFUSED),
            "retry": 0,
        }
    ]
    assert _lines(caplog) == [
        (
            "cloud.api.payout_refunds",
            logging.ERROR,
            "stripe refused the refund of a payout part: its money is back on the card",
            {**_PART_CONTEXT, "reason": str(_REFUSED)},
        )
    ]
