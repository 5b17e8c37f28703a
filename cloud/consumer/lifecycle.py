"""Process lifecycle: the stop request (SIGTERM), the shutdown deadline and the watchdog.

Signal handlers only flip a flag here: they run on the main thread between bytecodes and must
not take locks the interrupted code may hold.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from cloud.systemd_notify import notify, watchdog_interval_s

SLEEP_SLICE_S = 0.1


class Lifecycle:
    def __init__(
        self,
        *,
        grace_s: float,
        notifier: Callable[[str], bool] = notify,
        watchdog_s: float | None = None,
    ) -> None:
        self._grace_s = grace_s
        self._notify = notifier
        self._watchdog_s = watchdog_s if watchdog_s is not None else watchdog_interval_s()
        self._last_ping = 0.0
        self.stop_requested = False
        self._deadline: float | None = None

    def request_stop(self, *_: object) -> None:
        """Signal handler: stop taking new messages, finish what is in hand."""
        self.stop_requested = True

    def begin_shutdown(self) -> None:
        if self._deadline is None:
            self._deadline = time.monotonic() + self._grace_s
            self._notify("STOPPING=1")

    @property
    def out_of_time(self) -> bool:
        """True once the shutdown grace period is over (give up on what is still unfinished)."""
        return self._deadline is not None and time.monotonic() >= self._deadline

    def heartbeat(self) -> None:
        """WATCHDOG=1 at systemd's interval; cheap enough to call on every loop."""
        if self._watchdog_s is None:
            return
        now = time.monotonic()
        if now - self._last_ping >= self._watchdog_s:
            self._last_ping = now
            self._notify("WATCHDOG=1")

    def sleep(self, delay_s: float) -> bool:
        """Wait ``delay_s`` while pinging the watchdog; False when the shutdown deadline passed
        (a stop request alone does not cut the wait short: in-flight work is still finished)."""
        if self.stop_requested:
            self.begin_shutdown()
        end = time.monotonic() + delay_s
        while True:
            self.heartbeat()
            if self.out_of_time:
                return False
            remaining = end - time.monotonic()
            if remaining <= 0:
                return True
            time.sleep(min(SLEEP_SLICE_S, remaining))

    def ready(self) -> None:
        self._notify("READY=1")
