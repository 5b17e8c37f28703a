"""Every SQL statement of the seed's "Database Verification" and monitoring sections, verbatim.

Copied from the seed guide (shared/seed/000_4aab968e522202be.txt) character for character, except
trailing blanks at line ends (invisible, and refused by our linter). They must run unchanged, as
the owner and as the service role, and return rows after traffic.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
import sqlalchemy

from cloud.ledger import Ledger
from protocol.errors import ErrorCode
from protocol.models import ScanRecord
from tests.ledger.helpers import bar_order, recharge

# --- "Post-Deployment Verification" > "Database Verification" ---------------------------------
CHECK_TABLES = """-- Check if new tables exist
SELECT table_name FROM information_schema.tables
WHERE table_schema = 'public'
AND table_name IN ('idempotency_keys', 'app_transaction_log', 'nfc_scan_log');"""

CHECK_PROCEDURES = """-- Check if stored procedures exist
SELECT routine_name FROM information_schema.routines
WHERE routine_schema = 'public'
AND routine_name LIKE 'sp_process_%';"""

CHECK_COLUMNS = """-- Verify new columns exist
SELECT column_name FROM information_schema.columns
WHERE table_name = 'recharges'
AND column_name IN ('client_request_id', 'staff_id', 'checkpoint_id');"""

# --- "Monitoring and Logging" > "Database Monitoring" -----------------------------------------
MONITOR_TRANSACTION_LOG = """-- Monitor transaction log
SELECT * FROM app_transaction_log
ORDER BY timestamp DESC
LIMIT 10;"""

CHECK_IDEMPOTENCY_KEYS = """-- Check idempotency key usage
SELECT source_function, status, COUNT(*)
FROM idempotency_keys
GROUP BY source_function, status;"""

MONITOR_NFC_SCANS = """-- Monitor NFC scan activity
SELECT scan_status, COUNT(*)
FROM nfc_scan_log
WHERE scan_timestamp > NOW() - INTERVAL '1 hour'
GROUP BY scan_status;"""

# --- "Performance Monitoring" > "Monitoring Queries" ------------------------------------------
AVERAGE_PROCESSING_TIMES = """-- Average processing times by function
SELECT
    edge_function_name,
    AVG(EXTRACT(EPOCH FROM (updated_at - created_at))) as avg_processing_seconds,
    COUNT(*) as total_requests
FROM app_transaction_log
WHERE timestamp > NOW() - INTERVAL '1 hour'
GROUP BY edge_function_name;"""

ERROR_RATE_ANALYSIS = """-- Error rate analysis
SELECT
    status,
    COUNT(*) as count,
    ROUND(COUNT(*) * 100.0 / SUM(COUNT(*)) OVER (), 2) as percentage
FROM app_transaction_log
WHERE timestamp > NOW() - INTERVAL '1 hour'
GROUP BY status;"""

IDEMPOTENCY_PATTERNS = """-- Idempotency key usage patterns
SELECT
    source_function,
    status,
    COUNT(*) as requests,
    AVG(EXTRACT(EPOCH FROM (updated_at - created_at))) as avg_processing_time
