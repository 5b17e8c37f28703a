"""The durable outbox: every request is on disk before it is published, until its result arrives.

SQLite in WAL mode with ``synchronous=FULL``: a committed store survives kill -9 and power loss.
A request is stored with its request_id (UUIDv7) and seq and the exact signed bytes; every resend
publishes those bytes again, never a re-serialisation (the cloud compares payload hashes). The seq
counter lives in the same database and is advanced in the same transaction as the insert, so a
seq is never reused, even after the request is gone. The outbox is bounded: ``store`` raises
``OutboxFull`` at capacity, and the kiosk refuses new sales until results drain it.

The same database keeps the cloud's signed messages the kiosk applied (PROTOCOL.md 1.1 "Config and
deny-list"): its latest config and deny-list, as the exact signed bytes with their version, in the
same WAL/FULL discipline, so a kiosk that reboots without a network still sells from its config's
menu and still holds the deny-list. The table is additive (``CREATE TABLE IF NOT EXISTS``): the
schema version stays 1, so an older firmware (a rollback) still opens the file and ignores it.

(1.1) Offline sales: a request the kiosk approved itself is marked by a row in ``offline_sales``
(same seq), written in the same transaction as the request, and given the ``debt_cents`` of its
result when that arrives. The kiosk's running totals are derived from the offline sales still
in ``requests`` (``outstanding``), so they survive a reboot and cannot drift from what is really
unanswered. The table is additive like ``cloud_messages``; an older firmware ignores it (it sends
the stored bytes, which say ``offline: true``, as they are).

(1.1) Voids: a ``void`` request names the order it cancels in ``voids`` (same seq), written in the
same transaction as the request, so that which of the kiosk's recent orders a void cancelled (or
is cancelling) survives a reboot; it goes with its last line of history. Additive like the others.

(1.1) Staff at the kiosk: who is logged in (``staff_sessions``: the staff id, the band the login
was made with, when; and which one is at the till, ``meta`` ``active_staff_id``), so a reboot
keeps the logins; and which staff member a ``staff_login`` still waiting for its result logs in
(``staff_logins``, same seq, written with the request). A ``staff_login`` carries the PIN in its
signed bytes: those live in ``requests`` until the result arrives and are then deleted with
``secure_delete`` on and the WAL checkpointed and truncated, so no copy of the PIN stays in the
database files (docs/kiosk.md "Staff login"). Additive like the others.

This is the only module that imports sqlite3. One instance is used from one thread (the kiosk's
main loop).
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from device.limits import OUTBOX_BUSY_TIMEOUT_MS, OUTBOX_HISTORY_MAX

SCHEMA_VERSION: Final = 1

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL CHECK (value >= 0)
);
CREATE TABLE IF NOT EXISTS requests (
    seq INTEGER PRIMARY KEY CHECK (seq >= 1),
    request_id TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    card_uid TEXT NOT NULL,
    amount_cents INTEGER NOT NULL,
    payload BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS history (
    seq INTEGER PRIMARY KEY,
    request_id TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    card_uid TEXT NOT NULL,
    amount_cents INTEGER NOT NULL,
    status TEXT NOT NULL,
    error_code TEXT,
    new_balance_cents INTEGER,
    completed_at_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS offline_sales (
    seq INTEGER PRIMARY KEY CHECK (seq >= 1),
    config_version INTEGER NOT NULL CHECK (config_version >= 1),
    debt_cents INTEGER CHECK (debt_cents >= 0)
);
CREATE TABLE IF NOT EXISTS voids (
    seq INTEGER PRIMARY KEY CHECK (seq >= 1),
    original_request_id TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS staff_logins (
    seq INTEGER PRIMARY KEY CHECK (seq >= 1),
    staff_id TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS staff_sessions (
    staff_id TEXT PRIMARY KEY,
    card_uid TEXT NOT NULL,
    logged_in_at_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS cloud_messages (
    kind TEXT PRIMARY KEY CHECK (kind IN ('config', 'denylist')),
    version INTEGER NOT NULL CHECK (version >= 1),
    payload BLOB NOT NULL,
    applied_at_ms INTEGER NOT NULL
);
"""

