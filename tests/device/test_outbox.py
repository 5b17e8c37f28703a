"""The SQLite outbox: durable, bounded, seq persisted, exact bytes kept."""

from __future__ import annotations

import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from device.ids import UuidV7Generator
from device.outbox import Outbox, OutboxError, OutboxFull

UID = "04A1B2C3D4E5F6"


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "outbox.sqlite3"


@pytest.fixture
def outbox(path: Path) -> Iterator[Outbox]:
    box = Outbox(path, kiosk_id="bar-1", capacity=3)
    yield box
    box.close()


def store(outbox: Outbox, amount_cents: int = 550) -> tuple[str, int, bytes]:
    ids = UuidV7Generator()
    stored = outbox.store(
        kind="bar_order",
        created_at_ms=1_700_000_000_000,
        card_uid=UID,
        amount_cents=amount_cents,
        new_request_id=lambda: ids.new(1_700_000_000_000),
        sign=lambda request_id, seq: f"signed:{request_id}:{seq}".encode(),
    )
    return stored.request_id, stored.seq, stored.payload


def test_store_survives_reopen_with_exact_bytes(outbox: Outbox, path: Path) -> None:
    request_id, seq, payload = store(outbox)
    assert seq == 1
    assert payload == f"signed:{request_id}:1".encode()
    outbox.close()
    reopened = Outbox(path, kiosk_id="bar-1", capacity=3)
    try:
        [entry] = reopened.outstanding()
        assert (entry.request_id, entry.seq, entry.payload) == (request_id, 1, payload)
        assert reopened.payload(request_id) == payload
        assert len(reopened) == 1
    finally:
        reopened.close()


def test_database_is_wal_full_sync_and_private(outbox: Outbox, path: Path) -> None:
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    with sqlite3.connect(path) as other:
        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert outbox._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_seq_keeps_counting_after_requests_complete(outbox: Outbox, path: Path) -> None:
    first, _, _ = store(outbox)
    second, _, _ = store(outbox)
    assert outbox.complete(
        first, status="approved", error_code=None, new_balance_cents=5, completed_at_ms=1
    )
    assert outbox.complete(
        second, status="declined", error_code="CARD_BLOCKED", new_balance_cents=5, completed_at_ms=2
    )
    outbox.close()
    reopened = Outbox(path, kiosk_id="bar-1", capacity=3)
    try:
        assert len(reopened) == 0
        _, seq, _ = store(reopened)
        assert seq == 3
        assert [done.seq for done in reopened.history()] == [2, 1]
    finally:
        reopened.close()


def test_full_outbox_refuses_and_consumes_no_seq(outbox: Outbox) -> None:
    ids = [store(outbox)[0] for _ in range(3)]
    assert outbox.full
    with pytest.raises(OutboxFull):
        store(outbox)
    outbox.complete(
        ids[0], status="approved", error_code=None, new_balance_cents=1, completed_at_ms=1
    )
    assert store(outbox)[1] == 4


def test_complete_twice_is_a_no_op(outbox: Outbox) -> None:
    request_id, _, _ = store(outbox)
    assert outbox.complete(
        request_id, status="approved", error_code=None, new_balance_cents=1, completed_at_ms=1
    )
    assert (
        outbox.complete(
            request_id, status="approved", error_code=None, new_balance_cents=1, completed_at_ms=1
        )
        is None
    )


def test_signing_failure_stores_nothing(outbox: Outbox) -> None:
    def broken(request_id: str, seq: int) -> bytes:
        raise ValueError("order too large")

    with pytest.raises(ValueError):
        outbox.store(
            kind="bar_order",
            created_at_ms=1,
            card_uid=UID,
            amount_cents=1,
            new_request_id=lambda: "x",
            sign=broken,
        )
    assert len(outbox) == 0
    assert outbox.last_seq() == 0


def test_outbox_of_another_kiosk_is_refused(outbox: Outbox, path: Path) -> None:
    with pytest.raises(OutboxError, match="belongs to kiosk 'bar-1'"):
        Outbox(path, kiosk_id="bar-2", capacity=3)


def test_request_ids_are_time_ordered_uuid_v7() -> None:
    ids = UuidV7Generator()
    made = [ids.new(1_700_000_000_000) for _ in range(1000)] + [ids.new(1_600_000_000_000)]
    assert made == sorted(made)
    assert len(set(made)) == len(made)
    assert all(value[14] == "7" and value[19] in "89ab" for value in made)
    assert made[0].startswith("018bcfe5-6800-7")
