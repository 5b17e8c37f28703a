"""`festival-cloud` db/kiosk/card/check/cleanup, run as the real console script."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from cloud.database import head_revision, make_engine
from cloud.ledger import Ledger
from protocol.keys import generate_private_key, public_key_b64
from tests.ledger.helpers import PUBLIC_KEY, bar_order, execute, recharge

FESTIVAL_CLOUD = Path(sys.executable).with_name("festival-cloud")
CLI_TIMEOUT_S = 60
# The newest revision (each new revision moves it; the tests below name none of their own).


def cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    environment = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("FESTIVAL_", "DATABASE_", "STRIPE_", "MQTT_"))
    }
    environment["DATABASE_URL"] = url
    return subprocess.run(
        [str(FESTIVAL_CLOUD), *args],
        env=environment,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        check=False,
    )


def _key_starting_with_dash() -> str:
    while True:
        key = public_key_b64(generate_private_key())
        if key.startswith("-"):
            return key


def test_db_upgrade_current_downgrade(make_database: Callable[..., str]) -> None:
    url = make_database().replace("postgresql+psycopg2://", "postgresql://")
    assert cli(url, "db", "current").stdout.startswith("base")
    upgraded = cli(url, "db", "upgrade")
    assert upgraded.returncode == 0, upgraded.stderr
    head = head_revision()  # the newest revision script in the package
    assert f"revision {head}" in upgraded.stdout
    assert cli(url, "db", "current").stdout.strip() == f"{head} (head)"
    down = cli(url, "db", "downgrade", "0001")
    assert down.returncode == 0 and "revision 0001" in down.stdout
    assert cli(url, "db", "current").stdout.strip() == f"0001 (head is {head})"
    assert cli(url, "db", "downgrade", "base").returncode == 0
    assert cli(url, "db", "upgrade", "head").returncode == 0


def test_kiosk_add_list_disable(database_url: str) -> None:
    dash_key = _key_starting_with_dash()
    added = cli(database_url, "kiosk", "add", "bar-7", "--public-key", dash_key, "--role", "bar")
    assert added.returncode == 0, added.stderr
    assert "MQTT username: bar-7" in added.stdout
    # No broker admin file here: a password is issued and its hash kept for `broker config`
    # (tests/broker covers the broker side); never a command line carrying a password.
    assert re.search(r"^MQTT password: \S{24,}$", added.stdout, re.MULTILINE), added.stdout
    assert "mosquitto_passwd" not in added.stdout
    assert "broker config" in added.stderr
    other = cli(
        database_url, "kiosk", "add", "checkpoint-7", f"--public-key={PUBLIC_KEY}", "--role", "all"
    )
    assert other.returncode == 0, other.stderr

    listing = cli(database_url, "kiosk", "list", "--json")
    assert listing.returncode == 0
    kiosks = {row["kiosk_id"]: row for row in json.loads(listing.stdout)}
    assert kiosks["bar-7"]["public_key_b64"] == dash_key
    assert (kiosks["bar-7"]["role"], kiosks["bar-7"]["enabled"]) == ("bar", True)
    assert kiosks["checkpoint-7"]["role"] == "all"

    assert cli(database_url, "kiosk", "disable", "bar-7").returncode == 0
    table = cli(database_url, "kiosk", "list")
    assert any(line.startswith("bar-7") and " no " in line for line in table.stdout.splitlines())
    assert cli(database_url, "kiosk", "disable", "bar-404").returncode == 1
    bad = cli(database_url, "kiosk", "add", "bar-8", "--public-key", "not-a-key", "--role", "bar")
    assert bad.returncode == 2 and "public key" in bad.stderr


def test_card_show_block_unblock(database_url: str) -> None:
    missing = cli(database_url, "card", "show", "04ABCDEF", "--json")
    assert missing.returncode == 1
    engine = make_engine(database_url, pool_size=1)
    try:
        Ledger(engine).apply(recharge("04ABCDEF", 1_234))
    finally:
        engine.dispose()
    shown = cli(database_url, "card", "show", "04ABCDEF", "--json")
    assert shown.returncode == 0
    assert json.loads(shown.stdout) == {
        "card_uid": "04ABCDEF",
        "balance_cents": 1_234,
        "debt_cents": 0,
        "status": "active",
    }
    assert "12.34" in cli(database_url, "card", "show", "04ABCDEF").stdout
    assert cli(database_url, "card", "block", "04ABCDEF").returncode == 0
    assert (
        json.loads(cli(database_url, "card", "show", "04ABCDEF", "--json").stdout)["status"]
        == "blocked"
    )
    assert cli(database_url, "card", "unblock", "04ABCDEF").returncode == 0
    assert (
        json.loads(cli(database_url, "card", "show", "04ABCDEF", "--json").stdout)["status"]
        == "active"
    )
    assert cli(database_url, "card", "block", "04000000").returncode == 1


def test_check_exits_1_with_a_report_on_a_corrupted_balance(database_url: str) -> None:
    engine = make_engine(database_url, pool_size=1)
    try:
        ledger = Ledger(engine)
        ledger.add_kiosk("bar-1", PUBLIC_KEY, "bar")
        ledger.apply(recharge("04ABCDEF", 2_000))
        ledger.apply(bar_order("04ABCDEF"))
    finally:
        engine.dispose()
    healthy = cli(database_url, "check")
    assert healthy.returncode == 0 and "ledger OK" in healthy.stdout
    execute(database_url, "UPDATE cards SET balance_cents = balance_cents + 1")
    broken = cli(database_url, "check")
    assert broken.returncode == 1
    assert "LEDGER CHECK FAILED: 1 violation(s)" in broken.stdout
    assert "card 04ABCDEF: cached balance 1501 cents, but its postings sum to 1500" in broken.stdout


def test_cleanup_prints_the_count_and_never_reopens_a_request(database_url: str) -> None:
    engine = make_engine(database_url, pool_size=1)
    try:
        ledger = Ledger(engine)
        ledger.add_kiosk("bar-1", PUBLIC_KEY, "bar")
        ledger.apply(recharge("04ABCDEF", 2_000))
        order = bar_order("04ABCDEF")
        ledger.apply(order)
        execute(database_url, "UPDATE idempotency_keys SET expires_at = now() - interval '1 s'")
        cleaned = cli(database_url, "cleanup")
        assert (cleaned.returncode, cleaned.stdout.splitlines()[0]) == (0, "2")
        assert execute(database_url, "SELECT count(*) FROM idempotency_keys") == [(0,)]
        again = ledger.apply(order)
        assert again.replayed is True
        assert ledger.card("04ABCDEF").balance_cents == 1_500  # type: ignore[union-attr]
    finally:
        engine.dispose()


def test_unreachable_database_is_one_clear_line() -> None:
    from cloud.sandbox import free_port

    result = cli(
        f"postgresql://nobody:s3cret-pw@127.0.0.1:{free_port()}/none", "card", "show", "04ABCDEF"
    )
    assert result.returncode == 2
    assert "database unavailable" in result.stderr
    assert "Traceback" not in result.stderr
    assert "s3cret-pw" not in result.stderr + result.stdout


@pytest.mark.parametrize("verb", [("check",), ("kiosk", "list")])
def test_service_role_can_run_read_only_verbs(
    service_database_url: str, verb: tuple[str, ...]
) -> None:
    assert cli(service_database_url, *verb).returncode == 0
