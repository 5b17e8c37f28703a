"""(1.1) The worker's SUN check (unit: the shipped FakeLedger, a fake link): in sun mode every
bar order's card_sun is verified once in the prepare stage and the ledger decides the counter;
in uid mode card_sun is allowed and ignored; failures are counted by reason."""

from __future__ import annotations

import time
import uuid
from dataclasses import replace

from cloud.consumer.backoff import Backoff
from cloud.consumer.decisions import Apply, Echo, Reject, RequestPolicy, check_sun
from cloud.consumer.inbox import InboundMessage
from cloud.consumer.lifecycle import Lifecycle
from cloud.consumer.metrics import ConsumerMetrics
from cloud.consumer.worker import Worker
from cloud.ledger_fake import FakeLedger
from cloud.ledger_records import LedgerRequest
from protocol.codec import encode_request, verify_result
from protocol.errors import ErrorCode, Status
from protocol.keys import public_key_b64
from protocol.models import BarItem, BarOrder, CardSun, Result
from protocol.sun import CardKeyDerivation, SunFailure, SunVerifier, sun_message
from protocol.topics import TopicKind, topic_for
from tests.consumer.test_worker_answers import CLOUD_KEY, KIOSK_KEY, PREFIX, FakeLink

MASTER = bytes(range(16))
CARD = "04A1B2C3D4E5F6"
KEYS = CardKeyDerivation(MASTER)


def genuine(counter: int, uid: str = CARD) -> CardSun:
    sun = sun_message(KEYS.meta_key, KEYS.file_key(uid), bytes.fromhex(uid), counter)
    return CardSun(sun.picc_data, sun.cmac)


class Recording(FakeLedger):
    """The shipped fake, keeping what the worker sent it."""

    def __init__(self) -> None:
        super().__init__(balances={CARD: 5_000})
        self.add_kiosk("bar-1", public_key_b64(KIOSK_KEY), "bar")
        self.sent: list[LedgerRequest] = []

    def apply_batch(self, items: object) -> list:  # type: ignore[override, type-arg]
        self.sent.extend(items)  # type: ignore[arg-type]
        return super().apply_batch(items)  # type: ignore[arg-type]


def worker(
    ledger: FakeLedger, link: FakeLink, master: bytes | None
) -> tuple[Worker, ConsumerMetrics]:
    metrics = ConsumerMetrics.create()
    return (
        Worker(
            ledger=ledger,
            ledger_request=LedgerRequest,
            transient_errors=(ConnectionError,),
            link=link,
            signing_key=CLOUD_KEY,
            policy=RequestPolicy("EUR", 600, 60, 100_000),
            prefix=PREFIX,
            metrics=metrics,
            lifecycle=Lifecycle(grace_s=1, notifier=lambda _: True, watchdog_s=None),
            backoff_factory=lambda: Backoff(0.01, 0.02),
            sun_master_key=master,
        ),
        metrics,
    )


_seqs = iter(range(1, 10_000))


def order(card_sun: CardSun | None, card_uid: str = CARD) -> BarOrder:
    return BarOrder(
        request_id=str(uuid.uuid4()),
        kiosk_id="bar-1",
        seq=next(_seqs),
        created_at_ms=time.time_ns() // 1_000_000,
        card_uid=card_uid,
        currency="EUR",
        items=(BarItem("Beer", 1, 450),),
        total_cents=450,
        card_sun=card_sun,
    )


def inbound(request: BarOrder) -> InboundMessage:
    topic = topic_for(PREFIX, "bar-1", TopicKind.TX)
    return InboundMessage(
        topic, encode_request(request, KIOSK_KEY), 1, 1, False, 1, time.monotonic(), 0
    )


def results(link: FakeLink) -> list[Result]:
    return [
        verify_result(payload, cloud_public_key=CLOUD_KEY.public_key(), kiosk_id="bar-1")
        for _, payload in link.published
    ]


def failures(metrics: ConsumerMetrics, reason: str) -> float:
    value = metrics.registry.get_sample_value(
        "festival_consumer_sun_failures_total", {"reason": reason}
    )
    return value or 0.0


def test_sun_mode_verifies_and_the_ledger_decides_the_counter() -> None:
    ledger, link = Recording(), FakeLink()
    work, metrics = worker(ledger, link, MASTER)
    captured = genuine(5)
    flipped = replace(genuine(6), cmac=f"{int(genuine(6).cmac, 16) ^ 0x80:016X}")
    requests = [
        order(captured),
        order(captured),  # a replayed message
        order(None),  # a UID-only card
        order(genuine(7, "04000000000099")),  # card A's message with card B's UID
        order(flipped),
        order(genuine(8)),
    ]
    work.handle([inbound(request) for request in requests])
    answered = results(link)
    assert [(r.status, r.error_code) for r in answered] == [
        (Status.APPROVED, None),
        (Status.DECLINED, ErrorCode.CARD_NOT_GENUINE),
        (Status.DECLINED, ErrorCode.CARD_NOT_GENUINE),
        (Status.DECLINED, ErrorCode.CARD_NOT_GENUINE),
        (Status.DECLINED, ErrorCode.CARD_NOT_GENUINE),
        (Status.APPROVED, None),
    ]
    assert [(item.sun_counter, item.sun_failure) for item in ledger.sent] == [
        (5, None),
        (5, None),
        (None, "missing"),
        (None, "wrong_uid"),
        (None, "bad_mac"),
        (8, None),
    ]
    assert ledger.balances[CARD] == 5_000 - 2 * 450
    for reason in ("stale_counter", "missing", "wrong_uid", "bad_mac"):
        assert failures(metrics, reason) == 1, reason
    assert failures(metrics, "not_ours") == 0


def test_a_resent_request_is_replayed_and_not_counted_as_a_failure() -> None:
    ledger, link = Recording(), FakeLink()
    work, metrics = worker(ledger, link, MASTER)
    message = inbound(order(genuine(3)))
    work.handle([message])
    work.handle([message])
    first, again = results(link)
    assert first.approved and again.approved and again.replayed
    assert failures(metrics, "stale_counter") == 0


def test_uid_mode_allows_and_ignores_card_sun() -> None:
    ledger, link = Recording(), FakeLink()
    work, metrics = worker(ledger, link, None)
    forged = CardSun("0" * 32, "0" * 16)
    work.handle([inbound(order(forged)), inbound(order(None)), inbound(order(forged))])
    assert all(result.approved for result in results(link))
    assert [(item.sun_counter, item.sun_failure) for item in ledger.sent] == [(None, None)] * 3
    assert failures(metrics, "missing") == 0


def test_check_sun_leaves_other_decisions_as_they_are() -> None:
    verifier = SunVerifier(MASTER)
    echo = Echo("r-1", "bar-1", 1, CARD)
    reject = Reject(ErrorCode.STALE_REQUEST, "old", "0" * 64, echo, "r-1", "bar-1", "bar_order")
    assert check_sun(reject, verifier) is reject
    apply = Apply(order(genuine(9)), "0" * 64, echo)
    checked = check_sun(apply, verifier)
    assert isinstance(checked, Apply) and (checked.sun_counter, checked.sun_failure) == (9, None)
    foreign = check_sun(Apply(order(genuine(9)), "0" * 64, echo), SunVerifier(bytes(16)))
    assert isinstance(foreign, Apply) and foreign.sun_failure is SunFailure.NOT_OURS
