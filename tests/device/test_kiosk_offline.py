"""(1.1) Offline sales in the kiosk shell: its real outbox, codec and indicator player, the fake
link and the test responder; driven synchronously (``process_pending``).

The same behaviours with a real `festival-kiosk run` and a stopped Mosquitto:
test_kiosk_offline_process.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from device.machine import Signal, Tick
from device.menu import price_order
from protocol.codec import authenticate
from protocol.keys import generate_private_key
from protocol.models import OfflinePolicy
from tests.device.cloud_messages import DENYLIST_TOPIC, config_message, denylist_message
from tests.device.responder import FakeLedger
from tests.device.test_kiosk_config import BLOCKED, CONFIG_TOPIC, KIOSK_ID, UID, Rig, make_rig

POLICY = OfflinePolicy(sale_max_cents=2_000, card_max_cents=3_000, kiosk_max_cents=5_000)
BEER = {"items": [{"sku": "beer", "quantity": 2}]}  # 2 x 6.00 on the central menu
OTHER = "04A1B2C3D4E5F7"


@pytest.fixture
def ledger() -> FakeLedger:
    return FakeLedger(cloud_key=generate_private_key(), kiosk_keys={}, balances={UID: 500})


@pytest.fixture
def kiosk_key(ledger: FakeLedger) -> Any:
    key = generate_private_key()
    ledger.kiosk_keys[KIOSK_ID] = key.public_key()
    return key


@pytest.fixture
def rig(tmp_path: Path, ledger: FakeLedger, kiosk_key: Any) -> Iterator[Rig]:
    made = make_rig(tmp_path, ledger, kiosk_key, connect=True)
    made.retain(CONFIG_TOPIC, config_message(ledger.cloud_key, version=2, offline=POLICY))
    made.retain(DENYLIST_TOPIC, denylist_message(ledger.cloud_key, 1, [BLOCKED]))
    assert made.kiosk.offline_policy == POLICY
    yield made
    made.kiosk.close()


def tap(rig: Rig, document: dict[str, object], card_uid: str = UID) -> dict[str, Any]:
    """Enter ``document`` as the page would and tap ``card_uid``; the state after."""
    sales = rig.kiosk.sales_menu()
    assert sales.menu is not None
    draft = price_order(sales.menu, document, config_version=sales.config_version)
    rig._enter(draft)
    rig.reader.tap(card_uid)
    rig.kiosk.process_pending()
    return rig.state()


def signed_documents(rig: Rig) -> list[dict[str, Any]]:
    public = rig.kiosk_key.public_key()
    return [
        authenticate(
            entry.payload, topic_kiosk_id=KIOSK_ID, public_key_for=lambda k: public
        ).document
        for entry in rig.kiosk.outbox.outstanding()
    ]


def signals(rig: Rig) -> list[Signal]:
    return [signal for _, signal in rig.kiosk.indicators.signals]  # type: ignore[attr-defined]


def test_offline_a_sale_is_signed_offline_stored_and_shown_amber(rig: Rig) -> None:
    rig.link.disconnect()
    rig.kiosk.process_pending()
    state = tap(rig, BEER)
    assert state["screen"] == "approved_offline" and state["message"] == "Approved offline"
    assert state["outcome"] is None and state["order"]["total_cents"] == 1_200
    assert state["offline"]["pending"] == 1 and state["offline"]["pending_cents"] == 1_200
    assert signals(rig)[-1] is Signal.APPROVED_OFFLINE
    [document] = signed_documents(rig)
    assert document["offline"] is True and document["config_version"] == 2
    assert document["total_cents"] == 1_200
    assert rig.link.requests() == []  # nothing went out: the link is down


def test_offline_refusals_sign_and_store_nothing(rig: Rig) -> None:
    rig.link.disconnect()
    rig.kiosk.process_pending()
    state = tap(rig, BEER, BLOCKED)
    assert (state["screen"], state["notice"]) == ("order_pending", "card blocked")
    rig.kiosk.handle(_cancel())
    state = tap(rig, {"items": [{"sku": "beer", "quantity": 4}]})  # 24.00 > 20.00
    assert state["notice"] == "offline: over the offline limit"
    rig.kiosk.handle(_cancel())
    returned = {
        "items": [{"sku": "beer", "quantity": 1}],
        "returns": [{"sku": "cup-return", "quantity": 1}],
    }
    assert tap(rig, returned)["notice"] == "offline: returns need the network"
    assert rig.kiosk.outbox.outstanding() == [] and rig.kiosk.outbox.last_seq() == 0
    assert signals(rig)[-1] is Signal.DECLINED


def _cancel() -> Any:
    import queue

    from device.kiosk import Command
    from device.machine import CancelPressed

    return Command(CancelPressed(), queue.Queue(maxsize=1))


def test_back_online_the_sales_drain_in_seq_order_with_their_debts(
    rig: Rig, ledger: FakeLedger
) -> None:
    rig.link.disconnect()
    rig.kiosk.process_pending()
    for card_uid in (UID, OTHER, UID):
        assert tap(rig, BEER, card_uid)["screen"] == "approved_offline"
        rig.kiosk.handle(_dismiss())
    assert rig.state()["offline"]["pending_cents"] == 3_600
    # The card limit (30.00) counts this kiosk's unanswered sales to that card: 24.00 so far.
    assert tap(rig, BEER, UID)["notice"] == ("offline: over the offline limit for this card")
    rig.kiosk.handle(_cancel())
    seqs = [entry.seq for entry in rig.kiosk.outbox.outstanding()]
    rig.link.connect()
    rig.kiosk.process_pending()
    assert [ledger.requests[r].seq for r in ledger.received_ids()] == seqs
    assert all(ledger.applied[r] == 1 for r in ledger.received_ids())
    assert rig.kiosk.outbox.outstanding() == []
    # The card held 5.00: it paid that, the rest of its 24.00 is its debt.
    assert ledger.debts[UID] == 1_900 and ledger.debts[OTHER] == 1_200
    late = rig.state()["late_results"]
    assert [(entry["seq"], entry["offline"], entry["debt_cents"]) for entry in late] == [
        (seqs[0], True, 700),
        (seqs[1], True, 1_200),
        (seqs[2], True, 1_900),
    ]
    history = rig.kiosk.outbox.history()
    assert [(line.offline, line.debt_cents) for line in history] == [
        (True, 1_900),
        (True, 1_200),
        (True, 700),
    ]
    # The retained status said 3 on connect and says 0 at the next tick.
    assert rig.link.statuses[-1] == (3, 3_600)
    rig.kiosk.handle(Tick())
    assert rig.link.statuses[-1] == (0, 0)
    assert rig.state()["offline"]["pending"] == 0


def _dismiss() -> Any:
    import queue

    from device.kiosk import Command
    from device.machine import DismissPressed

    return Command(DismissPressed(), queue.Queue(maxsize=1))


def test_a_config_without_offline_policy_stops_offline_sales(rig: Rig, ledger: FakeLedger) -> None:
    rig.retain(CONFIG_TOPIC, config_message(ledger.cloud_key, version=3, offline=None))
    rig.link.disconnect()
    rig.kiosk.process_pending()
    assert tap(rig, BEER)["notice"] == "offline: this bar cannot sell offline"
    assert rig.kiosk.outbox.outstanding() == []
