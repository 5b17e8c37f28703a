"""Revision 0012 (the attendee's portal): PINs stored as a slow hash only, the per-card lockout
counted in the database (so every API process sees the same), sessions, the card's page document,
the portal's block; least privilege for festival_api; an exact downgrade; `card import` and
`card pin` run as the real console script."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy

from cloud import database
from cloud.database import Engine, make_engine
from cloud.ledger import Ledger
from cloud.portal import PortalStore, check_pin, hash_pin, new_pin, new_session_token, valid_pin
from tests.ledger.helpers import bar_order, execute, recharge, scalar
from tests.ledger.test_cli import cli
from tests.ledger.test_r0009_migration import _differences, _schema

REVISION = "0012"  # the portal's revision: one place
PREVIOUS = "0011"
UID = "04A1B2C3D4E5F6"
WINDOW_S = 900
FAILURES_MAX = 5


def test_downgrade_of_the_portal_revision_restores_the_previous_one_exactly(
    make_database: Callable[..., str],
) -> None:
    url = make_database()
    database.upgrade(url, PREVIOUS)
    before = _schema(url)
    database.upgrade(url, REVISION)
    assert any("portal_sessions" in line for line in _schema(url))
    database.downgrade(url, PREVIOUS)
    assert _schema(url) == before, _differences(before, _schema(url))


def test_pins_are_hashed_slowly_and_checked_in_constant_work() -> None:
    pin = new_pin()
    assert valid_pin(pin) and len(pin) == 8
    stored = hash_pin(pin)
    assert pin not in stored and stored.startswith("scrypt$8192$8$1$")
    assert hash_pin(pin) != stored, "a fresh salt every time"
    assert check_pin(pin, stored)
    assert not check_pin(pin[:-1] + ("A" if pin[-1] != "A" else "B"), stored)
    assert not check_pin("abc", stored), "malformed: refused, not raised"
    assert not check_pin(pin, None), "an unknown card never logs in"
    assert not check_pin(pin, "scrypt$garbage"), "a damaged hash refuses"
    for bad in ("ABC12", "ABCDEFGHIJKLM", "abc123", "ABC 12", "ÄBC123"):
        assert not valid_pin(bad)
        with pytest.raises(ValueError):
            hash_pin(bad)


_engines: list[Engine] = []


@pytest.fixture(autouse=True)
def _dispose_engines() -> Iterator[None]:
    yield
    while _engines:
        _engines.pop().dispose()


def _store(url: str) -> PortalStore:
    engine = make_engine(url, pool_size=2, application_name="test-portal")
    _engines.append(engine)
    return PortalStore(engine)


def _begin(store: PortalStore, uid: str = UID, window_s: int = WINDOW_S) -> tuple[bool, int]:
    start = store.login_begin(uid, window_s=window_s, failures_max=FAILURES_MAX)
    return start.allowed, start.retry_after_s


def _finish(store: PortalStore, ok: bool, uid: str = UID, window_s: int = WINDOW_S) -> str | None:
    token = new_session_token()
    expires = store.login_finish(
        uid, ok=ok, token=token, ttl_s=3600, window_s=window_s, failures_max=FAILURES_MAX
    )
    return token if expires is not None else None


def test_the_lockout_counts_attempts_in_flight_and_locks_for_the_window(
    service_database_url: str, api_database_url: str, database_url: str
) -> None:
    service = _store(service_database_url)
    api = _store(api_database_url)
    service.set_pin_hash(UID, hash_pin("RIGHT1"))
    # Five attempts begun at once (five API processes checking their hashes) fill the budget:
    # a sixth is refused before any of them has finished.
    for _ in range(FAILURES_MAX):
        assert _begin(api) == (True, 0)
    allowed, retry = _begin(api)
    assert not allowed and retry == 1
    # One of them was right: its attempt no longer counts, one more may try.
    assert _finish(api, True) is not None
    assert _begin(api)[0]
    for _ in range(FAILURES_MAX):
        assert _finish(api, False) is None
    # Five failures: locked for the window, for the right PIN too.
    allowed, retry = _begin(api)
    assert not allowed and WINDOW_S - 5 <= retry <= WINDOW_S
    locked_until = scalar(
        database_url, "SELECT locked_until FROM portal_login_failures WHERE card_uid = :u", u=UID
    )
    assert locked_until is not None
    # The window passed (moved back by the owner: no sleeping): the right PIN logs in again.
    execute(
        database_url,
        "UPDATE portal_login_failures SET locked_until = now() - interval '1 second',"
        " failed_at = ARRAY(SELECT a - interval '1 hour' FROM unnest(failed_at) a)"
        " WHERE card_uid = :u",
        u=UID,
    )
    assert _begin(api) == (True, 0)
    assert _finish(api, True) is not None


def test_an_unknown_card_is_locked_out_like_a_known_one(api_database_url: str) -> None:
    api = _store(api_database_url)
    ghost = "04FFFFFF"
    for _ in range(FAILURES_MAX):
        start = api.login_begin(ghost, window_s=WINDOW_S, failures_max=FAILURES_MAX)
        assert start.allowed and start.pin_hash is None
        assert _finish(api, False, ghost) is None
    assert not _begin(api, ghost)[0]


def test_failures_older_than_the_window_do_not_count(
    service_database_url: str, api_database_url: str, database_url: str
) -> None:
    _store(service_database_url).set_pin_hash(UID, hash_pin("RIGHT1"))
    api = _store(api_database_url)
    for _ in range(FAILURES_MAX - 1):
        assert _begin(api)[0]
        _finish(api, False)
    # Sixteen minutes pass (the owner moves the failures back: no sleeping).
    execute(
        database_url,
        "UPDATE portal_login_failures"
        " SET failed_at = ARRAY(SELECT a - interval '16 minutes' FROM unnest(failed_at) a)",
    )
    for _ in range(FAILURES_MAX - 1):
        assert _begin(api)[0], "the old failures left the window"
        _finish(api, False)
    assert _begin(api)[0], "four recent failures: a fifth attempt is allowed"
    _finish(api, False)
    assert not _begin(api)[0]


def test_sessions_open_expire_and_are_revoked(
    service_database_url: str, api_database_url: str, database_url: str
) -> None:
    service = _store(service_database_url)
    api = _store(api_database_url)
    service.set_pin_hash(UID, hash_pin("RIGHT1"))
    assert _begin(api)[0]
    token = _finish(api, True)
    assert token is not None
    session = api.session(token)
    assert session is not None and session.card_uid == UID and session.kind == "pin"
    digest = hashlib.sha256(token.encode()).digest()
    assert scalar(
        database_url, "SELECT count(*) FROM portal_sessions WHERE token_sha256 = :d", d=digest
    )
    assert not scalar(
        database_url,
        "SELECT count(*) FROM portal_sessions WHERE token_sha256 = :t",
        t=token.encode(),
    ), "only the token's hash is stored"
    assert api.session(new_session_token()) is None
    assert api.logout(token) and not api.logout(token)
    assert api.session(token) is None and api.card(token, transactions_max=10) is None
    # A new PIN ends the sessions of the old one; an expired session is no session.
    assert _begin(api)[0]
    second = _finish(api, True)
    assert second is not None
    service.set_pin_hash(UID, hash_pin("OTHER2"))
    assert api.session(second) is None
    assert _begin(api)[0]
    third = _finish(api, True)
    assert third is not None
    execute(
        database_url,
        "UPDATE portal_sessions SET created_at = now() - interval '2 hours',"
        " expires_at = now() - interval '1 second' WHERE revoked_at IS NULL",
    )
    assert api.session(third) is None


def test_the_card_document_matches_the_ledger_and_the_portal_blocks(
    ledger: Ledger, service_database_url: str, api_database_url: str, database_url: str
) -> None:
    ledger.apply(recharge(UID, 5_000, kiosk_id="checkpoint-1"))
    ledger.apply(bar_order(UID, ("Beer", 2, 450), ("Water", 1, 250), kiosk_id="bar-1"))
    _store(service_database_url).set_pin_hash(UID, hash_pin("RIGHT1"))
    api = _store(api_database_url)
    assert _begin(api)[0]
    token = _finish(api, True)
    assert token is not None
    document = api.card(token, transactions_max=50)
    assert document is not None
    assert document["card_uid"] == UID and document["balance_cents"] == 5_000 - 1_150
    assert document["debt_cents"] == 0 and document["status"] == "active"
    history = ledger.card_transactions(UID, limit=50)
    assert [t["transaction_id"] for t in document["transactions"]] == [
        t["transaction_id"] for t in history
    ]
    assert [t["amount_cents"] for t in document["transactions"]] == [-1_150, 5_000]
    order, topup = document["transactions"]
    assert order["kind"] == "bar_order" and order["kiosk_id"] == "bar-1"
    assert [(i["name"], i["quantity"], i["line_total_cents"]) for i in order["items"]] == [
        ("Beer", 2, 900),
        ("Water", 1, 250),
    ]
    assert topup["kind"] == "checkpoint_recharge" and topup["where"] == "checkpoint-1"
    assert topup["items"] is None and topup["at"].endswith("Z")

    assert api.block(new_session_token(), "lost") is None
    assert api.block(token, "reported lost by the holder") == UID
    card = ledger.card(UID)
    assert card is not None and card.status == "blocked"
    assert (
        scalar(
            database_url,
            "SELECT edge_function_name FROM app_transaction_log"
            " WHERE transaction_type = 'card_block' ORDER BY id DESC LIMIT 1",
        )
        == "portal"
    )
    assert scalar(database_url, "SELECT changes FROM denylist_state") >= 1


def test_the_api_role_reads_no_pin_and_sets_none(api_database_url: str) -> None:
    for sql in (
        "SELECT pin_hash FROM card_pins",
        "SELECT token_sha256 FROM portal_sessions",
        "SELECT * FROM portal_login_failures",
        f"SELECT sp_portal_set_pin('{UID}', 'scrypt$1$1$1$AA==$AA==', 'operator')",
        "SELECT * FROM sp_portal_import_pins('[]')",
    ):
        with pytest.raises(sqlalchemy.exc.DBAPIError, match="permission denied"):
            execute(api_database_url, sql)


# --- the CLI ------------------------------------------------------------------------------------


def test_card_import_stores_hashes_and_creates_cards(
    ledger: Ledger, database_url: str, tmp_path: Path
) -> None:
    ledger.apply(recharge("04AAAAAA", 700, kiosk_id="checkpoint-1"))
    rows = [("04AAAAAA", "PIN001"), ("04BBBBBB", "ABCDEF123456"), ("04CCCCCCDDDDDD", "Z9Z9Z9")]
    path = tmp_path / "bands.csv"
    path.write_text("card_uid,pin\n" + "".join(f"{u},{p}\n" for u, p in rows), encoding="utf-8")
    result = cli(database_url, "card", "import", str(path))
    assert result.returncode == 0, result.stderr
    assert "imported 3" in result.stdout and "2 new cards" in result.stdout
    stored = dict(execute(database_url, "SELECT card_uid, pin_hash FROM card_pins"))
    assert set(stored) == {uid for uid, _ in rows}
    for uid, pin in rows:
        assert pin not in stored[uid] and check_pin(pin, stored[uid])
    for uid, balance in (("04AAAAAA", 700), ("04BBBBBB", 0), ("04CCCCCCDDDDDD", 0)):
        card = ledger.card(uid)
        assert card is not None and card.balance_cents == balance and card.status == "active"
    shown = cli(database_url, "card", "show", "04BBBBBB", "--json")
    assert shown.returncode == 0 and '"balance_cents": 0' in shown.stdout


@pytest.mark.parametrize(
    ("content", "line", "what"),
    [
        ("uid,pin\n04AAAAAA,PIN001\n", 1, "header"),
        ("card_uid,pin\n04AAAAAA,PIN001\n04BBBBBB,short\n", 3, "pin must be"),
        ("card_uid,pin\n04AAAAAA,PIN001\n04bbbbbb,PIN002\n", 3, "card_uid must be"),
        ("card_uid,pin\n04AAAAAA,PIN001\n04BBBBBB,PIN002\n04AAAAAA,PIN003\n", 4, "line 2 too"),
        ("card_uid,pin\n04AAAAAA,PIN001\n\n04BBBBBB,PIN002\n", 3, "empty line"),
        ("card_uid,pin\n04AAAAAA,PIN001,extra\n", 2, "expected 2 fields"),
    ],
)
def test_a_bad_line_fails_the_whole_file_with_its_number(
    ledger: Ledger, database_url: str, tmp_path: Path, content: str, line: int, what: str
) -> None:
    path = tmp_path / "bands.csv"
    path.write_text(content, encoding="utf-8")
    result = cli(database_url, "card", "import", str(path))
    assert result.returncode == 1
    assert f"line {line}:" in result.stderr and what in result.stderr
    assert "nothing imported" in result.stderr
    assert scalar(database_url, "SELECT count(*) FROM card_pins") == 0
    assert ledger.card("04AAAAAA") is None, "no card created either"


def test_card_pin_sets_and_prints_a_fresh_pin(ledger: Ledger, database_url: str) -> None:
    first = cli(database_url, "card", "pin", UID)
    assert first.returncode == 0, first.stderr
    pin = first.stdout.strip()
    assert valid_pin(pin) and "created" in first.stderr
    stored = scalar(database_url, "SELECT pin_hash FROM card_pins WHERE card_uid = :u", u=UID)
    assert check_pin(pin, stored)
    second = cli(database_url, "card", "pin", UID)
    assert second.returncode == 0 and second.stdout.strip() != pin
    stored = scalar(database_url, "SELECT pin_hash FROM card_pins WHERE card_uid = :u", u=UID)
    assert not check_pin(pin, stored) and check_pin(second.stdout.strip(), stored)
    assert cli(database_url, "card", "pin", "nothex").returncode == 1
