"""festival-api.service is Type=notify (issue 12 section 6): the real `festival-cloud api` tells
systemd READY=1 only once its port answers, pings WATCHDOG=1 at half of WatchdogSec from its
event loop, and says STOPPING=1 when SIGTERM starts the graceful shutdown. systemd's notify socket
is played by a datagram socket of the test, as in the consumer's tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

from cloud.sandbox import free_port
from tests.api.conftest import ADMIN_TOKEN, STRIPE_KEY, WEBHOOK_SECRET
from tests.waiting import wait_until

FESTIVAL_CLOUD = Path(sys.executable).with_name("festival-cloud")
WATCHDOG_USEC = 400_000  # pings every 0.2 s


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - loopback
            return int(response.status)
    except OSError:
        return 0


def test_the_api_notifies_systemd_ready_watchdog_and_stopping(api_database_url: str) -> None:
    port = free_port()
    folder = Path(tempfile.mkdtemp(prefix="sdn-"))  # AF_UNIX paths are short: in /tmp
    notify_path = folder / "notify"
    received: list[str] = []
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify_socket:
        notify_socket.bind(str(notify_path))
        notify_socket.setblocking(False)

        def notifications() -> list[str]:
            while True:
                try:
                    received.append(notify_socket.recv(4096).decode())
                except BlockingIOError:
                    return received

        environment = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("STRIPE_", "ADMIN_", "POS_", "WATCHDOG_", "NOTIFY_"))
        }
        environment.update(
            {
                "DATABASE_URL": api_database_url,
                "ADMIN_TOKEN": ADMIN_TOKEN,
                "STRIPE_SECRET_KEY": STRIPE_KEY,
                "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
                "FESTIVAL_ENVIRONMENT": "development",
                "NOTIFY_SOCKET": str(notify_path),
                "WATCHDOG_USEC": str(WATCHDOG_USEC),
            }
        )
        process = subprocess.Popen(
            [str(FESTIVAL_CLOUD), "api", "--host", "127.0.0.1", "--port", str(port)],
            env=environment,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_until(
                lambda: "READY=1" in notifications() or process.poll() is not None,
                timeout_s=30,
                what="READY=1 from the API",
            )
            assert process.poll() is None, f"the API exited with {process.returncode}"
            # READY=1 came after the socket listens: the port answers at once, without waiting.
            assert _status(f"http://127.0.0.1:{port}/healthz") == 200
            assert received.index("READY=1") == 0  # nothing claimed readiness before
            wait_until(
                lambda: notifications().count("WATCHDOG=1") >= 3,
                timeout_s=10,
                what="watchdog pings",
            )
        finally:
            process.send_signal(signal.SIGTERM)
            exit_code = process.wait(timeout=30)
        notifications()
        assert exit_code in (0, -signal.SIGTERM)
        assert "STOPPING=1" in received
        assert received.index("STOPPING=1") > received.index("READY=1")
    notify_path.unlink()
    folder.rmdir()
