"""`festival-cloud` on a kiosk-only install (`pip install .[kiosk]`, issue 11 item 17).

The cloud's packages are blocked at import time in a child process, as if never installed:
`--help` (of the CLI and of every verb) answers with exit 0 and no traceback; a verb that needs
them says which extra to install; `festival-kiosk` works as on a Pi.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from cloud.cli import build_parser
from device.keys import load_private_key
from protocol.keys import public_key_b64

CLOUD_ONLY = (
    "fastapi",
    "starlette",
    "sqlalchemy",
    "pydantic",
    "pydantic_core",
    "pydantic_settings",
    "alembic",
    "stripe",
    "uvicorn",
    "psycopg2",
    "prometheus_client",
)

# Runs one console script's main() with the cloud-only packages refused by an import hook.
WRAPPER = """
import importlib.abc, sys
BLOCKED = set(sys.argv[2].split(","))

class NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, NotInstalled())
for name in list(sys.modules):  # nothing of them may be imported already
    assert name.partition(".")[0] not in BLOCKED, name
module, function = sys.argv[1].split(":")
sys.argv = [module, *sys.argv[3:]]
main = getattr(__import__(module, fromlist=[function]), function)
sys.exit(main())
"""


def run_without_cloud_packages(entry_point: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", WRAPPER, entry_point, ",".join(CLOUD_ONLY), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _verbs(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every verb path of the CLI (`db upgrade`, `kiosk add`, …), whoever added it."""
    found: list[tuple[str, ...]] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found.append((*prefix, name))
                found.extend(_verbs(sub, (*prefix, name)))
    return found


def test_the_blocker_really_blocks() -> None:
    result = run_without_cloud_packages("cloud.settings:load_settings")
    assert result.returncode != 0
    assert "No module named 'pydantic" in result.stderr


def test_help_works_without_the_cloud_packages() -> None:
    result = run_without_cloud_packages("cloud.cli:main", "--help")
    assert result.returncode == 0, result.stderr
    assert "festival-cloud" in result.stdout and "VERB" in result.stdout
    assert "Traceback" not in result.stderr and result.stderr == ""


@pytest.mark.parametrize("verb", _verbs(build_parser()), ids=" ".join)
def test_every_verbs_help_works_without_the_cloud_packages(verb: tuple[str, ...]) -> None:
    result = run_without_cloud_packages("cloud.cli:main", *verb, "--help")
    assert result.returncode == 0, result.stderr
    assert "usage: festival-cloud " + " ".join(verb) in result.stdout
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "verb", [("check",), ("consumer",), ("api",), ("kiosk", "list"), ("db", "current")]
)
def test_a_cloud_verb_names_the_extra_to_install(verb: tuple[str, ...]) -> None:
    result = run_without_cloud_packages("cloud.cli:main", *verb)
    assert result.returncode == 2
    assert "install the cloud extra: pip install 'festival-cashless[cloud]'" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_kiosk_cli_needs_none_of_the_cloud_packages(tmp_path: Path) -> None:
    assert run_without_cloud_packages("device.cli:main", "--help").returncode == 0
    out = tmp_path / "kiosk.pem"
    result = run_without_cloud_packages("device.cli:main", "keygen", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == public_key_b64(load_private_key(out))
    # `run` gets as far as its settings (and imports the whole firmware) without them.
    result = run_without_cloud_packages("device.cli:main", "run")
    assert result.returncode == 2, result.stderr
    assert "KIOSK_ID is required" in result.stderr and "Traceback" not in result.stderr
