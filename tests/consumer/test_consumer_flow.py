"""The real `festival-cloud consumer` end to end: signed requests in over Mosquitto, every error
code of PROTOCOL.md out as a signed result, the ledger in PostgreSQL, duplicates, concurrency,
scans, statuses, logs, metrics and sd_notify."""

from __future__ import annotations

import hashlib
import json
import threading
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cloud.database import make_engine
from cloud.ledger import Ledger
from cloud.sandbox import MosquittoBroker
from protocol.codec import encode_scan, encode_status
from protocol.errors import ErrorCode, Status
from protocol.jws import sign_compact
from protocol.keys import generate_private_key, public_key_b64
from protocol.models import BarItem, KioskStatus, Result, ScanRecord
from protocol.strict_json import dumps_canonical
from protocol.topics import TopicKind, topic_for
from tests.consumer.conftest import CloudKey, LedgerDatabase
from tests.consumer.kiosk_client import KioskClient, now_ms, uuid7
from tests.consumer.support import ConsumerProcess, festival_cloud
from tests.waiting import wait_until

MAX_BALANCE_CENTS = 150_000
RETURN_MAX_CENTS = 1_000  # FESTIVAL_RETURN_MAX_CENTS of this module's consumer (default 2000)
ROLES = {
    "bar-1": "bar",
    "bar-2": "bar",
    "checkpoint-1": "checkpoint",
    "checkpoint-2": "all",
    "bar-9": "bar",  # disabled by a test
    "checkpoint-3": "checkpoint",  # registered for the checkpoint "gate-north"
    "bar-flood": "bar",  # floods junk (its dead letters are counted per minute)
}
CHECKPOINTS = {"checkpoint-3": "gate-north"}
UNREGISTERED = "ghost-1"


@dataclass
class System:
    ledger: Ledger
    engine: sqlalchemy.Engine
    database: LedgerDatabase
    consumer: ConsumerProcess
    kiosks: dict[str, KioskClient]
    keys: dict[str, Ed25519PrivateKey]
    cloud_key: CloudKey
    broker: MosquittoBroker

    def dead_letters(self, kiosk_id: str) -> list[dict[str, Any]]:
        with self.engine.connect() as connection:
            rows = connection.execute(
                sqlalchemy.text(
                    "SELECT topic, payload, error_code, reason FROM dead_letters"
                    " WHERE kiosk_id = :kiosk_id ORDER BY id"
                ),
                {"kiosk_id": kiosk_id},
            )
            return [dict(row._mapping) for row in rows]

    def processed(self, request_id: str) -> dict[str, object] | None:
        with self.engine.connect() as connection:
            row = connection.execute(
                sqlalchemy.text(
                    "SELECT status, error_code FROM processed_requests WHERE request_id = :id"
                ),
                {"id": request_id},
            ).first()
            return dict(row._mapping) if row else None

    def scalar(self, sql: str, **params: object) -> Any:
        with self.engine.connect() as connection:
            return connection.execute(sqlalchemy.text(sql), params).scalar()

    def balance(self, card_uid: str) -> int | None:
        card = self.ledger.card(card_uid)
        return card.balance_cents if card else None


