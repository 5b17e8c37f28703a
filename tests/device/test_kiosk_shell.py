"""The kiosk shell with its real outbox and codec, the fake link, reader and indicators.

Every test drives the main loop synchronously (``process_pending``), so it is deterministic.
"""

from __future__ import annotations

import json
import queue
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from device.ids import UuidV7Generator
from device.indicators import IndicatorPlayer, RecordingPins
from device.kiosk import Command, Kiosk, KioskIdentity, SystemClock
from device.link import FakeLink
from device.machine import (
    BarDraft,
    CloudView,
    MachineConfig,
    Mode,
    OrderEntered,
    ReaderView,
    RechargeDraft,
    Reply,
    Screen,
    ShellView,
    Signal,
    view,
)
from device.outbox import Outbox
from device.reader import SimulatedReader
from protocol.codec import (
    build_result,
    decode_scan,
    encode_result,
)
from protocol.errors import ErrorCode
from protocol.keys import generate_private_key
from protocol.models import BarItem
from tests.device.responder import FakeLedger

KIOSK_ID = "bar-1"
UID = "04A1B2C3D4E5F6"
BEER = BarDraft(items=(BarItem("Beer", 2, 550, sku="beer"),), total_cents=1100)
CONFIG = MachineConfig(
    mode=Mode.BAR,
    outbox_max=5,
    result_timeout_ms=5_000,
    resend_after_ms=10_000,
    resend_after_ms_max=60_000,
    outcome_display_ms=6_000,
)


@dataclass
class Rig:
    kiosk: Kiosk
    link: FakeLink
    reader: SimulatedReader
    pins: RecordingPins
    player: IndicatorPlayer
    ledger: FakeLedger
    outbox_path: Path

    def order(self, draft: BarDraft | RechargeDraft = BEER) -> Reply:
        reply: queue.Queue[Reply] = queue.Queue(maxsize=1)
        self.kiosk.handle(Command(OrderEntered(draft), reply))
        return reply.get_nowait()

    def tap(self, uid: str = UID) -> None:
        self.reader.tap(uid)
        self.kiosk.process_pending()

    def state(self) -> dict[str, object]:
        document = json.loads(self.kiosk.snapshot_json())
        assert isinstance(document, dict)
        return document


def make_rig(
    tmp_path: Path,
    ledger: FakeLedger,
    *,
    kiosk_key: object,
    config: MachineConfig = CONFIG,
    answer: bool = True,
    void_window_s: int = 900,
    clock: SystemClock | None = None,
) -> Rig:
    outbox_path = tmp_path / "state" / "outbox.sqlite3"
    link = FakeLink(
        responder=(lambda raw: ledger.answer(KIOSK_ID, raw)) if answer else None,
        result_topic="festival/v1/kiosks/bar-1/result",
    )
    reader = SimulatedReader()
    pins = RecordingPins()
    player = IndicatorPlayer(pins)
    kiosk = Kiosk(
        identity=KioskIdentity(
            kiosk_id=KIOSK_ID,
            currency="EUR",
            private_key=kiosk_key,  # type: ignore[arg-type]
            cloud_public_key=ledger.cloud_key.public_key(),
            firmware="test",
            topup_cents_max=100_000,
        ),
        config=config,
        outbox=Outbox(outbox_path, kiosk_id=KIOSK_ID, capacity=config.outbox_max),
        link=link,
        reader=reader,
        indicators=player,
        result_topic="festival/v1/kiosks/bar-1/result",
        ids=UuidV7Generator(),
        void_window_s=void_window_s,
        clock=clock,
    )
    kiosk.start()
    kiosk.process_pending()
    return Rig(kiosk, link, reader, pins, player, ledger, outbox_path)


@pytest.fixture
def keys() -> tuple[object, FakeLedger]:
    kiosk_key = generate_private_key()
    ledger = FakeLedger(
        cloud_key=generate_private_key(),
        kiosk_keys={KIOSK_ID: kiosk_key.public_key()},
        balances={UID: 5_000},
    )
    return kiosk_key, ledger


