"""sd_notify without libsystemd: READY=1, WATCHDOG=1, STOPPING=1 to $NOTIFY_SOCKET.

A no-op when not started by systemd. Used by the kiosk. The cloud has its own,
cloud/systemd_notify.py (the two sides never import each other); tests/test_systemd_notify.py
runs the same checks against both.
"""

from __future__ import annotations

import os
import socket


def notify(state: str) -> bool:
    """Send one notification; returns False when there is no systemd to tell."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # abstract namespace socket
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        # Never wait: a receiver that does not read (its queue holds net.unix.max_dgram_qlen,
        # 10 by default) would otherwise block the caller's loop - the consumer's payments -
        # on a watchdog ping. A ping that does not fit is dropped, and the call says so.
        sock.setblocking(False)
        try:
            sock.connect(address)
            sock.sendall(state.encode())
        except OSError:  # BlockingIOError (a full queue) included
            return False
    return True


def watchdog_interval_s() -> float | None:
    """Half of systemd's WatchdogSec (the recommended ping interval), or None when unset."""
    usec = os.environ.get("WATCHDOG_USEC")
    if not usec or not usec.isdigit():
        return None
    pid = os.environ.get("WATCHDOG_PID")
    if pid and pid.isdigit() and int(pid) != os.getpid():
        return None
    return int(usec) / 2_000_000