@pytest.fixture(scope="module")
def system(
    ledger_database: LedgerDatabase,
    cloud_key: CloudKey,
    mosquitto_broker: MosquittoBroker,
    service_dirs: Callable[[str], Path],
) -> Iterator[System]:
    for kiosk_id in [*ROLES, UNREGISTERED]:
        if kiosk_id not in mosquitto_broker.users:
            mosquitto_broker.add_user(kiosk_id)
    engine = make_engine(ledger_database.owner_url, pool_size=2)
    ledger = Ledger(engine, max_balance_cents=MAX_BALANCE_CENTS)
    keys = {kiosk_id: generate_private_key() for kiosk_id in [*ROLES, UNREGISTERED]}
    for kiosk_id, role in ROLES.items():
        if kiosk_id in ("bar-9", *CHECKPOINTS):  # through the operator's command
            checkpoint = ["--checkpoint", CHECKPOINTS[kiosk_id]] if kiosk_id in CHECKPOINTS else []
            festival_cloud(
                "kiosk",
                "add",
                kiosk_id,
                "--public-key",
                public_key_b64(keys[kiosk_id]),
                "--role",
                role,
                *checkpoint,
                database_url=ledger_database.owner_url,
            )
        else:
            ledger.add_kiosk(kiosk_id, public_key_b64(keys[kiosk_id]), role)
    consumer = ConsumerProcess(
        database_url=ledger_database.service_url,
        mqtt_url=mosquitto_broker.url("cloud-consumer"),
        signing_key_file=cloud_key.path,
        consumer_id=f"consumer-flow-{uuid7()[-8:]}",
        workdir=service_dirs("consumer-flow"),
        extra_env={
            "FESTIVAL_MAX_BALANCE_CENTS": str(MAX_BALANCE_CENTS),
            "FESTIVAL_RETURN_MAX_CENTS": str(RETURN_MAX_CENTS),
            # As systemd's WatchdogSec=1 would: a WATCHDOG=1 ping at least every 0.5 s.
            "WATCHDOG_USEC": "1000000",
        },
    )
    kiosks: dict[str, KioskClient] = {}
    try:
        consumer.start()
        for kiosk_id, key in keys.items():
            kiosks[kiosk_id] = KioskClient(
                mosquitto_broker.url(kiosk_id), kiosk_id, key, cloud_key.private_key.public_key()
            ).connect()
        yield System(
            ledger, engine, ledger_database, consumer, kiosks, keys, cloud_key, mosquitto_broker
        )
    finally:
        for client in kiosks.values():
            client.close()
        consumer.close()
        engine.dispose()


def fund(system: System, card_uid: str, amount_cents: int) -> None:
    checkpoint = system.kiosks["checkpoint-1"]
    request = checkpoint.recharge(card_uid, amount_cents)
    checkpoint.send(request)
    assert checkpoint.wait_result(request.request_id).status is Status.APPROVED


def assert_no_echo(result: Result) -> None:
    assert result.request_id is None
    assert result.kiosk_id is None
    assert result.seq is None
    assert result.card_uid is None


# --- approved ----------------------------------------------------------------------------------


def test_a_first_top_up_creates_the_card_and_an_order_spends_from_it(system: System) -> None:
    checkpoint, bar = system.kiosks["checkpoint-1"], system.kiosks["bar-1"]
    recharge = checkpoint.recharge("A1000001", 5000)
    checkpoint.send(recharge)
    topped = checkpoint.wait_result(recharge.request_id)
    assert topped.status is Status.APPROVED and topped.error_code is None
    assert (topped.previous_balance_cents, topped.new_balance_cents) == (0, 5000)
    assert topped.transaction_id is not None and not topped.replayed
    assert (topped.kiosk_id, topped.seq, topped.card_uid) == (
        "checkpoint-1",
        recharge.seq,
        "A1000001",
    )

    items = (
        BarItem(name="Pils", quantity=2, unit_price_cents=450),
        BarItem(name="Cup", quantity=2, unit_price_cents=200, is_deposit=True),
        BarItem(name="Cup back", quantity=1, unit_price_cents=200, is_deposit=True, is_return=True),
    )
    order = bar.bar_order("A1000001", 1100, items=items)
    bar.send(order)
    paid = bar.wait_result(order.request_id)
    assert paid.status is Status.APPROVED
    assert (paid.previous_balance_cents, paid.new_balance_cents) == (5000, 3900)
    assert system.balance("A1000001") == 3900
    shown = json.loads(
        festival_cloud(
            "card", "show", "A1000001", "--json", database_url=system.database.owner_url
        ).stdout
    )
    assert shown["balance_cents"] == 3900


def test_a_kiosk_with_role_all_may_do_both(system: System) -> None:
    both = system.kiosks["checkpoint-2"]
    recharge = both.recharge("A1000002", 1000, payment_method="card")
    both.send(recharge)
    assert both.wait_result(recharge.request_id).status is Status.APPROVED
    order = both.bar_order("A1000002", 300)
    both.send(order)
    assert both.wait_result(order.request_id).new_balance_cents == 700


# --- declined ----------------------------------------------------------------------------------


