"""The demo's genuine wristbands (issue 15 §5): one virtual NTAG 424 DNA per attendee.

The bands live in a child process on the kiosk's side (``python -m device.sim_wristbands``, a
box of virtual NTAG 424 DNA tags answering APDUs over a pipe): the cloud's code never imports
the kiosk's (tests/test_architecture.py), so the pipe is the demo's card reader.

At start every band is programmed exactly as `festival-cloud card program` programs each tag
presented on its reader (``cloud.wristbands.handle_tag``: authenticate with the factory key,
write the URL template, enable SDM, change the keys, read back and verify). A tap reads the
band's URL the way the kiosk's PC/SC reader does (the same three APDUs, protocol.ntag424's
``read_ndef_url``, and ``sun_from_url``), and the demo hands the SUN message to the kiosk's
simulated reader with the UID, so every request carries a fresh, genuine ``card_sun`` for the
cloud (``FESTIVAL_CARD_AUTH=sun``) to check. A clone is the same UID without the band.

Counters. A real band keeps its SDMReadCtr; these are rebuilt at every start, so each band's
counter is first moved above the highest one the cloud has accepted for it (the demo keeps its
database between runs), else a second run's taps would be refused as replays.

One tap at a time per band: a band read at two kiosks at once gives two counters whose requests
may reach the cloud in the other order, and the online rule (above every accepted counter) would
refuse the older as a replay. An attendee has one wrist: ``tap`` holds a per-band lock until the
caller has the result.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from cloud.limits import DEMO_WRISTBAND_BOX_STOP_TIMEOUT_S
from cloud.wristbands import handle_tag
from protocol.limits import SUN_COUNTER_MAX
from protocol.ntag424 import TagCommunicationError, TagReadError, read_ndef_url
from protocol.sun import sun_from_url

BOX_MODULE = "device.sim_wristbands"


class DemoWristbandError(RuntimeError):
    """A band could not be programmed or read (a bug of the virtual tag or of the provisioning)."""


class DemoWristbands:
    """Genuine virtual wristbands by UID, programmed with the deployment's master key."""

    def __init__(self, python: str = sys.executable) -> None:
        self._box = subprocess.Popen(
            [python, "-m", BOX_MODULE],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        self._pipe = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}

    def _ask(self, line: str) -> str:
        box = self._box
        assert box.stdin is not None and box.stdout is not None
        with self._pipe:
            try:
                box.stdin.write(line + "\n")
                box.stdin.flush()
                reply = box.stdout.readline().strip()
            except (OSError, ValueError) as error:
                raise TagCommunicationError(f"the wristband box is gone: {error}") from None
        if not reply:
            raise TagCommunicationError("the wristband box is gone")
        if reply.startswith("error"):
            raise DemoWristbandError(f"the wristband box: {reply}")
        return reply

    def _transmit(self, uid: str) -> Any:
        def transmit(apdu: bytes) -> bytes:
            return bytes.fromhex(self._ask(f"{uid} {apdu.hex().upper()}"))

        return transmit

    def program(
        self,
        uids: Sequence[str],
        master_key: bytes,
        portal_url: str,
        accepted_counters: dict[str, int] | None = None,
    ) -> None:
        """Program each band as `card program` does, then move its counter above the highest
        the cloud accepted for it (``accepted_counters``: UID -> counter_max)."""
        accepted = accepted_counters or {}
        for uid in uids:
            handled = handle_tag(self._transmit(uid), master_key, portal_url)
            if handled.programmed is None:
                raise DemoWristbandError(f"wristband {uid} not programmed: {handled.failure}")
            # The next read gives this + 1: above every counter accepted so far.
            current = max(handled.programmed.counter, accepted.get(uid, -1))
            if current >= SUN_COUNTER_MAX:
                raise DemoWristbandError(f"wristband {uid}: its counter is used up")
            self._ask(f"{uid} counter {current}")
            self._ask(f"{uid} reset")
            self._locks[uid] = threading.Lock()

    def __contains__(self, uid: object) -> bool:
        return uid in self._locks

    @contextmanager
    def tap(self, uid: str) -> Iterator[dict[str, str] | None]:
        """Hold the band and read it once: the ``card_sun`` for the kiosk's ``/api/tap``
        (None for a UID this demo has no band for). The band stays held until the block ends."""
        lock = self._locks.get(uid)
        if lock is None:
            yield None
            return
        with lock:
            try:
                url = read_ndef_url(self._transmit(uid))
            except TagReadError as error:
                raise DemoWristbandError(f"wristband {uid}: {error}") from None
            finally:
                self._ask(f"{uid} reset")  # out of the field: the next read is a new tap
            message = sun_from_url(url)
            if message is None:
                raise DemoWristbandError(f"wristband {uid} gave no SUN message: {url}")
            yield {"picc_data": message.picc_data, "cmac": message.cmac}

    def close(self) -> None:
        box = self._box
        if box.poll() is None:
            if box.stdin is not None:
                box.stdin.close()  # the box ends at the end of its input
            try:
                box.wait(timeout=DEMO_WRISTBAND_BOX_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                box.kill()
                box.wait()
        if box.stdout is not None:
            box.stdout.close()
