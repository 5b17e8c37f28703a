"""The SQLite outbox: durable, bounded, seq persisted, exact bytes kept."""

from __future__ import annotations

import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from device.ids import UuidV7Generator
from device.outbox import CloudMessage, Outbox, OutboxError, OutboxFull

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


def test_the_cloud_messages_survive_a_reopen_one_per_kind(outbox: Outbox, path: Path) -> None:
    assert outbox.cloud_message("config") is None
    outbox.keep_cloud_message(CloudMessage("config", 3, b"signed-config-3", 10))
    outbox.keep_cloud_message(CloudMessage("config", 4, b"signed-config-4", 11))
    outbox.keep_cloud_message(CloudMessage("denylist", 7, b"signed-denylist-7", 12))
    outbox.close()
    reopened = Outbox(path, kiosk_id="bar-1", capacity=3)
    try:
        assert reopened.cloud_message("config") == CloudMessage("config", 4, b"signed-config-4", 11)
        assert reopened.cloud_message("denylist") == CloudMessage(
            "denylist", 7, b"signed-denylist-7", 12
        )
        reopened.forget_cloud_message("config")
        assert reopened.cloud_message("config") is None
        assert reopened.cloud_message("denylist") is not None
        # Kept beside the requests, without touching them or the seq counter.
        assert len(reopened) == 0 and reopened.last_seq() == 0
    finally:
        reopened.close()


def test_the_cloud_messages_table_is_checked_by_the_database(outbox: Outbox, path: Path) -> None:
    with sqlite3.connect(path) as other:
        with pytest.raises(sqlite3.IntegrityError):
            other.execute("INSERT INTO cloud_messages VALUES ('menu', 1, x'00', 1)")
        with pytest.raises(sqlite3.IntegrityError):
            other.execute("INSERT INTO cloud_messages VALUES ('config', 0, x'00', 1)")


def test_an_outbox_of_the_previous_firmware_gains_the_table(path: Path) -> None:
    """A kiosk updated in place: its outbox (schema 1, no cloud_messages) keeps its requests and
    seq and gains the table; the schema version stays 1, so a rollback still opens it."""
    old = Outbox(path, kiosk_id="bar-1", capacity=3)
    _, _, payload = store(old)
    old._db.execute("DROP TABLE cloud_messages")
    old.close()
    updated = Outbox(path, kiosk_id="bar-1", capacity=3)
    try:
        assert [entry.payload for entry in updated.outstanding()] == [payload]
        updated.keep_cloud_message(CloudMessage("denylist", 1, b"x", 1))
        assert updated.cloud_message("denylist") is not None
        assert updated._db.execute("PRAGMA user_version").fetchone()[0] == 1
    finally:
        updated.close()


# --- (1.1) offline sales ----------------------------------------------------------------------


def store_offline(outbox: Outbox, amount_cents: int, config_version: int | None) -> int:
    ids = UuidV7Generator()
    return outbox.store(
        kind="bar_order",
        created_at_ms=1_700_000_000_000,
        card_uid=UID,
        amount_cents=amount_cents,
        new_request_id=lambda: ids.new(1_700_000_000_000),
        sign=lambda request_id, seq: f"signed:{request_id}:{seq}".encode(),
        offline_config_version=config_version,
    ).seq


def test_offline_sales_are_marked_and_the_mark_survives_a_reopen(
    outbox: Outbox, path: Path
) -> None:
    store_offline(outbox, 500, 4)
    store_offline(outbox, 300, None)  # an online order
    store_offline(outbox, 700, 4)
    outbox.close()
    reopened = Outbox(path, kiosk_id="bar-1", capacity=3)
    try:
        entries = reopened.outstanding()
        assert [(e.seq, e.offline, e.amount_cents) for e in entries] == [
            (1, True, 500),
            (2, False, 300),
            (3, True, 700),
        ]
    finally:
        reopened.close()


def test_an_answered_offline_sale_leaves_the_totals_and_keeps_its_debt_in_history(
    outbox: Outbox,
) -> None:
    store_offline(outbox, 500, 4)
    store_offline(outbox, 700, 4)
    [first, second] = outbox.outstanding()
    outbox.complete(
        first.request_id,
        status="approved",
        error_code=None,
        new_balance_cents=0,
        completed_at_ms=1,
        debt_cents=200,
    )
    assert [e.seq for e in outbox.outstanding() if e.offline] == [second.seq]
    [line] = outbox.history()
    assert (line.seq, line.offline, line.debt_cents) == (first.seq, True, 200)


def test_a_failing_signature_stores_neither_the_request_nor_its_mark(outbox: Outbox) -> None:
    def fail(request_id: str, seq: int) -> bytes:
        raise ValueError("cannot sign")

    with pytest.raises(ValueError):
        outbox.store(
            kind="bar_order",
            created_at_ms=1,
            card_uid=UID,
            amount_cents=500,
            new_request_id=lambda: "r1",
            sign=fail,
            offline_config_version=4,
        )
    assert outbox.outstanding() == [] and outbox.last_seq() == 0
    connection = sqlite3.connect(outbox.path)
    try:
        assert connection.execute("SELECT count(*) FROM offline_sales").fetchone()[0] == 0
    finally:
        connection.close()


def test_marks_are_pruned_with_their_history_but_not_while_unanswered(path: Path) -> None:
    from device.limits import OUTBOX_HISTORY_MAX

    box = Outbox(path, kiosk_id="bar-1", capacity=OUTBOX_HISTORY_MAX + 10)
    try:
        waiting = store_offline(box, 100, 1)  # answered last of all
        for _ in range(OUTBOX_HISTORY_MAX + 5):
            store_offline(box, 100, 1)
        for entry in box.outstanding()[1:]:
            box.complete(
                entry.request_id,
                status="approved",
                error_code=None,
                new_balance_cents=0,
                completed_at_ms=1,
                debt_cents=0,
            )
        [still] = box.outstanding()
        assert (still.seq, still.offline) == (waiting, True)
        connection = sqlite3.connect(path)
        try:
            marks = connection.execute("SELECT count(*) FROM offline_sales").fetchone()[0]
        finally:
            connection.close()
        assert marks == OUTBOX_HISTORY_MAX + 1  # the history's lines and the one waiting
    finally:
        box.close()
