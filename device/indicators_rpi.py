"""Indicator pins on a Raspberry Pi through RPi.GPIO (or rpi-lgpio on a Pi 5, same import name).

RPi.GPIO is imported only when ``RpiPins`` is built: importing it off a Pi raises RuntimeError,
which is translated here into ``IndicatorUnavailable`` (the kiosk then refuses to start with
``KIOSK_GPIO=rpi``; use ``KIOSK_GPIO=fake`` on a machine without GPIO).
"""

from __future__ import annotations

from typing import Any


class IndicatorUnavailable(RuntimeError):
    """The GPIO library cannot be used on this machine."""


class RpiPins:
    """Green LED, red LED and buzzer on BCM pin numbers, active high."""

    def __init__(self, *, green_pin: int, red_pin: int, buzzer_pin: int) -> None:
        try:
            import RPi.GPIO as gpio
        except (ImportError, RuntimeError) as error:
            raise IndicatorUnavailable(f"RPi.GPIO is not usable here: {error}") from error
        self._gpio: Any = gpio
        self._pins = (green_pin, red_pin, buzzer_pin)
        gpio.setwarnings(False)
        gpio.setmode(gpio.BCM)
        for pin in self._pins:
            gpio.setup(pin, gpio.OUT, initial=gpio.LOW)

    def set(self, green: bool, red: bool, buzzer: bool) -> None:
        gpio = self._gpio
        for pin, level in zip(self._pins, (green, red, buzzer), strict=True):
            gpio.output(pin, gpio.HIGH if level else gpio.LOW)

    def close(self) -> None:
        """Switch everything off and release the pins (they return to inputs)."""
        gpio = self._gpio
        try:
            for pin in self._pins:
                gpio.output(pin, gpio.LOW)
        finally:
            gpio.cleanup(list(self._pins))
