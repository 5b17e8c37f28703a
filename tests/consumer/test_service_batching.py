"""How the consumer's main loop builds batches while the committer is busy (cloud/consumer/
service.py): what arrives during a commit joins the one batch being built, which is handed over
the moment the committer is free; at low load a batch is handed over at once.

The worker here is a stand-in that records what it is given (no database, no signatures): the
real worker's stages are tested with the real consumer elsewhere; this is about the loop."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from cloud.consumer.inbox import InboundMessage, Inbox
from cloud.consumer.lifecycle import Lifecycle
from cloud.consumer.metrics import ConsumerMetrics
from cloud.consumer.service import ConsumerService
from cloud.consumer.worker import PreparedBatch
from protocol.topics import TopicKind, parse_topic
from tests.waiting import wait_until

PREFIX = "festival"


class IdleLink:
    def start(self) -> None: ...
    def restart(self) -> None: ...
    def stop(self, timeout_s: float = 5.0) -> None: ...


class RecordingWorker:
    """prepare() files each message as a request; commit() records the batch's message ids and
    blocks, for as long as the test says, on the batches the test holds."""

    def __init__(self) -> None:
        self.committed: list[list[int]] = []
        self.prepared_calls: list[list[int]] = []
        self.hold = threading.Event()
        self.hold.set()
        self.committing = threading.Event()

    def prepare(self, messages: Sequence[InboundMessage]) -> PreparedBatch:
        self.prepared_calls.append([m.mid for m in messages])
        batch = PreparedBatch()
        for message in messages:
            batch.requests.append((message, parse_topic(message.topic, PREFIX)))
        return batch

    def commit(self, batch: PreparedBatch) -> None:
        self.committing.set()
        assert self.hold.wait(10), "the test never released the commit"
        self.committed.append([message.mid for message, _ in batch.requests])
        self.committing.clear()


def message(mid: int, kiosk: str) -> InboundMessage:
    return InboundMessage(
        topic=f"{PREFIX}/v1/kiosks/{kiosk}/{TopicKind.TX.value}",
        payload=b"{}",
        qos=1,
        mid=mid,
        retain=False,
        generation=1,
        received_at=time.monotonic(),
        received_at_ms=0,
    )


@contextmanager
def running(worker: RecordingWorker, inbox: Inbox, batch_max: int = 64) -> Iterator[Lifecycle]:
    """The service's loop on a thread of its own; stopped (exit code 0) at the end, whatever
    the test held."""
    lifecycle = Lifecycle(grace_s=5.0, notifier=lambda _: True, watchdog_s=None)
    service = ConsumerService(
        inbox=inbox,
        link=IdleLink(),
        worker=worker,  # type: ignore[arg-type]  # the loop only calls prepare and commit
        lifecycle=lifecycle,
        metrics=ConsumerMetrics.create(),
        batch_max=batch_max,
        linger_s=0.0,
    )
    codes: list[int] = []
    thread = threading.Thread(target=lambda: codes.append(service.run()), daemon=True)
    thread.start()
    try:
        yield lifecycle
    finally:
        worker.hold.set()
        lifecycle.request_stop()
        thread.join(10)
        assert not thread.is_alive()
        assert codes == [0]


def test_what_arrives_during_a_commit_is_in_the_next_batch_handed_over_when_it_ends() -> None:
    inbox = Inbox(messages_max=1000, scans_max=10, events_max=8, source_share_max=16)
    worker = RecordingWorker()
    with running(worker, inbox):
        worker.hold.clear()
        assert inbox.put_message(message(1, "bar-1"))
        assert worker.committing.wait(5)  # batch [1] is committing (held)
        # Arrivals while it commits, one by one, from two kiosks: one batch in the making.
        for mid, kiosk in ((2, "bar-2"), (3, "bar-3"), (4, "bar-2")):
            assert inbox.put_message(message(mid, kiosk))
            wait_until(lambda: inbox.depth() == 0, timeout_s=5, what="the loop took it")
        assert worker.committed == []
        worker.hold.set()
        wait_until(lambda: len(worker.committed) == 2, timeout_s=5, what="two batches")
        assert worker.committed == [[1], [2, 3, 4]]


def test_at_low_load_each_request_is_committed_at_once() -> None:
    inbox = Inbox(messages_max=1000, scans_max=10, events_max=8)
    worker = RecordingWorker()
    with running(worker, inbox):
        for count, mid in enumerate((1, 2, 3), start=1):
            assert inbox.put_message(message(mid, "bar-1"))
            wait_until(lambda n=count: len(worker.committed) == n, timeout_s=5, what=f"batch {mid}")
        assert worker.committed == [[1], [2], [3]]


def test_a_backlog_keeps_to_its_share_of_the_batch_being_built() -> None:
    inbox = Inbox(messages_max=1000, scans_max=10, events_max=8, source_share_max=4)
    worker = RecordingWorker()
    with running(worker, inbox, batch_max=64):
        worker.hold.clear()
        assert inbox.put_message(message(1, "bar-online"))
        assert worker.committing.wait(5)
        for mid in range(100, 112):  # a returning kiosk's backlog arrives during the commit
            assert inbox.put_message(message(mid, "bar-back"))
        wait_until(lambda: inbox.depth() == 8, timeout_s=5, what="one share taken")
        assert inbox.put_message(message(2, "bar-online"))  # an online order joins the batch
        wait_until(lambda: inbox.depth() == 8, timeout_s=5, what="the online order taken")
        worker.hold.set()
        wait_until(lambda: inbox.depth() == 0, timeout_s=5, what="the backlog drained")
        wait_until(lambda: len(worker.committed) == 4, timeout_s=5, what="four batches")
        assert worker.committed == [
            [1],
            [100, 101, 102, 103, 2],
            [104, 105, 106, 107],
            [108, 109, 110, 111],
        ]


def test_a_stop_request_commits_the_batch_being_built() -> None:
    inbox = Inbox(messages_max=1000, scans_max=10, events_max=8)
    worker = RecordingWorker()
    with running(worker, inbox) as lifecycle:
        worker.hold.clear()
        assert inbox.put_message(message(1, "bar-1"))
        assert worker.committing.wait(5)
        assert inbox.put_message(message(2, "bar-2"))
        wait_until(lambda: inbox.depth() == 0, timeout_s=5, what="the loop took it")
        lifecycle.request_stop()
        worker.hold.set()
        wait_until(lambda: len(worker.committed) == 2, timeout_s=5, what="both batches")
        assert worker.committed == [[1], [2]]
