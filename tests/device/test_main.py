"""festival-kiosk run's composition root (device/main.py): every exit path closes what it opened.

The resources are real (the SQLite outbox, the HTTP socket, the paho client, the simulated
reader, the recording GPIO pins); the tests only wrap their close methods to record the order.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from device import main
from device.http_interface import LocalHttpServer
from device.indicators import IndicatorPlayer
from device.keys import save_private_key
from device.kiosk import Kiosk
from device.mqtt_link import MqttLink
from device.outbox import Outbox
from device.reader import SimulatedReader
from protocol.keys import generate_private_key, public_key_b64
from tests.device.test_indicators import fake_rpi_on_a_pi5  # noqa: F401 - a fixture
from tests.waiting import wait_until


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def environ(tmp_path: Path) -> dict[str, str]:
    key_file = tmp_path / "kiosk.pem"
    save_private_key(generate_private_key(), key_file)
    return {
        "KIOSK_ID": "bar-1",
        "KIOSK_KEY_FILE": str(key_file),
        "CLOUD_PUBLIC_KEY": public_key_b64(generate_private_key()),
        # Nothing listens there: the link keeps retrying in the background, as on a festival
        # field without network; the kiosk still runs.
        "MQTT_URL": "mqtt://bar-1:secret@127.0.0.1:1",
        "KIOSK_STATE_DIR": str(tmp_path / "state"),
        "KIOSK_MODE": "bar",
        "KIOSK_READER": "sim",
        "KIOSK_GPIO": "fake",
        "KIOSK_HTTP_PORT": str(_free_port()),
    }


@pytest.fixture
def closed(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The names of the resources closed, in the order they were closed."""
    order: list[str] = []

    def record(owner: Any, method: str, name: str) -> None:
        original: Callable[..., Any] = getattr(owner, method)

        def wrapper(self: object, *args: Any, **kwargs: Any) -> Any:
            order.append(name)
            return original(self, *args, **kwargs)

        monkeypatch.setattr(owner, method, wrapper)

    record(Outbox, "close", "outbox")
    record(IndicatorPlayer, "close", "indicators")
    record(MqttLink, "stop", "link")
    record(SimulatedReader, "stop", "reader")
    record(LocalHttpServer, "stop", "http")
    monkeypatch.setattr(main, "notify", lambda state: order.append(state))
    previous = {number: signal.getsignal(number) for number in (signal.SIGTERM, signal.SIGINT)}
    yield order
    for number, handler in previous.items():
        signal.signal(number, handler)


def test_a_clean_stop_closes_everything_in_reverse_order(
    environ: dict[str, str], closed: list[str]
) -> None:
    url = f"http://127.0.0.1:{environ['KIOSK_HTTP_PORT']}/api/state"

    def stop_when_serving() -> None:
        def serving() -> bool:
            try:
                with urllib.request.urlopen(url, timeout=1) as response:
                    return bool(response.status == 200)
            except OSError:
                return False

        wait_until(serving, timeout_s=30, what="the kiosk's HTTP interface")
        os.kill(os.getpid(), signal.SIGTERM)

    stopper = threading.Thread(target=stop_when_serving)
    stopper.start()
    assert main.run_from_env(environ) == main.EXIT_STOPPED
    stopper.join(timeout=30)
    assert closed == ["READY=1", "STOPPING=1", "http", "reader", "link", "indicators", "outbox"]


def test_an_http_port_in_use_exits_75_and_closes_what_was_opened(
    environ: dict[str, str], closed: list[str]
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        environ["KIOSK_HTTP_PORT"] = str(taken.getsockname()[1])
        assert main.run_from_env(environ) == main.EXIT_RETRY == 75
    assert closed == ["reader", "link", "indicators", "outbox"]  # never READY=1


def test_an_outbox_that_cannot_open_exits_75_with_nothing_left_open(
    environ: dict[str, str], closed: list[str], tmp_path: Path
) -> None:
    (tmp_path / "state" / "outbox.sqlite3").mkdir(parents=True)  # not a database: cannot open
    assert main.run_from_env(environ) == main.EXIT_RETRY
    assert closed == []


def test_gpio_that_cannot_run_exits_1_and_closes_the_outbox(
    environ: dict[str, str],
    closed: list[str],
    fake_rpi_on_a_pi5: Path,  # noqa: F811 - the fixture imported above
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.syspath_prepend(str(fake_rpi_on_a_pi5))
    environ["KIOSK_GPIO"] = "rpi"
    assert main.run_from_env(environ) == main.EXIT_CANNOT_RUN_HERE == 1
    assert closed == ["outbox"]


def test_a_crash_in_the_loop_still_closes_everything(
    environ: dict[str, str], closed: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def crash(self: Kiosk, stop: threading.Event, on_tick: object = None) -> None:
        raise RuntimeError("a bug in the loop")

    monkeypatch.setattr(Kiosk, "run", crash)
    with pytest.raises(RuntimeError, match="a bug in the loop"):
        main.run_from_env(environ)  # festival-kiosk's main turns this into exit 70
    assert closed == ["READY=1", "STOPPING=1", "http", "reader", "link", "indicators", "outbox"]


def test_bad_settings_exit_2_before_anything_is_opened(
    environ: dict[str, str], closed: list[str]
) -> None:
    environ["KIOSK_MODE"] = "disco"
    assert main.run_from_env(environ) == main.EXIT_INVALID_SETTINGS == 2
    assert closed == []
