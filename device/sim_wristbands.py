"""A box of virtual NTAG 424 DNA wristbands behind a pipe, for the demo (issue 15 §5).

``python -m device.sim_wristbands`` keeps one ``VirtualNtag424`` per UID (factory-fresh when first
named) and answers, one line per line on stdin, what a reader would get from that band:

    UID APDU-HEX      ->  RESPONSE-HEX        one command APDU to the band on the reader
    UID reset         ->  ok                  the band leaves the field (a new tap starts)
    UID counter N     ->  ok                  its SDMReadCtr is set to N (see below)

and ``error TEXT`` for a line it cannot take. The demo (cloud/demo_wristbands.py) programs the
bands through it exactly as `festival-cloud card program` programs a band on a PC/SC reader —
this pipe is the demo's reader — and then reads them as a kiosk's reader does. The process
boundary is the point: the cloud's code never imports the kiosk's (tests/test_architecture.py),
and the bands' keys stay inside the tags as on real hardware.

``counter`` exists only here: a real band keeps its counter, but these are rebuilt at every
start of the demo, which moves each one above what the cloud already accepted for it.
"""

from __future__ import annotations

import signal
import sys
from typing import TextIO

from device.virtual_ntag424 import VirtualNtag424
from protocol.limits import CARD_UID_PATTERN, SUN_COUNTER_MAX

UID_BYTES = 7  # an NTAG 424 DNA's UID


def answer_line(tags: dict[str, VirtualNtag424], line: str) -> str:
    """The reply to one request line (without the newline)."""
    parts = line.split()
    if len(parts) not in (2, 3) or not CARD_UID_PATTERN.match(parts[0]):
        return "error expected: UID APDU-HEX | UID reset | UID counter N"
    uid = parts[0]
    if len(uid) != UID_BYTES * 2:
        return "error an NTAG 424 DNA has a 7-byte UID"
    tag = tags.get(uid)
    if tag is None:
        tag = tags[uid] = VirtualNtag424(bytes.fromhex(uid))
    if parts[1:] == ["reset"]:
        tag.reset()
        tag.commands_seen.clear()  # the tag's APDU log: a demo runs for hours
        return "ok"
    if len(parts) == 3:
        if parts[1] != "counter" or not parts[2].isdigit():
            return "error expected: UID counter N"
        counter = int(parts[2])
        if counter > SUN_COUNTER_MAX:
            return f"error the counter is at most {SUN_COUNTER_MAX}"
        tag.sdm_read_counter = counter
        return "ok"
    try:
        apdu = bytes.fromhex(parts[1])
    except ValueError:
        return "error the APDU must be hex"
    return tag.answer(apdu).hex().upper()


def serve(lines: TextIO, out: TextIO) -> None:
    tags: dict[str, VirtualNtag424] = {}
    for line in lines:
        out.write(answer_line(tags, line.strip()) + "\n")
        out.flush()


if __name__ == "__main__":
    # Ctrl-C in the demo's terminal reaches the whole process group: the demo stops the box
    # itself (it closes the box's input) once it no longer reads bands.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    serve(sys.stdin, sys.stdout)