def test_insufficient_funds_is_declined_with_the_unchanged_balance(system: System) -> None:
    fund(system, "A2000001", 500)
    bar = system.kiosks["bar-1"]
    order = bar.bar_order("A2000001", 501)
    bar.send(order)
    result = bar.wait_result(order.request_id)
    assert result.status is Status.DECLINED and result.error_code is ErrorCode.INSUFFICIENT_FUNDS
    assert (result.previous_balance_cents, result.new_balance_cents) == (500, 500)
    assert result.transaction_id is None
    assert system.balance("A2000001") == 500


def test_an_order_on_an_unknown_card_is_card_not_found_without_balances(system: System) -> None:
    bar = system.kiosks["bar-1"]
    order = bar.bar_order("A2000002", 100)
    bar.send(order)
    result = bar.wait_result(order.request_id)
    assert result.status is Status.DECLINED and result.error_code is ErrorCode.CARD_NOT_FOUND
    assert (result.previous_balance_cents, result.new_balance_cents) == (None, None)
    assert system.ledger.card("A2000002") is None


def test_a_blocked_card_is_declined(system: System) -> None:
    fund(system, "A2000003", 1000)
    assert system.ledger.block_card("A2000003", "lost")
    bar = system.kiosks["bar-2"]
    order = bar.bar_order("A2000003", 100)
    bar.send(order)
    result = bar.wait_result(order.request_id)
    assert result.status is Status.DECLINED and result.error_code is ErrorCode.CARD_BLOCKED
    assert (result.previous_balance_cents, result.new_balance_cents) == (1000, 1000)


def test_a_top_up_over_the_maximum_balance_is_declined(system: System) -> None:
    fund(system, "A2000004", 100_000)  # the single top-up limit
    fund(system, "A2000004", MAX_BALANCE_CENTS - 100_000 - 100)
    checkpoint = system.kiosks["checkpoint-1"]
    exact = checkpoint.recharge("A2000004", 100)  # exactly the maximum is allowed
    checkpoint.send(exact)
    assert checkpoint.wait_result(exact.request_id).new_balance_cents == MAX_BALANCE_CENTS
    over = checkpoint.recharge("A2000004", 1)
    checkpoint.send(over)
    result = checkpoint.wait_result(over.request_id)
    assert result.status is Status.DECLINED
    assert result.error_code is ErrorCode.BALANCE_LIMIT_EXCEEDED
    assert result.new_balance_cents == MAX_BALANCE_CENTS


# --- rejected, authenticated (stored under the request_id) ---------------------------------------


def test_a_signed_invalid_request_is_rejected_with_its_fields_and_stored(system: System) -> None:
    bar = system.kiosks["bar-1"]
    request_id = uuid7()
    document = {
        "v": 1,
        "type": "bar_order",
        "request_id": request_id,
        "kiosk_id": "bar-1",
        "seq": bar.next_seq(),
        "created_at_ms": now_ms(),
        "card_uid": "A3000001",
        "currency": "EUR",
        "items": [{"name": "Beer", "quantity": 1, "unit_price_cents": 450}],
        "total_cents": 1,  # does not match the items
    }
    raw = sign_compact(dumps_canonical(document), system.keys["bar-1"], "bar-1")
    bar.send(raw)
    result = bar.wait_result(request_id)
    assert result.status is Status.REJECTED and result.error_code is ErrorCode.INVALID_REQUEST
    assert (result.kiosk_id, result.card_uid) == ("bar-1", "A3000001")
    assert (result.previous_balance_cents, result.new_balance_cents) == (None, None)
    assert system.processed(request_id) == {"status": "rejected", "error_code": "INVALID_REQUEST"}

    bar.send(raw)  # the same bytes again: the stored outcome, replayed
    wait_until(lambda: len(bar.results_for(request_id)) == 2, timeout_s=10)
    again = bar.results_for(request_id)[1]
    assert again.replayed and again.error_code is ErrorCode.INVALID_REQUEST


