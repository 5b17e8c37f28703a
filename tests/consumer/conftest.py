"""Fixtures of the consumer tests: a migrated database per module, keys, registered kiosks."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cloud.keys import save_private_key
from protocol.keys import generate_private_key


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
