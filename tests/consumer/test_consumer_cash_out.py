"""Our `cash_out` request through the real `festival-cloud consumer`: a checkpoint kiosk signs
it over Mosquitto, PostgreSQL pays the card out (revision 0022) and the kiosk gets a signed
result saying what to hand out; the retried bytes replay; a bar kiosk may not send it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cloud.ledger import Ledger
from cloud.sandbox import MosquittoBroker
from protocol.errors import ErrorCode, Status
from protocol.models import CashOut
from tests.consumer.conftest import CloudKey, LedgerDatabase
from tests.consumer.kiosk_client import KioskClient, now_ms, uuid7
from tests.consumer.site import consumer_site
from tests.waiting import wait_until

ROLES = {"cash-bar": "bar", "cash-gate": "checkpoint"}


@dataclass
class Desk:
    ledger: Ledger
    bar: KioskClient
    gate: KioskClient


def _cash_out(kiosk: KioskClient, card_uid: str) -> CashOut:
    return CashOut(
        request_id=uuid7(),
        kiosk_id=kiosk.kiosk_id,
        seq=kiosk.next_seq(),
        created_at_ms=now_ms(),
        card_uid=card_uid,
        currency=kiosk.currency,
        staff_id="super-1",
    )


@pytest.fixture(scope="module")
def desk(
    ledger_database: LedgerDatabase,
    cloud_key: CloudKey,
    mosquitto_broker: MosquittoBroker,
    service_dirs: Callable[[str], Path],
) -> Iterator[Desk]:
    with consumer_site(
        "cash-out",
        ROLES,
        ledger_database=ledger_database,
        cloud_key=cloud_key,
        broker=mosquitto_broker,
        service_dirs=service_dirs,
    ) as site:
        yield Desk(site.ledger, site.kiosks["cash-bar"], site.kiosks["cash-gate"])


def test_a_checkpoint_cashes_a_card_out_once_and_the_retry_replays(desk: Desk) -> None:
    card = "04D0D0D0"
    top_up = desk.gate.recharge(card, 2_000)
    desk.gate.send(top_up)
    assert desk.gate.wait_result(top_up.request_id).approved
    order = desk.bar.bar_order(card, 750)
    desk.bar.send(order)
    assert desk.bar.wait_result(order.request_id).approved

    cash_out = _cash_out(desk.gate, card)
    raw = desk.gate.send(cash_out)
    result = desk.gate.wait_result(cash_out.request_id)
    assert (result.status, result.error_code) == (Status.APPROVED, None)
    assert result.message == "Pay 12.50 in cash. Wristband blocked"
    assert (result.kiosk_id, result.seq, result.card_uid) == ("cash-gate", cash_out.seq, card)
    assert (result.previous_balance_cents, result.new_balance_cents, result.debt_cents) == (
        1_250,
        0,
        0,
    )
    assert result.transaction_id is not None
    desk.gate.send(raw)  # the kiosk retries the same bytes
    again = wait_until(
        lambda: [r for r in desk.gate.results_for(cash_out.request_id) if r.replayed],
        timeout_s=15,
        what="the replayed cash-out",
    )[0]
    assert again.transaction_id == result.transaction_id and again.message == result.message

    second = _cash_out(desk.gate, card)
    desk.gate.send(second)
    refused = desk.gate.wait_result(second.request_id)
    assert (refused.status, refused.error_code) == (Status.DECLINED, ErrorCode.CARD_BLOCKED)
    card_record = desk.ledger.card(card)
    assert card_record is not None
    assert (card_record.balance_cents, card_record.status) == (0, "blocked")
    assert desk.ledger.check() == []


def test_a_bar_kiosk_may_not_cash_a_card_out(desk: Desk) -> None:
    card = "04D1D1D1"
    top_up = desk.gate.recharge(card, 500)
    desk.gate.send(top_up)
    assert desk.gate.wait_result(top_up.request_id).approved
    cash_out = _cash_out(desk.bar, card)
    desk.bar.send(cash_out)
    result = desk.bar.wait_result(cash_out.request_id)
    assert (result.status, result.error_code) == (
        Status.REJECTED,
        ErrorCode.OPERATION_NOT_ALLOWED,
    )
    card_record = desk.ledger.card(card)
    assert card_record is not None and card_record.balance_cents == 500
