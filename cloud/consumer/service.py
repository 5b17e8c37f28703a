"""The consumer's main loop: take a batch, prepare it, hand it to the committer; stop on SIGTERM.

Three threads for payments:
- paho's network thread only fills the inbox;
- the main thread takes batches, handles connection events, reads the batch's kiosks and
  checks every signature (`Worker.prepare`), then hands the batch over;
- the committer thread writes each batch to the database, publishes its results and
  acknowledges it (`Worker.commit`), strictly in arrival order.
(1.1) A fourth, the publishing loop (cloud/consumer/publishing.py), sends the configs and
deny-lists any process stored, on its own database connections; it shares only the MQTT link.
While the committer waits for PostgreSQL (the GIL is released), the main thread verifies the
next batch, and keeps adding to it what arrives until the committer is free for it (or it is
full): a request that arrives while a batch commits is in the very next one, so under load it
waits for the rest of one commit and its own, not for a batch prepared before it arrived (1.1:
measured during a 2,000-sale offline drain, bench/bench_offline_drain.py). The first part of the
batch being built is prepared at once (it overlaps the commit in hand); later arrivals are
prepared in parts of `PREPARE_PART_MIN`, or all at once when the committer is free (each prepare
reads the kiosks of its part). There is never more than one batch being built, and it is handed
over the moment the committer is idle: at low load a batch is one request, committed at once;
under load batches grow with it. A database outage stalls both stages; nothing unbounded piles
up.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Final, Protocol

from cloud.consumer import limits
from cloud.consumer.inbox import InboundMessage, Inbox, LinkEvent, LinkState, source_of
from cloud.consumer.lifecycle import Lifecycle
from cloud.consumer.metrics import ConsumerMetrics
from cloud.consumer.worker import Abandoned, PreparedBatch, Worker

log = logging.getLogger("cloud.consumer")

_END: Final = None  # tells the committer that no batch follows


class LinkControl(Protocol):
    def start(self) -> None: ...
    def restart(self) -> None: ...
    def stop(self, timeout_s: float = ...) -> None: ...


class Background(Protocol):
    """A thread beside the pipeline (the publishing loop): started once the link is, stopped
    before it is."""

    def start(self) -> None: ...
    def stop(self, timeout_s: float) -> None: ...


class SubscribeRefused(RuntimeError):
    """The broker refused a subscription: the ACL or the configuration is wrong."""


class CommitterFailed(RuntimeError):
    """The committer thread died of an unexpected error (a bug): the process must exit."""


class Committer:
    """The thread that runs `Worker.commit` for each prepared batch, in order."""

    def __init__(
        self, worker: Worker, lifecycle: Lifecycle, on_idle: Callable[[], None] = lambda: None
    ) -> None:
        """``on_idle``: called on the committer's thread each time it is free for a batch."""
        self._worker = worker
        self._lifecycle = lifecycle
        self._queue: queue.Queue[PreparedBatch | None] = queue.Queue(maxsize=limits.PIPELINE_DEPTH)
        self._taken = threading.Event()
        self._idle = threading.Event()
        self._on_idle = on_idle
        self.abandoned = False
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="committer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def idle(self) -> bool:
        """Free for the next batch (False again once `put` has handed one over)."""
        return self._idle.is_set()

    def put(self, batch: PreparedBatch | None) -> bool:
        """Hand over a batch and wait until the committer has taken it (it is then committing
        it); keeps the watchdog fed meanwhile. False when the committer is gone (abandoned at
        the shutdown deadline, or failed)."""
        self._taken.clear()
        while True:
            if not self._thread.is_alive():
                return False
            try:
                self._queue.put(batch, timeout=limits.WORKER_POLL_INTERVAL_S)
                break
            except queue.Full:
                self._lifecycle.heartbeat()
        while not self._taken.wait(limits.WORKER_POLL_INTERVAL_S):
            self._lifecycle.heartbeat()
            if not self._thread.is_alive():
                return batch is _END
        return True

    def join(self) -> None:
        """Wait until every handed-over batch is committed (or abandoned)."""
        while self._thread.is_alive():
            self._thread.join(timeout=limits.WORKER_POLL_INTERVAL_S)
            self._lifecycle.heartbeat()

    def _run(self) -> None:
        try:
            while True:
                self._idle.set()
                self._on_idle()
                batch = self._queue.get()
                self._idle.clear()  # before _taken: put() returns with idle False
                self._taken.set()
                if batch is _END:
                    return
                self._worker.commit(batch)
        except Abandoned:
            self.abandoned = True
        except BaseException as error:  # a bug: make the main thread exit with it
            log.exception("committer failed")
            self.error = error
            self._lifecycle.request_stop()