FROM idempotency_keys
WHERE created_at > NOW() - INTERVAL '1 hour'
GROUP BY source_function, status;"""

# --- "Troubleshooting" > "Idempotency Key Conflicts" (the read-only and cleanup parts) --------
CLEANUP = """-- Clear expired idempotency keys
SELECT cleanup_expired_idempotency_keys();"""

CURRENT_KEYS = """-- Check current idempotency keys
SELECT * FROM idempotency_keys WHERE expires_at > NOW();"""

MONITORING = [
    MONITOR_TRANSACTION_LOG,
    CHECK_IDEMPOTENCY_KEYS,
    MONITOR_NFC_SCANS,
    AVERAGE_PROCESSING_TIMES,
    ERROR_RATE_ANALYSIS,
    IDEMPOTENCY_PATTERNS,
    CURRENT_KEYS,
]


def _run(url: str, sql: str) -> list[tuple[Any, ...]]:
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.begin() as connection:
            # The driver's own cursor without parameters: the text reaches the server exactly as
            # written (no bind-parameter parsing, no %-formatting), as psql would send it.
            cursor = connection.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
            cursor.execute(sql)
            return [tuple(row) for row in cursor.fetchall()]
    finally:
        engine.dispose()


def _traffic(ledger: Ledger) -> None:
    card = "045EED01"
    ledger.apply(recharge(card, 5_000))
    ledger.apply_batch([bar_order(card, ("Beer", 1, 500)), bar_order(card, ("Gin", 1, 99_999))])
    ledger.apply(bar_order("04FFFFFF"))
    order = bar_order(card)
    ledger.apply(order)
    ledger.apply(order)  # a replay
    ledger.record_rejection(
        request_id="seed-rejected",
        kiosk_id="bar-1",
        seq=9,
        card_uid=card,
        payload_sha256="ab" * 32,
        error_code=ErrorCode.STALE_REQUEST,
        message="stale",
    )
    ledger.process_stripe_recharge(
        event_id="evt_seed",
        session_id="cs_seed",
        card_uid=card,
        amount_cents=1_000,
        currency="EUR",
        payment_intent_id="pi_seed",
        topup_id=None,
    )
    ledger.record_scan(ScanRecord("bar-1", int(time.time() * 1000), card, "ok", "reader", 8))


@pytest.mark.parametrize("role", ["owner", "service"])
def test_seed_verification_finds_tables_procedures_and_columns(
    role: str, database_url: str, service_database_url: str
) -> None:
    url = database_url if role == "owner" else service_database_url
    assert sorted(r[0] for r in _run(url, CHECK_TABLES)) == [
        "app_transaction_log",
        "idempotency_keys",
        "nfc_scan_log",
    ]
    assert sorted(r[0] for r in _run(url, CHECK_PROCEDURES)) == [
        "sp_process_bar_order",
        "sp_process_batch",
        "sp_process_checkpoint_recharge",
        "sp_process_stripe_dispute",
        "sp_process_stripe_recharge",
        "sp_process_stripe_refund",
    ]
    assert sorted(r[0] for r in _run(url, CHECK_COLUMNS)) == [
        "checkpoint_id",
        "client_request_id",
        "staff_id",
    ]


@pytest.mark.parametrize("role", ["owner", "service"])
def test_seed_monitoring_queries_return_rows_after_traffic(
    role: str, ledger: Ledger, database_url: str, service_database_url: str
) -> None:
    url = database_url if role == "owner" else service_database_url
    for sql in MONITORING:
        assert _run(url, sql) == [], f"expected no rows before traffic:\n{sql}"
    _traffic(ledger)
    for sql in MONITORING:
        assert _run(url, sql), f"no rows after traffic:\n{sql}"
    by_function = {row[0]: row for row in _run(url, AVERAGE_PROCESSING_TIMES)}
    assert set(by_function) >= {"process-bar-order", "process-checkpoint-recharge"}
    assert {"stripe-webhook"} <= set(by_function)
    # Processing time means something: clock_timestamp() at start and end, never negative.
    assert all(float(row[1]) >= 0 for row in by_function.values())
    statuses = {row[0] for row in _run(url, ERROR_RATE_ANALYSIS)}
    assert statuses >= {"approved", "declined", "rejected", "replayed"}
    assert sum(float(row[2]) for row in _run(url, ERROR_RATE_ANALYSIS)) == pytest.approx(
        100, abs=0.1
    )
    # The cleanup runs unchanged and returns a count (nothing has expired yet).
    assert _run(url, CLEANUP) == [(0,)]


def test_ledger_monitoring_methods_return_the_seed_rows(ledger: Ledger) -> None:
    _traffic(ledger)
    assert {row["edge_function_name"] for row in ledger.processing_times()} >= {
        "process-bar-order",
        "process-checkpoint-recharge",
        "stripe-webhook",
    }
    rates = ledger.error_rates()
    assert all(isinstance(row["percentage"], float) for row in rates)
    assert {row["source_function"] for row in ledger.idempotency_usage()} >= {
        "process-bar-order",
        "stripe-webhook",
    }
    assert ledger.nfc_scan_activity() == [{"scan_status": "ok", "count": 1}]
    assert len(ledger.transaction_log()) == 8  # every processing of _traffic, replay included
