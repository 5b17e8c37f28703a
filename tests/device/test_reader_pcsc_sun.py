"""(1.1) Genuine wristbands through real pcscd + vpcd: `festival-cloud card program` programs a
factory-fresh virtual NTAG 424 DNA on the reader, then the kiosk's PC/SC reader reads its SUN
message with the UID, and the message verifies with the master key.

Starts pcscd (the machine-wide one): only the helper or suite allowed to run pcscd tests runs
this module (tests/device/test_reader_pcsc.py's rules)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloud.keys import save_card_master_key
from device.reader import CardRemoved, ScanEvent
from device.sandbox import PcscdService
from device.virtual_card import VirtualCard
from device.virtual_ntag424 import VirtualNtag424
from protocol.sun import SunVerifier
from tests.device.pcsc import wait_until_readers_empty
from tests.device.test_reader_pcsc import PORT_0, READER_0, Recorder, start_reader

MASTER = bytes.fromhex("00112233445566778899AABBCCDDEEFF")
UID = "04A1B2C3D4E5F6"
PROGRAM_TIMEOUT_S = 60


@pytest.fixture(autouse=True)
def readers_empty(pcscd: PcscdService) -> None:
    wait_until_readers_empty()


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def master_key_file(tmp_path: Path) -> Path:
    path = tmp_path / "master.key"
    save_card_master_key(MASTER, path)
    return path


def program(master_key_file: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """`festival-cloud card program --reader "00 00" --count 1` as the operator runs it."""
    return subprocess.run(
        [sys.executable, "-m", "cloud.cli", "card", "program", "--reader", "00 00", *extra],
        env={
            "PATH": "/usr/bin:/bin",
            "CARD_MASTER_KEY_FILE": str(master_key_file),
            "FESTIVAL_PORTAL_URL": "https://pay.festival.example",
        },
        capture_output=True,
        text=True,
        timeout=PROGRAM_TIMEOUT_S,
        check=False,
    )


@pytest.fixture
def programmed_tag(pcscd: PcscdService, master_key_file: Path) -> Iterator[VirtualNtag424]:
    tag = VirtualNtag424(bytes.fromhex(UID))
    with VirtualCard(tag=tag, port=PORT_0):
        done = program(master_key_file, "--count", "1")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"{UID}\tprogrammed"
    wait_until_readers_empty()
    yield tag


def test_card_program_then_the_kiosk_reads_a_genuine_band(
    programmed_tag: VirtualNtag424, recorder: Recorder
) -> None:
    reader = start_reader(recorder, "00 00")
    verifier = SunVerifier(MASTER)
    try:
        counters = []
        for _ in range(2):
            with VirtualCard(tag=programmed_tag, port=PORT_0):
                scan = recorder.next(ScanEvent)
                assert isinstance(scan, ScanEvent)
                assert (scan.status, scan.card_uid, scan.reader) == ("ok", UID, READER_0)
                assert scan.card_sun is not None
                sun = scan.card_sun
                counters.append(verifier.verify(UID, sun.picc_data, sun.cmac).counter)
            recorder.next(CardRemoved)
        assert counters[1] == counters[0] + 1
    finally:
        reader.stop()


def test_a_uid_only_card_reads_without_card_sun(pcscd: PcscdService, recorder: Recorder) -> None:
    reader = start_reader(recorder, "00 00")
    try:
        with VirtualCard(UID, port=PORT_0) as card:
            scan = recorder.next(ScanEvent)
            assert isinstance(scan, ScanEvent)
            assert (scan.status, scan.card_uid, scan.card_sun) == ("ok", UID, None)
            assert len(card.apdus_seen) == 2  # GET UID, then the SELECT it refuses
    finally:
        reader.stop()


def test_card_program_reports_a_card_that_is_not_an_ntag424(
    pcscd: PcscdService, master_key_file: Path
) -> None:
    with VirtualCard(UID, port=PORT_0):
        done = program(master_key_file, "--count", "1")
    assert done.returncode == 1
    assert "not an NTAG 424 DNA" in done.stderr
    assert done.stdout == ""


def test_card_program_without_the_reader_says_so(
    pcscd: PcscdService, master_key_file: Path
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "cloud.cli", "card", "program", "--reader", "No Such Reader"],
        env={"PATH": "/usr/bin:/bin", "CARD_MASTER_KEY_FILE": str(master_key_file)},
        capture_output=True,
        text=True,
        timeout=PROGRAM_TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 2
    assert "no reader matching 'No Such Reader'" in done.stderr
