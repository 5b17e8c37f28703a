"""(1.1) The kiosk's side of genuine wristbands, in process: the NDEF read after the UID
(``read_card_sun``, driven with the virtual NTAG 424 DNA's pure ``answer``), the simulated
reader's genuine and cloned bands, and ``card_sun`` in the request the kiosk signs.

The same read through real pcscd and vpcd: tests/device/test_reader_pcsc_sun.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cloud.wristbands import program_wristband
from device.reader import ReaderEvent, ScanEvent, SimulatedReader, read_card_sun
from device.virtual_card import answer_apdu
from device.virtual_ntag424 import VirtualNtag424
from protocol.errors import ProtocolError
from protocol.models import CardSun
from protocol.ntag424 import NDEF_READ_APDUS, TagCommunicationError, ndef_uri_file
from protocol.sun import SunVerifier
from tests.device.responder import FakeLedger
from tests.device.test_kiosk_config import KIOSK_ID, UID, Rig, make_rig

MASTER = bytes.fromhex("00112233445566778899AABBCCDDEEFF")
PORTAL = "https://pay.festival.example"


def genuine_band(uid: str = UID) -> VirtualNtag424:
    tag = VirtualNtag424(bytes.fromhex(uid))
    program_wristband(tag.answer, MASTER, PORTAL)
    tag.reset()
    tag.commands_seen.clear()
    return tag


def test_a_genuine_band_gives_its_sun_message_in_three_apdus() -> None:
    tag = genuine_band()
    card_sun = read_card_sun(UID, tag.answer)
    assert card_sun is not None
    assert len(tag.commands_seen) == NDEF_READ_APDUS
    verified = SunVerifier(MASTER).verify(UID, card_sun.picc_data, card_sun.cmac)
    assert verified.counter == 2  # provisioning's read-back was the first


def test_every_tap_gives_a_fresh_counter() -> None:
    tag = genuine_band()
    verifier = SunVerifier(MASTER)
    counters = []
    for _ in range(3):
        tag.reset()
        card_sun = read_card_sun(UID, tag.answer)
        assert card_sun is not None
        counters.append(verifier.verify(UID, card_sun.picc_data, card_sun.cmac).counter)
    assert counters == [2, 3, 4]


def test_a_uid_only_card_gives_none() -> None:
    sent: list[bytes] = []

    def plain(apdu: bytes) -> bytes:
        sent.append(apdu)
        return answer_apdu(bytes.fromhex(UID), apdu)

    assert read_card_sun(UID, plain) is None
    assert len(sent) == 1  # 6D 00 to the first SELECT: nothing more is asked


@pytest.mark.parametrize("uid", ["DEADBEEF", "0102030405060708090A"])
def test_uids_that_cannot_be_genuine_cost_no_apdu(uid: str) -> None:
    def never(apdu: bytes) -> bytes:
        raise AssertionError("no APDU for a card that cannot be genuine")

    assert read_card_sun(uid, never) is None


def test_a_factory_fresh_tag_or_a_plain_url_gives_none() -> None:
    assert read_card_sun(UID, VirtualNtag424(bytes.fromhex(UID)).answer) is None  # empty file
    tag = VirtualNtag424(bytes.fromhex(UID))
    tag.files[2].data[:60] = ndef_uri_file("https://example.org/?a=b").ljust(60, b"\0")
    assert read_card_sun(UID, tag.answer) is None


def test_a_band_removed_during_the_read_is_the_callers_to_report() -> None:
    tag = genuine_band()
    calls = 0

    def leaving(apdu: bytes) -> bytes:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise TagCommunicationError("removed")
        return tag.answer(apdu)

    with pytest.raises(TagCommunicationError):
        read_card_sun(UID, leaving)


def test_the_simulated_reader_taps_genuine_and_cloned_bands() -> None:
    events: list[ReaderEvent] = []
    reader = SimulatedReader(clock_ms=lambda: 1_000)
    reader.start(events.append)
    tag = genuine_band()
    card_sun = reader.tap_tag(UID, tag.answer)
    assert card_sun is not None
    reader.tap(UID)  # a clone: the UID alone
    reader.tap(UID, card_sun=card_sun)  # a clone replaying a sniffed message
    scans = [event for event in events if isinstance(event, ScanEvent)]
    assert [scan.card_sun for scan in scans] == [card_sun, None, card_sun]
    with pytest.raises(ValueError, match="only a successful read"):
        reader.tap(None, "read_error", card_sun)


# --- card_sun in the kiosk's request ---------------------------------------------------------


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    from protocol.keys import generate_private_key

    ledger = FakeLedger(cloud_key=generate_private_key(), kiosk_keys={}, balances={UID: 50_000})
    key: Any = generate_private_key()
    ledger.kiosk_keys[KIOSK_ID] = key.public_key()
    made = make_rig(tmp_path, ledger, key, connect=True)
    yield made
    made.kiosk.close()


def _tap_and_sign(rig: Rig, card_sun: CardSun | None) -> dict[str, Any]:
    original = rig.reader.tap

    def tap(card_uid: str | None, status: Any = "ok", _sun: Any = None) -> None:
        original(card_uid, status, card_sun)

    rig.reader.tap = tap  # type: ignore[method-assign]
    try:
        return rig.sell({"items": [{"sku": "beer", "quantity": 1}]})
    finally:
        rig.reader.tap = original  # type: ignore[method-assign]


def test_a_genuine_bands_message_is_in_the_signed_bar_order(rig: Rig) -> None:
    card_sun = read_card_sun(UID, genuine_band().answer)
    assert card_sun is not None
    request = _tap_and_sign(rig, card_sun)
    assert request["card_sun"] == {"picc_data": card_sun.picc_data, "cmac": card_sun.cmac}
    assert request["card_uid"] == UID


def test_a_uid_only_card_still_makes_a_request_without_card_sun(rig: Rig) -> None:
    request = _tap_and_sign(rig, None)
    assert "card_sun" not in request
    assert request["card_uid"] == UID


def test_a_top_up_carries_card_sun_too(tmp_path: Path) -> None:
    from device.machine import Mode
    from protocol.keys import generate_private_key

    ledger = FakeLedger(cloud_key=generate_private_key(), kiosk_keys={}, balances={UID: 0})
    key: Any = generate_private_key()
    ledger.kiosk_keys[KIOSK_ID] = key.public_key()
    rig = make_rig(tmp_path, ledger, key, Mode.CHECKPOINT, connect=True)
    try:
        card_sun = read_card_sun(UID, genuine_band().answer)
        original = rig.reader.tap
        rig.reader.tap = lambda uid, status="ok", _s=None: original(uid, status, card_sun)  # type: ignore[method-assign]
        request = rig.top_up(1_000)
        assert request["type"] == "checkpoint_recharge"
        assert card_sun is not None and request["card_sun"]["cmac"] == card_sun.cmac
    finally:
        rig.kiosk.close()


def test_the_http_taps_card_sun_is_checked() -> None:
    from device.http_interface import _card_sun

    sun = {"picc_data": "EF963FF7828658A599F3041510671E88", "cmac": "94EED9EE65337086"}
    assert _card_sun(None) is None
    assert _card_sun(sun) == CardSun(**sun)
    with pytest.raises(ValueError, match="card_sun must be"):
        _card_sun({"picc_data": sun["picc_data"]})
    with pytest.raises(ProtocolError, match="cmac"):
        _card_sun({**sun, "cmac": "xyz"})
