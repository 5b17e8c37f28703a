"""Packaging (issue 12 section 6): what protocol/ imports is a core dependency; the lock file pins
every package of the [dev] install with hashes and covers every declared requirement; the venv
the suite runs in is exactly the lock (so what CI tested is what a deploy installs)."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
LOCK = REPO / "requirements-dev.lock"
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)")


def locked() -> dict[str, tuple[str, int]]:
    """name -> (version, number of hashes) of every pin in the lock."""
    pins: dict[str, tuple[str, int]] = {}
    current: str | None = None
    for line in LOCK.read_text().splitlines():
        match = PIN.match(line)
        if match:
            current = canonicalize_name(match[1])
            pins[current] = (match[2], 0)
        elif current and line.strip().startswith("--hash=sha256:"):
            version, hashes = pins[current]
            pins[current] = (version, hashes + 1)
        elif line and not line.startswith((" ", "#")):
            raise AssertionError(f"not a pinned requirement: {line!r}")
    return pins


def declared() -> list[Requirement]:
    extras = PROJECT["optional-dependencies"]
    lines = [*PROJECT["dependencies"], *(line for extra in extras.values() for line in extra)]
    return [Requirement(line) for line in lines]


def test_what_protocol_imports_is_a_core_dependency() -> None:
    core = {canonicalize_name(Requirement(line).name) for line in PROJECT["dependencies"]}
    assert {"cryptography", "pynacl"} <= core
    distributions = importlib.metadata.packages_distributions()
    for source in (REPO / "protocol").rglob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            names = (
                [alias.name for alias in node.names]
                if isinstance(node, ast.Import)
                else [node.module]
                if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module
                else []
            )
            for name in names:
                top = name.partition(".")[0]
                if top in sys.stdlib_module_names or top in ("protocol", "__future__"):
                    continue
                owners = {canonicalize_name(d) for d in distributions.get(top, [])}
                assert owners & core, f"{source.name} imports {top}, not a core dependency"


def test_the_lock_pins_every_package_with_hashes_and_no_machine_paths() -> None:
    pins = locked()
    assert len(pins) > 30
    assert all(hashes >= 1 for _, hashes in pins.values()), pins
    text = LOCK.read_text()
    assert "file://" not in text and "--index-url" not in text and "--find-links" not in text
    assert "festival-cashless" not in pins  # the project is installed with --no-deps -e .


def test_every_declared_requirement_is_locked_within_its_range() -> None:
    pins = locked()
    for requirement in declared():
        name = canonicalize_name(requirement.name)
        if name == "festival-cashless":
            continue
        if requirement.marker and not requirement.marker.evaluate():
            continue  # e.g. rpi-lgpio, aarch64 only: not in the x86_64 lock (docs/operations.md)
        assert name in pins, f"{requirement} is not in {LOCK.name}: ./run lock"
        assert requirement.specifier.contains(pins[name][0], prereleases=True), (requirement, pins)


def test_the_suite_runs_on_exactly_the_locked_versions() -> None:
    for name, (version, _) in locked().items():
        assert importlib.metadata.version(name) == version, f"{name}: ./run setup"
    assert int(importlib.metadata.version("schemathesis").split(".")[0]) >= 4


def test_the_setup_stamp_covers_the_lock() -> None:
    """./run reinstalls when the lock changes, not only pyproject.toml."""
    run = (REPO / "run").read_text()
    assert 'cat pyproject.toml "$LOCK" | sha256sum' in run
    assert '--require-hashes -r "$LOCK"' in run and "--no-deps -e ." in run


def test_the_kiosk_extra_installs_the_gpio_library_only_on_a_raspberry_pi() -> None:
    """(issue 11 item 16) `pip install .[kiosk]` gives rpi-lgpio - the RPi.GPIO API on every Pi,
    the Pi 5 included - on 64- and 32-bit Raspberry Pi OS, nothing on a PC, and never the
    original RPi.GPIO next to it (both install the RPi package; RPi.GPIO cannot run on a Pi 5)."""
    kiosk = [Requirement(text) for text in PROJECT["optional-dependencies"]["kiosk"]]
    names = {canonicalize_name(requirement.name) for requirement in kiosk}
    assert "rpi-gpio" not in names
    (gpio,) = [r for r in kiosk if canonicalize_name(r.name) == "rpi-lgpio"]
    assert gpio.marker is not None

    def installs_on(sys_platform: str, machine: str) -> bool:
        return gpio.marker.evaluate({"sys_platform": sys_platform, "platform_machine": machine})  # type: ignore[union-attr]

    assert installs_on("linux", "aarch64")  # Pi 3, 4, 5, Zero 2 on 64-bit Raspberry Pi OS
    assert installs_on("linux", "armv7l")  # the same boards on 32-bit Raspberry Pi OS
    assert not installs_on("linux", "x86_64")  # a laptop, CI, the cloud
    assert not installs_on("darwin", "arm64")  # a Mac: no gpiochip