@pytest.fixture
def rig(tmp_path: Path, keys: tuple[object, FakeLedger]) -> Iterator[Rig]:
    kiosk_key, ledger = keys
    rig = make_rig(tmp_path, ledger, kiosk_key=kiosk_key)
    rig.link.connect()
    rig.kiosk.process_pending()
    yield rig
    rig.kiosk.close()


def test_sale_is_signed_stored_published_and_approved(rig: Rig) -> None:
    assert rig.order().ok
    assert rig.state()["screen"] == "order_pending"
    rig.tap()
    state = rig.state()
    assert state["screen"] == "approved"
    outcome = state["outcome"]
    assert isinstance(outcome, dict)
    assert (outcome["new_balance_cents"], outcome["previous_balance_cents"]) == (3_900, 5_000)
    assert rig.ledger.balances[UID] == 3_900
    [request_id] = rig.ledger.received_ids()
    assert rig.ledger.applied[request_id] == 1
    assert len(rig.kiosk.outbox) == 0
    assert rig.kiosk.outbox.history()[0].request_id == request_id
    assert [signal for _, signal in rig.player.signals] == [Signal.CARD_READ, Signal.APPROVED]
    assert rig.ledger.requests[request_id].seq == 1


def test_scan_records_are_signed_and_published(rig: Rig) -> None:
    rig.tap()
    rig.reader.tap(None, "unsupported_card")
    rig.kiosk.process_pending()
    scans = [p.payload for p in rig.link.published if p.kind == "scan"]
    assert len(scans) == 2
    kiosk_key = rig.ledger.kiosk_keys[KIOSK_ID]
    first, second = (
        decode_scan(scan, topic_kiosk_id=KIOSK_ID, public_key_for=lambda k: kiosk_key)
        for scan in scans
    )
    assert (first.status, first.card_uid, first.reader) == ("ok", UID, "sim")
    assert (second.status, second.card_uid) == ("unsupported_card", None)


def test_result_signed_by_another_key_is_ignored(
    tmp_path: Path, keys: tuple[object, FakeLedger]
) -> None:
    kiosk_key, ledger = keys
    rig = make_rig(tmp_path, ledger, kiosk_key=kiosk_key, answer=False)
    try:
        rig.link.connect()
        rig.order()
        rig.tap()
        [request_payload] = rig.link.requests()
        impostor = FakeLedger(
            cloud_key=generate_private_key(),
            kiosk_keys=ledger.kiosk_keys,
            balances={UID: 99_999},
        )
        forged = impostor.answer(KIOSK_ID, request_payload)
        assert forged is not None
        rig.link.deliver(forged)
        rig.kiosk.process_pending()
        state = rig.state()
        assert state["screen"] == "waiting"
        assert len(rig.kiosk.outbox) == 1
        counters = state["counters"]
        assert isinstance(counters, dict) and counters["results_ignored"] == 1
        # The genuine result still lands afterwards.
        genuine = ledger.answer(KIOSK_ID, request_payload)
        assert genuine is not None
        rig.link.deliver(genuine)
        rig.kiosk.process_pending()
        assert rig.state()["screen"] == "approved"
    finally:
        rig.kiosk.close()


def test_result_for_a_request_not_outstanding_is_ignored(rig: Rig) -> None:
    rig.order()
    rig.tap()
    assert rig.state()["screen"] == "approved"
    stray = build_result(
        request_id="0190b1b2-0000-7000-8000-000000000000",
        kiosk_id=KIOSK_ID,
        seq=99,
        card_uid=UID,
        error_code=None,
        message="approved",
        transaction_id="tx-x",
        previous_balance_cents=10,
        new_balance_cents=5,
        debt_cents=0,
        replayed=False,
        processed_at_ms=1,
    )
    rig.link.deliver(encode_result(stray, rig.ledger.cloud_key))
    rig.kiosk.process_pending()
    state = rig.state()
    assert state["screen"] == "approved"
    counters = state["counters"]
    assert isinstance(counters, dict) and counters["results_accepted"] == 1


