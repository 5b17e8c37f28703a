"""(1.1) `festival-kiosk run` at the counter, as a real process with the real broker and the
stand-in consumer: "cancel" on a recent order (``void``) through the local HTTP API."""

from __future__ import annotations

from collections.abc import Callable

from cloud.sandbox import MosquittoBroker
from tests.device.conftest import CARD, CARD_BALANCE_CENTS
from tests.device.kiosk_process import KioskProcess
from tests.device.responder import FakeLedger, MqttResponder

BEER = [{"sku": "beer", "quantity": 2}]
BEER_CENTS = 2 * 550 + 2 * 200  # two beers and two cup deposits (default menu)


def test_cancel_a_recent_order_through_the_page_api(
    kiosk_broker: MosquittoBroker,
    responder: MqttResponder,
    ledger: FakeLedger,
    make_kiosk: Callable[..., KioskProcess],
) -> None:
    kiosk = make_kiosk(kiosk_broker).start()
    kiosk.wait_for(lambda s: s["online"], "the kiosk to connect")
    kiosk.sell(BEER, CARD)
    sold = kiosk.wait_for(lambda s: s["screen"] == "approved", "the sale to be approved")
    order_id = sold["outcome"]["request_id"]
    assert ledger.balances[CARD] == CARD_BALANCE_CENTS - BEER_CENTS
    [listed] = sold["orders"]["recent"]
    assert (listed["request_id"], listed["amount_cents"], listed["void"]) == (
        order_id,
        BEER_CENTS,
        None,
    )
    assert sold["orders"]["void_window_s"] == 900

    status, reply = kiosk.post("/api/void", {"request_id": order_id})
    assert status == 400, reply  # who cancels it?
    status, reply = kiosk.post("/api/void", {"request_id": order_id, "staff_id": "anna"})
    assert status == 200, reply
    state = kiosk.wait_for(
        lambda s: s["screen"] == "approved" and s["order"]["type"] == "void",
        "the void to be approved",
    )
    assert state["message"] == "order cancelled, 15.00 back"
    assert ledger.balances[CARD] == CARD_BALANCE_CENTS
    [(void_id, request)] = [
        (request_id, request)
        for request_id, request in ledger.requests.items()
        if request.type == "void"
    ]
    assert ledger.applied[void_id] == 1
    assert (request.original_request_id, request.card_uid, request.staff_id) == (  # type: ignore[union-attr]
        order_id,
        CARD,
        "anna",
    )
    assert state["orders"]["recent"][0]["void"] == "voided"
    status, reply = kiosk.post("/api/void", {"request_id": order_id, "staff_id": "anna"})
    assert (status, reply["message"]) == (409, "this order was already cancelled")
    assert kiosk.stop() == 0


NEW_BAND = "04B0B1B2B3B4B5"


def test_replace_a_wristband_typed_old_uid_then_the_new_bands_tap(
    kiosk_broker: MosquittoBroker,
    responder: MqttResponder,
    ledger: FakeLedger,
    make_kiosk: Callable[..., KioskProcess],
) -> None:
    kiosk = make_kiosk(kiosk_broker, "checkpoint-1", mode="checkpoint").start()
    kiosk.wait_for(lambda s: s["online"], "the kiosk to connect")
    assert "orders" not in kiosk.state()  # a checkpoint cancels no orders
    status, reply = kiosk.post("/api/void", {"request_id": "x", "staff_id": "anna"})
    assert status == 409, reply
    status, reply = kiosk.post("/api/swap", {"old_card_uid": "04 a1 b2 c3 d4 e5 f6"})
    assert status == 400, reply  # who replaces it?
    status, reply = kiosk.post(
        "/api/swap", {"old_card_uid": "04 a1 b2 c3 d4 e5 f6", "staff_id": "info-1"}
    )
    assert status == 200, reply
    assert reply["state"]["screen"] == "order_pending"
    assert reply["state"]["message"] == "replace ****E5F6: tap the NEW band"
    status, reply = kiosk.post("/api/tap", {"card_uid": CARD})  # the old band again: refused
    assert status == 202, reply
    kiosk.wait_for(
        lambda s: s["notice"] == "that is the old band: tap the NEW band", "the old band refused"
    )
    status, reply = kiosk.post("/api/tap", {"card_uid": NEW_BAND})
    assert status == 202, reply
    state = kiosk.wait_for(lambda s: s["screen"] == "approved", "the swap to be approved")
    assert (
        state["message"] == f"wristband replaced: the new band holds {CARD_BALANCE_CENTS // 100}.00"
    )
    assert state["outcome"]["card_uid"] == "****B4B5"
    assert ledger.balances[NEW_BAND] == CARD_BALANCE_CENTS
    assert ledger.balances.get(CARD, 0) == 0
    [(swap_id, swap)] = [
        (request_id, request)
        for request_id, request in ledger.requests.items()
        if request.type == "card_swap"
    ]
    assert ledger.applied[swap_id] == 1
    assert (swap.card_uid, swap.old_card_uid, swap.staff_id, swap.old_card_sun) == (  # type: ignore[union-attr]
        NEW_BAND,
        CARD,
        "info-1",
        None,
    )
    assert kiosk.stop() == 0


def test_replace_a_wristband_by_tapping_the_old_band_first(
    kiosk_broker: MosquittoBroker,
    responder: MqttResponder,
    ledger: FakeLedger,
    make_kiosk: Callable[..., KioskProcess],
) -> None:
    kiosk = make_kiosk(kiosk_broker, "checkpoint-1", mode="checkpoint").start()
    kiosk.wait_for(lambda s: s["online"], "the kiosk to connect")
    status, reply = kiosk.post("/api/swap", {"staff_id": "info-1"})
    assert status == 200, reply
    assert reply["state"]["message"].startswith("replace a wristband: tap the OLD band")
    assert kiosk.post("/api/tap", {"card_uid": CARD})[0] == 202
    kiosk.wait_for(
        lambda s: s["order"]["old_card_uid"] == "****E5F6", "the old band to be read", 10
    )
    assert kiosk.post("/api/tap", {"card_uid": NEW_BAND})[0] == 202
    kiosk.wait_for(lambda s: s["screen"] == "approved", "the swap to be approved")
    assert ledger.balances[NEW_BAND] == CARD_BALANCE_CENTS
    [swap] = [request for request in ledger.requests.values() if request.type == "card_swap"]
    assert (swap.card_uid, swap.old_card_uid) == (NEW_BAND, CARD)  # type: ignore[union-attr]
    # The old band is blocked now: replacing it again is the cloud's CARD_BLOCKED, shown.
    assert kiosk.post("/api/swap", {"staff_id": "info-1", "old_card_uid": CARD})[0] == 200
    assert kiosk.post("/api/tap", {"card_uid": "04C0C1C2C3C4C5"})[0] == 202
    state = kiosk.wait_for(lambda s: s["screen"] == "declined", "the second swap declined")
    assert state["outcome"]["error_code"] == "CARD_BLOCKED"
    assert kiosk.stop() == 0
