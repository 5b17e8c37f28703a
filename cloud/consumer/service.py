"""The consumer's main loop: take a batch, let the worker finish it, repeat; stop on SIGTERM.

Runs on the main thread. paho's network thread only fills the inbox; everything that decides
or touches the database happens here, one batch at a time, so acknowledgements go out in the
order the messages arrived.
"""

from __future__ import annotations

import logging
import time
from typing import Protocol

from cloud.consumer import limits
from cloud.consumer.inbox import Inbox, LinkEvent, LinkState
from cloud.consumer.lifecycle import Lifecycle
from cloud.consumer.metrics import ConsumerMetrics
from cloud.consumer.worker import Abandoned, Worker

log = logging.getLogger("cloud.consumer")


class LinkControl(Protocol):
    def start(self) -> None: ...
    def restart(self) -> None: ...
    def stop(self, timeout_s: float = ...) -> None: ...


class SubscribeRefused(RuntimeError):
    """The broker refused a subscription: the ACL or the configuration is wrong."""


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
    ) -> None:
        self._inbox = inbox
        self._link = link
        self._worker = worker
        self._lifecycle = lifecycle
        self._metrics = metrics
        self._batch_max = batch_max
        self._linger_s = linger_s
        self._ready = False
        self._broker_down_since: float | None = None
        self._refused_seen = 0
        self._dropped_seen = 0

    def run(self) -> int:
        """Until a stop request; returns the exit code (0 after a clean shutdown)."""
        self._link.start()
        lifecycle = self._lifecycle
        inbox = self._inbox
        try:
            while not lifecycle.stop_requested:
                lifecycle.heartbeat()
                events, messages = inbox.take(
                    self._batch_max, limits.WORKER_POLL_INTERVAL_S, self._linger_s
                )
                for event in events:
                    self._on_event(event)
                if messages:
                    self._worker.handle(messages)
                self._after_batch()
        except SubscribeRefused as error:
            log.error(
                "subscription refused by the broker", extra={"context": {"error": str(error)}}
            )
            self._shutdown()
            return 1
        except Abandoned:
            pass  # only raised once shutting down
        return self._shutdown()

    def _shutdown(self) -> int:
        """Stop taking messages, finish those already received, disconnect."""
        lifecycle = self._lifecycle
        lifecycle.begin_shutdown()
        self._inbox.close()
        remaining = self._inbox.drain()
        log.info("stopping", extra={"context": {"in_hand": len(remaining)}})
        finished = True
        try:
            for start in range(0, len(remaining), self._batch_max):
                if lifecycle.out_of_time:
                    finished = False
                    break
                self._worker.handle(remaining[start : start + self._batch_max])
        except Abandoned:
            finished = False
        if not finished:
            # Unacknowledged messages stay in our durable session; the broker redelivers them.
            log.warning("shutdown deadline passed; the rest is redelivered on the next start")
        self._link.stop()
        log.info("stopped")
        return 0

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
