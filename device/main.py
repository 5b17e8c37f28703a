"""The kiosk's composition root: ``festival-kiosk run``.

``run_from_env()`` builds everything from the environment (settings, outbox, reader, GPIO
indicators, MQTT link, the shell, the local HTTP interface), then runs the shell's loop until
SIGTERM/SIGINT, with sd_notify READY/WATCHDOG/STOPPING. Every resource is entered on one
``contextlib.ExitStack`` as soon as it is opened, so each exit path (a clean stop, a start-up
failure, an outbox failure, a crash) closes what was opened, in reverse order.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from device.kiosk import Kiosk, KioskIdentity, SystemClock
from device.limits import (
    MQTT_QUEUED_EXTRA,
    OUTBOX_FILE_NAME,
    OUTCOME_DISPLAY_S,
    READER_CHECK_INTERVAL_S,
    RESEND_AFTER_MAX_S,
)
from device.machine import MachineConfig
from device.outbox import Outbox, OutboxError
from device.reader import CardReader, SimulatedReader
from device.settings import KioskSettings, SettingsError, load_settings
from device.systemd_notify import notify, watchdog_interval_s
from protocol.redaction import redact

if TYPE_CHECKING:  # imported where they are built: a kiosk-only install needs only its adapters
    from device.http_interface import LocalHttpServer
    from device.mqtt_link import MqttLink

log = logging.getLogger("device.kiosk")

STATIC_DIR = Path(__file__).resolve().parent / "static"

# Exit codes (docs/kiosk.md). The unit does not restart after 1 or 2 (RestartPreventExitStatus):
# they do not cure themselves, and a restart loop would only hide the reason in the journal.
EXIT_STOPPED = 0
EXIT_CANNOT_RUN_HERE = 1  # GPIO cannot run on this machine (e.g. RPi.GPIO on a Pi 5)
EXIT_INVALID_SETTINGS = 2
EXIT_RETRY = 75  # EX_TEMPFAIL: the outbox or the HTTP port failed; a restart may cure it
# EX_SOFTWARE: an unexpected exception (a bug). Python's own code for it would be 1, which the
# unit does not restart: festival-kiosk's main turns it into 70, which is restarted.
EXIT_CRASHED = 70


class _CannotStart(Exception):
    """A start-up failure that ends ``run_from_env`` with ``code`` (logged where it is raised)."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def machine_config(settings: KioskSettings) -> MachineConfig:
    return MachineConfig(
        mode=settings.mode,
        outbox_max=settings.outbox_max,
        result_timeout_ms=int(settings.result_timeout_s * 1000),
        resend_after_ms=int(settings.resend_after_s * 1000),
        resend_after_ms_max=int(max(settings.resend_after_s, RESEND_AFTER_MAX_S) * 1000),
        outcome_display_ms=int(OUTCOME_DISPLAY_S * 1000),
        offline_after_ms=int(settings.offline_after_s * 1000),
    )


def run_from_env(environ: Mapping[str, str] | None = None) -> int:
    """``festival-kiosk run``: build everything from the environment and run until stopped."""
    from device.logs import configure_logging

    try:
        settings = load_settings(os.environ if environ is None else environ)
    except SettingsError as error:
        print("festival-kiosk: invalid configuration:\n" + redact(str(error)), file=sys.stderr)
        return EXIT_INVALID_SETTINGS
    configure_logging(settings.log_level)
    with contextlib.ExitStack() as resources:
        try:
            return _run(settings, resources)
        except _CannotStart as failure:
            return failure.code


def _run(settings: KioskSettings, resources: contextlib.ExitStack) -> int:
    from device.indicators import IndicatorPlayer

    clock = SystemClock()
    outbox = _open_outbox(settings)
    resources.callback(outbox.close)
    indicators = IndicatorPlayer(_pins(settings))
    resources.callback(indicators.close)
    link = _mqtt_link(settings, clock)
    resources.callback(link.stop)
    reader, simulated = _reader(settings, clock)
    resources.callback(reader.stop)
    kiosk = Kiosk(
        identity=_identity(settings),
        config=machine_config(settings),
        outbox=outbox,
        link=link,
        reader=reader,
        indicators=indicators,
        result_topic=link.result_topic,
        clock=clock,
        fallback_menu=settings.menu,
        config_topic=link.config_topic,
        denylist_topic=link.denylist_topic,
        void_window_s=settings.void_window_s,
    )
    http = _http_server(settings, kiosk, simulated)
    resources.callback(http.stop)

    stop = threading.Event()

    def request_stop(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)

    http.start()
    kiosk.start()
    log.info(
        "kiosk running",
        extra={
            "context": {
                "kiosk_id": settings.kiosk_id,
                "mode": str(settings.mode),
                "reader": settings.reader,
                "gpio": settings.gpio,
                "http_port": http.port,
                "mqtt": repr(settings.mqtt),
                "firmware": settings.firmware,
                "config_version": kiosk.config_version,
                "denylist_version": kiosk.denylist_version,
                "pid": os.getpid(),
            }
        },
    )
    notify("READY=1")
    resources.callback(log.info, "kiosk stopping")
    resources.callback(notify, "STOPPING=1")
    try:
        kiosk.run(stop, _Ticker(kiosk, reader))
    except OutboxError as error:
        log.error("outbox failed: stopping", extra={"context": {"error": str(error)}})
        return EXIT_RETRY
    return EXIT_STOPPED