def test_unattributable_rejection_raises_an_alert(rig: Rig) -> None:
    rejection = build_result(
        request_id=None,
        kiosk_id=None,
        seq=None,
        card_uid=None,
        error_code=ErrorCode.UNKNOWN_KIOSK,
        message="no public key registered for this kiosk",
        transaction_id=None,
        previous_balance_cents=None,
        new_balance_cents=None,
        debt_cents=None,
        replayed=False,
        processed_at_ms=1,
    )
    rig.link.deliver(encode_result(rejection, rig.ledger.cloud_key))
    rig.kiosk.process_pending()
    alert = rig.state()["alert"]
    assert isinstance(alert, str) and "UNKNOWN_KIOSK" in alert


def test_offline_without_a_policy_a_bar_order_is_refused_and_nothing_stored(
    tmp_path: Path, keys: tuple[object, FakeLedger]
) -> None:
    # No config, so no offline policy: a bar order offline is refused on the spot (before
    # 1.1 it was stored and sent later; offline sales with a policy: test_kiosk_offline.py).
    kiosk_key, ledger = keys
    rig = make_rig(tmp_path, ledger, kiosk_key=kiosk_key)
    try:
        assert rig.order().ok
        rig.tap()
        state = rig.state()
        assert state["screen"] == "order_pending"
        assert state["notice"] == "offline: this bar cannot sell offline"
        assert len(rig.kiosk.outbox) == 0 and rig.link.requests() == []
        assert rig.kiosk.outbox.last_seq() == 0  # no seq consumed
    finally:
        rig.kiosk.close()


def test_restart_resends_the_exact_stored_bytes(
    tmp_path: Path, keys: tuple[object, FakeLedger]
) -> None:
    kiosk_key, ledger = keys
    first = make_rig(tmp_path, ledger, kiosk_key=kiosk_key, answer=False)
    first.link.connect()
    first.order()
    first.tap()
    [sent] = first.link.requests()
    first.kiosk.outbox.close()  # a crash: nothing else is cleaned up
    second = make_rig(tmp_path, ledger, kiosk_key=kiosk_key)
    try:
        second.link.connect()
        second.kiosk.process_pending()
        assert second.link.requests() == [sent]
        assert len(second.kiosk.outbox) == 0
        assert ledger.balances[UID] == 3_900
        late = second.state()["late_results"]
        assert isinstance(late, list) and late[0]["seq"] == 1
        # The seq counter continues.
        second.order()
        second.tap()
        assert ledger.requests[ledger.received_ids()[-1]].seq == 2
    finally:
        second.kiosk.close()
        first.player.close()


def test_outbox_full_refuses_new_sales(tmp_path: Path, keys: tuple[object, FakeLedger]) -> None:
    kiosk_key, ledger = keys
    # Offline top-ups wait in the outbox (a bar order offline is an offline sale or refused).
    config = MachineConfig(
        mode=Mode.CHECKPOINT,
        outbox_max=2,
        result_timeout_ms=5_000,
        resend_after_ms=10_000,
        resend_after_ms_max=60_000,
        outcome_display_ms=6_000,
    )
    rig = make_rig(tmp_path, ledger, kiosk_key=kiosk_key, config=config)
    top_up = RechargeDraft(1000, "cash", "anna")
    try:
        for _ in range(2):
            assert rig.order(top_up).ok
            rig.tap()
        refused = rig.order(top_up)
        assert not refused.ok and "outbox full" in refused.message
        outbox = rig.state()["outbox"]
        assert outbox == {"pending": 2, "max": 2, "full": True, "oldest_seq": 1}
    finally:
        rig.kiosk.close()


def test_declined_for_insufficient_funds(rig: Rig) -> None:
    rig.ledger.balances[UID] = 100
    rig.order()
    rig.tap()
    state = rig.state()
    assert state["screen"] == "declined"
    outcome = state["outcome"]
    assert isinstance(outcome, dict) and outcome["error_code"] == "INSUFFICIENT_FUNDS"
    assert rig.kiosk.state.screen is Screen.DECLINED


