"""Revision 0009 changes how the procedures are built, not what they do: the same calls on a
database at 0008 and on one at 0009 give the same outcomes and leave the same rows.

Every entry point both revisions have is called with the same arguments, in the same order, on
both databases (requests in batches and one at a time, duplicates, replays, conflicts, deposits
and returns, every decline, rejections, blocks, the Stripe paths, dead letters, status, scans).
Then every table is compared, with what cannot be equal taken out: timestamps, and random ids
(uuids are renamed by order of first appearance, the same order on both sides when the
behaviour is the same).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import sqlalchemy

from cloud import database
from cloud.ledger_records import LedgerRequest, request_document
from protocol.models import BarItem
from tests.ledger.helpers import PUBLIC_KEY, bar_order, recharge, same_id_other_payload

UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
# Keys of stored JSON that hold a time.
TIME_KEYS = {"processed_at_ms"}
CARD, OTHER, POOR, BLOCKED, NEW = "04A0A0A0", "04B0B0B0", "04C0C0C0", "04D0D0D0", "04E0E0E0"
CUP = BarItem("Cup", 2, 200, sku="cup", is_deposit=True)
BACK = BarItem("Cup", 1, 200, sku="cup", is_deposit=True, is_return=True)


def _batch(*items: LedgerRequest) -> tuple[str, dict[str, Any]]:
    requests = json.dumps([request_document(item) for item in items])
    return "SELECT sp_process_batch(CAST(:r AS jsonb), 150000, 100000, 2000)", {"r": requests}


def _seed_bar_order(item: LedgerRequest) -> tuple[str, dict[str, Any]]:
    document = request_document(item)
    return (
        "SELECT sp_process_bar_order(:request_id, :card_uid, CAST(:items AS jsonb), :total_cents,"
        " :payload_sha256, :kiosk_id, :seq, :staff_id, :source, :trace_id, 150000, 2000)",
        {**document, "items": json.dumps(document["items"])},
    )


def _seed_recharge(item: LedgerRequest) -> tuple[str, dict[str, Any]]:
    document = request_document(item)
    return (
        "SELECT sp_process_checkpoint_recharge(:request_id, :card_uid, :amount_cents,"
        " :payment_method, :staff_id, :payload_sha256, :kiosk_id, :seq, :checkpoint_id,"
        " :source, :trace_id)",
        {"checkpoint_id": None, **document},
    )


def _calls() -> list[tuple[str, dict[str, Any]]]:
    replayed = bar_order(CARD, ("Beer", 2, 450), kiosk_id="bar-1", seq=3)
    topups = [recharge(card, 5_000, seq=n) for n, card in enumerate((CARD, OTHER, BLOCKED), 1)]
    calls = [
        ("SELECT sp_add_kiosk('bar-1', :k, 'bar')", {"k": PUBLIC_KEY}),
        ("SELECT sp_add_kiosk('checkpoint-1', :k, 'checkpoint')", {"k": PUBLIC_KEY}),
        ("SELECT sp_set_kiosk_checkpoint('checkpoint-1', 'gate-a')", {}),
        _batch(*topups, recharge(POOR, 100, method="card", seq=4)),
        ("SELECT sp_block_card(:c, 'lost at the gate')", {"c": BLOCKED}),
        # a batch: plain, cups, returns, duplicates inside it, every decline
        _batch(
            replayed,
            replayed,
            same_id_other_payload(replayed),
            bar_order(OTHER, ("Gin", 1, 800), CUP, seq=4),
            bar_order(OTHER, BACK, seq=5),
            bar_order(OTHER, BarItem("Cup", 50, 200, is_deposit=True, is_return=True), seq=6),
            bar_order(POOR, ("Beer", 1, 450), seq=7),
            bar_order(BLOCKED, seq=8),
            bar_order(NEW, seq=9),
            recharge(NEW, 2_000, seq=5),
            recharge(CARD, 100_000, seq=6),
            recharge(OTHER, 100_000, seq=7),
            bar_order(NEW, ("Water", 1, 250), seq=10),
        ),
        _batch(replayed, recharge(CARD, 300, method="card", checkpoint_id="gate-a", seq=8)),
        _seed_bar_order(bar_order(CARD, ("Wine", 1, 700), CUP, kiosk_id="bar-1", seq=11)),
        _seed_bar_order(replayed),
        _seed_recharge(recharge(OTHER, 700, seq=9)),
        _seed_recharge(recharge("04F0F0F0", 100, seq=10, source="http")),
        (
            "SELECT sp_record_rejection('rej-1', 'bar-1', 12, :c, :s, 'STALE_REQUEST', 'old',"
            " 'mqtt', 'bar_order')",
            {"c": CARD, "s": "ab" * 32},
        ),
        (
            "SELECT sp_record_rejection('rej-1', 'bar-1', 12, :c, :s, 'STALE_REQUEST', 'old')",
            {"c": CARD, "s": "ab" * 32},
        ),
        (
            "SELECT sp_record_rejection('rej-1', 'bar-1', 12, :c, :s, 'STALE_REQUEST', 'old')",
            {"c": CARD, "s": "cd" * 32},
        ),
        (
            "SELECT sp_record_rejection(:r, 'bar-1', NULL, NULL, :s, 'INVALID_REQUEST', :m)",
            {"r": replayed.request.request_id, "s": replayed.payload_sha256, "m": "x" * 300},
        ),
        ("SELECT sp_unblock_card(:c)", {"c": BLOCKED}),
        ("SELECT sp_block_card(:c, :r)", {"c": POOR, "r": "r" * 300}),
        # Stripe: ours (credited, declined for a blocked card, an anomaly), replays
        ("SELECT sp_create_topup('tu-1', :c, 2000, 'eur')", {"c": OTHER}),
        ("SELECT sp_attach_checkout_session('tu-1', 'cs_1')", {}),
        ("SELECT sp_create_topup('tu-2', :c, 1500, 'EUR')", {"c": POOR}),
        ("SELECT sp_create_topup('tu-3', :c, 1000, 'EUR')", {"c": CARD}),
        (
            "SELECT sp_handle_stripe_checkout('evt_1', 'cs_1', 'tu-1', :c, 2000, 'eur', 'pi_1',"
            " 'EUR', 150000)",
            {"c": OTHER},
        ),
        (
            "SELECT sp_handle_stripe_checkout('evt_1b', 'cs_1', 'tu-1', :c, 2000, 'eur', 'pi_1',"
            " 'EUR', 150000)",
            {"c": OTHER},
        ),
        (
            "SELECT sp_handle_stripe_checkout('evt_2', 'cs_2', 'tu-2', :c, 1500, 'EUR', 'pi_2')",
            {"c": POOR},
        ),
        (
            "SELECT sp_handle_stripe_checkout('evt_3', 'cs_3', 'tu-3', :c, 999, 'EUR', 'pi_3')",
            {"c": CARD},
        ),
        ("SELECT sp_handle_stripe_checkout('evt_4', 'cs_4', NULL, NULL, 999, 'EUR', 'pi_4')", {}),
        (
            "SELECT sp_process_stripe_recharge('evt_5', 'cs_5', :c, 1200, 'EUR', 'pi_5', NULL,"
            " 'EUR', 150000)",
            {"c": NEW},
        ),
        ("SELECT sp_process_stripe_recharge('evt_6', 'cs_6', :c, 1200, 'USD', 'pi_6')", {"c": NEW}),
        (
            "SELECT sp_process_stripe_recharge('evt_5b', 'cs_5', :c, 1200, 'EUR', 'pi_5')",
            {"c": NEW},
        ),
        # refunds: partial, shortfall, already applied, unknown intent with and without metadata
        ("SELECT sp_handle_stripe_refund('evt_r1', 'pi_5', NULL, 500)", {}),
        ("SELECT sp_handle_stripe_refund('evt_r1b', 'pi_5', NULL, 500)", {}),
        (
            "SELECT sp_process_batch(CAST(:r AS jsonb))",
            {"r": _batch(bar_order(NEW, ("Beer", 1, 2_400), seq=13))[1]["r"]},
        ),
        ("SELECT sp_handle_stripe_refund('evt_r2', 'pi_5', NULL, 1200)", {}),
        ("SELECT sp_handle_stripe_refund('evt_r3', 'pi_unknown', :c, 100)", {"c": CARD}),
        ("SELECT sp_handle_stripe_refund('evt_r3', 'pi_unknown', :c, 100)", {"c": CARD}),
        ("SELECT sp_handle_stripe_refund('evt_r4', 'pi_unknown', '04FFFFFF', 100)", {}),
        ("SELECT sp_handle_stripe_refund('evt_r5', 'pi_unknown', 'nope', 100)", {}),
        # disputes: matched, metadata, unknown; closed lost (take back + loss), won
        ("SELECT sp_handle_stripe_dispute('evt_d1', 'pi_1', NULL)", {}),
        ("SELECT sp_handle_stripe_dispute('evt_d1', 'pi_1', NULL)", {}),
        ("SELECT sp_handle_stripe_dispute('evt_d2', 'pi_none', :c)", {"c": POOR}),
        ("SELECT sp_handle_stripe_dispute('evt_d3', 'pi_none', NULL)", {}),
        ("SELECT sp_handle_stripe_dispute_closed('evt_c1', 'dp_1', 'pi_1', 'lost', 2000)", {}),
        ("SELECT sp_handle_stripe_dispute_closed('evt_c1', 'dp_1', 'pi_1', 'lost', 2000)", {}),
        ("SELECT sp_handle_stripe_dispute_closed('evt_c2', 'dp_2', 'pi_5', 'won', 100)", {}),
        ("SELECT sp_handle_stripe_dispute_closed('evt_c3', 'dp_3', 'pi_x', 'lost', 100)", {}),
        ("SELECT sp_record_stripe_note('evt_n1', 'ignored', :r)", {"r": "n" * 400}),
        ("SELECT sp_record_stripe_note('evt_n2', 'anomaly', 'odd')", {}),
        ("SELECT sp_expire_checkout_session('cs_9', 'evt_e1')", {}),
        ("SELECT sp_mark_topup_failed('cs_9', 'evt_e2')", {}),
        ("SELECT count(*) FROM sp_claim_topup_refunds(10, NULL, false)", {}),
        ("SELECT sp_finish_topup_refund('tu-2', 'retry', NULL, :e)", {"e": "e" * 600}),
        ("SELECT count(*) FROM sp_claim_topup_refunds(10, NULL, false)", {}),
        ("SELECT sp_finish_topup_refund('tu-2', 'succeeded', :r)", {"r": "re_" + "1" * 300}),
        # dead letters, kiosk status, scans
        (
            "SELECT sp_record_dead_letters(CAST(:l AS jsonb), 2)",
            {
                "l": json.dumps(
                    [
                        {
                            "topic": "t" * 600,
                            "payload_hex": "ab" * 9000,
                            "payload_length": 9000,
                            "payload_sha256": "cd" * 32,
                            "error_code": "E" * 70,
                            "reason": "r" * 1100,
                            "kiosk_id": "k" * 70,
                        }
                    ]
                    * 3
                )
            },
        ),
        (
            "SELECT sp_record_dead_letter('junk', :p, 'INVALID_REQUEST', 'bad', NULL)",
            {"p": b"j" * 9000},
        ),
        ("SELECT sp_record_kiosk_status('bar-1', 'online', 1000, :f, 2000)", {"f": "f" * 70}),
        (
            "SELECT sp_record_scans(CAST(:s AS jsonb))",
            {
                "s": json.dumps(
                    [
                        {
                            "kiosk_id": "bar-1",
                            "card_uid": CARD,
                            "status": "ok",
                            "scanned_at_ms": 1000,
                            "reader": "x" * 70,
                            "duration_ms": 5,
                        }
                    ]
                )
            },
        ),
        ("SELECT cleanup_expired_dead_letters()", {}),
        ("SELECT sp_cleanup_topups(1)", {}),
        ("SELECT array_agg(x) FROM ledger_check() x", {}),
        ("SELECT array_agg(x) FROM ledger_check_accounts() x", {}),
    ]
    return calls


class _Renamer:
    """Times dropped; uuids renamed by order of first appearance while learning (in the outcomes,
    which name every transaction and order), and any other uuid (a recharge row's own id) as
    one name: its order among random ids is random."""

    def __init__(self) -> None:
        self.names: dict[str, str] = {}
        self.learning = True

    def _uuid(self, match: re.Match[str]) -> str:
        if self.learning:
            return self.names.setdefault(match.group(), f"uuid-{len(self.names)}")
        return self.names.get(match.group(), "uuid-?")

    def value(self, value: object) -> object:
        if isinstance(value, dict):
            return {k: self.value(v) for k, v in sorted(value.items()) if k not in TIME_KEYS}
        if isinstance(value, list | tuple):
            return [self.value(v) for v in value]
        if isinstance(value, bytes | memoryview):
            return bytes(value).hex()
        if value is None or isinstance(value, bool | int | float):
            return value
        return UUID.sub(self._uuid, str(value))

    def rows(self, rows: list[list[object]]) -> list[object]:
        self.learning = False
        return sorted((self.value(row) for row in rows), key=lambda row: json.dumps(row))


def _tables(connection: sqlalchemy.Connection) -> dict[str, list[list[object]]]:
    columns = connection.execute(
        sqlalchemy.text(
            "SELECT c.table_name, array_agg(c.column_name::text ORDER BY c.ordinal_position)"
            " FROM information_schema.columns c JOIN information_schema.tables t"
            " USING (table_schema, table_name)"
            " WHERE c.table_schema = 'public' AND t.table_type = 'BASE TABLE'"
            " AND c.table_name <> 'alembic_version'"
            " AND c.data_type NOT IN ('timestamp with time zone', 'interval')"
            " GROUP BY c.table_name ORDER BY c.table_name"
        )
    ).all()
    tables = {}
    for table, names in columns:
        listed = ", ".join(f'"{name}"' for name in names)
        rows = connection.execute(
            sqlalchemy.text(f'SELECT {listed} FROM "{table}" ORDER BY {listed}')
        ).all()
        tables[table] = [list(row) for row in rows]
    return tables


def test_the_same_calls_give_the_same_outcomes_and_rows(
    make_database: Callable[..., str],
) -> None:
    urls = {"0008": make_database(), "0009": make_database()}
    engines = {}
    for revision, url in urls.items():
        database.upgrade(url, revision)
        engines[revision] = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    results: dict[str, list[object]] = {"0008": [], "0009": []}
    calls = _calls()
    try:
        for sql, params in calls:
            for revision, engine in engines.items():
                with engine.begin() as connection:
                    results[revision].append(
                        connection.execute(sqlalchemy.text(sql), params).scalar()
                    )
        tables = {}
        for revision, engine in engines.items():
            with engine.begin() as connection:
                tables[revision] = _tables(connection)
    finally:
        for engine in engines.values():
            engine.dispose()
    for number, (sql, _) in enumerate(calls):
        old, new = (_Renamer().value(results[revision][: number + 1]) for revision in urls)
        assert old == new, (number, sql)
    for revision in urls:
        renamer = _Renamer()
        renamer.value(results[revision])
        tables[revision] = {name: renamer.rows(rows) for name, rows in tables[revision].items()}
    assert tables["0008"].keys() == tables["0009"].keys()
    for table in tables["0008"]:
        assert tables["0008"][table] == tables["0009"][table], table
    # Something was exercised, and left a consistent ledger on both sides.
    assert results["0009"][-2:] == [None, None]  # ledger_check(), ledger_check_accounts()
    assert len(tables["0009"]["postings"]) > 30