def test_a_stale_request_is_rejected_and_stays_rejected(system: System) -> None:
    fund(system, "A3000002", 1000)
    bar = system.kiosks["bar-1"]
    order = bar.bar_order("A3000002", 100, created_at_ms=now_ms() - 8 * 24 * 3600 * 1000)
    raw = bar.send(order)
    result = bar.wait_result(order.request_id)
    assert result.status is Status.REJECTED and result.error_code is ErrorCode.STALE_REQUEST
    assert result.request_id == order.request_id and result.seq == order.seq
    future = bar.bar_order("A3000002", 100, created_at_ms=now_ms() + 10 * 60 * 1000)
    bar.send(future)
    assert bar.wait_result(future.request_id).error_code is ErrorCode.STALE_REQUEST
    bar.send(raw)
    wait_until(lambda: len(bar.results_for(order.request_id)) == 2, timeout_s=10)
    assert bar.results_for(order.request_id)[1].replayed
    assert system.balance("A3000002") == 1000


def test_a_bar_kiosk_may_not_top_up(system: System) -> None:
    bar = system.kiosks["bar-2"]
    recharge = bar.recharge("A3000003", 10_000)
    bar.send(recharge)
    result = bar.wait_result(recharge.request_id)
    assert result.status is Status.REJECTED
    assert result.error_code is ErrorCode.OPERATION_NOT_ALLOWED
    assert system.ledger.card("A3000003") is None


def test_a_checkpoint_kiosk_may_not_sell(system: System) -> None:
    fund(system, "A3000004", 1000)
    checkpoint = system.kiosks["checkpoint-1"]
    order = checkpoint.bar_order("A3000004", 100)
    checkpoint.send(order)
    result = checkpoint.wait_result(order.request_id)
    assert result.error_code is ErrorCode.OPERATION_NOT_ALLOWED
    assert system.balance("A3000004") == 1000


def test_the_same_request_id_with_another_payload_is_an_idempotency_conflict(
    system: System,
) -> None:
    fund(system, "A3000005", 1000)
    bar = system.kiosks["bar-1"]
    first = bar.bar_order("A3000005", 100)
    bar.send(first)
    assert bar.wait_result(first.request_id).status is Status.APPROVED
    second = bar.bar_order("A3000005", 200, request_id=first.request_id)
    bar.send(second)
    wait_until(lambda: len(bar.results_for(first.request_id)) == 2, timeout_s=10)
    conflict = bar.results_for(first.request_id)[1]
    assert conflict.status is Status.REJECTED
    assert conflict.error_code is ErrorCode.IDEMPOTENCY_CONFLICT
    assert conflict.seq == second.seq
    assert system.balance("A3000005") == 900


def test_the_same_bytes_twice_are_applied_once_and_replayed(system: System) -> None:
    fund(system, "A3000006", 1000)
    bar = system.kiosks["bar-2"]
    order = bar.bar_order("A3000006", 250)
    raw = bar.send(order)
    first = bar.wait_result(order.request_id)
    bar.send(raw)
    wait_until(lambda: len(bar.results_for(order.request_id)) == 2, timeout_s=10)
    second = bar.results_for(order.request_id)[1]
    assert not first.replayed and second.replayed
    assert second.transaction_id == first.transaction_id
    assert (second.previous_balance_cents, second.new_balance_cents) == (1000, 750)
    assert system.balance("A3000006") == 750


def test_a_disabled_kiosk_is_refused_from_the_next_request_on(system: System) -> None:
    fund(system, "A3000007", 1000)
    kiosk = system.kiosks["bar-9"]
    before = kiosk.bar_order("A3000007", 100)
    kiosk.send(before)
    assert kiosk.wait_result(before.request_id).status is Status.APPROVED
    festival_cloud("kiosk", "disable", "bar-9", database_url=system.database.owner_url)
    after = kiosk.bar_order("A3000007", 100)
    kiosk.send(after)
    result = kiosk.wait_result(after.request_id)
    assert result.status is Status.REJECTED and result.error_code is ErrorCode.KIOSK_DISABLED
    assert result.request_id == after.request_id
    assert system.balance("A3000007") == 900


# --- rejected, not authenticated (dead letters, nothing echoed, no request_id claimed) ------------


