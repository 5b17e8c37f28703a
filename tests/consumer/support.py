"""Running the real `festival-cloud consumer` (and other CLI verbs) as child processes in tests."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cloud.sandbox import free_port
from tests.consumer.kiosk_client import TlsClientFiles, env_without_settings, purge_session
from tests.waiting import wait_until

REPO = Path(__file__).resolve().parents[2]
FESTIVAL_CLOUD = str(REPO / ".venv" / "bin" / "festival-cloud")
STOP_TIMEOUT_S = 30.0
_TLS_SETTINGS = ("MQTT_CA_FILE", "MQTT_CERT_FILE", "MQTT_KEY_FILE")


def cloud_env(database_url: str, mqtt_url: str | None = None, **extra: str) -> dict[str, str]:
    env = env_without_settings()
    env["DATABASE_URL"] = database_url
    if mqtt_url is not None:
        env["MQTT_URL"] = mqtt_url
    env.update(extra)
    return env


def festival_cloud(
    *args: str, database_url: str, check: bool = True, **extra: str
) -> subprocess.CompletedProcess[str]:
    """Run one `festival-cloud` verb to completion."""
    completed = subprocess.run(
        [FESTIVAL_CLOUD, *args],
        env=cloud_env(database_url, **extra),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if check and completed.returncode != 0:
        raise AssertionError(
            f"festival-cloud {' '.join(args)} exited {completed.returncode}:\n"
            f"{completed.stdout}\n{completed.stderr}"
        )
    return completed


# Every consumer a test module made: a failing test's report shows the end of their logs
# (tests/consumer/conftest.py), before the fixtures delete the folders they were in.
CONSUMERS: list[ConsumerProcess] = []
LOG_TAIL_LINES = 60


@dataclass
class ConsumerProcess:
    """One `festival-cloud consumer` child: started with its environment, stopped by its pid."""

    database_url: str
    mqtt_url: str
    signing_key_file: Path
    consumer_id: str
    workdir: Path
    metrics_port: int = field(default_factory=free_port)
    batch_max: int = 64
    extra_env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    notifications: list[str] = field(default_factory=list)
    starts: int = 0

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_file = self.workdir / f"{self.consumer_id}.log"
        CONSUMERS.append(self)
        # AF_UNIX paths are short (108 bytes): the notify socket lives in its own /tmp folder.
        self._notify_dir = Path(tempfile.mkdtemp(prefix="sdn-"))
        self.notify_path = self._notify_dir / "notify"
        self._notify_socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._notify_socket.bind(str(self.notify_path))
        self._notify_socket.setblocking(False)

    def env(self) -> dict[str, str]:
        env = cloud_env(
            self.database_url,
            self.mqtt_url,
            CLOUD_SIGNING_KEY_FILE=str(self.signing_key_file),
            CONSUMER_ID=self.consumer_id,
            CONSUMER_METRICS_PORT=str(self.metrics_port),
            CONSUMER_BATCH_MAX=str(self.batch_max),
            NOTIFY_SOCKET=str(self.notify_path),
            PYTHONUNBUFFERED="1",
        )
        env.update(self.extra_env)
        return env

    def start(self, wait_ready: bool = True, timeout_s: float = 30.0) -> ConsumerProcess:
        assert self.process is None or self.process.poll() is not None, "already running"
        with self.log_file.open("ab") as log:
            self.process = subprocess.Popen(
                [FESTIVAL_CLOUD, "consumer"],
                env=self.env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        self.starts += 1
        if wait_ready:
            self.wait_ready(timeout_s)
        return self

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        expected = self.starts

        def ready() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(
                    f"consumer exited with {self.process.returncode}:\n{self.log_text()[-3000:]}"
                )
            return self.read_notifications().count("READY=1") >= expected

        wait_until(ready, timeout_s=timeout_s, what=f"READY=1 from {self.consumer_id}")

    def read_notifications(self) -> list[str]:
        while True:
            try:
                self.notifications.append(self._notify_socket.recv(4096).decode())
            except BlockingIOError:
                return self.notifications

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM and wait; returns the exit code."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=timeout_s)
                raise AssertionError("the consumer did not stop on SIGTERM") from None
        return self.process.returncode

    def kill(self) -> None:
        """SIGKILL: a crash, nothing finished or acknowledged."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=STOP_TIMEOUT_S)

    def close(self, purge: bool = True) -> None:
        """Stop the process, forget its durable session, release the notify socket."""
        try:
            if self.process is not None and self.process.poll() is None:
                self.process.send_signal(signal.SIGTERM)
                try:
                    self.process.wait(timeout=STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait(timeout=STOP_TIMEOUT_S)
            if purge:
                purge_session(self.mqtt_url, self.consumer_id, tls=self.tls_files())
        finally:
            self._notify_socket.close()
            for path in (self.notify_path, self._notify_dir):
                try:
                    os.remove(path) if path.is_file() or path.is_socket() else os.rmdir(path)
                except OSError:
                    pass

    def tls_files(self) -> TlsClientFiles:
        """The TLS files this consumer was given (MQTT_CA_FILE, MQTT_CERT_FILE, MQTT_KEY_FILE)."""
        env = self.extra_env
        return TlsClientFiles(
            *(Path(env[name]) if env.get(name) else None for name in _TLS_SETTINGS)
        )

    def log_text(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    def log_lines(self) -> list[dict[str, Any]]:
        lines = []
        for line in self.log_text().splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict):
                lines.append(entry)
        return lines

    def events(self, event: str) -> list[dict[str, Any]]:
        return [line for line in self.log_lines() if line.get("event") == event]
