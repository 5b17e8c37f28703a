"""The worker: a batch of received messages -> database -> signed results -> acknowledgements.

A batch goes through two stages, run by two threads so that one batch's database time overlaps
the next batch's CPU work (signature checks) - see service.py:

`prepare` (main thread)
1. Read the records of the kiosks named by the topics (enabled, role, key) - after the messages
   arrived, so a `kiosk disable` that returned before is always seen.
2. Decide every request (signature, kiosk state, role, schema, age: `decisions.decide_request`),
   verify every scan record, parse every status.

`commit` (committer thread, batches in arrival order)
3. Database: all valid requests in ONE `Ledger.apply_batch` transaction (each keeps its own
   idempotency), then the permanent rejections, then the batch's dead letters in one
   transaction (bounded per kiosk per minute by the database: a flood of junk costs one
   transaction per batch and a counter, not a row per message), scans and statuses. A
   transient fault is retried with backoff; a step that committed is never repeated, and nothing
   is acknowledged or answered until every step of the batch has committed.
4. Answer: the ledger's outcome is the protocol's result (cloud.ledger.Outcome is a
   protocol Result), completed with the echo fields only the request knows (kiosk_id, seq),
   checked once and signed (`encode_result`); publish it (QoS 1) to the result topic of the
   kiosk named by the TOPIC.
5. Acknowledge the batch's messages. The result is queued before the acknowledgement on the
   same connection, so the broker holds the answer before it forgets the request. A crash
   anywhere before the acknowledgement means redelivery, and the permanent idempotency record
   turns the redelivered request into a replay of the same outcome.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import TYPE_CHECKING, Any, Final, Protocol, TypeVar

from cloud.consumer.backoff import Backoff
from cloud.consumer.decisions import (
    Apply,
    DeadLetter,
    Decision,
    KioskView,
    Reject,
    RequestPolicy,
    check_pins,
    check_sun,
    decide_request,
    key_staff_login,
    staff_ids_to_check,
)
from cloud.consumer.directory import KioskDirectory
from cloud.consumer.inbox import InboundMessage
from cloud.consumer.lifecycle import Lifecycle
from cloud.consumer.limits import RESULT_TOPICS_CACHED_MAX
from cloud.consumer.metrics import ConsumerMetrics
from cloud.staff import payload_hash_key, redact_pin
from protocol.codec import (
    build_result,
    decode_scan,
    decode_status,
    encode_result,
    result_message_text,
)
from protocol.errors import ErrorCode, ProtocolError
from protocol.keys import Ed25519PrivateKey, private_key_pem
from protocol.models import KioskStatus, Result, ScanRecord, StaffLogin
from protocol.sun import SunFailure, SunVerifier
from protocol.topics import Topic, TopicKind, parse_topic, topic_for

if TYPE_CHECKING:
    from cloud.ledger_records import LedgerRequest
    from cloud.ports import RequestLedger

log = logging.getLogger("cloud.consumer")
T = TypeVar("T")
# (revision 0021) The message of an offline sale approved on the festival's loss account because
# its SUN failed: this prefix, then the SUN failure's own text (ledger_sun_message).
LOSS_APPROVED_PREFIX: Final = "Paid (offline sale) by the festival's loss account: "


class Abandoned(Exception):
    """The shutdown deadline passed while the database was away: leave the batch unacknowledged."""


class LinkLike(Protocol):
    def publish(self, topic: str, payload: bytes, qos: int = 1) -> bool: ...
    def ack(self, messages: Sequence[InboundMessage]) -> int: ...


@dataclass
class PreparedBatch:
    """A batch after `prepare`: sorted by kind, requests decided, scans and statuses parsed."""

    requests: list[tuple[InboundMessage, Topic]] = field(default_factory=list)
    decisions: list[Decision] = field(default_factory=list)
    scans: list[tuple[InboundMessage, Topic]] = field(default_factory=list)
    scan_records: list[ScanRecord | ProtocolError] = field(default_factory=list)
    statuses: list[tuple[InboundMessage, Topic]] = field(default_factory=list)
    status_records: list[KioskStatus | ProtocolError] = field(default_factory=list)
    strays: list[InboundMessage] = field(default_factory=list)

    @property
    def size(self) -> int:
        """How many messages the batch holds."""
        return len(self.requests) + len(self.scans) + len(self.statuses) + len(self.strays)

    def absorb(self, later: PreparedBatch) -> None:
        """Append a batch prepared after this one (its messages arrived later): committed as one,
        each kind still in arrival order."""
        self.requests += later.requests
        self.decisions += later.decisions
        self.scans += later.scans
        self.scan_records += later.scan_records
        self.statuses += later.statuses
        self.status_records += later.status_records
        self.strays += later.strays


@dataclass(frozen=True, slots=True)
class DeadLetterEntry:
    """One message to keep as a dead letter (what `Ledger.record_dead_letters` takes), and the
    kind of topic it came on (for metrics and logs)."""

    topic: str
    payload: bytes
    error_code: ErrorCode
    reason: str
    kiosk_id: str | None
    kind: str  # tx | scan | status | other

    @classmethod
    def of(
        cls,
        message: InboundMessage,
        kiosk_id: str | None,
        code: ErrorCode,
        reason: str,
        kind: str,
    ) -> DeadLetterEntry:
        # (1.1) a staff_login's PIN is never kept, not even in a dead letter
        return cls(message.topic, redact_pin(message.payload), code, reason, kiosk_id, kind)


@dataclass(frozen=True, slots=True)
class Answer:
    """What one tx message led to: its result and the signed bytes of it (both None:
    unanswerable), and a label for metrics."""

    result: Result | None
    payload: bytes | None
    outcome: str  # approved | declined | rejected | replayed | dead_letter
    code: str


class Worker:
    def __init__(
        self,
        *,
        ledger: RequestLedger,
        ledger_request: Callable[..., LedgerRequest],
        transient_errors: tuple[type[BaseException], ...],
        link: LinkLike,
        signing_key: Ed25519PrivateKey,
        policy: RequestPolicy,
        prefix: str,
        metrics: ConsumerMetrics,
        lifecycle: Lifecycle,
        backoff_factory: Callable[[], Backoff],
        sun_master_key: bytes | None = None,
    ) -> None:
        """``sun_master_key``: the card master key in sun mode (FESTIVAL_CARD_AUTH=sun), None in
        uid mode (card_sun allowed and ignored)."""
        self._ledger = ledger
        self._sun_master_key = sun_master_key
        # SunVerifier keeps OpenSSL contexts that are not shared across threads: one per thread
        # (prepare runs on its own; handle() on the caller's at shutdown and in tests).
        self._sun_verifiers = threading.local()
        self._ledger_request = ledger_request
        self._transient = transient_errors
        self._link = link
        self._signing_key = signing_key
        # (1.1) a staff_login's payload identity is keyed under a secret every consumer shares
        self._staff_hash_key = payload_hash_key(private_key_pem(signing_key))
        self._policy = policy
        self._prefix = prefix
        self._metrics = metrics
        self._lifecycle = lifecycle
        # One backoff per stage: each runs on its own thread.
        self._prepare_backoff = backoff_factory()
        self._commit_backoff = backoff_factory()
        self._directory = KioskDirectory(ledger)
        self._state_lock = threading.Lock()
        self._database_down = False
        self._result_topics: dict[str, str] = {}
        self._counters: dict[tuple[str, str, str], Any] = {}
        self._processing = {
            kind: metrics.processing_seconds.labels(kind=kind) for kind in ("tx", "scan", "status")
        }

    # --- stage 1: prepare (CPU, one read-only transaction) ----------------------------------------

    def prepare(self, messages: Sequence[InboundMessage]) -> PreparedBatch:
        """Sort a batch by topic kind, read its kiosks, decide and verify what can be (pure)."""
        batch = PreparedBatch()
        prefix = self._prefix
        for message in messages:
            try:
                topic = parse_topic(message.topic, prefix)
            except (ProtocolError, ValueError):
                batch.strays.append(message)
                continue
            if topic.kind is TopicKind.TX:
                batch.requests.append((message, topic))
            elif topic.kind is TopicKind.SCAN:
                batch.scans.append((message, topic))
            elif topic.kind is TopicKind.STATUS:
                batch.statuses.append((message, topic))
            else:
                batch.strays.append(message)
        kiosk_ids = {topic.kiosk_id for _, topic in (*batch.requests, *batch.scans)}
        views: dict[str, KioskView] = {}
        if kiosk_ids:
            views = self._database(lambda: self._directory.views(kiosk_ids), self._prepare_backoff)
        now_ms = _now_ms()
        policy = self._policy
        batch.decisions = [
            decide_request(
                message.payload,
                topic_kiosk_id=topic.kiosk_id,
                kiosk=views.get(topic.kiosk_id),
                policy=policy,
                now_ms=now_ms,
            )
            for message, topic in batch.requests
        ]
        if self._sun_master_key is not None:
            verifier = self._sun_verifier()
            batch.decisions = [check_sun(decision, verifier) for decision in batch.decisions]
        batch.decisions = [key_staff_login(d, self._staff_hash_key) for d in batch.decisions]
        staff_ids = staff_ids_to_check(batch.decisions)
        if staff_ids:
            hashes = self._database(
                lambda: self._ledger.staff_pin_hashes(staff_ids), self._prepare_backoff
            )
            batch.decisions = [check_pins(decision, hashes) for decision in batch.decisions]
        batch.scan_records = [_decode_scan(m, t, views.get(t.kiosk_id)) for m, t in batch.scans]
        batch.status_records = [_decode_status(m, t) for m, t in batch.statuses]
        return batch

    def _sun_verifier(self) -> SunVerifier:
        verifier: SunVerifier | None = getattr(self._sun_verifiers, "verifier", None)
        if verifier is None:
            assert self._sun_master_key is not None
            verifier = SunVerifier(self._sun_master_key)
            self._sun_verifiers.verifier = verifier
        return verifier

    # --- stage 2: commit (database writes, results, acknowledgements) -----------------------------

    def commit(self, batch: PreparedBatch) -> None:
        """Finish a prepared batch (or raise Abandoned at the shutdown deadline)."""
        if batch.requests:
            self._commit_requests(batch.requests, batch.decisions)
        if batch.scans:
            self._commit_scans(batch.scans, batch.scan_records)
        if batch.statuses:
            self._commit_statuses(batch.statuses, batch.status_records)
        if batch.strays:
            self._commit_strays(batch.strays)

    def handle(self, messages: Sequence[InboundMessage]) -> None:
        """Both stages on the calling thread (shutdown and tests)."""
        self.commit(self.prepare(messages))

    # --- requests (tx) -------------------------------------------------------------------------

    def _commit_requests(
        self, batch: list[tuple[InboundMessage, Topic]], decisions: list[Decision]
    ) -> None:
        outcomes = self._record(batch, decisions)
        answers = [
            self._answer(decision, outcome)
            for decision, outcome in zip(decisions, outcomes, strict=True)
        ]
        unpublished = self._publish_results(
            [topic.kiosk_id for _, topic in batch], [a.payload for a in answers]
        )
        to_ack = [m for index, (m, _) in enumerate(batch) if index not in unpublished]
        self._link.ack(to_ack)
        self._account(batch, decisions, answers)

    def _record(
        self, batch: list[tuple[InboundMessage, Topic]], decisions: list[Decision]
    ) -> list[Result | None]:
        """Commit every decision; returns the ledger's outcome per message (None: dead letter)."""
        outcomes: list[Result | None] = [None] * len(decisions)
        applies = [(index, d) for index, d in enumerate(decisions) if isinstance(d, Apply)]
        if applies:
            items = [
                self._ledger_request(
                    request=d.request,
                    payload_sha256=d.payload_sha256,
                    sun_counter=d.sun_counter,
                    sun_failure=None if d.sun_failure is None else d.sun_failure.value,
                    old_sun_counter=d.old_sun_counter,
                    old_sun_failure=None if d.old_sun_failure is None else d.old_sun_failure.value,
                    pin_verified=d.pin_verified,
                    pin_hash_checked=d.pin_hash_checked,
                )
                for _, d in applies
            ]
            applied = self._database(lambda: self._ledger.apply_batch(items), self._commit_backoff)
            assert len(applied) == len(items), "apply_batch must answer every request"
            for (index, _), outcome in zip(applies, applied, strict=True):
                outcomes[index] = outcome
            self._metrics.batch_size.observe(len(items))
        letters: list[DeadLetterEntry] = []
        for index, decision in enumerate(decisions):
            if isinstance(decision, Reject):
                outcomes[index] = self._database(
                    partial(self._record_rejection, decision), self._commit_backoff
                )
            elif isinstance(decision, DeadLetter):
                message, topic = batch[index]
                letters.append(
                    DeadLetterEntry.of(
                        message, topic.kiosk_id, decision.code, decision.message, "tx"
                    )
                )
        self._dead_letters(letters)
        return outcomes

    def _record_rejection(self, decision: Reject) -> Result:
        echo = decision.echo
        outcome: Result = self._ledger.record_rejection(
            request_id=decision.request_id,
            kiosk_id=decision.kiosk_id,
            seq=echo.seq,
            card_uid=echo.card_uid,
            payload_sha256=decision.payload_sha256,
            error_code=decision.code,
            message=decision.message,
            kind=decision.request_type,
        )
        return outcome

    def _answer(self, decision: Decision, outcome: Result | None) -> Answer:
        echo = decision.echo
        try:
            if isinstance(decision, DeadLetter):
                # Nothing was stored: the answer is built here (and checks itself).
                label, code, request_id = "dead_letter", decision.code.value, echo.request_id
                result: Result = build_result(
                    request_id=echo.request_id,
                    kiosk_id=echo.kiosk_id,
                    seq=echo.seq,
                    card_uid=echo.card_uid,
                    error_code=decision.code,
                    message=decision.message,
                    transaction_id=None,
                    previous_balance_cents=None,
                    new_balance_cents=None,
                    debt_cents=None,
                    replayed=False,
                    processed_at_ms=_now_ms(),
                )
            else:
                assert outcome is not None, "every stored decision has its outcome"
                label = "replayed" if outcome.replayed else outcome.status.value
                code = outcome.error_code.value if outcome.error_code is not None else ""
                request_id = outcome.request_id
                # The ledger's outcome is the answer as it is, completed with the echo fields
                # only the request knows and a message made fit for the wire; encode_result
                # checks it against the wire's rules, once.
                result = replace(
                    outcome,
                    kiosk_id=echo.kiosk_id,
                    seq=echo.seq,
                    card_uid=echo.card_uid if echo.card_uid is not None else outcome.card_uid,
                    message=result_message_text(outcome.message),
                )
            return Answer(result, encode_result(result, self._signing_key), label, code)
        except ValueError:  # ProtocolError included: the outcome is no valid result
            # The outcome is committed and retrying would not change it: an inconsistent one is
            # a bug for a human (logged with its request id), not a reason to stop answering
            # everyone else. That kiosk gets no answer and shows the request as timed out.
            log.exception("cannot build a result", extra={"context": {"request_id": request_id}})
            return Answer(None, None, label, code)

    def _publish_results(self, kiosk_ids: list[str], payloads: list[bytes | None]) -> set[int]:
        """Publish each signed result; returns the indexes paho refused (left unacked)."""
        unpublished: set[int] = set()
        for index, (kiosk_id, payload) in enumerate(zip(kiosk_ids, payloads, strict=True)):
            if payload is None:
                continue
            topic = self._result_topics.get(kiosk_id)
            if topic is None:
                if len(self._result_topics) >= RESULT_TOPICS_CACHED_MAX:
                    self._result_topics.clear()
                topic = topic_for(self._prefix, kiosk_id, TopicKind.RESULT)
                self._result_topics[kiosk_id] = topic
            if not self._link.publish(topic, payload, 1):
                unpublished.add(index)
                self._metrics.results_unpublished.inc()
        return unpublished

    def _account(
        self,
        batch: list[tuple[InboundMessage, Topic]],
        decisions: list[Decision],
        answers: list[Answer],
    ) -> None:
        """One log line and the metrics per request."""
        done = time.monotonic()
        observe = self._processing["tx"].observe
        info = log.info
        batch_size = len(batch)
        for (message, topic), decision, answer in zip(batch, decisions, answers, strict=True):
            duration_s = done - message.received_at
            observe(duration_s)
            self._count("tx", answer.outcome, answer.code)
            result = answer.result
            if isinstance(decision, Apply) and answer.outcome != "replayed":
                self._count_sun(decision, answer)
                if isinstance(decision.request, StaffLogin):
                    outcome = "approved" if answer.outcome == "approved" else "refused"
                    self._metrics.staff_logins.labels(outcome=outcome).inc()
            echo = decision.echo
            info(
                "request processed",
                extra={
                    "context": {
                        "kiosk_id": topic.kiosk_id,
                        "request_id": echo.request_id,
                        "card_uid": echo.card_uid,
                        "seq": echo.seq,
                        "outcome": answer.outcome,
                        "status": result.status.value if result is not None else None,
                        "code": answer.code or None,
                        "replayed": result.replayed if result is not None else None,
                        "new_balance_cents": result.new_balance_cents if result else None,
                        "duration_ms": round(duration_s * 1000, 2),
                        "batch_size": batch_size,
                    }
                },
            )

    # --- scans, statuses, strays -----------------------------------------------------------------

    def _commit_scans(
        self,
        batch: list[tuple[InboundMessage, Topic]],
        records: list[ScanRecord | ProtocolError],
    ) -> None:
        good: list[tuple[InboundMessage, ScanRecord]] = []
        letters: list[DeadLetterEntry] = []
        for (message, topic), record in zip(batch, records, strict=True):
            if isinstance(record, ProtocolError):
                letters.append(
                    DeadLetterEntry.of(message, topic.kiosk_id, record.code, record.message, "scan")
                )
            else:
                good.append((message, record))
        self._dead_letters(letters)
        if good:
            self._database(
                partial(self._ledger.record_scans, [scan for _, scan in good]),
                self._commit_backoff,
            )
            done = time.monotonic()
            for message, _ in good:
                self._count("scan", "recorded", "")
                self._processing["scan"].observe(done - message.received_at)
        self._link.ack([m for m, _ in batch if m.qos == 1])

    def _commit_statuses(
        self,
        batch: list[tuple[InboundMessage, Topic]],
        records: list[KioskStatus | ProtocolError],
    ) -> None:
        ledger = self._ledger
        self._dead_letters(
            [
                DeadLetterEntry.of(message, topic.kiosk_id, status.code, status.message, "status")
                for (message, topic), status in zip(batch, records, strict=True)
                if isinstance(status, ProtocolError)
            ]
        )
        for (message, _topic), status in zip(batch, records, strict=True):
            if isinstance(status, ProtocolError):
                continue
            self._database(
                partial(ledger.record_kiosk_status, status, received_at_ms=message.received_at_ms),
                self._commit_backoff,
            )
            self._count("status", "recorded", "")
            self._processing["status"].observe(time.monotonic() - message.received_at)
            log.info(
                "kiosk status",
                extra={"context": {"kiosk_id": status.kiosk_id, "state": status.state}},
            )
        self._link.ack([m for m, _ in batch])

    def _commit_strays(self, messages: list[InboundMessage]) -> None:
        # No kiosk level to charge them to: they share the bound of kiosk NULL.
        self._dead_letters(
            [
                DeadLetterEntry.of(
                    message,
                    None,
                    ErrorCode.INVALID_REQUEST,
                    "not a topic this consumer handles",
                    "other",
                )
                for message in messages
            ]
        )
        self._link.ack(messages)

    def _dead_letters(self, letters: list[DeadLetterEntry]) -> None:
        """Keep a batch's dead letters in one transaction. The database stores at most its bound
        per kiosk per minute and only counts the rest: those are not logged one by one either."""
        if not letters:
            return
        stored = self._database(
            partial(self._ledger.record_dead_letters, letters), self._commit_backoff
        )
        counted_only = 0
        for letter, kept in zip(letters, stored, strict=True):
            code = letter.error_code.value
            self._metrics.dead_letters.labels(kind=letter.kind, code=code).inc()
            if not kept:
                counted_only += 1
            if letter.kind == "tx":  # tx dead letters are counted and logged with their answer
                continue
            self._count(letter.kind, "dead_letter", code)
            if kept:
                log.warning(
                    "dead letter",
                    extra={
                        "context": {"kiosk_id": letter.kiosk_id, "kind": letter.kind, "code": code}
                    },
                )
        if counted_only:
            log.warning(
                "dead letters over the bound: counted, not stored",
                extra={"context": {"count": counted_only}},
            )

    # --- helpers ---------------------------------------------------------------------------------

    def _count(self, kind: str, outcome: str, code: str) -> None:
        key = (kind, outcome, code)
        counter = self._counters.get(key)
        if counter is None:
            counter = self._metrics.messages.labels(kind=kind, outcome=outcome, code=code)
            self._counters[key] = counter
        counter.inc()

    def _count_sun(self, decision: Apply, answer: Answer) -> None:
        """(1.1) SUN failures by reason: the consumer's own, or stale_counter when the ledger
        refused a verified message (a rising count is the cloning alarm) — declined
        CARD_NOT_GENUINE, or, an offline sale, approved on the festival's loss account (revision
        0021: its outcome's message says so, and a verified message can only fail there by its
        counter), so that this count agrees with the ledger's sun_failure_minutes."""
        if decision.sun_failure is not None:
            self._metrics.sun_failures.labels(reason=decision.sun_failure.value).inc()
        elif decision.sun_counter is not None and (
            answer.code == ErrorCode.CARD_NOT_GENUINE.value
            or (
                answer.outcome == "approved"
                and answer.result is not None
                and answer.result.message.startswith(LOSS_APPROVED_PREFIX)
            )
        ):
            self._metrics.sun_failures.labels(reason=SunFailure.STALE_COUNTER.value).inc()

    def _database(self, call: Callable[[], T], backoff: Backoff) -> T:
        """Run ``call``; on a transient fault retry it with capped backoff until it succeeds.

        Logs "database unavailable" once and "database back" once per outage, whichever stage
        (thread) notices first. Only a call that itself failed may declare the database back: a
        call of another stage that was already in flight when the outage began can still return
        after the first failure, and must not end an outage that is still under way.
        """
        failed = False
        while True:
            try:
                value = call()
            except self._transient as error:
                failed = True
                self._metrics.database_retries.inc()
                with self._state_lock:
                    first = not self._database_down
                    self._database_down = True
                if first:
                    self._metrics.database_available.set(0)
                    log.warning("database unavailable", extra={"context": {"error": str(error)}})
                if not self._lifecycle.sleep(backoff.next_delay_s()):
                    raise Abandoned from error
                continue
            with self._state_lock:
                recovered = failed and self._database_down
                if failed:
                    self._database_down = False
            if recovered:
                self._metrics.database_available.set(1)
                log.info("database back", extra={"context": {"retries": backoff.attempts}})
            backoff.reset()
            return value


def _decode_scan(
    message: InboundMessage, topic: Topic, view: KioskView | None
) -> ScanRecord | ProtocolError:
    try:
        scan = decode_scan(
            message.payload,
            topic_kiosk_id=topic.kiosk_id,
            public_key_for=lambda _kiosk_id: view.public_key if view else None,
        )
    except ProtocolError as error:
        return error
    if view is not None and not view.enabled:
        return ProtocolError(ErrorCode.KIOSK_DISABLED, "this kiosk is disabled")
    return scan


def _decode_status(message: InboundMessage, topic: Topic) -> KioskStatus | ProtocolError:
    try:
        return decode_status(message.payload, topic_kiosk_id=topic.kiosk_id)
    except ProtocolError as error:
        return error


def _now_ms() -> int:
    return time.time_ns() // 1_000_000