# What the cloud sends a kiosk and the kiosk keeps: its config and the deny-list (one row each).
CLOUD_MESSAGE_KINDS: Final = ("config", "denylist")


class OutboxError(RuntimeError):
    """The outbox database cannot be used (wrong kiosk, not WAL, corrupt)."""


class OutboxFull(OutboxError):
    """The outbox holds ``capacity`` requests: no new request until results arrive."""


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """What the outbox keeps of every request, pending or completed."""

    request_id: str
    seq: int
    kind: str
    created_at_ms: int
    card_uid: str
    amount_cents: int


@dataclass(frozen=True, slots=True)
class StoredRequest(OutboxEntry):
    payload: bytes
    # (1.1) The kiosk approved it itself (signed with ``offline: true``).
    offline: bool = False
    # (1.1) A ``staff_login``: the staff member it logs in.
    login_staff_id: str | None = None


@dataclass(frozen=True, slots=True)
class StaffSession:
    """(1.1) A staff member logged in at this kiosk: the band the login was made with, and the
    kiosk's wall clock at the login's tap (the 12 hours count from there)."""

    staff_id: str
    card_uid: str
    logged_in_at_ms: int


@dataclass(frozen=True, slots=True)
class CloudMessage:
    """A signed message of the cloud the kiosk applied: its exact bytes, as they arrived."""

    kind: str
    version: int
    payload: bytes
    applied_at_ms: int


@dataclass(frozen=True, slots=True)
class Completed(OutboxEntry):
    status: str
    error_code: str | None
    new_balance_cents: int | None
    completed_at_ms: int
    offline: bool = False
    # (1.1) What the card owed after the result (offline sales only; None otherwise).
    debt_cents: int | None = None


@dataclass(frozen=True, slots=True)
class VoidRecord:
    """(1.1) A void the outbox holds: the order it cancels and its result's status (None while
    it waits for it)."""

    request_id: str
    original_request_id: str
    status: str | None


