"""uvicorn's Server telling systemd what it does (festival-api.service is Type=notify).

READY=1 once the socket listens (not when the app is built: systemd then orders the units that
need the API after a port that answers), WATCHDOG=1 from uvicorn's event loop at half of
WatchdogSec (a stuck loop stops the pings and systemd restarts the API), STOPPING=1 when the
graceful shutdown begins. Outside systemd (no NOTIFY_SOCKET) every notification is a no-op.
"""

from __future__ import annotations

import socket
import time

import uvicorn

from cloud.systemd_notify import notify, watchdog_interval_s


class NotifyingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self._watchdog_s = watchdog_interval_s()
        self._last_ping_s = 0.0

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            notify("READY=1")

    async def on_tick(self, counter: int) -> bool:
        if self._watchdog_s is not None:
            now = time.monotonic()
            if now - self._last_ping_s >= self._watchdog_s:
                self._last_ping_s = now
                notify("WATCHDOG=1")
        return await super().on_tick(counter)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        notify("STOPPING=1")
        await super().shutdown(sockets)
