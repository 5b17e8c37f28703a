"""(1.1) Genuine wristbands through real pcscd + vpcd: `festival-cloud card program` programs a
factory-fresh virtual NTAG 424 DNA on the reader, then the kiosk's PC/SC reader reads its SUN
message with the UID, and the message verifies with the master key; and (issue 15 phase 2) the
cloud's check and the real ledger decide what those taps, a replay and a clone may buy.

Starts pcscd (the machine-wide one): only the helper or suite allowed to run pcscd tests runs
this module (tests/device/test_reader_pcsc.py's rules)."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from cloud.consumer.decisions import Apply, Echo, check_sun
from cloud.database import make_engine
from cloud.keys import save_card_master_key
from cloud.ledger import Ledger
from cloud.ledger_records import LedgerRequest, Outcome
from device.reader import CardRemoved, ScanEvent
from device.sandbox import PcscdService
from device.virtual_card import VirtualCard
from device.virtual_ntag424 import VirtualNtag424
from protocol.errors import ErrorCode, Status
from protocol.models import CardSun
from protocol.sun import CardKeyDerivation, SunVerifier
from tests.device.pcsc import wait_until_readers_empty
from tests.device.test_reader_pcsc import PORT_0, READER_0, Recorder, start_reader
from tests.ledger.helpers import PUBLIC_KEY, bar_order, recharge
from tests.waiting import wait_until

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


def program(
    master_key_file: Path, *extra: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`festival-cloud card program --reader "00 00" --count 1` as the operator runs it."""
    return subprocess.run(
        [sys.executable, "-m", "cloud.cli", "card", "program", "--reader", "00 00", *extra],
        env={
            "PATH": "/usr/bin:/bin",
            "CARD_MASTER_KEY_FILE": str(master_key_file),
            "FESTIVAL_PORTAL_URL": "https://pay.festival.example",
            **(env or {}),
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


def test_card_program_register_gives_each_band_a_card_and_a_pin(
    pcscd: PcscdService, master_key_file: Path, database_url: str
) -> None:
    """`card program --register`: the band programmed on the reader is registered with the
    cloud (balance 0) and its portal PIN is printed after its UID, for the band's print."""
    from sqlalchemy import text

    from cloud.portal import check_pin

    tag = VirtualNtag424(bytes.fromhex(UID))
    with VirtualCard(tag=tag, port=PORT_0):
        done = program(
            master_key_file, "--count", "1", "--register", env={"DATABASE_URL": database_url}
        )
    assert done.returncode == 0, done.stderr
    uid, state, pin = done.stdout.strip().split("\t")
    assert (uid, state) == (UID, "programmed")
    assert f"card {UID} registered with balance 0" in done.stderr
    engine = make_engine(database_url, pool_size=1)
    try:
        card = Ledger(engine).card(UID)
        with engine.connect() as connection:
            stored = connection.execute(
                text("SELECT pin_hash FROM card_pins WHERE card_uid = :uid"), {"uid": UID}
            ).scalar_one()
    finally:
        engine.dispose()
    assert card is not None and card.balance_cents == 0
    assert check_pin(pin, stored)


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


def test_card_program_reports_a_bad_tag_and_handles_the_next(
    pcscd: PcscdService, master_key_file: Path
) -> None:
    """`card program --count 2`: a UID-only card first (a clear message, nothing on stdout for
    it), then a blank NTAG 424 DNA, programmed (its UID on stdout); the exit status is 1, as the
    CLI documents for a run in which one tag failed."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cloud.cli",
            "card",
            "program",
            "--reader",
            "00 00",
            "--count",
            "2",
        ],
        env={
            "PATH": "/usr/bin:/bin",
            "CARD_MASTER_KEY_FILE": str(master_key_file),
            "FESTIVAL_PORTAL_URL": "https://pay.festival.example",
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    errors: list[str] = []

    def collect() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            errors.append(line)

    collector = threading.Thread(target=collect, daemon=True)
    collector.start()

    def said(text: str) -> bool:
        return any(text in line for line in errors)

    blank = VirtualNtag424(bytes.fromhex(UID))
    try:
        with VirtualCard("04C0FFEE123456", port=PORT_0):
            wait_until(
                lambda: said("remove the tag"), PROGRAM_TIMEOUT_S, what="the first tag handled"
            )
        wait_until(
            lambda: said("present the next wristband"),
            PROGRAM_TIMEOUT_S,
            what="the removal noticed",
        )
        with VirtualCard(tag=blank, port=PORT_0):
            stdout, _ = process.communicate(timeout=PROGRAM_TIMEOUT_S)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
    collector.join(timeout=10)
    stderr = "".join(errors)
    assert process.returncode == 1, stderr
    assert "tag not programmed: not an NTAG 424 DNA" in stderr
    assert stdout == f"{UID}\tprogrammed\n"
    assert blank.keys[0] == CardKeyDerivation(MASTER).app_key(UID)  # really programmed


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


def _cloud_decides(ledger: Ledger, item: LedgerRequest, card_sun: CardSun | None) -> Outcome:
    """What the consumer does with a request carrying what the reader read: check_sun (sun
    mode), then the ledger's counter rule in the applying transaction."""
    request = replace(item.request, card_sun=card_sun)
    decided = check_sun(
        Apply(request, item.payload_sha256, Echo.of_request(request)), SunVerifier(MASTER)
    )
    assert isinstance(decided, Apply)
    failure = None if decided.sun_failure is None else decided.sun_failure.value
    return ledger.apply(
        replace(item, request=request, sun_counter=decided.sun_counter, sun_failure=failure)
    )


def test_a_programmed_band_read_through_pcscd_pays_once_per_tap_and_its_clone_never(
    programmed_tag: VirtualNtag424, recorder: Recorder, service_database_url: str
) -> None:
    """Issue 15 end to end: `card program`, the kiosk's PC/SC reader, the cloud's check and the
    real ledger. Each tap pays; a captured message replayed, and a UID-only card answering the
    band's UID, are CARD_NOT_GENUINE."""
    engine = make_engine(service_database_url, pool_size=2, application_name="test-pcsc-sun")
    ledger = Ledger(engine)
    for kiosk_id, role in (("bar-1", "bar"), ("checkpoint-1", "checkpoint")):
        ledger.add_kiosk(kiosk_id, PUBLIC_KEY, role)
    reader = start_reader(recorder, "00 00")
    try:
        taps: list[CardSun] = []
        for _ in range(2):
            with VirtualCard(tag=programmed_tag, port=PORT_0):
                scan = recorder.next(ScanEvent)
                assert isinstance(scan, ScanEvent) and scan.card_sun is not None
                taps.append(scan.card_sun)
            recorder.next(CardRemoved)
        topped = _cloud_decides(ledger, recharge(UID, 2_000), taps[0])
        assert topped.status is Status.APPROVED, topped.message
        paid = _cloud_decides(ledger, bar_order(UID, ("Beer", 1, 450)), taps[1])
        assert paid.status is Status.APPROVED and paid.new_balance_cents == 1_550
        replayed = _cloud_decides(ledger, bar_order(UID, ("Beer", 1, 450)), taps[1])
        assert replayed.error_code is ErrorCode.CARD_NOT_GENUINE
        with VirtualCard(UID, port=PORT_0):  # a magic card answering the band's UID
            scan = recorder.next(ScanEvent)
            assert isinstance(scan, ScanEvent) and scan.card_sun is None
        recorder.next(CardRemoved)
        cloned = _cloud_decides(ledger, bar_order(UID, ("Beer", 1, 450)), scan.card_sun)
        assert cloned.error_code is ErrorCode.CARD_NOT_GENUINE
        assert ledger.card(UID).balance_cents == 1_550  # type: ignore[union-attr]
    finally:
        reader.stop()
        engine.dispose()