def test_a_forged_signature_is_a_dead_letter_and_claims_no_request_id(system: System) -> None:
    fund(system, "A4000001", 1000)
    bar = system.kiosks["bar-1"]
    order = bar.bar_order("A4000001", 100)
    forged = sign_compact(dumps_canonical(_document(bar, order)), generate_private_key(), "bar-1")
    anonymous_before = len(bar.all_results())
    bar.send(forged)
    [result] = wait_until(
        lambda: bar.all_results()[anonymous_before:], timeout_s=10, what="the rejection"
    )
    assert result.status is Status.REJECTED and result.error_code is ErrorCode.INVALID_SIGNATURE
    assert_no_echo(result)
    letters = system.dead_letters("bar-1")
    assert letters[-1]["error_code"] == "INVALID_SIGNATURE"
    assert bytes(letters[-1]["payload"]) == forged
    assert system.processed(order.request_id) is None
    bar.send(order)  # the genuine request with the same id still goes through
    assert bar.wait_result(order.request_id).status is Status.APPROVED


def _document(client: KioskClient, request: object) -> dict[str, object]:
    from protocol.models import request_to_dict

    return request_to_dict(request)  # type: ignore[arg-type]


def test_garbage_on_a_kiosk_topic_is_answered_and_kept(system: System) -> None:
    bar = system.kiosks["bar-2"]
    before = len(bar.all_results())
    bar.send(b"\x00\xffnot a jws at all")
    [result] = wait_until(lambda: bar.all_results()[before:], timeout_s=10, what="the rejection")
    assert result.error_code is ErrorCode.INVALID_REQUEST
    assert_no_echo(result)
    assert bytes(system.dead_letters("bar-2")[-1]["payload"]) == b"\x00\xffnot a jws at all"


def test_a_kiosk_without_a_registered_key_is_unknown(system: System) -> None:
    ghost = system.kiosks[UNREGISTERED]
    order = ghost.bar_order("A4000002", 100)
    ghost.send(order)
    [result] = ghost.wait_anonymous_results(1)
    assert result.error_code is ErrorCode.UNKNOWN_KIOSK
    assert_no_echo(result)
    assert system.dead_letters(UNREGISTERED)[-1]["error_code"] == "UNKNOWN_KIOSK"


def test_a_signed_message_without_a_valid_request_id_is_a_dead_letter_with_echo(
    system: System,
) -> None:
    bar = system.kiosks["bar-1"]
    seq = bar.next_seq()
    document = {"v": 1, "type": "bar_order", "request_id": "no spaces!", "kiosk_id": "bar-1"}
    document["seq"] = seq
    raw = sign_compact(dumps_canonical(document), system.keys["bar-1"], "bar-1")
    before = len(bar.all_results())
    bar.send(raw)
    [result] = wait_until(lambda: bar.all_results()[before:], timeout_s=10, what="the rejection")
    assert result.error_code is ErrorCode.INVALID_REQUEST
    assert (result.request_id, result.kiosk_id, result.seq) == (None, "bar-1", seq)
    assert system.dead_letters("bar-1")[-1]["error_code"] == "INVALID_REQUEST"


# --- checkpoints (issue 11 item 2) and bounded dead letters (item 7) ------------------------------


def drawer_cents(system: System, checkpoint_id: str) -> int:
    """What the cash drawer of a checkpoint took (its account's postings are negative)."""
    return -int(
        system.scalar(
            "SELECT coalesce(sum(p.amount_cents), 0) FROM accounts a"
            " JOIN postings p ON p.account_id = a.account_id WHERE a.name = :name",
            name=f"cash:{checkpoint_id}",
        )
    )


def test_kiosk_add_registers_a_checkpoint_and_kiosk_list_shows_it(system: System) -> None:
    url = system.database.owner_url
    listed = json.loads(festival_cloud("kiosk", "list", "--json", database_url=url).stdout)
    checkpoints = {row["kiosk_id"]: row["checkpoint_id"] for row in listed}
    assert checkpoints["checkpoint-3"] == "gate-north"
    assert checkpoints["checkpoint-1"] == "checkpoint-1"  # by default the kiosk id
    table = festival_cloud("kiosk", "list", database_url=url).stdout
    assert any(
        line.startswith("checkpoint-3") and " gate-north " in line for line in table.splitlines()
    )


