"""Kiosk registry, rejections stored forever, seq gaps, presence, scans, dead letters."""

from __future__ import annotations

import hashlib
import time

import pytest

from cloud.ledger import Ledger
from protocol.errors import ErrorCode, Status
from protocol.models import KioskStatus, ScanRecord
from tests.ledger.helpers import PUBLIC_KEY, bar_order, execute, recharge

CARD = "04C0FFEE"
SHA_A = hashlib.sha256(b"a").hexdigest()
SHA_B = hashlib.sha256(b"b").hexdigest()


def test_add_disable_and_re_add_a_kiosk(ledger: Ledger) -> None:
    record = ledger.add_kiosk("bar-9", PUBLIC_KEY, "bar")
    assert (record.kiosk_id, record.role, record.enabled) == ("bar-9", "bar", True)
    assert ledger.disable_kiosk("bar-9") is True
    assert ledger.kiosk("bar-9").enabled is False  # type: ignore[union-attr]
    other_key = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
    again = ledger.add_kiosk("bar-9", other_key, "all")
    assert (again.public_key_b64, again.role, again.enabled) == (other_key, "all", True)
    assert ledger.disable_kiosk("nope") is False
    assert ledger.kiosk("nope") is None
    assert "bar-9" in [kiosk.kiosk_id for kiosk in ledger.kiosks()]


@pytest.mark.parametrize(
    ("kiosk_id", "key", "role"),
    [
        ("Bar-1", PUBLIC_KEY, "bar"),
        ("cloud", PUBLIC_KEY, "bar"),
        ("bar-1", "short", "bar"),
        ("bar-1", PUBLIC_KEY, "admin"),
    ],
)
def test_invalid_kiosks_are_refused(ledger: Ledger, kiosk_id: str, key: str, role: str) -> None:
    with pytest.raises(ValueError):
        ledger.add_kiosk(kiosk_id, key, role)


def test_rejection_is_stored_forever_and_replayed(ledger: Ledger) -> None:
    outcome = ledger.record_rejection(
        request_id="rej-1",
        kiosk_id="bar-1",
        seq=7,
        card_uid=CARD,
        payload_sha256=SHA_A,
        error_code=ErrorCode.OPERATION_NOT_ALLOWED,
        message="a bar kiosk cannot top up",
    )
    assert (outcome.status, outcome.error_code, outcome.replayed) == (
        Status.REJECTED,
        ErrorCode.OPERATION_NOT_ALLOWED,
        False,
    )
    assert outcome.previous_balance_cents is None and outcome.card_uid == CARD
    again = ledger.record_rejection(
        request_id="rej-1",
        kiosk_id="bar-1",
        seq=7,
        card_uid=CARD,
        payload_sha256=SHA_A,
        error_code=ErrorCode.OPERATION_NOT_ALLOWED,
        message="a bar kiosk cannot top up",
    )
    assert again.replayed is True and again.error_code is ErrorCode.OPERATION_NOT_ALLOWED
    assert again.processed_at_ms == outcome.processed_at_ms
    conflict = ledger.record_rejection(
        request_id="rej-1",
        kiosk_id="bar-1",
        seq=7,
        card_uid=CARD,
        payload_sha256=SHA_B,
        error_code=ErrorCode.STALE_REQUEST,
        message="old",
    )
    assert conflict.error_code is ErrorCode.IDEMPOTENCY_CONFLICT and not conflict.replayed


def test_a_rejected_request_id_can_never_be_applied(ledger: Ledger) -> None:
    ledger.apply(recharge(CARD, 5_000))
    order = bar_order(CARD)
    ledger.record_rejection(
        request_id=order.request.request_id,
        kiosk_id="bar-1",
        seq=1,
        card_uid=CARD,
        payload_sha256=order.payload_sha256,
        error_code=ErrorCode.KIOSK_DISABLED,
        message="kiosk disabled",
    )
    replay = ledger.apply(order)
    assert (replay.status, replay.error_code, replay.replayed) == (
        Status.REJECTED,
        ErrorCode.KIOSK_DISABLED,
        True,
    )
    assert ledger.card(CARD).balance_cents == 5_000  # type: ignore[union-attr]


