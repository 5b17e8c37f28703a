"""Indicator pins on a Raspberry Pi through the RPi.GPIO API.

On every Pi the package providing ``RPi.GPIO`` is rpi-lgpio (pyproject's ``kiosk`` extra on
Linux ARM): the same API over the kernel's gpiochip device, which works on a Pi 3, 4 and 5.
The original RPi.GPIO pokes the SoC's registers and cannot run on a Pi 5 ("Cannot determine SOC
peripheral base address"); docs/kiosk.md, "GPIO and Pi models", explains the choice.

The library is imported only when ``RpiPins`` is built. Whatever stops it — the import (off a
Pi it raises RuntimeError, not ImportError), ``setmode`` or ``setup`` (a Pi 5 under RPi.GPIO, a
gpiochip the service may not open, a pin another process holds) — is translated here into
``IndicatorUnavailable`` with the reason; the kiosk then refuses to start (exit 1, the reason on
stderr) instead of crashing and being restarted forever.
"""

from __future__ import annotations

from typing import Any, Final

HINT: Final = (
    "install rpi-lgpio (pip install 'festival-cashless[kiosk]' on the Pi installs it), check that"
    " the service user is in the gpio group, or set KIOSK_GPIO=fake on a machine without GPIO"
)


class IndicatorUnavailable(RuntimeError):
    """The GPIO library cannot be used on this machine; the message says why."""


class RpiPins:
    """Green LED, red LED and buzzer on BCM pin numbers, active high."""

    def __init__(self, *, green_pin: int, red_pin: int, buzzer_pin: int) -> None:
        try:
            import RPi.GPIO as gpio
        except (ImportError, RuntimeError) as error:
            raise IndicatorUnavailable(f"RPi.GPIO cannot be imported: {error}; {HINT}") from error
        self._gpio: Any = gpio
        self._pins = (green_pin, red_pin, buzzer_pin)
        try:
            gpio.setwarnings(False)
            gpio.setmode(gpio.BCM)
            for pin in self._pins:
                gpio.setup(pin, gpio.OUT, initial=gpio.LOW)
        except Exception as error:  # RuntimeError (RPi.GPIO), lgpio.error (rpi-lgpio), OSError
            self._release_quietly()
            raise IndicatorUnavailable(
                f"GPIO setup of BCM pins {', '.join(map(str, self._pins))} failed:"
                f" {type(error).__name__}: {error}; {HINT}"
            ) from error

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

    def _release_quietly(self) -> None:
        try:
            self._gpio.cleanup()
        except Exception:  # noqa: S110 - already failing; the setup error is what matters
            pass
