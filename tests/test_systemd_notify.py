"""sd_notify on each side (device/systemd_notify.py, cloud/systemd_notify.py): the same checks
against both, with a real datagram socket standing in for systemd's."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

import cloud.systemd_notify
import device.systemd_notify


@pytest.fixture(params=[device.systemd_notify, cloud.systemd_notify], ids=["device", "cloud"])
def notify_module(request: pytest.FixtureRequest) -> ModuleType:
    module: ModuleType = request.param
    return module


@pytest.fixture
def systemd_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.bind(str(path))
        receiver.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        yield receiver


def test_states_reach_the_notify_socket(
    notify_module: ModuleType, systemd_socket: socket.socket
) -> None:
    assert notify_module.notify("READY=1") is True
    assert notify_module.notify("WATCHDOG=1") is True
    assert systemd_socket.recv(64) == b"READY=1"
    assert systemd_socket.recv(64) == b"WATCHDOG=1"


def test_abstract_namespace_sockets_are_reached(
    notify_module: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = f"festival-notify-test-{os.getpid()}-{notify_module.__name__}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.bind("\0" + name)
        receiver.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert notify_module.notify("STOPPING=1") is True
        assert receiver.recv(64) == b"STOPPING=1"


def test_without_systemd_nothing_is_sent(
    notify_module: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert notify_module.notify("READY=1") is False
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-listens"))
    assert notify_module.notify("READY=1") is False


def test_watchdog_interval_is_half_of_systemds(
    notify_module: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    assert notify_module.watchdog_interval_s() is None
    monkeypatch.setenv("WATCHDOG_USEC", "20000000")
    assert notify_module.watchdog_interval_s() == 10.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert notify_module.watchdog_interval_s() == 10.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    assert notify_module.watchdog_interval_s() is None
    monkeypatch.setenv("WATCHDOG_PID", "")
    monkeypatch.setenv("WATCHDOG_USEC", "not-a-number")
    assert notify_module.watchdog_interval_s() is None


def test_a_receiver_that_does_not_read_never_blocks_the_sender(
    notify_module: ModuleType, systemd_socket: socket.socket
) -> None:
    """Its queue full (net.unix.max_dgram_qlen datagrams, 10 by default), a ping is dropped
    at once instead of blocking the caller: reproduced, a test's unread notify socket stopped
    the consumer's main loop after 5 s of WATCHDOG=1 pings."""
    sent = [notify_module.notify("WATCHDOG=1") for _ in range(1000)]
    assert sent[0] is True and sent[-1] is False
    assert systemd_socket.recv(64) == b"WATCHDOG=1"
    assert notify_module.notify("WATCHDOG=1") is True  # room again
