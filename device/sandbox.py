"""pcscd with the vpcd virtual reader driver, for tests and the demo (never used on a kiosk).

pcscd runs in the foreground as our child and is stopped by its pid. Only one pcscd can run on a
machine (its socket is /run/pcscd/pcscd.comm), so starting fails loudly if another one owns it.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from device.limits import PCSCD_START_TIMEOUT_S, PCSCD_STOP_TIMEOUT_S

VPCD_DRIVER = Path("/usr/lib/pcsc/drivers/serial/libifdvpcd.so")
PCSCD_SOCKET = Path("/run/pcscd/pcscd.comm")


class PcscdUnavailable(RuntimeError):
    """pcscd or the vpcd driver is missing, or another pcscd owns the machine's socket."""


def _pcscd_program() -> str:
    path = shutil.which("pcscd") or shutil.which("pcscd", path="/usr/sbin:/sbin")
    if path is None:
        raise PcscdUnavailable("pcscd not found: apt-get install -y pcscd libpcsclite-dev")
    if not VPCD_DRIVER.exists():
        raise PcscdUnavailable(f"{VPCD_DRIVER} not found: apt-get install -y vsmartcard-vpcd")
    return path


def _socket_alive() -> bool:
    import socket

    if not PCSCD_SOCKET.exists():
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.connect(str(PCSCD_SOCKET))
        except OSError:
            return False
        return True


@dataclass
class PcscdService:
    root: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def log_file(self) -> Path:
        return self.root / "pcscd.log"

    def start(self) -> None:
        if self.process is not None and self.process.poll() is None:
            return
        program = _pcscd_program()
        if _socket_alive():
            raise PcscdUnavailable(
                f"another pcscd already serves {PCSCD_SOCKET}; stop it before running these tests"
            )
        config_dir = self.root / "reader.conf.d"
        config_dir.mkdir(parents=True, exist_ok=True)
        (config_dir / "vpcd").write_text(
            'FRIENDLYNAME "Virtual PCD"\n'
            "DEVICENAME   /dev/null:0x8C7B\n"
            f"LIBPATH      {VPCD_DRIVER}\n"
            "CHANNELID    0x8C7B\n"
        )
        with self.log_file.open("ab") as log:
            self.process = subprocess.Popen(
                [program, "--foreground", "--config", str(config_dir)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + PCSCD_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise PcscdUnavailable(
                    f"pcscd exited with {self.process.returncode}: "
                    + self.log_file.read_text(errors="replace")[-1500:]
                )
            if _socket_alive():
                return
            time.sleep(0.02)
        raise PcscdUnavailable(
            f"pcscd did not open {PCSCD_SOCKET} within {PCSCD_START_TIMEOUT_S} s"
        )

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=PCSCD_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=PCSCD_STOP_TIMEOUT_S)
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self) -> PcscdService:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
