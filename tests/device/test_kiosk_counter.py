"""(1.1) At the counter, in the shell with its real outbox and codec and the stand-in ledger:
"cancel" on one of this kiosk's recent orders (``void``), and "replace a wristband"
(``card_swap``) at a checkpoint. Driven synchronously (``process_pending``), like
tests/device/test_kiosk_shell.py."""

from __future__ import annotations

import json
import queue
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from device.kiosk import Command, CommandEvent, SystemClock, VoidPressed
from device.machine import DismissPressed, Mode, OrderEntered, Reply, SwapDraft
from protocol.codec import authenticate
from protocol.models import CardSun
from tests.device.responder import FakeLedger
from tests.device.test_kiosk_shell import CONFIG, KIOSK_ID, UID, Rig, keys, make_rig

NEW = "04B0B1B2B3B4B5"

__all__ = ["keys"]  # the fixture, shared with tests/device/test_kiosk_shell.py


def command(rig: Rig, event: CommandEvent) -> Reply:
    reply: queue.Queue[Reply] = queue.Queue(maxsize=1)
    rig.kiosk.handle(Command(event, reply))
    answer = reply.get_nowait()
    rig.kiosk.process_pending()  # the (fake) link's result, if one came
    return answer


def sell(rig: Rig) -> str:
    """One approved beer order (2 x 5.50 = 11.00); its request_id."""
    assert rig.order().ok
    rig.tap()
    state = rig.state()
    assert state["screen"] == "approved", state
    assert isinstance(state["outcome"], dict)
    request_id = state["outcome"]["request_id"]
    assert isinstance(request_id, str)
    assert command(rig, DismissPressed()).ok
    return request_id


def recent(rig: Rig) -> list[dict[str, Any]]:
    orders = rig.state()["orders"]
    assert isinstance(orders, dict)
    listed = orders["recent"]
    assert isinstance(listed, list)
    return listed


def wire(rig: Rig, request_id: str) -> dict[str, Any]:
    """The signed body of a request the kiosk published, as the cloud reads it."""
    for payload in rig.link.requests():
        message = authenticate(
            payload,
            topic_kiosk_id=KIOSK_ID,
            public_key_for=rig.ledger.kiosk_keys.get,
        )
        body = json.loads(message.payload)
        if body["request_id"] == request_id:
            return dict(body)
    raise AssertionError(f"{request_id} was not published")


@pytest.fixture
def counter_rig(tmp_path: Path, keys: tuple[object, FakeLedger]) -> Iterator[Rig]:
    kiosk_key, ledger = keys
    rig = make_rig(tmp_path, ledger, kiosk_key=kiosk_key)
    rig.link.connect()
    rig.kiosk.process_pending()
    yield rig
    rig.kiosk.close()


def test_cancel_a_recent_order_sends_a_void_on_its_card_and_shows_the_money_back(
    counter_rig: Rig,
) -> None:
    rig = counter_rig
    order_id = sell(rig)
    assert rig.ledger.balances[UID] == 3_900
    [listed] = recent(rig)
    assert listed["request_id"] == order_id
    assert (listed["amount_cents"], listed["void"], listed["card_uid"]) == (1100, None, "****E5F6")
    assert listed["cancellable_until_ms"] == listed["created_at_ms"] + 900_000

    reply = command(rig, VoidPressed(order_id, "anna"))
    assert reply.ok, reply
    state = rig.state()
    assert state["screen"] == "approved", state
    assert state["message"] == "order cancelled, 11.00 back"
    assert rig.ledger.balances[UID] == 5_000
    void_id = state["outcome"]["request_id"]  # type: ignore[index]
    body = wire(rig, void_id)
    assert body["type"] == "void"
    assert (body["original_request_id"], body["card_uid"], body["staff_id"]) == (
        order_id,
        UID,
        "anna",
    )
    assert "amount_cents" not in body
    assert rig.kiosk.outbox.history()[0].kind == "void"
    assert recent(rig)[0]["void"] == "voided"
    # Once only: the kiosk refuses a second cancel itself, nothing is sent.
    published = len(rig.link.requests())
    again = command(rig, VoidPressed(order_id, "anna"))
    assert (again.ok, again.message) == (False, "this order was already cancelled")
    assert len(rig.link.requests()) == published


def test_a_void_is_never_made_offline(counter_rig: Rig) -> None:
    rig = counter_rig
    order_id = sell(rig)
    published = len(rig.link.requests())
    rig.link.disconnect()
    rig.kiosk.process_pending()
    reply = command(rig, VoidPressed(order_id, "anna"))
    assert not reply.ok
    assert reply.message.startswith("offline: an order can only be cancelled online")
    assert len(rig.kiosk.outbox) == 0
    assert len(rig.link.requests()) == published
    assert recent(rig)[0]["void"] is None
    assert rig.ledger.balances[UID] == 3_900


