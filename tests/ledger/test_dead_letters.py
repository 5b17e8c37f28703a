"""Bounded dead letters (issue 11 item 7, DESIGN.md "Database"): at most 8192 bytes of a raw
message plus its full length and SHA-256, at most DEAD_LETTERS_PER_KIOSK_MINUTE_MAX stored per
kiosk per minute (beyond it only a counter grows), removed after 30 days by `cleanup`.

Before revision 0005 every junk message was stored with up to 1 MiB of raw bytes, unbounded in
number and forever. The consumer's side (one call per batch, over MQTT) is in
tests/consumer/test_consumer_flow.py."""

from __future__ import annotations

import hashlib
import os

import pytest
from sqlalchemy import exc as sa_exc

from cloud.ledger import Ledger
from cloud.ledger_records import DEAD_LETTER_BYTES_MAX, DEAD_LETTERS_PER_KIOSK_MINUTE_MAX
from protocol.errors import ErrorCode
from tests.ledger.helpers import execute, scalar
from tests.ledger.test_cli import cli

MIB = 1 << 20


class Letter:
    def __init__(self, payload: bytes, kiosk_id: str | None) -> None:
        self.topic = f"festival/v1/kiosks/{kiosk_id}/tx" if kiosk_id else "festival/junk"
        self.payload = payload
        self.error_code = ErrorCode.INVALID_REQUEST
        self.reason = "not a JWS"
        self.kiosk_id = kiosk_id


def stored(url: str, kiosk_id: str | None) -> list[tuple[bytes, int, bytes]]:
    rows = execute(
        url,
        "SELECT payload, payload_length, payload_sha256 FROM dead_letters"
        " WHERE kiosk_id IS NOT DISTINCT FROM :kiosk_id ORDER BY id",
        kiosk_id=kiosk_id,
    )
    return [(bytes(payload), int(length), bytes(sha)) for payload, length, sha in rows]


def test_a_1_mib_junk_message_keeps_8192_bytes_its_length_and_sha256(
    ledger: Ledger, database_url: str
) -> None:
    junk = os.urandom(MIB)
    assert ledger.record_dead_letter(
        topic="festival/v1/kiosks/bar-1/tx",
        payload=junk,
        error_code=ErrorCode.INVALID_REQUEST,
        reason="not a JWS",
        kiosk_id="bar-1",
    )
    [(payload, length, sha)] = stored(database_url, "bar-1")
    assert payload == junk[:DEAD_LETTER_BYTES_MAX] and len(payload) == 8192
    assert length == MIB
    assert sha == hashlib.sha256(junk).digest()


def test_revision_0002s_entry_point_is_bounded_the_same_way(
    ledger: Ledger, service_database_url: str, database_url: str
) -> None:
    junk = b"\x00" * MIB
    letter_id = scalar(
        service_database_url,
        "SELECT sp_record_dead_letter('festival/v1/kiosks/bar-2/tx', :payload, 'INVALID_REQUEST',"
        " 'not a JWS', 'bar-2')",
        payload=junk,
    )
    assert letter_id is not None
    assert stored(database_url, "bar-2") == [(junk[:8192], MIB, hashlib.sha256(junk).digest())]


def test_nobody_can_store_more_than_8192_bytes_of_a_message(database_url: str) -> None:
    with pytest.raises(sa_exc.IntegrityError, match="dead_letters_payload_bounded"):
        execute(
            database_url,
            "INSERT INTO dead_letters (topic, payload, payload_length, payload_sha256,"
            " error_code, reason) VALUES ('t', :payload, 8193, sha256(''), 'X', 'r')",
            payload=b"x" * 8193,
        )


def test_a_flood_from_one_kiosk_stores_the_bound_and_counts_the_rest(
    ledger: Ledger, database_url: str
) -> None:
    bound = DEAD_LETTERS_PER_KIOSK_MINUTE_MAX
    flood = [Letter(f"junk {number}".encode(), "bar-1") for number in range(bound + 25)]
    kept = ledger.record_dead_letters([*flood, Letter(b"other", "bar-2"), Letter(b"?", None)])
    # One transaction, one minute: exactly the bound is stored, in arrival order.
    assert kept == [True] * bound + [False] * 25 + [True, True]
    assert [payload for payload, _, _ in stored(database_url, "bar-1")] == [
        f"junk {number}".encode() for number in range(bound)
    ]
    counters = execute(
        database_url,
        "SELECT kiosk_id, received_count, stored_count FROM dead_letter_counts ORDER BY kiosk_id",
    )
    assert counters == [("bar-1", bound + 25, bound), ("bar-2", 1, 1), (None, 1, 1)]
    # The next letter of that kiosk this minute is only counted too; other kiosks are not.
    assert ledger.record_dead_letters([Letter(b"more", "bar-1"), Letter(b"more", "bar-2")]) == [
        False,
        True,
    ]
    assert scalar(database_url, "SELECT count(*) FROM dead_letters WHERE kiosk_id = 'bar-1'") == (
        bound
    )


def test_cleanup_removes_dead_letters_after_30_days(ledger: Ledger, database_url: str) -> None:
    ledger.record_dead_letters([Letter(b"old", "bar-1"), Letter(b"old", "bar-2")])
    execute(
        database_url,
        "UPDATE dead_letters SET received_at = now() - interval '31 days';"
        " UPDATE dead_letter_counts SET minute = minute - interval '31 days'",
    )
    ledger.record_dead_letters([Letter(b"recent", "bar-1")])
    cleaned = cli(database_url, "cleanup")
    assert cleaned.returncode == 0, cleaned.stderr
    assert cleaned.stdout.splitlines() == ["0", "dead letters older than 30 days removed: 2"]
    assert [payload for payload, _, _ in stored(database_url, "bar-1")] == [b"recent"]
    assert scalar(database_url, "SELECT count(*) FROM dead_letter_counts") == 1
    assert ledger.cleanup_expired_dead_letters() == 0
    # The seed's cleanup keeps its meaning and its return type.
    assert scalar(database_url, "SELECT pg_typeof(cleanup_expired_idempotency_keys())::text") == (
        "integer"
    )
