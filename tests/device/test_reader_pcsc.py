"""The PC/SC reader adapter against real pcscd + vpcd + our virtual card."""

from __future__ import annotations

import queue
from collections.abc import Iterator

import pytest

from device.reader import CardRemoved, ReaderEvent, ReaderStatus, ScanEvent
from device.reader_pcsc import PcscReader
from device.sandbox import PcscdService
from device.virtual_card import VirtualCard
from tests.device.pcsc import wait_until_readers_empty
from tests.waiting import wait_until

READER_0 = "Virtual PCD 00 00"
READER_1 = "Virtual PCD 00 01"
PORT_0 = 35963
PORT_1 = 35964
EVENT_TIMEOUT_S = 10.0
# How long "nothing happens" is watched for: several of the reader's 100 ms polls.
QUIET_WINDOW_S = 0.8


class Recorder:
    def __init__(self) -> None:
        self.events: queue.Queue[ReaderEvent] = queue.Queue()

    def __call__(self, event: ReaderEvent) -> None:
        self.events.put(event)

    def next(self, kind: type, timeout_s: float = EVENT_TIMEOUT_S) -> ReaderEvent:
        """The next event of ``kind``, skipping reader status changes of other kinds."""
        while True:
            event = self.events.get(timeout=timeout_s)
            if isinstance(event, kind):
                return event
            assert isinstance(event, ReaderStatus), f"unexpected {event!r} while waiting for {kind}"

    def assert_quiet(self) -> None:
        try:
            event = self.events.get(timeout=QUIET_WINDOW_S)
        except queue.Empty:
            return
        raise AssertionError(f"expected no reader event, got {event!r}")


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture(autouse=True)
def readers_empty(pcscd: PcscdService) -> None:
    """Every test starts with both virtual readers empty as pcscd sees them: a card removed by
    the previous test just before it ended must not still look present to this one."""
    wait_until_readers_empty()


def start_reader(recorder: Recorder, name: str) -> PcscReader:
    reader = PcscReader(name, poll_ms=100)
    reader.start(recorder)
    status = recorder.next(ReaderStatus)
    assert isinstance(status, ReaderStatus)
    assert status.available, status
    return reader


@pytest.fixture
def reader_0(pcscd: PcscdService, recorder: Recorder) -> Iterator[PcscReader]:
    reader = start_reader(recorder, "00 00")
    yield reader
    reader.stop()


def test_tap_hold_remove_and_tap_again(reader_0: PcscReader, recorder: Recorder) -> None:
    assert reader_0.reader_name == READER_0
    card = VirtualCard("04A1B2C3D4E5F6", port=PORT_0)
    try:
        card.insert()
        scan = recorder.next(ScanEvent)
        assert isinstance(scan, ScanEvent)
        assert (scan.status, scan.card_uid, scan.reader) == ("ok", "04A1B2C3D4E5F6", READER_0)
        assert 0 <= scan.duration_ms < 5_000
        # Held on the reader: still one tap.
        recorder.assert_quiet()
        card.remove()
        assert isinstance(recorder.next(CardRemoved), CardRemoved)
        card.insert()
        again = recorder.next(ScanEvent)
        assert isinstance(again, ScanEvent)
        assert (again.status, again.card_uid) == ("ok", "04A1B2C3D4E5F6")
        assert again.scanned_at_ms >= scan.scanned_at_ms
    finally:
        card.remove()


def test_four_and_ten_byte_uids(reader_0: PcscReader, recorder: Recorder) -> None:
    for uid in ("DEADBEEF", "0102030405060708090A"):
        with VirtualCard(uid, port=PORT_0):
            scan = recorder.next(ScanEvent)
            assert isinstance(scan, ScanEvent)
            assert (scan.status, scan.card_uid) == ("ok", uid)
        recorder.next(CardRemoved)


def test_unsupported_card_is_a_scan_record_without_uid(
    reader_0: PcscReader, recorder: Recorder
) -> None:
    with VirtualCard(None, port=PORT_0) as card:
        scan = recorder.next(ScanEvent)
        assert isinstance(scan, ScanEvent)
        assert (scan.status, scan.card_uid) == ("unsupported_card", None)
        assert card.apdus_seen == [bytes.fromhex("FFCA000000")]


def test_odd_uid_length_is_unsupported(reader_0: PcscReader, recorder: Recorder) -> None:
    with VirtualCard("0102030405", port=PORT_0):
        scan = recorder.next(ScanEvent)
        assert isinstance(scan, ScanEvent)
        assert (scan.status, scan.card_uid) == ("unsupported_card", None)


def test_two_readers_only_the_chosen_one_reports(pcscd: PcscdService, recorder: Recorder) -> None:
    reader = start_reader(recorder, "00 01")
    other = VirtualCard("04A1B2C3D4E5F6", port=PORT_0)
    chosen = VirtualCard("04FFEEDDCCBBAA", port=PORT_1)
    try:
        assert reader.reader_name == READER_1
        other.insert()
        recorder.assert_quiet()
        chosen.insert()
        scan = recorder.next(ScanEvent)
        assert isinstance(scan, ScanEvent)
        assert (scan.card_uid, scan.reader) == ("04FFEEDDCCBBAA", READER_1)
    finally:
        other.remove()
        chosen.remove()
        reader.stop()


def test_pcscd_restart_is_survived(pcscd: PcscdService, recorder: Recorder) -> None:
    reader = start_reader(recorder, "00 00")
    try:
        with VirtualCard("04A1B2C3D4E5F6", port=PORT_0):
            assert isinstance(recorder.next(ScanEvent), ScanEvent)
        assert isinstance(recorder.next(CardRemoved), CardRemoved)
        pcscd.restart()
        down = recorder.next(ReaderStatus)
        assert isinstance(down, ReaderStatus)
        assert not down.available
        back = wait_until(
            lambda: _next_status(recorder), timeout_s=20, what="the reader to come back"
        )
        assert back is not None and back.available
        assert reader.healthy()
        with VirtualCard("0A0B0C0D", port=PORT_0):
            scan = recorder.next(ScanEvent)
            assert isinstance(scan, ScanEvent)
            assert (scan.status, scan.card_uid) == ("ok", "0A0B0C0D")
    finally:
        reader.stop()
    assert not reader.healthy()


def _next_status(recorder: Recorder) -> ReaderStatus | None:
    try:
        event = recorder.events.get(timeout=0.1)
    except queue.Empty:
        return None
    return event if isinstance(event, ReaderStatus) and event.available else None


def test_no_matching_reader_reports_unavailable(pcscd: PcscdService, recorder: Recorder) -> None:
    reader = PcscReader("No Such Reader", poll_ms=100)
    reader.start(recorder)
    try:
        status = recorder.next(ReaderStatus)
        assert isinstance(status, ReaderStatus)
        assert not status.available
        assert "No Such Reader" in status.detail
        assert reader.healthy()
    finally:
        reader.stop()
