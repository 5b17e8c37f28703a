"""(1.1) The consumer's publishing loop: the thread that sends what any process issued.

The CLI, the admin API and the card verbs only *store* configs and card changes; this loop
flushes cloud/publisher.py at least every PUBLISH_INTERVAL_S and at once when the database says
something changed (NOTIFY `festival_config` from sp_issue_kiosk_config, `festival_denylist` from
the cards trigger), so a new config reaches its kiosk within about a second and the deny-list is
republished well within PROTOCOL.md's 5 seconds of any change.

With several consumers only the holder of one advisory lock publishes (no double work); should
two ever publish the same version, the kiosks ignore the second copy. A database or broker fault
never ends the thread: it waits and tries again.
"""

from __future__ import annotations

import logging
import threading
from typing import Final, Protocol

from cloud.limits import PUBLISH_INTERVAL_S
from cloud.publisher import FlushReport

log = logging.getLogger("cloud.consumer.publishing")

NOTIFY_CHANNELS: Final = ("festival_config", "festival_denylist")
# pg_advisory_lock key of the publishing loops' leader ("festival publisher", as an int8).
LEADER_LOCK_KEY: Final = 0x6665_7374_7075_62


class Flusher(Protocol):
    def flush(self) -> FlushReport: ...


class Listener(Protocol):
    leader: bool

    def wait(self, timeout_s: float) -> bool: ...
    def close(self) -> None: ...


class PublishingLoop:
    def __init__(
        self,
        publisher: Flusher,
        listener: Listener,
        *,
        transient_errors: tuple[type[BaseException], ...],
        interval_s: float = PUBLISH_INTERVAL_S,
    ) -> None:
        self._publisher = publisher
        self._listener = listener
        self._transient = transient_errors
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="publisher", daemon=True)
        self._was_leader = False

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float) -> None:
        self._stop.set()
        self._thread.join(timeout_s)
        self._listener.close()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._tick()
            except Exception:  # a bug: logged, and the loop goes on (payments are unaffected)
                log.exception("publishing loop failed; retrying")
                self._stop.wait(self._interval_s)

    def _tick(self) -> None:
        listener = self._listener
        if listener.leader:
            self._publisher.flush()
        try:
            # Returns early on a NOTIFY: the next flush follows at once.
            listener.wait(self._interval_s)
        except self._transient as error:
            log.warning(
                "publishing loop: database unavailable",
                extra={"context": {"error": str(error)}},
            )
            self._stop.wait(self._interval_s)
        if listener.leader != self._was_leader:
            self._was_leader = listener.leader
            log.info(
                "publishing loop leader" if listener.leader else "publishing loop on standby",
                extra={"context": {"leader": listener.leader}},
            )
