"""`--version` on the three console scripts answers the installed distribution's version (its
metadata, so a deploy can tell which release runs) and exits 0 without reading any settings."""

from __future__ import annotations

import importlib.metadata
import subprocess
from pathlib import Path

import pytest

BIN = Path(__file__).resolve().parents[1] / ".venv" / "bin"


@pytest.mark.parametrize("program", ["festival-cloud", "festival-kiosk", "festival-demo"])
def test_version_comes_from_the_installed_distribution(program: str) -> None:
    expected = importlib.metadata.version("festival-cashless")
    result = subprocess.run(
        [str(BIN / program), "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"PATH": "/usr/bin:/bin"},  # no DATABASE_URL, no settings of any kind
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{program} {expected}"
    assert result.stderr == ""