def test_checkpoint_recharge(tmp_path: Path, keys: tuple[object, FakeLedger]) -> None:
    kiosk_key, ledger = keys
    config = MachineConfig(
        mode=Mode.CHECKPOINT,
        outbox_max=5,
        result_timeout_ms=5_000,
        resend_after_ms=10_000,
        resend_after_ms_max=60_000,
        outcome_display_ms=6_000,
    )
    rig = make_rig(tmp_path, ledger, kiosk_key=kiosk_key, config=config)
    try:
        rig.link.connect()
        assert rig.order(RechargeDraft(2_000, "cash", "anna")).ok
        rig.tap("0A0B0C0D")
        outcome = rig.state()["outcome"]
        assert isinstance(outcome, dict)
        assert (outcome["previous_balance_cents"], outcome["new_balance_cents"]) == (0, 2_000)
    finally:
        rig.kiosk.close()


def test_every_result_takes_one_path_verified_then_matched(
    tmp_path: Path, keys: tuple[object, FakeLedger]
) -> None:
    """A cloud-signed result for another kiosk, or with the wrong seq or card for our request,
    is ignored and counted; a replay of a finished request is ignored silently; the genuine one
    lands once."""
    kiosk_key, ledger = keys
    rig = make_rig(tmp_path, ledger, kiosk_key=kiosk_key, answer=False)
    try:
        rig.link.connect()
        rig.order()
        rig.tap()
        [request_payload] = rig.link.requests()
        [pending] = rig.kiosk.state.pending

        def result(**changes: object) -> bytes:
            fields: dict[str, object] = {
                "request_id": pending.request_id,
                "kiosk_id": KIOSK_ID,
                "seq": pending.seq,
                "card_uid": pending.card_uid,
                "error_code": None,
                "message": "approved",
                "transaction_id": "tx-1",
                "previous_balance_cents": 5_000,
                "new_balance_cents": 3_900,
                "debt_cents": 0,
                "replayed": False,
                "processed_at_ms": 1,
            }
            fields.update(changes)
            return encode_result(build_result(**fields), ledger.cloud_key)  # type: ignore[arg-type]

        for wrong in (
            result(kiosk_id="bar-2"),
            result(seq=pending.seq + 1),
            result(card_uid="04A1B2C3D4E5F7"),
        ):
            rig.link.deliver(wrong)
        rig.kiosk.process_pending()
        state = rig.state()
        assert state["screen"] == "waiting" and len(rig.kiosk.outbox) == 1
        counters = state["counters"]
        assert isinstance(counters, dict) and counters["results_ignored"] == 3
        genuine = ledger.answer(KIOSK_ID, request_payload)
        assert genuine is not None
        rig.link.deliver(genuine)
        rig.link.deliver(genuine)  # the resend's "replayed" answer: not an error
        rig.kiosk.process_pending()
        state = rig.state()
        assert state["screen"] == "approved" and state["alert"] is None
        counters = state["counters"]
        assert isinstance(counters, dict)
        assert (counters["results_accepted"], counters["results_ignored"]) == (1, 3)
    finally:
        rig.kiosk.close()


def test_the_page_snapshot_is_built_by_the_view(rig: Rig) -> None:
    rig.order()
    rig.tap()
    kiosk = rig.kiosk
    shown = rig.state()
    expected = view(
        kiosk.state,
        kiosk.config,
        ShellView(
            kiosk_id=KIOSK_ID,
            currency="EUR",
            firmware="test",
            snapshot_version=int(shown["version"]),  # type: ignore[call-overload]
            reader=ReaderView(True, "sim", "simulated reader"),
            link_reason=None,
            alert=None,
            counters=dict(kiosk.counters),
            cloud=CloudView(menu_source="none"),
            orders=kiosk.orders_view(),
            staff=kiosk.staff_view(),
        ),
    )
    assert shown == json.loads(json.dumps(expected))
    assert list(shown) == list(expected)  # the page's field order too