def _mqtt_link(settings: KioskSettings, clock: SystemClock) -> MqttLink:
    from device.mqtt_link import MqttLink

    return MqttLink(
        endpoint=settings.mqtt,
        kiosk_id=settings.kiosk_id,
        topic_prefix=settings.topic_prefix,
        firmware=settings.firmware,
        queued_max=settings.outbox_max + MQTT_QUEUED_EXTRA,
        clock_ms=clock.wall_ms,
        ca_file=settings.mqtt_ca_file,
        cert_file=settings.mqtt_cert_file,
        key_file=settings.mqtt_key_file,
    )


def _identity(settings: KioskSettings) -> KioskIdentity:
    return KioskIdentity(
        kiosk_id=settings.kiosk_id,
        currency=settings.currency,
        private_key=settings.private_key,
        cloud_public_key=settings.cloud_public_key,
        firmware=settings.firmware,
        topup_cents_max=settings.topup_cents_max,
    )


def _http_server(
    settings: KioskSettings, kiosk: Kiosk, simulated: SimulatedReader | None
) -> LocalHttpServer:
    """The local HTTP interface, bound but not started (a port in use: exit 75)."""
    from device.http_interface import HttpApi, LocalHttpServer

    api = HttpApi(
        mode=settings.mode,
        sales_menu=kiosk.sales_menu,
        topup_cents_max=settings.topup_cents_max,
        snapshot_json=kiosk.snapshot_json,
        command=kiosk.command,
        simulated_reader=simulated,
        static_dir=STATIC_DIR,
        return_cents_max=settings.return_cents_max,
        active_staff_id=lambda: kiosk.active_staff_id,
    )
    try:
        return LocalHttpServer(api, settings.http_port)
    except OSError as error:
        log.error(
            "cannot open the local HTTP interface",
            extra={"context": {"port": settings.http_port, "error": str(error)}},
        )
        raise _CannotStart(EXIT_RETRY) from error


def _open_outbox(settings: KioskSettings) -> Outbox:
    try:
        return Outbox(
            settings.state_dir / OUTBOX_FILE_NAME,
            kiosk_id=settings.kiosk_id,
            capacity=settings.outbox_max,
        )
    except OutboxError as error:
        log.error("cannot open the outbox", extra={"context": {"error": str(error)}})
        raise _CannotStart(EXIT_RETRY) from error


def _reader(
    settings: KioskSettings, clock: SystemClock
) -> tuple[CardReader, SimulatedReader | None]:
    """The card reader, and the same object again when it is the simulated one (else None)."""
    if settings.simulated_reader:
        simulated = SimulatedReader(clock.wall_ms)
        return simulated, simulated
    from device.reader_pcsc import PcscReader

    return PcscReader(settings.reader, clock_ms=clock.wall_ms), None


def _pins(settings: KioskSettings) -> Any:
    if settings.gpio != "rpi":
        from device.indicators import RecordingPins

        return RecordingPins()
    from device.indicators_rpi import IndicatorUnavailable, RpiPins

    try:
        return RpiPins(
            green_pin=settings.green_pin,
            red_pin=settings.red_pin,
            buzzer_pin=settings.buzzer_pin,
        )
    except IndicatorUnavailable as error:
        log.error("GPIO unavailable: not starting", extra={"context": {"error": str(error)}})
        print(f"festival-kiosk: GPIO cannot run here: {error}", file=sys.stderr)
        raise _CannotStart(EXIT_CANNOT_RUN_HERE) from error


class _Ticker:
    """Runs on every loop tick: the watchdog ping, and a restart of a dead reader thread."""

    def __init__(self, kiosk: Kiosk, reader: CardReader) -> None:
        self._kiosk = kiosk
        self._reader = reader
        self._watchdog_s = watchdog_interval_s()
        self._last_ping_s = self._last_reader_check_s = time.monotonic()

    def __call__(self) -> None:
        now_s = time.monotonic()
        # The loop itself pings: a stuck loop stops the pings and systemd restarts us.
        if self._watchdog_s is not None and now_s - self._last_ping_s >= self._watchdog_s:
            notify("WATCHDOG=1")
            self._last_ping_s = now_s
        if now_s - self._last_reader_check_s >= READER_CHECK_INTERVAL_S:
            self._last_reader_check_s = now_s
            if not self._reader.healthy():
                log.error("card reader thread is gone: restarting it")
                self._reader.start(self._kiosk.submit)
