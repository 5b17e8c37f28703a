"""(1.1) Offline sales with a real `festival-kiosk run` (KIOSK_READER=sim) and a real Mosquitto
that is stopped, frozen and started again; the test responder answers as the cloud.

The broker runs the configuration the project generates; the "cloud" publishes the signed,
retained config (with an offline policy) and deny-list as the cloud's user.
"""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from cloud.sandbox import MosquittoBroker
from protocol.jws import parse_compact
from protocol.models import OfflinePolicy
from tests.device.cloud_messages import (
    DENYLIST_TOPIC,
    config_message,
    denylist_message,
    kiosk_config_topic,
    publish_retained,
)
from tests.device.conftest import CARD, CARD_BALANCE_CENTS
from tests.device.kiosk_process import KioskProcess
from tests.device.responder import FakeLedger, MqttResponder
from tests.waiting import wait_until

CONFIG_TOPIC = kiosk_config_topic("bar-1")
STATUS_TOPIC = "festival/v1/kiosks/bar-1/status"
BLOCKED = "0A0B0C0D"
# Cards the cloud does not know: their offline sales become debts.
STRANGERS = ("04B1B2C3D4E5F6", "04C1B2C3D4E5F6", "04D1B2C3D4E5F6")
POLICY = OfflinePolicy(sale_max_cents=2_000, card_max_cents=3_000, kiosk_max_cents=5_000)
TWO_BEERS = [{"sku": "beer", "quantity": 2}]  # 2 x 6.00 on the central menu
# Fast resends: after the broker comes back, a publish it answers "no matching subscribers"
# (the responder has not resubscribed yet) is sent again soon.
SETTINGS = {"KIOSK_RESEND_AFTER_S": "0.5", "KIOSK_OFFLINE_AFTER_S": "1"}