def test_a_top_up_goes_to_the_drawer_of_the_kiosks_registered_checkpoint(system: System) -> None:
    kiosk = system.kiosks["checkpoint-3"]
    before = drawer_cents(system, "gate-north")
    unnamed = kiosk.recharge("A8000001", 1_000)  # no checkpoint_id: the registered one
    kiosk.send(unnamed)
    assert kiosk.wait_result(unnamed.request_id).status is Status.APPROVED
    named = replace(kiosk.recharge("A8000001", 500), checkpoint_id="gate-north")
    kiosk.send(named)
    assert kiosk.wait_result(named.request_id).new_balance_cents == 1_500
    assert drawer_cents(system, "gate-north") == before + 1_500
    assert drawer_cents(system, "checkpoint-3") == 0
    assert system.scalar(
        "SELECT array_agg(DISTINCT checkpoint_id) FROM recharges WHERE card_id = 'A8000001'"
    ) == ["gate-north"]


def test_a_cashier_cannot_book_cash_into_another_checkpoints_drawer(system: System) -> None:
    """Reproduced: `checkpoint_id` was free text, so a top-up could name any drawer."""
    fund(system, "A8000002", 1_000)
    for kiosk_id, foreign in (("checkpoint-3", "checkpoint-1"), ("checkpoint-1", "gate-north")):
        kiosk = system.kiosks[kiosk_id]
        drawer_before = drawer_cents(system, foreign)
        request = replace(kiosk.recharge("A8000002", 5_000), checkpoint_id=foreign)
        raw = kiosk.send(request)
        result = kiosk.wait_result(request.request_id)
        assert result.status is Status.REJECTED and result.error_code is ErrorCode.INVALID_REQUEST
        assert "checkpoint" in result.message
        assert (result.kiosk_id, result.seq, result.card_uid) == (kiosk_id, request.seq, "A8000002")
        assert (result.previous_balance_cents, result.new_balance_cents) == (None, None)
        assert system.processed(request.request_id) == {
            "status": "rejected",
            "error_code": "INVALID_REQUEST",
        }
        kiosk.send(raw)  # stored for good: the same bytes replay the rejection
        replays = wait_until(
            lambda kiosk=kiosk, request_id=request.request_id: kiosk.results_for(request_id)[1:],
            timeout_s=10,
            what="the replayed rejection",
        )
        assert replays[0].replayed
        assert drawer_cents(system, foreign) == drawer_before
    assert system.balance("A8000002") == 1_000


def test_cup_returns_over_mqtt_mint_no_credit(system: System) -> None:
    """Reproduced over the kiosk's own path: 99 cups returned per tap, again and again."""
    fund(system, "A8000003", 1_000)
    bar = system.kiosks["bar-2"]
    back = BarItem("Cup back", 99, 200, is_deposit=True, is_return=True)
    for _ in range(2):
        order = bar.bar_order("A8000003", -19_800, items=(back,))
        bar.send(order)
        result = bar.wait_result(order.request_id)
        assert result.status is Status.DECLINED
        assert result.error_code is ErrorCode.RETURN_LIMIT_EXCEEDED
        assert (result.previous_balance_cents, result.new_balance_cents) == (1_000, 1_000)
    # Deposits first, then their return: paid back from the deposit account.
    cups = BarItem("Cup", 2, 200, is_deposit=True)
    bought = bar.bar_order("A8000003", 400, items=(cups,))
    bar.send(bought)
    assert bar.wait_result(bought.request_id).new_balance_cents == 600
    two_back = BarItem("Cup back", 2, 200, is_deposit=True, is_return=True)
    returned = bar.bar_order("A8000003", -400, items=(two_back,))
    bar.send(returned)
    assert bar.wait_result(returned.request_id).new_balance_cents == 1_000
    assert system.balance("A8000003") == 1_000
    assert system.ledger.check() == []


def test_the_consumer_applies_its_configured_return_limit(system: System) -> None:
    fund(system, "A8000005", 5_000)
    bar = system.kiosks["bar-1"]
    deposits = bar.bar_order("A8000005", 2_000, items=(BarItem("Cup", 10, 200, is_deposit=True),))
    bar.send(deposits)
    assert bar.wait_result(deposits.request_id).new_balance_cents == 3_000
    over = bar.bar_order(
        "A8000005", -1_200, items=(BarItem("Cup back", 6, 200, is_deposit=True, is_return=True),)
    )
    bar.send(over)
    declined = bar.wait_result(over.request_id)
    assert declined.error_code is ErrorCode.RETURN_LIMIT_EXCEEDED
    assert "12.00" in declined.message and "10.00" in declined.message
    within = bar.bar_order(
        "A8000005", -1_000, items=(BarItem("Cup back", 5, 200, is_deposit=True, is_return=True),)
    )
    bar.send(within)
    assert bar.wait_result(within.request_id).new_balance_cents == 4_000


