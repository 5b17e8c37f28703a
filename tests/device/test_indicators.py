"""Indicator patterns played on the recording fake pins; the RPi adapter refuses off a Pi."""

from __future__ import annotations

import platform

import pytest

from device.indicators import PATTERNS, IndicatorPlayer, PinChange, RecordingPins
from device.indicators_rpi import IndicatorUnavailable, RpiPins
from device.machine import Signal
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
