"""The test tiers: which of unit / integration / e2e a test is, from what it uses.

tests/conftest.py marks every collected test with exactly one tier (`tier_of`), so that
`./run test -m unit` runs the pure tier alone, and while a unit test runs it refuses to start
any service program (`ServiceGuard`): a test that needs PostgreSQL, Mosquitto, pcscd or a
browser cannot pass as a unit test, whatever this table says.

- e2e: the whole system or a browser: tests/smoke, tests/demo, tests/systemd, the kiosk's
  end-to-end flow, and every module that drives Chromium (tests/browser.py).
- integration: uses a real service: a fixture of `SERVICE_FIXTURES` (directly or through other
  fixtures: `database_url` needs `postgres_server`), or a module of `INTEGRATION_MODULES` that
  starts its own service inside its tests.
- unit: everything else: pure code, the shipped fakes, files in a temp dir, child Python
  processes that start no service.
A test may also say its tier itself (`@pytest.mark.integration`); a test that says unit but
uses a service is an error at collection.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from collections.abc import Iterable
from typing import Any, Final

TIERS: Final = ("unit", "integration", "e2e")

# Fixtures that start (or are) a real service. The session ones of tests/conftest.py, and the
# private ones of suites that stop and restart their own (their names are local to a module).
SERVICE_FIXTURES: Final = frozenset(
    {
        "postgres_server",  # everything of the database goes through it (make_database, ...)
        "mosquitto_broker",
        "pcscd",
        "kiosk_broker",  # tests/device/conftest.py
        "tls_broker",  # tests/device/test_kiosk_tls.py
        "broker",  # tests/broker/test_broker_rules.py, tests/consumer/test_mqtt_link.py, faults
        "postgres15_url",  # tests/ledger/test_postgres15.py
    }
)
# Folders (relative to tests/) whose tests are end-to-end, and single e2e modules.
E2E_FOLDERS: Final = ("smoke", "demo", "systemd")
E2E_MODULES: Final = frozenset({"device/test_kiosk_end_to_end.py"})
BROWSER_MODULE: Final = "tests.browser"
# Modules that start a service inside a test (not through a fixture).
INTEGRATION_MODULES: Final = frozenset({"consumer/test_consumer_faults.py"})

# What a unit test may not start (the first word of a command, without its folder).
SERVICE_PROGRAMS: Final = frozenset(
    {
        "postgres",
        "initdb",
        "pg_ctl",
        "mosquitto",
        "pcscd",
        "chromium",
        "chromedriver",
    }
)


class ServiceInUnitTest(RuntimeError):
    """A test marked unit tried to start a service program."""


def tier_of(
    relative_path: str,
    fixture_names: Iterable[str],
    explicit: Iterable[str],
    uses_browser: bool,
) -> str:
    """The tier of one test: `relative_path` from tests/ (a/b.py), the names of every fixture it
    needs (the whole closure), the tier marks it carries itself, whether its module drives a
    browser. ValueError when its own marks contradict what it uses."""
    marks = [mark for mark in dict.fromkeys(explicit) if mark in TIERS]
    if len(marks) > 1:
        raise ValueError(f"{relative_path}: one tier per test, not {' and '.join(marks)}")
    services = sorted(SERVICE_FIXTURES.intersection(fixture_names))
    folder = relative_path.split("/", 1)[0]
    if folder in E2E_FOLDERS or relative_path in E2E_MODULES or uses_browser:
        found = "e2e"
    elif services or relative_path in INTEGRATION_MODULES:
        found = "integration"
    else:
        found = "unit"
    if not marks:
        return found
    if marks[0] == "unit" and found != "unit":
        raise ValueError(
            f"{relative_path}: marked unit but it is {found}"
            + (f" (it uses {', '.join(services)})" if services else "")
        )
    return marks[0]


def uses_browser(module_globals: dict[str, Any]) -> bool:
    """Whether a test module uses tests/browser.py (it imported something of it)."""
    return any(
        getattr(value, "__module__", None) == BROWSER_MODULE for value in module_globals.values()
    )


def program_of(args: Any) -> str:
    """The program a Popen call starts, without its folder ('' when it cannot tell)."""
    if isinstance(args, str | bytes | os.PathLike):
        text = os.fsdecode(args)
        words = shlex.split(text) if " " in text else [text]
    else:
        words = [os.fsdecode(word) for word in args] if args else []
    return os.path.basename(words[0]) if words else ""


class ServiceGuard:
    """While active, subprocess refuses to start a service program (SERVICE_PROGRAMS)."""

    def __init__(self, where: str) -> None:
        self._where = where
        self._original: type[subprocess.Popen[Any]] | None = None

    def __enter__(self) -> ServiceGuard:
        original = subprocess.Popen
        where = self._where

        class GuardedPopen(original):  # type: ignore[valid-type,misc]
            # In __new__: refused before there is an object whose __del__ would complain.
            def __new__(cls, args: Any, *rest: Any, **options: Any) -> GuardedPopen:
                program = program_of(args)
                if program in SERVICE_PROGRAMS:
                    raise ServiceInUnitTest(
                        f"{where} is a unit test but starts {program}: it needs a service; "
                        "mark it integration or e2e (tests/tiers.py)"
                    )
                return super().__new__(cls)

        self._original = original
        subprocess.Popen = GuardedPopen  # type: ignore[misc]
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._original is not None
        subprocess.Popen = self._original  # type: ignore[misc]