def test_a_flood_of_junk_from_one_kiosk_stores_the_bound_and_counts_the_rest(
    system: System,
) -> None:
    """Reproduced: every junk message was a dead letter with up to 1 MiB of raw bytes, without
    bound. Now at most DEAD_LETTERS_PER_KIOSK_MINUTE_MAX per kiosk per minute are stored (a
    flood spans at most two minutes here), the rest only counted, each at most 8192 bytes."""
    from cloud.ledger_records import DEAD_LETTERS_PER_KIOSK_MINUTE_MAX as BOUND

    flooder = system.kiosks["bar-flood"]
    count = 3 * BOUND
    for number in range(count):
        flooder.send(b"junk %d " % number + b"x" * 10_000, wait=False)

    def received() -> int:
        return int(
            system.scalar(
                "SELECT coalesce(sum(received_count), 0) FROM dead_letter_counts"
                " WHERE kiosk_id = 'bar-flood'"
            )
        )

    wait_until(lambda: received() == count, timeout_s=60, what=f"{count} junk messages counted")
    with system.engine.connect() as connection:
        rows = [
            tuple(row)
            for row in connection.execute(
                sqlalchemy.text(
                    "SELECT stored_count, received_count FROM dead_letter_counts"
                    " WHERE kiosk_id = 'bar-flood'"
                )
            )
        ]
    assert 1 <= len(rows) <= 2 and all(stored <= BOUND for stored, _ in rows)
    kept = system.dead_letters("bar-flood")
    assert len(kept) == sum(stored for stored, _ in rows) <= 2 * BOUND < count
    letter = system.scalar(
        "SELECT jsonb_build_object('bytes', length(payload), 'length', payload_length,"
        " 'sha', encode(payload_sha256, 'hex')) FROM dead_letters"
        " WHERE kiosk_id = 'bar-flood' ORDER BY id LIMIT 1"
    )
    first = b"junk 0 " + b"x" * 10_000
    assert letter == {
        "bytes": 8192,
        "length": len(first),
        "sha": hashlib.sha256(first).hexdigest(),
    }
    # The consumer keeps serving the flooder's and everyone else's genuine requests.
    fund(system, "A8000004", 1_000)
    order = flooder.bar_order("A8000004", 100)
    flooder.send(order)
    assert flooder.wait_result(order.request_id, timeout_s=30).status is Status.APPROVED


# --- concurrency -------------------------------------------------------------------------------


def test_two_kiosks_on_one_card_never_overspend(system: System) -> None:
    fund(system, "A5000001", 3000)
    bars = [system.kiosks["bar-1"], system.kiosks["bar-2"]]
    orders = {
        kiosk.kiosk_id: [kiosk.bar_order("A5000001", 100) for _ in range(40)] for kiosk in bars
    }

    def burst(kiosk: KioskClient) -> None:
        for order in orders[kiosk.kiosk_id]:
            kiosk.send(order, wait=False)

    threads = [threading.Thread(target=burst, args=(kiosk,)) for kiosk in bars]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    results = [
        kiosk.wait_result(order.request_id, timeout_s=30)
        for kiosk in bars
        for order in orders[kiosk.kiosk_id]
    ]
    approved = [r for r in results if r.status is Status.APPROVED]
    declined = [r for r in results if r.status is Status.DECLINED]
    assert len(approved) == 30 and len(declined) == 50
    assert {r.error_code for r in declined} == {ErrorCode.INSUFFICIENT_FUNDS}
    assert sorted(r.new_balance_cents or 0 for r in approved) == list(range(0, 3000, 100))
    assert system.balance("A5000001") == 0
    assert system.ledger.check() == []


# --- scans and statuses ------------------------------------------------------------------------