class LaterClock(SystemClock):
    """The real clocks, the wall clock moved ``ahead_ms`` into the future when a test says so."""

    def __init__(self) -> None:
        self.ahead_ms = 0

    def wall_ms(self) -> int:
        return super().wall_ms() + self.ahead_ms


def test_unknown_and_too_old_orders_are_refused_on_the_spot(
    tmp_path: Path, keys: tuple[object, FakeLedger]
) -> None:
    kiosk_key, ledger = keys
    clock = LaterClock()
    rig = make_rig(tmp_path, ledger, kiosk_key=kiosk_key, void_window_s=60, clock=clock)
    try:
        rig.link.connect()
        rig.kiosk.process_pending()
        order_id = sell(rig)
        unknown = command(rig, VoidPressed("0190f0aa-0000-7000-8000-000000000000", "anna"))
        assert (unknown.ok, unknown.message) == (False, "not a recent approved order of this kiosk")
        [listed] = recent(rig)
        assert listed["cancellable_until_ms"] == listed["created_at_ms"] + 60_000
        clock.ahead_ms = 60_001  # one millisecond beyond the window
        late = command(rig, VoidPressed(order_id, "anna"))
        assert (late.ok, late.message) == (
            False,
            "too late: an order can be cancelled within 1 minutes",
        )
        assert len(rig.kiosk.outbox) == 0
        assert rig.ledger.balances[UID] == 3_900
    finally:
        rig.kiosk.close()


def test_the_clouds_refusal_is_shown_with_its_message(counter_rig: Rig) -> None:
    rig = counter_rig
    order_id = sell(rig)
    rig.ledger.ledger.void_window_s = -1  # the cloud's window is already over
    assert command(rig, VoidPressed(order_id, "anna")).ok
    state = rig.state()
    assert state["screen"] == "declined", state
    outcome = state["outcome"]
    assert isinstance(outcome, dict)
    assert outcome["error_code"] == "VOID_NOT_ALLOWED"
    assert state["message"] == outcome["message"] and outcome["message"]
    assert rig.ledger.balances[UID] == 3_900
    assert recent(rig)[0]["void"] is None  # "cancel" is offered again (the cloud decides)


def test_the_recent_orders_and_their_voids_survive_a_restart(
    tmp_path: Path, keys: tuple[object, FakeLedger], counter_rig: Rig
) -> None:
    rig = counter_rig
    voided_id = sell(rig)
    assert command(rig, VoidPressed(voided_id, "anna")).ok
    assert command(rig, DismissPressed()).ok
    cancelling_id = sell(rig)
    rig.link.responder = None  # the cloud stops answering: this void stays pending
    assert command(rig, VoidPressed(cancelling_id, "anna")).ok
    assert len(rig.kiosk.outbox) == 1
    rig.kiosk.close()
    kiosk_key, ledger = keys
    again = make_rig(tmp_path, ledger, kiosk_key=kiosk_key)
    try:
        assert [(order["request_id"], order["void"]) for order in recent(again)] == [
            (cancelling_id, "pending"),
            (voided_id, "voided"),
        ]
        refused = command(again, VoidPressed(voided_id, "anna"))
        assert (refused.ok, refused.message) == (False, "this order was already cancelled")
    finally:
        again.kiosk.close()


def test_a_swap_carries_the_old_bands_sun_when_it_was_tapped_and_gave_one(
    tmp_path: Path, keys: tuple[object, FakeLedger]
) -> None:
    kiosk_key, ledger = keys
    rig = make_rig(
        tmp_path, ledger, kiosk_key=kiosk_key, config=replace(CONFIG, mode=Mode.CHECKPOINT)
    )
    try:
        rig.link.connect()
        rig.kiosk.process_pending()
        sun = CardSun(picc_data="0" * 32, cmac="1" * 16)
        assert command(rig, OrderEntered(SwapDraft(staff_id="info-1"))).ok
        rig.reader.tap(UID, "ok", sun)
        rig.kiosk.process_pending()
        assert len(rig.kiosk.outbox) == 0 and not rig.link.requests()  # the old band only
        rig.tap(NEW)
        [payload] = rig.link.requests()
        body = json.loads(
            authenticate(
                payload, topic_kiosk_id=KIOSK_ID, public_key_for=rig.ledger.kiosk_keys.get
            ).payload
        )
        assert body["type"] == "card_swap"
        assert (body["card_uid"], body["old_card_uid"], body["staff_id"]) == (NEW, UID, "info-1")
        assert body["old_card_sun"] == {"picc_data": "0" * 32, "cmac": "1" * 16}
        assert "card_sun" not in body
        assert rig.kiosk.outbox.history()[0].kind == "card_swap"
        assert rig.state()["screen"] == "approved"
        assert rig.ledger.balances[NEW] == 5_000
    finally:
        rig.kiosk.close()