class ConsumerService:
    def __init__(
        self,
        *,
        inbox: Inbox,
        link: LinkControl,
        worker: Worker,
        lifecycle: Lifecycle,
        metrics: ConsumerMetrics,
        batch_max: int,
        linger_s: float = limits.BATCH_LINGER_S,
        publishing: Background | None = None,
    ) -> None:
        self._inbox = inbox
        self._link = link
        self._worker = worker
        self._lifecycle = lifecycle
        self._metrics = metrics
        self._batch_max = batch_max
        self._linger_s = linger_s
        self._committer = Committer(worker, lifecycle, on_idle=inbox.wake)
        self._publishing = publishing
        self._ready = False
        self._broker_down_since: float | None = None
        self._refused_seen = 0
        self._dropped_seen = 0

    def run(self) -> int:
        """Until a stop request; returns the exit code (0 after a clean shutdown)."""
        self._link.start()
        self._committer.start()
        if self._publishing is not None:
            self._publishing.start()
        lifecycle = self._lifecycle
        inbox = self._inbox
        committer = self._committer
        code = 0
        batch_max = self._batch_max
        # The batch being built while the committer is busy: its prepared part, the messages
        # taken for it and not yet prepared, and how many of it each kiosk sent.
        pending: PreparedBatch | None = None
        unprepared: list[InboundMessage] = []
        taken: dict[str, int] = {}
        try:
            while not lifecycle.stop_requested:
                lifecycle.heartbeat()
                size = (pending.size if pending is not None else 0) + len(unprepared)
                events, messages = inbox.take(
                    batch_max - size,
                    limits.WORKER_POLL_INTERVAL_S,
                    self._linger_s if not size else 0.0,
                    taken,
                )
                for event in events:
                    self._on_event(event)
                for message in messages:
                    source = source_of(message)
                    taken[source] = taken.get(source, 0) + 1
                unprepared += messages
                size += len(messages)
                free = committer.idle
                # Prepare the first part at once (it overlaps the commit in hand); later parts
                # when the committer is free for the batch, when it is full, or once they are
                # worth a kiosk read of their own (each prepare reads the kiosks of its part).
                if unprepared and (
                    pending is None
                    or free
                    or size >= batch_max
                    or len(unprepared) >= limits.PREPARE_PART_MIN
                ):
                    prepared = self._worker.prepare(unprepared)
                    unprepared = []
                    if pending is None:
                        pending = prepared
                    else:
                        pending.absorb(prepared)
                if pending is not None and not unprepared and (free or size >= batch_max):
                    if not committer.put(pending):
                        pending = None  # the committer is gone: unacknowledged, redelivered
                        break
                    pending, taken = None, {}
                self._after_batch()
        except SubscribeRefused as error:
            log.error(
                "subscription refused by the broker", extra={"context": {"error": str(error)}}
            )
            code = 1
        except Abandoned:
            pass  # prepare() gave up at the shutdown deadline; the rest is redelivered
        self._shutdown(pending, unprepared)
        if committer.error is not None:
            raise CommitterFailed("the committer thread failed") from committer.error
        return code

    def _shutdown(self, pending: PreparedBatch | None, unprepared: list[InboundMessage]) -> None:
        """Stop taking messages, finish the batch being built and those already received,
        disconnect."""
        lifecycle = self._lifecycle
        committer = self._committer
        lifecycle.begin_shutdown()
        self._inbox.close()
        remaining = unprepared + self._inbox.drain()
        log.info(
            "stopping",
            extra={"context": {"in_hand": len(remaining) + (pending.size if pending else 0)}},
        )
        finished = True
        try:
            if pending is not None and not committer.put(pending):
                finished = False
                remaining = []
            for start in range(0, len(remaining), self._batch_max):
                if lifecycle.out_of_time or not committer.alive:
                    finished = False
                    break
                if not committer.put(
                    self._worker.prepare(remaining[start : start + self._batch_max])
                ):
                    finished = False
                    break
        except Abandoned:
            finished = False
        committer.put(_END)
        committer.join()
        if self._publishing is not None:
            self._publishing.stop(limits.PUBLISHING_STOP_TIMEOUT_S)
        if not finished or committer.abandoned:
            # Unacknowledged messages stay in our durable session; the broker redelivers them.
            log.warning("shutdown deadline passed; the rest is redelivered on the next start")
        self._link.stop()
        log.info("stopped")

    def _on_event(self, event: LinkEvent) -> None:
        if event.state is LinkState.CONNECTED:
            self._metrics.connected.set(1)
            down_s = (
                round(time.monotonic() - self._broker_down_since, 3)
                if self._broker_down_since is not None
                else None
            )
            self._broker_down_since = None
            log.info(
                "broker connected",
                extra={
                    "context": {
                        "session_present": event.session_present,
                        "broker_receive_maximum": event.reason or None,
                        "down_s": down_s,
                    }
                },
            )
        elif event.state is LinkState.DISCONNECTED:
            self._metrics.connected.set(0)
            if self._broker_down_since is None:
                self._broker_down_since = time.monotonic()
                log.warning("broker unavailable", extra={"context": {"reason": event.reason}})
        elif event.state is LinkState.SUBSCRIBED:
            if not self._ready:
                self._ready = True
                self._lifecycle.ready()
                log.info("subscribed; ready")
        elif event.state is LinkState.SUBSCRIBE_FAILED:
            raise SubscribeRefused(event.reason)

    def _after_batch(self) -> None:
        inbox = self._inbox
        self._metrics.queue_depth.set(inbox.depth())
        if inbox.dropped_scans != self._dropped_seen:
            self._metrics.dropped.labels(kind="scan").inc(inbox.dropped_scans - self._dropped_seen)
            self._dropped_seen = inbox.dropped_scans
        if inbox.refused_messages != self._refused_seen and inbox.depth() == 0:
            # QoS 1 messages were refused (the broker sent more than the inbox holds): they sit
            # unacknowledged at the broker, which redelivers them only on a new connection.
            refused = inbox.refused_messages - self._refused_seen
            self._refused_seen = inbox.refused_messages
            self._metrics.dropped.labels(kind="tx").inc(refused)
            log.warning("inbox overflowed; reconnecting", extra={"context": {"refused": refused}})
            self._link.restart()