class Outbox:
    """The kiosk's outbox database at ``path`` (created with mode 0600 if absent)."""

    def __init__(self, path: Path, *, kiosk_id: str, capacity: int) -> None:
        assert capacity >= 1
        self.path = path
        self.capacity = capacity
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not path.exists():
            # Create it 0600 ourselves: the outbox holds signed payment requests.
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        try:
            self._db = sqlite3.connect(
                path, isolation_level=None, timeout=OUTBOX_BUSY_TIMEOUT_MS / 1000
            )
            self._configure()
            self._migrate(kiosk_id)
        except sqlite3.DatabaseError as error:
            raise OutboxError(f"cannot open the outbox {path}: {error}") from error
        self._count = self._scalar("SELECT count(*) FROM requests")

    def _configure(self) -> None:
        mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise OutboxError(f"the outbox needs WAL mode, SQLite gave {mode!r}")
        # FULL: the WAL is synced at every commit, so a stored request survives a power cut.
        self._db.execute("PRAGMA synchronous=FULL")
        # Deleted rows are overwritten, not left in free pages: a staff login's PIN goes with
        # its request (see ``complete``).
        self._db.execute("PRAGMA secure_delete=ON")
        self._db.execute(f"PRAGMA busy_timeout={OUTBOX_BUSY_TIMEOUT_MS}")

    def _migrate(self, kiosk_id: str) -> None:
        # executescript commits by itself; CREATE ... IF NOT EXISTS makes it safe to repeat.
        self._db.executescript(_SCHEMA)
        with self._transaction():
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, SCHEMA_VERSION):
                raise OutboxError(f"outbox schema version {version} is newer than this firmware")
            self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            row = self._db.execute("SELECT value FROM meta WHERE key = 'kiosk_id'").fetchone()
            if row is None:
                self._db.execute("INSERT INTO meta VALUES ('kiosk_id', ?)", (kiosk_id,))
            elif row[0] != kiosk_id:
                # Its requests are signed as another kiosk: sending them as this one would fail.
                raise OutboxError(
                    f"the outbox at {self.path} belongs to kiosk {row[0]!r}, not {kiosk_id!r}"
                )
            self._db.execute("INSERT OR IGNORE INTO counters VALUES ('seq', 0)")

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)

    def _scalar(self, sql: str, parameters: tuple[object, ...] = ()) -> int:
        value = self._db.execute(sql, parameters).fetchone()[0]
        return int(value)

    # --- queries ---------------------------------------------------------------------------

    def __len__(self) -> int:
        return self._count

    @property
    def full(self) -> bool:
        return self._count >= self.capacity

    def last_seq(self) -> int:
        return self._scalar("SELECT value FROM counters WHERE name = 'seq'")

    def outstanding(self) -> list[StoredRequest]:
        """Every request still waiting for its result, oldest (lowest seq) first."""
        rows = self._db.execute(
            f"SELECT {_STORED_COLUMNS} FROM requests r {_STORED_JOINS} ORDER BY r.seq"
        ).fetchall()
        return [_stored(row) for row in rows]

    def payload(self, request_id: str) -> bytes | None:
        row = self._db.execute(
            "SELECT payload FROM requests WHERE request_id = ?", (request_id,)
        ).fetchone()
        return None if row is None else bytes(row[0])

    def history(self, limit: int = OUTBOX_HISTORY_MAX) -> list[Completed]:
        """Finished requests, newest first."""
        rows = self._db.execute(
            "SELECT h.request_id, h.seq, h.kind, h.created_at_ms, h.card_uid, h.amount_cents,"
            " h.status, h.error_code, h.new_balance_cents, h.completed_at_ms,"
            " o.seq IS NOT NULL, o.debt_cents FROM history h"
            " LEFT JOIN offline_sales o ON o.seq = h.seq ORDER BY h.seq DESC LIMIT ?",
            (limit,),
        ).fetchall()
        return [_completed(row) for row in rows]

    def voids(self) -> list[VoidRecord]:
        """(1.1) The voids still pending or in the history, oldest first."""
        rows = self._db.execute(
            "SELECT coalesce(r.request_id, h.request_id), v.original_request_id, h.status"
            " FROM voids v LEFT JOIN requests r ON r.seq = v.seq"
            " LEFT JOIN history h ON h.seq = v.seq"
            " WHERE r.seq IS NOT NULL OR h.seq IS NOT NULL ORDER BY v.seq"
        ).fetchall()
        return [VoidRecord(str(row[0]), str(row[1]), row[2]) for row in rows]

    # --- changes ---------------------------------------------------------------------------

    def store(
        self,
        *,
        kind: str,
        created_at_ms: int,
        card_uid: str,
        amount_cents: int,
        new_request_id: Callable[[], str],
        sign: Callable[[str, int], bytes],
        offline_config_version: int | None = None,
        original_request_id: str | None = None,
        login_staff_id: str | None = None,
    ) -> StoredRequest:
        """Allocate the next seq and a request id, sign, and store, in one durable transaction.

        ``sign(request_id, seq)`` returns the exact bytes to publish (now and on every resend).
        ``offline_config_version`` (1.1): the request is an offline sale, allowed by that
        config's policy; it is marked as one in the same transaction. ``original_request_id``
        (1.1): the request is a void of that order, noted in the same transaction.
        Raises OutboxFull at capacity; nothing is stored and no seq is consumed then.
        """
        if self.full:
            raise OutboxFull(f"the outbox holds {self._count} requests (capacity {self.capacity})")
        with self._transaction():
            seq = self.last_seq() + 1
            request_id = new_request_id()
            payload = sign(request_id, seq)
            self._db.execute("UPDATE counters SET value = ? WHERE name = 'seq'", (seq,))
            self._db.execute(
                "INSERT INTO requests (seq, request_id, kind, created_at_ms, card_uid,"
                " amount_cents, payload) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (seq, request_id, kind, created_at_ms, card_uid, amount_cents, payload),
            )
            if offline_config_version is not None:
                self._db.execute(
                    "INSERT INTO offline_sales (seq, config_version) VALUES (?, ?)",
                    (seq, offline_config_version),
                )
            if original_request_id is not None:
                self._db.execute(
                    "INSERT INTO voids (seq, original_request_id) VALUES (?, ?)",
                    (seq, original_request_id),
                )
            if login_staff_id is not None:
                self._db.execute(
                    "INSERT INTO staff_logins (seq, staff_id) VALUES (?, ?)",
                    (seq, login_staff_id),
                )
        self._count += 1
        return StoredRequest(
            request_id,
            seq,
            kind,
            created_at_ms,
            card_uid,
            amount_cents,
            payload,
            offline_config_version is not None,
            login_staff_id,
        )

    def complete(
        self,
        request_id: str,
        *,
        status: str,
        error_code: str | None,
        new_balance_cents: int | None,
        completed_at_ms: int,
        debt_cents: int | None = None,
    ) -> StoredRequest | None:
        """Remove a request whose verified result arrived; keep a line of history (an offline
        sale's with the ``debt_cents`` its result names).

        Returns the removed request, or None when it was not outstanding (a duplicate result).
        """
        with self._transaction():
            row = self._db.execute(
                f"SELECT {_STORED_COLUMNS} FROM requests r {_STORED_JOINS} WHERE r.request_id = ?",
                (request_id,),
            ).fetchone()
            if row is None:
                return None
            stored = _stored(row)
            self._db.execute("DELETE FROM requests WHERE request_id = ?", (request_id,))
            self._db.execute(
                "INSERT OR REPLACE INTO history VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    stored.seq,
                    stored.request_id,
                    stored.kind,
                    stored.created_at_ms,
                    stored.card_uid,
                    stored.amount_cents,
                    status,
                    error_code,
                    new_balance_cents,
                    completed_at_ms,
                ),
            )
            if stored.offline:
                self._db.execute(
                    "UPDATE offline_sales SET debt_cents = ? WHERE seq = ?",
                    (debt_cents, stored.seq),
                )
            self._db.execute(
                "DELETE FROM history WHERE seq <= (SELECT seq FROM history"
                " ORDER BY seq DESC LIMIT 1 OFFSET ?)",
                (OUTBOX_HISTORY_MAX,),
            )
            # An offline sale's mark goes with its last line of history; one still waiting for
            # its result (an older seq answered late) keeps it.
            self._db.execute(
                "DELETE FROM offline_sales WHERE seq < (SELECT min(seq) FROM history)"
                " AND NOT EXISTS (SELECT 1 FROM requests r WHERE r.seq = offline_sales.seq)"
            )
            self._db.execute(
                "DELETE FROM voids WHERE seq < (SELECT min(seq) FROM history)"
                " AND NOT EXISTS (SELECT 1 FROM requests r WHERE r.seq = voids.seq)"
            )
            self._db.execute("DELETE FROM staff_logins WHERE seq = ?", (stored.seq,))
        self._count -= 1
        if stored.login_staff_id is not None:
            # The PIN was in the deleted payload: overwritten in the WAL's newest page versions
            # (secure_delete); copy them into the main file and empty the WAL, so no older
            # frame holding it remains either.
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return stored

    # --- (1.1) staff logged in at this kiosk ---------------------------------------------------

    def staff_sessions(self) -> list[StaffSession]:
        """Who is logged in, oldest login first."""
        rows = self._db.execute(
            "SELECT staff_id, card_uid, logged_in_at_ms FROM staff_sessions"
            " ORDER BY logged_in_at_ms, staff_id"
        ).fetchall()
        return [StaffSession(str(row[0]), str(row[1]), int(row[2])) for row in rows]

    def keep_staff_session(self, session: StaffSession) -> None:
        """Record (or renew) a login the cloud approved, durably."""
        with self._transaction():
            self._db.execute(
                "INSERT OR REPLACE INTO staff_sessions (staff_id, card_uid, logged_in_at_ms)"
                " VALUES (?, ?, ?)",
                (session.staff_id, session.card_uid, session.logged_in_at_ms),
            )

    def drop_staff_session(self, staff_id: str) -> None:
        """End a login (logout, 12 hours); the active staff member too when it was that one."""
        with self._transaction():
            self._db.execute("DELETE FROM staff_sessions WHERE staff_id = ?", (staff_id,))
            self._db.execute(
                "DELETE FROM meta WHERE key = 'active_staff_id' AND value = ?", (staff_id,)
            )

    def active_staff_id(self) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = 'active_staff_id'").fetchone()
        return None if row is None else str(row[0])

    def set_active_staff_id(self, staff_id: str | None) -> None:
        with self._transaction():
            if staff_id is None:
                self._db.execute("DELETE FROM meta WHERE key = 'active_staff_id'")
            else:
                self._db.execute(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES ('active_staff_id', ?)",
                    (staff_id,),
                )

    # --- the cloud's config and deny-list ------------------------------------------------------

    def cloud_message(self, kind: str) -> CloudMessage | None:
        """The ``config`` or ``denylist`` message last kept by ``keep_cloud_message``."""
        assert kind in CLOUD_MESSAGE_KINDS, kind
        row = self._db.execute(
            "SELECT kind, version, payload, applied_at_ms FROM cloud_messages WHERE kind = ?",
            (kind,),
        ).fetchone()
        return None if row is None else CloudMessage(row[0], row[1], bytes(row[2]), row[3])

    def keep_cloud_message(self, message: CloudMessage) -> None:
        """Replace the kept message of its kind, durably (committed before the kiosk applies it)."""
        assert message.kind in CLOUD_MESSAGE_KINDS, message.kind
        assert message.version >= 1
        with self._transaction():
            self._db.execute(
                "INSERT OR REPLACE INTO cloud_messages (kind, version, payload, applied_at_ms)"
                " VALUES (?, ?, ?, ?)",
                (message.kind, message.version, message.payload, message.applied_at_ms),
            )

    def forget_cloud_message(self, kind: str) -> None:
        """Drop the kept message of ``kind`` (it no longer verifies, e.g. the cloud key changed)."""
        assert kind in CLOUD_MESSAGE_KINDS, kind
        with self._transaction():
            self._db.execute("DELETE FROM cloud_messages WHERE kind = ?", (kind,))

    def close(self) -> None:
        self._db.close()