class StatusWatcher:
    """The kiosk's retained status, as an observer on the broker sees it."""

    def __init__(self, broker: MosquittoBroker) -> None:
        self.statuses: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id="test-status-watcher",
            protocol=mqtt.MQTTv5,
        )
        client.username_pw_set("operator", broker.users["operator"])
        client.on_connect = lambda c, *args: c.subscribe(STATUS_TOPIC, qos=1)
        client.on_message = self._on_message
        client.reconnect_delay_set(1, 2)
        client.connect("127.0.0.1", broker.port)
        client.loop_start()
        self.client = client

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.statuses.append(json.loads(message.payload))

    def latest(self) -> dict[str, Any]:
        with self._lock:
            return self.statuses[-1] if self.statuses else {}

    def stop(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def offline_kiosk(
    broker: MosquittoBroker, ledger: FakeLedger, make_kiosk: Callable[..., KioskProcess]
) -> KioskProcess:
    """A kiosk running config 2 (with POLICY) and deny-list 1 (BLOCKED), online."""
    publish_retained(
        broker, CONFIG_TOPIC, config_message(ledger.cloud_key, version=2, offline=POLICY)
    )
    publish_retained(broker, DENYLIST_TOPIC, denylist_message(ledger.cloud_key, 1, [BLOCKED]))
    kiosk = make_kiosk(broker, **SETTINGS).start()
    kiosk.wait_for(
        lambda s: s["online"] and s["config"]["version"] == 2 and s["denylist"]["version"] == 1,
        "the config and deny-list",
    )
    return kiosk


def sell(kiosk: KioskProcess, items: list[dict[str, object]], card_uid: str) -> dict[str, Any]:
    """Enter, tap, and the state once the kiosk decided (approved offline, or refused)."""
    kiosk.sell(items, card_uid)
    state = kiosk.wait_for(
        lambda s: (
            s["screen"] == "approved_offline" or (s["screen"] == "order_pending" and s["notice"])
        ),
        "the kiosk's offline decision",
    )
    status, reply = kiosk.post(
        "/api/dismiss" if state["screen"] == "approved_offline" else "/api/cancel", {}
    )
    assert status == 200, reply
    return state


def refused(kiosk: KioskProcess, items: list[dict[str, object]], card_uid: str) -> str:
    state = sell(kiosk, items, card_uid)
    assert state["screen"] == "order_pending", state
    return str(state["notice"])


def stored_documents(kiosk: KioskProcess) -> list[dict[str, Any]]:
    return [json.loads(parse_compact(payload).payload) for _, _, payload in kiosk.outbox_rows()]


@pytest.fixture
def watcher(kiosk_broker: MosquittoBroker) -> Iterator[StatusWatcher]:
    made = StatusWatcher(kiosk_broker)
    yield made
    made.stop()


def test_broker_stopped_sales_within_the_limits_are_approved_offline_and_survive_kill_9(
    kiosk_broker: MosquittoBroker,
    responder: MqttResponder,
    ledger: FakeLedger,
    make_kiosk: Callable[..., KioskProcess],
    watcher: StatusWatcher,
) -> None:
    kiosk = offline_kiosk(kiosk_broker, ledger, make_kiosk)
    kiosk_broker.stop()
    kiosk.wait_for(lambda s: not s["online"], "the kiosk to notice the broker is gone")

    approved = sell(kiosk, TWO_BEERS, CARD)
    assert approved["screen"] == "approved_offline" and approved["message"] == "Approved offline"
    assert approved["outcome"] is None  # no balance shown: the kiosk does not know one
    assert approved["offline"]["pending"] == 1 and approved["offline"]["pending_cents"] == 1_200
    # Each limit, and what is refused beyond it (nothing signed, nothing stored).
    assert refused(kiosk, TWO_BEERS, BLOCKED) == "card blocked"
    assert refused(kiosk, [{"sku": "beer", "quantity": 4}], CARD) == (
        "offline: over the offline limit"
    )
    sell(kiosk, TWO_BEERS, CARD)  # 24.00 to this card
    assert refused(kiosk, TWO_BEERS, CARD) == "offline: over the offline limit for this card"
    sell(kiosk, TWO_BEERS, STRANGERS[0])
    sell(kiosk, TWO_BEERS, STRANGERS[1])  # 48.00 in all
    assert refused(kiosk, [{"sku": "beer", "quantity": 1}], STRANGERS[2]) == (
        "offline limit of this bar reached"
    )
    documents = stored_documents(kiosk)
    assert [d["card_uid"] for d in documents] == [CARD, CARD, STRANGERS[0], STRANGERS[1]]
    assert all(d["offline"] is True and d["config_version"] == 2 for d in documents)
    assert [d["seq"] for d in documents] == [1, 2, 3, 4]

    # kill -9 while offline, restart still offline: the sales and the totals are intact.
    rows = kiosk.outbox_rows()
    kiosk.kill()
    kiosk.start()
    state = kiosk.wait_for(
        lambda s: s["offline"]["pending"] == 4 and s["config"]["version"] == 2, "the kept sales"
    )
    assert state["online"] is False and state["offline"]["pending_cents"] == 4_800
    assert kiosk.outbox_rows() == rows
    assert refused(kiosk, [{"sku": "beer", "quantity": 1}], STRANGERS[2]) == (
        "offline limit of this bar reached"
    )
    assert refused(kiosk, TWO_BEERS, CARD) == "offline: over the offline limit for this card"

    # The broker is back: every sale is sent (in seq order) and applied once. The arrival order
    # is not asserted: what the restarted broker took before the responder had resubscribed is
    # dropped and comes back with the kiosk's resend, behind later ones (docs/protocol.md).
    kiosk_broker.start()
    state = kiosk.wait_for(
        lambda s: s["online"] and s["outbox"]["pending"] == 0, "the backlog to drain", 30
    )
    assert sorted({ledger.requests[r].seq for r in ledger.received_ids()}) == [1, 2, 3, 4]
    assert sorted(ledger.applied.values()) == [1, 1, 1, 1]
    assert ledger.balances[CARD] == CARD_BALANCE_CENTS - 2_400
    assert (ledger.debts[STRANGERS[0]], ledger.debts[STRANGERS[1]]) == (1_200, 1_200)
    late = sorted(state["late_results"], key=lambda entry: entry["seq"])
    assert [(entry["seq"], entry["offline"], entry["debt_cents"]) for entry in late] == [
        (1, True, 0),
        (2, True, 0),
        (3, True, 1_200),
        (4, True, 1_200),
    ]
    assert state["offline"]["pending"] == 0
    # The retained status said what was pending, and says 0 once it is answered.
    wait_until(
        lambda: (
            watcher.latest().get("offline_pending") == 0
            and watcher.latest().get("state") == "online"
        ),
        timeout_s=15,
        what="the status with nothing pending",
    )
    assert any(status.get("offline_pending") == 4 for status in watcher.statuses) or any(
        status.get("offline_pending_cents") == 4_800 for status in watcher.statuses
    )


def test_no_policy_and_returns_are_refused_offline(
    kiosk_broker: MosquittoBroker,
    responder: MqttResponder,
    ledger: FakeLedger,
    make_kiosk: Callable[..., KioskProcess],
) -> None:
    kiosk = offline_kiosk(kiosk_broker, ledger, make_kiosk)
    kiosk_broker.stop()
    kiosk.wait_for(lambda s: not s["online"], "offline")
    kiosk.post("/api/order", {"items": [{"sku": "beer", "quantity": 1}], "returns": []})
    kiosk.post("/api/cancel", {})
    status, reply = kiosk.post(
        "/api/order",
        {
            "items": [{"sku": "beer", "quantity": 1}],
            "returns": [{"sku": "cup-return", "quantity": 1}],
        },
    )
    assert status == 200, reply
    kiosk.post("/api/tap", {"card_uid": CARD})
    state = kiosk.wait_for(lambda s: s["notice"], "the refusal")
    assert state["notice"] == "offline: returns need the network"
    kiosk.post("/api/cancel", {})
    # A config without an offline policy, applied while online, then offline again.
    kiosk_broker.start()
    kiosk.wait_for(lambda s: s["online"], "back online")
    publish_retained(
        kiosk_broker, CONFIG_TOPIC, config_message(ledger.cloud_key, version=3, offline=None)
    )
    kiosk.wait_for(lambda s: s["config"]["version"] == 3, "config 3")
    kiosk_broker.stop()
    kiosk.wait_for(lambda s: not s["online"], "offline again")
    assert refused(kiosk, TWO_BEERS, CARD) == "offline: this bar cannot sell offline"
    assert kiosk.outbox_rows() == []


def test_a_request_published_online_that_times_out_stays_online(
    kiosk_broker: MosquittoBroker,
    responder: MqttResponder,
    ledger: FakeLedger,
    make_kiosk: Callable[..., KioskProcess],
) -> None:
    kiosk = offline_kiosk(kiosk_broker, ledger, make_kiosk)
    responder.hold = True  # the cloud does not answer (yet)
    kiosk.sell(TWO_BEERS, CARD)
    kiosk.wait_for(lambda s: s["screen"] == "timed_out", "the timeout")
    kiosk.post("/api/dismiss", {})
    kiosk_broker.stop()
    kiosk.wait_for(lambda s: not s["online"], "offline")
    second = sell(kiosk, TWO_BEERS, STRANGERS[0])
    assert second["screen"] == "approved_offline"
    first, offline = stored_documents(kiosk)
    assert "offline" not in first  # signed online, stays online: never re-signed
    assert offline["offline"] is True
    state = kiosk.state()
    assert state["offline"]["pending"] == 1 and state["outbox"]["pending"] == 2
    kiosk_broker.start()
    responder.release()
    kiosk.wait_for(lambda s: s["outbox"]["pending"] == 0, "both answered", 30)
    assert ledger.requests[first["request_id"]].offline is False  # type: ignore[union-attr]
    assert ledger.requests[offline["request_id"]].offline is True  # type: ignore[union-attr]
    assert ledger.applied[first["request_id"]] == 1 and ledger.applied[offline["request_id"]] == 1


def test_a_broker_that_stops_acknowledging_makes_the_next_sale_offline(
    kiosk_broker: MosquittoBroker,
    responder: MqttResponder,
    ledger: FakeLedger,
    make_kiosk: Callable[..., KioskProcess],
) -> None:
    """A frozen broker (SIGSTOP: the TCP connection stays up, no PUBACK comes) is noticed
    after KIOSK_OFFLINE_AFTER_S (1 s here), long before MQTT's keepalive would say so."""
    kiosk = offline_kiosk(kiosk_broker, ledger, make_kiosk)
    process = kiosk_broker.process
    assert process is not None
    process.send_signal(signal.SIGSTOP)
    try:
        kiosk.sell(TWO_BEERS, CARD)
        state = kiosk.wait_for(lambda s: s["offline"]["active"], "the stale link to be noticed")
        assert state["online"] is True  # TCP has not noticed anything
        kiosk.wait_for(lambda s: s["screen"] == "timed_out", "the first sale's timeout")
        kiosk.post("/api/dismiss", {})
        second = sell(kiosk, TWO_BEERS, STRANGERS[0])
        assert second["screen"] == "approved_offline"
    finally:
        process.send_signal(signal.SIGCONT)
    first, offline = stored_documents(kiosk)
    assert "offline" not in first and offline["offline"] is True
    kiosk.wait_for(lambda s: s["outbox"]["pending"] == 0, "both answered", 30)
    assert sorted(ledger.applied.values()) == [1, 1]
    kiosk.wait_for(lambda s: s["online"] and not s["offline"]["active"], "online again")
