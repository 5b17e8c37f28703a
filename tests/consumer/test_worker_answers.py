"""The worker answers with the ledger's outcome as it is (issue 12 §1); fake ledger and link."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Collection, Sequence
from typing import Any

import pytest

from cloud.consumer.backoff import Backoff
from cloud.consumer.decisions import RequestPolicy
from cloud.consumer.inbox import InboundMessage
from cloud.consumer.lifecycle import Lifecycle
from cloud.consumer.metrics import ConsumerMetrics
from cloud.consumer.worker import Worker
from cloud.ledger_records import KioskRecord, LedgerRequest, Outcome, outcome_from_document
from protocol.codec import encode_request, verify_result
from protocol.errors import ErrorCode, Status
from protocol.keys import generate_private_key, public_key_b64
from protocol.models import BarItem, BarOrder
from protocol.topics import TopicKind, topic_for

PREFIX = "festival"
KIOSK_KEY = generate_private_key()
CLOUD_KEY = generate_private_key()


class FakeLedger:
    """Answers like the procedures: no kiosk_id or seq in an outcome."""

    def __init__(self, enabled: bool = True) -> None:
        self.record = KioskRecord("bar-1", public_key_b64(KIOSK_KEY), "bar", enabled)
        self.broken: set[str] = set()  # request ids answered with an inconsistent outcome

    def kiosks_named(self, kiosk_ids: Collection[str]) -> list[KioskRecord]:
        return [self.record] if "bar-1" in kiosk_ids else []

    def apply_batch(self, items: Sequence[LedgerRequest]) -> list[Outcome]:
        return [
            outcome_from_document(
                {
                    "request_id": item.request.request_id,
                    "status": "approved",
                    "error_code": None,
                    "message": "Paid",
                    "transaction_id": None if item.request.request_id in self.broken else "tx-1",
                    "previous_balance_cents": 1000,
                    "new_balance_cents": 100,
                    "replayed": False,
                    "processed_at_ms": 1,
                    "order_id": "order-1",
                    "card_uid": item.request.card_uid,
                }
            )
            for item in items
        ]

    def record_rejection(self, **fields: Any) -> Outcome:
        return outcome_from_document(
            {
                "request_id": fields["request_id"],
                "status": "rejected",
                "error_code": ErrorCode(fields["error_code"]).value,
                "message": fields["message"],
                "replayed": False,
                "processed_at_ms": 1,
                "card_uid": fields["card_uid"],
            }
        )

    def record_dead_letters(self, letters: Sequence[object]) -> list[bool]:
        return [True] * len(letters)


class FakeLink:
    def __init__(self) -> None:
        self.published: list[tuple[str, bytes]] = []
        self.acked: list[InboundMessage] = []

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> bool:
        self.published.append((topic, payload))
        return True

    def ack(self, messages: Sequence[InboundMessage]) -> int:
        self.acked.extend(messages)
        return len(messages)


def worker(ledger: FakeLedger, link: FakeLink) -> Worker:
    return Worker(
        ledger=ledger,
        ledger_request=LedgerRequest,
        transient_errors=(ConnectionError,),
        link=link,
        signing_key=CLOUD_KEY,
        policy=RequestPolicy("EUR", 600, 60, 100_000),
        prefix=PREFIX,
        metrics=ConsumerMetrics.create(),
        lifecycle=Lifecycle(grace_s=1, notifier=lambda _: True, watchdog_s=None),
        backoff_factory=lambda: Backoff(0.01, 0.02),
    )


def message(seq: int) -> tuple[str, InboundMessage]:
    request_id = str(uuid.uuid4())
    order = BarOrder(
        request_id=request_id,
        kiosk_id="bar-1",
        seq=seq,
        created_at_ms=time.time_ns() // 1_000_000,
        card_uid="04A1B2C3",
        currency="EUR",
        items=(BarItem("Beer", 2, 450),),
        total_cents=900,
    )
    raw = encode_request(order, KIOSK_KEY)
    topic = topic_for(PREFIX, "bar-1", TopicKind.TX)
    return request_id, InboundMessage(topic, raw, 1, seq, False, 1, time.monotonic(), 0)


def verified(payload: bytes) -> Any:
    return verify_result(payload, cloud_public_key=CLOUD_KEY.public_key(), kiosk_id="bar-1")


def test_the_outcome_is_answered_with_the_echo_the_request_gave() -> None:
    ledger, link = FakeLedger(), FakeLink()
    request_id, inbound = message(7)
    worker(ledger, link).handle([inbound])
    [(topic, payload)] = link.published
    assert topic == topic_for(PREFIX, "bar-1", TopicKind.RESULT)
    result = verified(payload)
    assert (result.request_id, result.kiosk_id, result.seq) == (request_id, "bar-1", 7)
    assert (result.status, result.transaction_id, result.new_balance_cents) == (
        Status.APPROVED,
        "tx-1",
        100,
    )
    assert link.acked == [inbound]


def test_a_rejection_is_answered_with_its_stored_outcome() -> None:
    ledger, link = FakeLedger(enabled=False), FakeLink()
    request_id, inbound = message(8)
    worker(ledger, link).handle([inbound])
    result = verified(link.published[0][1])
    assert result.error_code is ErrorCode.KIOSK_DISABLED and result.status is Status.REJECTED
    assert (result.request_id, result.seq, result.card_uid) == (request_id, 8, "04A1B2C3")


def test_an_inconsistent_outcome_goes_unanswered_and_the_rest_are_answered(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ledger, link = FakeLedger(), FakeLink()
    broken_id, broken = message(1)
    good_id, good = message(2)
    ledger.broken.add(broken_id)
    with caplog.at_level(logging.ERROR, logger="cloud.consumer"):
        worker(ledger, link).handle([broken, good])
    assert [verified(payload).request_id for _, payload in link.published] == [good_id]
    assert link.acked == [broken, good]  # committed: a redelivery would replay the same outcome
    assert any(record.message == "cannot build a result" for record in caplog.records)


def test_a_call_in_flight_before_an_outage_does_not_end_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Two stages: one fails (outage logged); the other's call, begun before the outage, returns
    after it. That success must not log "database back", or the failing stage's next retry would
    log "database unavailable" a second time for the same outage."""
    w = worker(FakeLedger(), FakeLink())
    first_failure = threading.Event()
    attempts: list[int] = []

    def failing_twice() -> str:
        attempts.append(1)
        if len(attempts) == 1:
            first_failure.set()
            raise ConnectionError("server closed the connection")
        if len(attempts) == 2:
            # The in-flight call of the other stage returns now, while this one still retries.
            other.join(timeout=5)
            raise ConnectionError("connection refused")
        return "retried"

    def in_flight() -> str:
        assert first_failure.wait(timeout=5)
        return "answered"

    results: list[str] = []
    other = threading.Thread(
        target=lambda: results.append(w._database(in_flight, Backoff(0.01, 0.02)))
    )
    with caplog.at_level(logging.INFO, logger="cloud.consumer"):
        other.start()
        results.append(w._database(failing_twice, Backoff(0.01, 0.02)))
    events = [record.getMessage() for record in caplog.records]
    assert sorted(results) == ["answered", "retried"]
    assert events.count("database unavailable") == 1
    assert events.count("database back") == 1
    assert events.index("database unavailable") < events.index("database back")
