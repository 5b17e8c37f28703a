"""(1.1) The counter's requests through the real `festival-cloud consumer`: a void from a bar
kiosk and a card swap from a checkpoint, signed over Mosquitto, applied in PostgreSQL (revision
0016), answered with signed results; the roles refuse the other way round; replays replay."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cloud.ledger import Ledger
from cloud.sandbox import MosquittoBroker
from protocol.errors import ErrorCode, Status
from protocol.models import CardSwap, Void
from tests.consumer.conftest import CloudKey, LedgerDatabase
from tests.consumer.kiosk_client import KioskClient, now_ms, uuid7
from tests.consumer.site import consumer_site
from tests.waiting import wait_until

ROLES = {"counter-bar": "bar", "counter-gate": "checkpoint"}


@dataclass
class Counter:
    ledger: Ledger
    bar: KioskClient
    gate: KioskClient

    def void(self, kiosk: KioskClient, original_request_id: str, card_uid: str) -> Void:
        return Void(
            request_id=uuid7(),
            kiosk_id=kiosk.kiosk_id,
            seq=kiosk.next_seq(),
            created_at_ms=now_ms(),
            card_uid=card_uid,
            currency=kiosk.currency,
            original_request_id=original_request_id,
            staff_id="staff-1",
        )

    def swap(self, kiosk: KioskClient, old_card_uid: str, new_card_uid: str) -> CardSwap:
        return CardSwap(
            request_id=uuid7(),
            kiosk_id=kiosk.kiosk_id,
            seq=kiosk.next_seq(),
            created_at_ms=now_ms(),
            card_uid=new_card_uid,
            currency=kiosk.currency,
            old_card_uid=old_card_uid,
            staff_id="staff-1",
        )


@pytest.fixture(scope="module")
def counter(
    ledger_database: LedgerDatabase,
    cloud_key: CloudKey,
    mosquitto_broker: MosquittoBroker,
    service_dirs: Callable[[str], Path],
) -> Iterator[Counter]:
    with consumer_site(
        "counter",
        ROLES,
        ledger_database=ledger_database,
        cloud_key=cloud_key,
        broker=mosquitto_broker,
        service_dirs=service_dirs,
    ) as site:
        yield Counter(site.ledger, site.kiosks["counter-bar"], site.kiosks["counter-gate"])


def test_a_bar_voids_its_order_and_the_void_replays(counter: Counter) -> None:
    card = "04C0C0C0"
    top_up = counter.gate.recharge(card, 2_000)
    counter.gate.send(top_up)
    assert counter.gate.wait_result(top_up.request_id).approved
    order = counter.bar.bar_order(card, 750)
    counter.bar.send(order)
    assert counter.bar.wait_result(order.request_id).new_balance_cents == 1_250

    void = counter.void(counter.bar, order.request_id, card)
    raw = counter.bar.send(void)
    result = counter.bar.wait_result(void.request_id)
    assert (result.status, result.error_code, result.message) == (Status.APPROVED, None, "Voided")
    assert (result.kiosk_id, result.seq, result.card_uid) == ("counter-bar", void.seq, card)
    assert (result.previous_balance_cents, result.new_balance_cents, result.debt_cents) == (
        1_250,
        2_000,
        0,
    )
    counter.bar.send(raw)  # the kiosk retries the same bytes
    again = wait_until(
        lambda: [r for r in counter.bar.results_for(void.request_id) if r.replayed],
        timeout_s=15,
        what="the replayed void",
    )[0]
    assert again.transaction_id == result.transaction_id and again.new_balance_cents == 2_000

    second = counter.void(counter.bar, order.request_id, card)
    counter.bar.send(second)
    refused = counter.bar.wait_result(second.request_id)
    assert (refused.status, refused.error_code) == (Status.DECLINED, ErrorCode.VOID_NOT_ALLOWED)
    card_record = counter.ledger.card(card)
    assert card_record is not None and card_record.balance_cents == 2_000
    assert counter.ledger.check() == []


def test_a_checkpoint_swaps_a_band_and_a_later_void_follows_it(counter: Counter) -> None:
    old, new = "04C1C1C1", "04C2C2C2"
    top_up = counter.gate.recharge(old, 1_000)
    counter.gate.send(top_up)
    assert counter.gate.wait_result(top_up.request_id).approved
    order = counter.bar.bar_order(old, 300)
    counter.bar.send(order)
    assert counter.bar.wait_result(order.request_id).approved

    swap = counter.swap(counter.gate, old, new)
    counter.gate.send(swap)
    result = counter.gate.wait_result(swap.request_id)
    assert (result.status, result.message, result.card_uid) == (
        Status.APPROVED,
        "Wristband replaced",
        new,
    )
    assert (result.previous_balance_cents, result.new_balance_cents) == (0, 700)
    old_card = counter.ledger.card(old)
    assert old_card is not None and (old_card.status, old_card.balance_cents) == ("blocked", 0)

    void = counter.void(counter.bar, order.request_id, old)
    counter.bar.send(void)
    landed = counter.bar.wait_result(void.request_id)
    assert (landed.card_uid, landed.new_balance_cents) == (old, 1_000)  # the new band's balance
    new_card = counter.ledger.card(new)
    assert new_card is not None and new_card.balance_cents == 1_000
    assert counter.ledger.check() == []


def test_the_roles_refuse_a_swap_at_a_bar_and_a_void_at_a_checkpoint(counter: Counter) -> None:
    swap = counter.swap(counter.bar, "04C3C3C3", "04C4C4C4")
    counter.bar.send(swap)
    at_bar = counter.bar.wait_result(swap.request_id)
    void = counter.void(counter.gate, uuid7(), "04C3C3C3")
    counter.gate.send(void)
    at_gate = counter.gate.wait_result(void.request_id)
    for refused, kind in ((at_bar, "card_swap"), (at_gate, "void")):
        assert (refused.status, refused.error_code) == (
            Status.REJECTED,
            ErrorCode.OPERATION_NOT_ALLOWED,
        )
        assert kind in refused.message
        assert refused.previous_balance_cents is None