_STORED_COLUMNS: Final = (
    "r.request_id, r.seq, r.kind, r.created_at_ms, r.card_uid, r.amount_cents, r.payload,"
    " o.seq IS NOT NULL, s.staff_id"
)
_STORED_JOINS: Final = (
    "LEFT JOIN offline_sales o ON o.seq = r.seq LEFT JOIN staff_logins s ON s.seq = r.seq"
)


def _completed(row: tuple[Any, ...]) -> Completed:
    (request_id, seq, kind, created_at_ms, card_uid, amount_cents) = row[:6]
    status, error_code, new_balance_cents, completed_at_ms, offline, debt_cents = row[6:]
    return Completed(
        request_id,
        seq,
        kind,
        created_at_ms,
        card_uid,
        amount_cents,
        status,
        error_code,
        new_balance_cents,
        completed_at_ms,
        bool(offline),
        debt_cents,
    )


def _stored(row: tuple[Any, ...]) -> StoredRequest:
    request_id, seq, kind, created_at_ms, card_uid, amount_cents, payload, offline, staff = row
    return StoredRequest(
        request_id,
        seq,
        kind,
        created_at_ms,
        card_uid,
        amount_cents,
        bytes(payload),
        bool(offline),
        None if staff is None else str(staff),
    )


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on an exception."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind: object, error: object, traceback: object) -> None:
        if kind is None:
            self._db.execute("COMMIT")
        else:
            self._db.execute("ROLLBACK")