def test_seq_gaps_are_reported_per_kiosk(ledger: Ledger) -> None:
    ledger.apply(recharge(CARD, 50_000, seq=1, kiosk_id="checkpoint-1"))
    for seq in (1, 2, 3, 6, 7, 10):
        ledger.apply(bar_order(CARD, seq=seq, kiosk_id="bar-1"))
    ledger.apply_batch([bar_order(CARD, seq=seq, kiosk_id="bar-2") for seq in (2, 3, 5)])
    ledger.record_rejection(
        request_id="rej-seq",
        kiosk_id="bar-1",
        seq=12,
        card_uid=CARD,
        payload_sha256=SHA_A,
        error_code=ErrorCode.STALE_REQUEST,
        message="stale",
    )
    # HTTP requests carry no kiosk sequence.
    ledger.apply(bar_order(CARD, seq=99, kiosk_id="bar-1", source="http"))
    overview = {row["kiosk_id"]: row for row in ledger.kiosk_overview()}
    assert overview["bar-1"]["last_seq"] == 12
    assert overview["bar-1"]["missing_seq_ranges"] == [[4, 5], [8, 9], [11, 11]]
    assert overview["bar-2"]["missing_seq_ranges"] == [[1, 1], [4, 4]]
    assert overview["checkpoint-1"]["missing_seq_ranges"] == []
    assert overview["checkpoint-2"]["last_seq"] is None
    assert overview["checkpoint-2"]["state"] == "unknown"
    assert overview["bar-1"]["last_seen_at"] is not None
    # Filling a gap closes it.
    ledger.apply(bar_order(CARD, seq=11, kiosk_id="bar-1"))
    refreshed = {row["kiosk_id"]: row for row in ledger.kiosk_overview()}
    assert refreshed["bar-1"]["missing_seq_ranges"] == [[4, 5], [8, 9]]


def test_disabled_kiosks_stay_in_the_overview(ledger: Ledger) -> None:
    ledger.disable_kiosk("bar-2")
    overview = {row["kiosk_id"]: row for row in ledger.kiosk_overview()}
    assert overview["bar-2"]["enabled"] is False and overview["bar-2"]["role"] == "bar"


def test_status_updates_presence_and_ignores_older_news(ledger: Ledger) -> None:
    now_ms = int(time.time() * 1000)
    ledger.record_kiosk_status(
        KioskStatus("bar-1", "online", now_ms, "1.0.0"), received_at_ms=now_ms
    )
    ledger.record_kiosk_status(
        KioskStatus("bar-1", "offline", now_ms - 60_000, "0.9.0"), received_at_ms=now_ms + 5
    )
    row = {r["kiosk_id"]: r for r in ledger.kiosk_overview()}["bar-1"]
    assert row["state"] == "online"
    ledger.record_kiosk_status(
        KioskStatus("bar-1", "offline", now_ms + 1_000, "1.0.0"), received_at_ms=now_ms + 1_000
    )
    assert {r["kiosk_id"]: r for r in ledger.kiosk_overview()}["bar-1"]["state"] == "offline"
    # An unregistered kiosk's status changes nothing and raises nothing.
    ledger.record_kiosk_status(
        KioskStatus("ghost", "online", now_ms, "1.0.0"), received_at_ms=now_ms
    )


def test_scans_land_in_nfc_scan_log(ledger: Ledger, database_url: str) -> None:
    now_ms = int(time.time() * 1000)
    ledger.record_scan(ScanRecord("bar-1", now_ms, CARD, "ok", "Virtual PCD 00 00", 12))
    assert (
        ledger.record_scans(
            [
                ScanRecord("bar-1", now_ms, None, "read_error", "Virtual PCD 00 00", 40),
                ScanRecord("bar-2", now_ms, CARD, "ok", "reader", 9),
            ]
        )
        == 2
    )
    rows = execute(
        database_url,
        "SELECT kiosk_id, card_id, scan_status, duration_ms FROM nfc_scan_log ORDER BY id",
    )
    assert rows == [
        ("bar-1", CARD, "ok", 12),
        ("bar-1", None, "read_error", 40),
        ("bar-2", CARD, "ok", 9),
    ]
    activity = {row["scan_status"]: row["count"] for row in ledger.nfc_scan_activity()}
    assert activity == {"ok": 2, "read_error": 1}


def test_dead_letters_keep_the_raw_bytes(ledger: Ledger, database_url: str) -> None:
    raw = b"\x00not a jws\xff"
    ledger.record_dead_letter(
        topic="festival/v1/kiosks/bar-1/tx",
        payload=raw,
        error_code=ErrorCode.INVALID_SIGNATURE,
        reason="signature does not verify",
        kiosk_id="bar-1",
    )
    rows = execute(database_url, "SELECT payload, error_code, kiosk_id, topic FROM dead_letters")
    assert [(bytes(r[0]), r[1], r[2], r[3]) for r in rows] == [
        (raw, "INVALID_SIGNATURE", "bar-1", "festival/v1/kiosks/bar-1/tx")
    ]