def test_scans_are_logged_and_statuses_tracked(system: System) -> None:
    bar = system.kiosks["bar-2"]
    scan = ScanRecord(
        kiosk_id="bar-2",
        scanned_at_ms=now_ms(),
        card_uid="A6000001",
        status="ok",
        reader="Virtual PCD 00 00",
        duration_ms=42,
    )
    bar.publish(
        topic_for("festival", "bar-2", TopicKind.SCAN),
        encode_scan(scan, system.keys["bar-2"]),
        qos=0,
    )
    status = KioskStatus(kiosk_id="bar-2", state="online", at_ms=now_ms(), firmware="test-1")
    bar.publish(topic_for("festival", "bar-2", TopicKind.STATUS), encode_status(status))

    def scan_rows() -> list[tuple[Any, ...]]:
        with system.engine.connect() as connection:
            return [
                tuple(row)
                for row in connection.execute(
                    sqlalchemy.text(
                        "SELECT scan_status, reader FROM nfc_scan_log WHERE card_id = 'A6000001'"
                    )
                )
            ]

    rows = wait_until(scan_rows, timeout_s=10, what="the scan row")
    assert rows == [("ok", "Virtual PCD 00 00")]

    def bar_2_state() -> object:
        overview = {row["kiosk_id"]: row for row in system.ledger.kiosk_overview()}
        return overview["bar-2"]["state"] == "online" and overview["bar-2"]

    row = wait_until(bar_2_state, timeout_s=10, what="bar-2 online")
    assert row["last_seen_at"] is not None  # type: ignore[index]


# --- observability -----------------------------------------------------------------------------


def test_one_json_log_line_per_request_and_metrics(system: System) -> None:
    fund(system, "A7000001", 1000)
    bar = system.kiosks["bar-1"]
    order = bar.bar_order("A7000001", 100)
    bar.send(order)
    bar.wait_result(order.request_id)

    def line() -> dict[str, Any]:
        for entry in system.consumer.events("request processed"):
            if entry.get("request_id") == order.request_id:
                return entry
        return {}

    entry = wait_until(line, timeout_s=10, what="the log line")
    assert entry["kiosk_id"] == "bar-1" and entry["card_uid"] == "A7000001"
    assert entry["outcome"] == "approved" and entry["code"] is None
    assert isinstance(entry["duration_ms"], float | int)

    url = f"http://127.0.0.1:{system.consumer.metrics_port}/metrics"
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    assert 'festival_consumer_messages_total{code="",kind="tx",outcome="approved"}' in text
    assert 'festival_consumer_messages_total{code="INSUFFICIENT_FUNDS"' in text
    assert "festival_consumer_batch_size_bucket" in text
    assert "festival_consumer_processing_seconds_bucket" in text
    assert 'festival_consumer_dead_letters_total{code="INVALID_SIGNATURE",kind="tx"}' in text
    assert "festival_consumer_connected 1.0" in text


def test_ready_and_watchdog_are_notified_and_the_ledger_is_consistent(system: System) -> None:
    assert "READY=1" in system.consumer.read_notifications()
    pings = len([n for n in system.consumer.read_notifications() if n == "WATCHDOG=1"])
    wait_until(
        lambda: system.consumer.read_notifications().count("WATCHDOG=1") >= pings + 2,
        timeout_s=5,
        what="two more watchdog pings",
    )
    festival_cloud("check", database_url=system.database.owner_url)


# --- refusing to run ---------------------------------------------------------------------------


def test_a_signing_key_readable_by_others_is_refused_with_exit_code_2(
    cloud_key: CloudKey, service_dirs: Callable[[str], Path]
) -> None:
    loose = service_dirs("loose-key") / "cloud.pem"
    loose.write_bytes(cloud_key.path.read_bytes())
    loose.chmod(0o644)
    completed = festival_cloud(
        "consumer",
        database_url="postgresql://nobody@127.0.0.1:1/none",
        check=False,
        MQTT_URL="mqtt://nobody:none@127.0.0.1:1",
        CLOUD_SIGNING_KEY_FILE=str(loose),
    )
    assert completed.returncode == 2
    assert "CLOUD_SIGNING_KEY_FILE" in completed.stderr and "0600" in completed.stderr


def test_missing_settings_are_named(cloud_key: CloudKey) -> None:
    completed = festival_cloud(
        "consumer", database_url="postgresql://nobody@127.0.0.1:1/none", check=False
    )
    assert completed.returncode == 2
    assert "MQTT_URL" in completed.stderr and "CLOUD_SIGNING_KEY_FILE" in completed.stderr
