"""`festival-kiosk run` as a real child process, driven through its local HTTP interface."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cloud.sandbox import free_port
from tests.waiting import wait_until

START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 15.0
HTTP_TIMEOUT_S = 10.0


@dataclass
class KioskProcess:
    """One kiosk process; ``env`` holds its KIOSK_* settings, ``http_port`` is fixed up front."""

    env: dict[str, str]
    log_file: Path
    http_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def state_dir(self) -> Path:
        return Path(self.env["KIOSK_STATE_DIR"])

    @property
    def outbox_file(self) -> Path:
        return self.state_dir / "outbox.sqlite3"

    def start(self) -> KioskProcess:
        assert self.process is None or self.process.poll() is not None
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("KIOSK_", "MQTT_", "FESTIVAL_", "NOTIFY_", "WATCHDOG_"))
        }
        env.update(self.env)
        env["KIOSK_HTTP_PORT"] = str(self.http_port)
        env["PYTHONUNBUFFERED"] = "1"
        with self.log_file.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "device.cli", "run"],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=Path(__file__).resolve().parents[2],
            )
        wait_until(self._ready, timeout_s=START_TIMEOUT_S, what="the kiosk's HTTP interface")
        return self

    def _ready(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"kiosk exited with {self.process.returncode}:\n{self.log_tail()}")
        try:
            return self.get("/healthz")[0] == 200
        except OSError:
            return False

    def log_tail(self, characters: int = 4000) -> str:
        return self.log_file.read_text(errors="replace")[-characters:]

    def kill(self) -> None:
        """kill -9: no cleanup of any kind."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=STOP_TIMEOUT_S)
        self.process = None

    def stop(self) -> int | None:
        """SIGTERM and wait (then SIGKILL if it hangs); returns the exit code."""
        process, self.process = self.process, None
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=STOP_TIMEOUT_S)
        return process.returncode

    # --- HTTP ----------------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        body: object = None,
        headers: dict[str, str] | None = None,
        raw: bytes | None = None,
    ) -> tuple[int, Any]:
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.http_port}{path}", data=data, method=method
        )
        if body is not None and raw is None:
            request.add_header("Content-Type", "application/json")
        for name, value in (headers or {}).items():
            request.add_header(name, value)
        try:
            with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as response:  # noqa: S310
                payload = response.read()
                status = response.status
        except urllib.error.HTTPError as error:
            payload = error.read()
            status = error.code
            error.close()
        try:
            return status, json.loads(payload)
        except ValueError:
            return status, payload

    def get(self, path: str) -> tuple[int, Any]:
        return self.request("GET", path)

    def post(self, path: str, body: object) -> tuple[int, Any]:
        return self.request("POST", path, body)

    def state(self) -> dict[str, Any]:
        status, document = self.get("/api/state")
        assert status == 200, document
        assert isinstance(document, dict)
        return document

    def wait_for(self, predicate: Any, what: str, timeout_s: float = 15.0) -> dict[str, Any]:
        def check() -> dict[str, Any]:
            document = self.state()
            return document if predicate(document) else {}

        try:
            result: dict[str, Any] = wait_until(check, timeout_s=timeout_s, what=what)
        except AssertionError:
            raise AssertionError(
                f"{what}: last state {self.state()}\n--- kiosk log ---\n{self.log_tail()}"
            ) from None
        return result

    def sell(self, items: list[dict[str, object]], card_uid: str) -> None:
        status, reply = self.post("/api/order", {"items": items})
        assert status == 200, reply
        status, reply = self.post("/api/tap", {"card_uid": card_uid})
        assert status == 202, reply

    # --- the outbox on disk --------------------------------------------------------------------

    def outbox_rows(self) -> list[tuple[str, int, bytes]]:
        """(request_id, seq, payload) of every stored request, read by another process."""
        if not self.outbox_file.exists():
            return []
        connection = sqlite3.connect(f"file:{self.outbox_file}?mode=ro", uri=True)
        try:
            rows = connection.execute(
                "SELECT request_id, seq, payload FROM requests ORDER BY seq"
            ).fetchall()
        finally:
            connection.close()
        return [(str(row[0]), int(row[1]), bytes(row[2])) for row in rows]
