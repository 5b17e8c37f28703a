"""Indicator patterns played on the recording fake pins; the RPi adapter refuses off a Pi."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from device.indicators import PATTERNS, IndicatorPlayer, PinChange, RecordingPins
from device.indicators_rpi import IndicatorUnavailable, RpiPins
from device.keys import save_private_key
from device.machine import Signal
from protocol.keys import generate_private_key, public_key_b64
from tests.waiting import wait_until


def levels(history: list[PinChange]) -> list[tuple[bool, bool, bool]]:
    return [(change.green, change.red, change.buzzer) for change in history]


def test_approved_plays_green_with_a_beep_then_everything_off() -> None:
    pins = RecordingPins()
    player = IndicatorPlayer(pins)
    try:
        player.signal(Signal.APPROVED)
        wait_until(lambda: len(pins.history) >= 3, timeout_s=5, what="the approved pattern")
        assert levels(pins.history) == [
            (True, False, True),
            (True, False, False),
            (False, False, False),
        ]
        first, second, last = pins.history
        beep_s = second.at_s - first.at_s
        assert 0.14 <= beep_s < 0.5
        assert last.at_s - first.at_s >= 1.9
        assert [signal for _, signal in player.signals] == [Signal.APPROVED]
    finally:
        player.close()
    assert pins.closed


def test_approved_offline_is_amber_with_its_own_three_beeps() -> None:
    pins = RecordingPins()
    player = IndicatorPlayer(pins)
    try:
        player.signal(Signal.APPROVED_OFFLINE)
        wait_until(lambda: len(pins.history) >= 7, timeout_s=5, what="the offline pattern")
        played = levels(pins.history)
        # Amber (both LEDs) throughout, three beeps, then everything off.
        assert played[:6] == [(True, True, True), (True, True, False)] * 3
        assert played[6] == (False, False, False)
        assert played[:6] != levels_of(Signal.APPROVED)[:6]
    finally:
        player.close()


def levels_of(signal: Signal) -> list[tuple[bool, bool, bool]]:
    return [(step.green, step.red, step.buzzer) for step in PATTERNS[signal]]


def test_every_signal_has_a_pattern_of_its_own() -> None:
    patterns = [tuple(levels_of(signal)) for signal in Signal]
    assert len(set(patterns)) == len(patterns)


def test_a_new_signal_interrupts_the_current_pattern() -> None:
    pins = RecordingPins()
    player = IndicatorPlayer(pins)
    try:
        player.signal(Signal.APPROVED)
        wait_until(lambda: len(pins.history) >= 1, timeout_s=5, what="approved to start")
        player.signal(Signal.DECLINED)
        wait_until(
            lambda: (False, True, True) in levels(pins.history), timeout_s=5, what="declined"
        )
        # The declined pattern started before approved finished its 2 s.
        started = next(c for c in pins.history if (c.green, c.red, c.buzzer) == (False, True, True))
        assert started.at_s - pins.history[0].at_s < 1.0
    finally:
        player.close()
    assert levels(pins.history)[-1] == (False, False, False)


def test_every_signal_has_a_finite_pattern() -> None:
    for signal in Signal:
        steps = PATTERNS[signal]
        assert steps, signal
        assert sum(step.duration_ms for step in steps) <= 3_000


def test_close_switches_off_mid_pattern() -> None:
    pins = RecordingPins()
    player = IndicatorPlayer(pins)
    player.signal(Signal.ERROR)
    wait_until(lambda: len(pins.history) >= 1, timeout_s=5, what="error to start")
    player.close()
    assert levels(pins.history)[-1] == (False, False, False)
    assert pins.closed


@pytest.mark.skipif(
    platform.machine() in ("aarch64", "armv7l"), reason="only meaningful off a Raspberry Pi"
)
def test_rpi_pins_refuse_off_a_pi() -> None:
    with pytest.raises(IndicatorUnavailable):
        RpiPins(green_pin=17, red_pin=27, buzzer_pin=22)


PI5_ERROR = "Cannot determine SOC peripheral base address"

# RPi.GPIO as it behaves on a Raspberry Pi 5: the import works, setup() cannot (the real
# library maps the SoC's registers, which the Pi 5's RP1 chip does not have). GPIO cannot run
# here, so this fake stands in for the library; it records what the kiosk asked of it.
FAKE_RPI_GPIO = f'''
BCM, OUT, LOW, HIGH = 11, 0, 0, 1
calls = []

def setwarnings(flag):
    calls.append(("setwarnings", flag))

def setmode(mode):
    calls.append(("setmode", mode))

def setup(pin, direction, initial=LOW):
    calls.append(("setup", pin))
    raise RuntimeError("{PI5_ERROR}")

def output(pin, level):
    calls.append(("output", pin, level))

def cleanup(pins=None):
    calls.append(("cleanup", pins))
'''


@pytest.fixture
def fake_rpi_on_a_pi5(tmp_path: Path) -> Iterator[Path]:
    package = tmp_path / "fake-rpi" / "RPi"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "GPIO.py").write_text(FAKE_RPI_GPIO)
    yield package.parent
    for name in ("RPi.GPIO", "RPi"):  # never leave the fake imported for other tests
        sys.modules.pop(name, None)


def test_a_gpio_setup_failure_becomes_indicator_unavailable(
    fake_rpi_on_a_pi5: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(fake_rpi_on_a_pi5))
    for name in ("RPi", "RPi.GPIO"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    with pytest.raises(IndicatorUnavailable) as raised:
        RpiPins(green_pin=17, red_pin=27, buzzer_pin=22)
    message = str(raised.value)
    assert PI5_ERROR in message and "17, 27, 22" in message and "rpi-lgpio" in message
    gpio = sys.modules["RPi.GPIO"]
    assert ("setup", 17) in gpio.calls  # type: ignore[attr-defined]
    assert gpio.calls[-1] == ("cleanup", None)  # type: ignore[attr-defined]


def test_the_kiosk_refuses_to_start_when_gpio_cannot_run(
    fake_rpi_on_a_pi5: Path, tmp_path: Path
) -> None:
    """A Pi 5 with RPi.GPIO: exit 1 with the reason on stderr, no traceback, no READY=1."""
    key_file = tmp_path / "kiosk.pem"
    save_private_key(generate_private_key(), key_file)
    env = {
        "PATH": os.environ["PATH"],
        "PYTHONPATH": str(fake_rpi_on_a_pi5),
        "KIOSK_ID": "bar-1",
        "KIOSK_KEY_FILE": str(key_file),
        "CLOUD_PUBLIC_KEY": public_key_b64(generate_private_key()),
        "MQTT_URL": "mqtt://bar-1:secret@127.0.0.1:1",
        "KIOSK_STATE_DIR": str(tmp_path / "state"),
        "KIOSK_MODE": "bar",
        "KIOSK_READER": "sim",
        "KIOSK_GPIO": "rpi",
        "KIOSK_HTTP_PORT": "0",
    }
    result = subprocess.run(
        [sys.executable, "-m", "device.cli", "run"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1, result.stderr
    assert "festival-kiosk: GPIO cannot run here: GPIO setup of BCM pins 17, 27, 22 failed:" in (
        result.stderr
    )
    assert PI5_ERROR in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert "kiosk running" not in result.stdout
    [line] = [json.loads(line) for line in result.stdout.splitlines()]
    assert (line["level"], line["event"]) == ("error", "GPIO unavailable: not starting")
