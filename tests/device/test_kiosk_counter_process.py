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
