"""Fixtures of the consumer tests: a migrated database per module, keys, registered kiosks."""

from __future__ import annotations

import os
import shutil
import tempfile
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cloud.keys import save_private_key
from protocol.keys import generate_private_key
from tests.consumer.support import CONSUMERS, LOG_TAIL_LINES, ConsumerProcess


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A failing test's report carries the end of every consumer's log of its module: the logs
    live in folders the fixtures delete, and a stall is only explained by what the consumer said."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.failed:
        for consumer in CONSUMERS:
            tail = consumer.log_text().splitlines()[-LOG_TAIL_LINES:]
            report.sections.append((f"consumer {consumer.consumer_id} log", "\n".join(tail)))
            report.sections.append((f"consumer {consumer.consumer_id} metrics", _metrics(consumer)))
        funcargs: dict[str, object] = getattr(item, "funcargs", {})
        broker = funcargs.get("mosquitto_broker") or getattr(funcargs.get("system"), "broker", None)
        log_file = getattr(broker, "log_file", None)
        if log_file is not None and log_file.exists():
            tail = log_file.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
            report.sections.append(("broker log", "\n".join(tail)))


def _metrics(consumer: ConsumerProcess) -> str:
    """The consumer's own figures (queues, in-flight, counts), when it still answers."""
    try:
        with urllib.request.urlopen(
            f"http://127.0.0.1:{consumer.metrics_port}/metrics", timeout=5
        ) as response:
            text = response.read().decode()
    except OSError as error:
        return f"(no metrics: {error})"
    return "\n".join(
        line
        for line in text.splitlines()
        if line.startswith("festival") and "_bucket" not in line and "_created" not in line
    )


@dataclass(frozen=True)
class LedgerDatabase:
    owner_url: str  # migrations and test assertions
    service_url: str  # what the consumer connects as (least privilege)


@dataclass(frozen=True)
class CloudKey:
    path: Path
    private_key: Ed25519PrivateKey


@pytest.fixture(scope="module")
def ledger_database(make_database: Callable[..., str], migrated_template: str) -> LedgerDatabase:
    """A fresh migrated database shared by the tests of one module."""
    from cloud.database import service_url

    owner = make_database(template=migrated_template)
    return LedgerDatabase(owner, service_url(owner))


@pytest.fixture(scope="module")
def cloud_key() -> Iterator[CloudKey]:
    folder = Path(tempfile.mkdtemp(prefix="cloud-key-"))
    path = folder / "cloud.pem"
    key = generate_private_key()
    save_private_key(key, path)  # mode 0600
    yield CloudKey(path, key)
    os.remove(path)
    os.rmdir(folder)


@pytest.fixture(scope="module")
def service_dirs() -> Iterator[Callable[[str], Path]]:
    """Folders for our own servers and logs, under /tmp rather than pytest's numbered basetemp:
    another pytest run of the same user prunes old basetemp folders, possibly while we use
    them, and PostgreSQL (running as another user when we are root) cannot enter a 0700 one."""
    created: list[Path] = []

    def make(name: str) -> Path:
        folder = Path(tempfile.mkdtemp(prefix=f"festival-{name}-"))
        folder.chmod(0o755)
        created.append(folder)
        return folder

    yield make
    for folder in created:
        shutil.rmtree(folder, ignore_errors=True)
