"""(1.1, issue 15 §5) The demo's genuine wristbands: a box of virtual NTAG 424 DNA tags in a
child process (device/sim_wristbands.py), programmed through it as `card program` programs a
band on a reader, then read as a kiosk reads them; the cloud's verifier accepts what they give."""

from __future__ import annotations

import io

import pytest

from cloud.demo_wristbands import DemoWristbandError, DemoWristbands
from device.sim_wristbands import answer_line, serve
from device.virtual_ntag424 import VirtualNtag424
from protocol.sun import SunVerifier

MASTER = bytes.fromhex("00112233445566778899AABBCCDDEEFF")
PORTAL = "http://127.0.0.1:8000"
UIDS = ["04A1B2C3D4E5F6", "04B1B2C3D4E5F6"]


def test_the_box_answers_apdus_resets_and_counters_and_refuses_what_it_cannot_take() -> None:
    tags: dict[str, VirtualNtag424] = {}
    assert answer_line(tags, f"{UIDS[0]} FFCA000000") == UIDS[0] + "9000"  # GET UID
    assert answer_line(tags, f"{UIDS[0]} counter 41") == "ok"
    assert tags[UIDS[0]].sdm_read_counter == 41
    assert answer_line(tags, f"{UIDS[0]} reset") == "ok"
    assert answer_line(tags, "A1B2C3D4 FFCA000000").startswith("error")  # 4-byte UID
    assert answer_line(tags, "hello").startswith("error")
    assert answer_line(tags, f"{UIDS[0]} ZZ").startswith("error")
    assert answer_line(tags, f"{UIDS[0]} counter 16777216").startswith("error")
    out = io.StringIO()
    serve(io.StringIO(f"{UIDS[1]} FFCA000000\n{UIDS[1]} reset\n"), out)
    assert out.getvalue() == f"{UIDS[1]}9000\nok\n"


def test_programmed_bands_give_fresh_genuine_sun_messages_above_the_accepted_counters() -> None:
    bands = DemoWristbands()
    try:
        bands.program(UIDS, MASTER, PORTAL, {UIDS[1]: 500})
        verifier = SunVerifier(MASTER)
        counters: dict[str, list[int]] = {uid: [] for uid in UIDS}
        for uid in UIDS * 2:
            with bands.tap(uid) as sun:
                assert sun is not None
                counters[uid].append(verifier.verify(uid, sun["picc_data"], sun["cmac"]).counter)
        assert counters[UIDS[0]] == [2, 3]  # 1 was the read-back of `card program`
        assert counters[UIDS[1]] == [501, 502]  # above what the cloud had accepted
        assert UIDS[0] in bands and "04C1B2C3D4E5F6" not in bands
        with bands.tap("04C1B2C3D4E5F6") as none:
            assert none is None  # no band for that UID: the tap goes without a SUN message
    finally:
        bands.close()


def test_a_band_whose_counter_is_used_up_is_refused_at_start() -> None:
    bands = DemoWristbands()
    try:
        with pytest.raises(DemoWristbandError, match="used up"):
            bands.program(UIDS[:1], MASTER, PORTAL, {UIDS[0]: 0xFFFFFF})
    finally:
        bands.close()
