"""The migrations and the procedures on PostgreSQL 15 (Debian's), which production may run.

The rest of the suite runs on the embedded PostgreSQL 18. This module starts a throwaway Debian
PostgreSQL 15 server (package postgresql-15) as a child process and stops it by its pid.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg2
import pytest

from cloud import database
from cloud.database import make_engine, service_url
from cloud.ledger import Ledger
from cloud.sandbox import free_port, wait_for_port
from protocol.errors import ErrorCode, Status
from protocol.models import BarItem, ScanRecord
from tests.ledger import test_seed_sql as seed
from tests.ledger.helpers import PUBLIC_KEY, bar_order, recharge, same_id_other_payload
from tests.waiting import wait_until

PG15_BIN = Path("/usr/lib/postgresql/15/bin")
START_TIMEOUT_S = 30.0


@pytest.fixture(scope="module")
def postgres15_url() -> Iterator[str]:
    # ./run installs it; a machine without it fails here rather than skipping silently.
    assert (PG15_BIN / "postgres").exists(), (
        "PostgreSQL 15 is not installed: apt-get install -y postgresql-15 (./run does)"
    )
    root = Path(tempfile.mkdtemp(prefix="festival-pg15-"))
    root.chmod(0o755)
    run_as: dict[str, Any] = {}
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        entry = pwd.getpwnam("postgres")
        os.chown(root, entry.pw_uid, entry.pw_gid)
        run_as = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
    data = root / "data"
    subprocess.run(
        [str(PG15_BIN / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "--no-sync"],
        check=True,
        capture_output=True,
        **run_as,
    )
    port = free_port()
    server = subprocess.Popen(
        [
            *(str(PG15_BIN / "postgres"), "-D", str(data), "-p", str(port), "-k", str(root)),
            *("-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        **run_as,
    )
    try:
        wait_for_port(port, START_TIMEOUT_S, None)

        def accepts_connections() -> bool:  # accepting TCP is not yet accepting connections
            try:
                psycopg2.connect(host="127.0.0.1", port=port, user="postgres").close()
            except psycopg2.OperationalError:
                return False
            return True

        wait_until(accepts_connections, timeout_s=START_TIMEOUT_S, what="PostgreSQL 15")
        connection = psycopg2.connect(host="127.0.0.1", port=port, user="postgres")
        connection.autocommit = True
        connection.cursor().execute("CREATE DATABASE festival15")
        connection.close()
        yield f"postgresql://postgres@127.0.0.1:{port}/festival15"
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=15)
        shutil.rmtree(root, ignore_errors=True)


def test_ledger_on_postgresql_15(postgres15_url: str) -> None:
    url = postgres15_url
    connection = psycopg2.connect(url)
    version = connection.server_version
    connection.close()
    assert 150000 <= version < 160000

    database.upgrade(url)
    engine = make_engine(service_url(url), pool_size=2)
    try:
        ledger = Ledger(engine)
        ledger.add_kiosk("bar-1", PUBLIC_KEY, "bar")
        ledger.add_kiosk("checkpoint-1", PUBLIC_KEY, "checkpoint")
        card = "04A1B2C3"
        assert ledger.apply(recharge(card, 2_000)).new_balance_cents == 2_000
        order = bar_order(card, ("Beer", 2, 450), seq=2)
        outcomes = ledger.apply_batch(
            [
                order,
                order,
                same_id_other_payload(order),
                bar_order(card, ("Magnum", 1, 5_000), seq=3),
                bar_order("04FFFFFF", seq=6),
                recharge("04B0B0B0", 100, method="card", seq=2),
            ]
        )
        assert [(o.status, o.error_code, o.new_balance_cents, o.replayed) for o in outcomes] == [
            (Status.APPROVED, None, 1_100, False),
            (Status.APPROVED, None, 1_100, True),
            (Status.REJECTED, ErrorCode.IDEMPOTENCY_CONFLICT, None, False),
            (Status.DECLINED, ErrorCode.INSUFFICIENT_FUNDS, 1_100, False),
            (Status.DECLINED, ErrorCode.CARD_NOT_FOUND, None, False),
            (Status.APPROVED, None, 100, False),
        ]
        overview = {row["kiosk_id"]: row for row in ledger.kiosk_overview()}
        assert overview["bar-1"]["missing_seq_ranges"] == [[1, 1], [4, 5]]
        ledger.process_stripe_recharge(
            event_id="evt_1",
            session_id="cs_1",
            card_uid=card,
            amount_cents=1_000,
            currency="EUR",
            payment_intent_id="pi_1",
            topup_id=None,
        )
        refund = ledger.process_stripe_refund(
            event_id="evt_2", payment_intent_id="pi_1", amount_refunded_cents=1_000
        )
        assert refund.new_balance_cents == 1_100
        ledger.record_scan(ScanRecord("bar-1", int(time.time() * 1000), card, "ok", "r", 3))
        # Revision 0005 on 15: cup deposits and returns, the return limit, bounded dead letters.
        cup = BarItem("Cup", 2, 200, is_deposit=True)
        back = BarItem("Cup", 1, 200, is_deposit=True, is_return=True)
        deposit_then_return = ledger.apply_batch(
            [bar_order(card, cup, seq=7), bar_order(card, back, seq=8)]
        )
        assert [o.new_balance_cents for o in deposit_then_return] == [700, 900]
        too_many = ledger.apply(bar_order(card, BarItem("Cup", 3, 200, is_return=True), seq=9))
        assert too_many.error_code is ErrorCode.RETURN_LIMIT_EXCEEDED
        assert ledger.deposit_balance_cents() == 200
        assert ledger.record_dead_letter(
            topic="t",
            payload=b"x" * 10_000,
            error_code=ErrorCode.INVALID_REQUEST,
            reason="junk",
            kiosk_id="bar-1",
        )
        assert ledger.check() == []
        # The seed's SQL, verbatim, as the service role.
        for sql in [seed.CHECK_TABLES, seed.CHECK_PROCEDURES, seed.CHECK_COLUMNS, *seed.MONITORING]:
            connection = psycopg2.connect(service_url(url).replace("+psycopg2", ""))
            try:
                cursor = connection.cursor()
                cursor.execute(sql)
                assert cursor.fetchall(), sql
            finally:
                connection.close()
    finally:
        engine.dispose()
    database.downgrade(url, "base")
    database.upgrade(url)
    assert database.current_revision(url) == database.head_revision()
