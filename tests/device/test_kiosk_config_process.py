"""(1.1) `festival-kiosk run` and the cloud's config and deny-list on a real Mosquitto.

The broker runs the configuration the project generates (its ACL lets the kiosk read exactly its
result and config topics and the deny-list); the "cloud" publishes signed, retained messages as
the cloud's user, as `festival-cloud` does.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from cloud.sandbox import MosquittoBroker
from protocol.keys import generate_private_key
from protocol.limits import CONFIG_BYTES_MAX
from tests.device.cloud_messages import (
    DENYLIST_TOPIC,
    config_message,
    denylist_message,
    kiosk_config_topic,
    publish_retained,
    repriced,
)
from tests.device.conftest import CARD, CARD_BALANCE_CENTS
from tests.device.kiosk_process import KioskProcess
from tests.device.responder import FakeLedger, MqttResponder
from tests.waiting import wait_until

CONFIG_TOPIC = kiosk_config_topic("bar-1")
BLOCKED = "0A0B0C0D"


def log_lines(kiosk: KioskProcess, event: str) -> list[dict[str, Any]]:
    lines = []
    for text in kiosk.log_file.read_text(errors="replace").splitlines():
        try:
            line = json.loads(text)
        except ValueError:
            continue
        if isinstance(line, dict) and line.get("event") == event:
            lines.append(line)
    return lines


def test_a_retained_config_is_applied_kept_and_survives_a_restart_without_the_broker(
    kiosk_broker: MosquittoBroker,
    responder: MqttResponder,
    ledger: FakeLedger,
    make_kiosk: Callable[..., KioskProcess],
) -> None:
    # Published before the kiosk ever ran: retained, it is handed over on the first connect.
    publish_retained(kiosk_broker, CONFIG_TOPIC, config_message(ledger.cloud_key, version=2))
    publish_retained(kiosk_broker, DENYLIST_TOPIC, denylist_message(ledger.cloud_key, 4, [BLOCKED]))
    kiosk = make_kiosk(kiosk_broker).start()
    state = kiosk.wait_for(
        lambda s: s["online"] and s["config"]["version"] == 2 and s["denylist"]["version"] == 4,
        "the config and the deny-list to be applied",
    )
    assert state["config"]["menu"] == "config" and state["config"]["menu_id"] == "main-bar"
    assert state["config"]["offline_allowed"] is True
    assert state["denylist"]["cards"] == 1
    status, menu = kiosk.get("/api/menu")
    assert status == 200
    assert (menu["source"], menu["config_version"], menu["title"]) == ("config", 2, "main-bar")
    assert {product["sku"]: product["unit_price_cents"] for product in menu["products"]} == {
        "beer": 600,
        "water": 300,
        "cup": 200,
    }
    assert [deposit["sku"] for deposit in menu["deposits"]] == ["cup-return"]
    assert menu["tag"] == state["config"]["menu_tag"]

    # A sale: the central price, the config it ran, the exact lines of the menu.
    kiosk.sell([{"sku": "beer", "quantity": 1}, {"sku": "cup", "quantity": 1}], CARD)
    kiosk.wait_for(lambda s: s["screen"] == "approved", "the sale")
    [request_id] = ledger.received_ids()
    request = ledger.requests[request_id]
    assert request.config_version == 2
    assert ledger.balances[CARD] == CARD_BALANCE_CENTS - 800
    assert [r["event"] for r in log_lines(kiosk, "config applied")] == ["config applied"]

    # A reboot while the broker is down: the kiosk still runs (and sells from) version 2.
    assert kiosk.stop() == 0
    kiosk_broker.stop()
    kiosk.start()
    # The kept config and deny-list are loaded one after the other at start, before the kiosk
    # handles any tap (its HTTP page may show the first a moment before the second).
    state = kiosk.wait_for(
        lambda s: s["config"]["version"] == 2 and s["denylist"]["version"] == 4,
        "the kept config and deny-list",
    )
    assert state["online"] is False
    assert state["config"]["menu"] == "config" and state["denylist"]["cards"] == 1
    status, menu = kiosk.get("/api/menu")
    assert status == 200 and menu["config_version"] == 2
    assert len(log_lines(kiosk, "config loaded")) == 1
    kiosk_broker.start()
    state = kiosk.wait_for(lambda s: s["online"], "the kiosk to reconnect")
    # The retained copies arrive again after the reconnect: same versions, nothing to report.
    assert state["counters"]["cloud_messages_ignored"] == 0
    assert len(log_lines(kiosk, "config applied")) == 1


def test_configs_that_must_not_apply_are_ignored_and_logged(
    kiosk_broker: MosquittoBroker,
    responder: MqttResponder,
    ledger: FakeLedger,
    make_kiosk: Callable[..., KioskProcess],
) -> None:
    kiosk = make_kiosk(kiosk_broker).start()
    kiosk.wait_for(lambda s: s["online"], "the kiosk to connect")
    publish_retained(
        kiosk_broker, CONFIG_TOPIC, config_message(ledger.cloud_key, version=5, items=repriced(700))
    )
    applied = kiosk.wait_for(lambda s: s["config"]["version"] == 5, "version 5")
    attempts = [
        ("forged", config_message(generate_private_key(), version=6)),
        ("older", config_message(ledger.cloud_key, version=4)),
        ("another kiosk's", config_message(ledger.cloud_key, kiosk_id="bar-2", version=6)),
        ("oversize", b"A" * (CONFIG_BYTES_MAX + 1)),
    ]
    for count, (_, payload) in enumerate(attempts, start=1):
        publish_retained(kiosk_broker, CONFIG_TOPIC, payload)
        kiosk.wait_for(
            lambda s, count=count: s["counters"]["cloud_messages_ignored"] == count,
            f"ignored message {count}",
        )
    reasons = [line["reason"] for line in log_lines(kiosk, "config ignored")]
    assert reasons == [
        "INVALID_SIGNATURE: signature does not verify",
        "version 4 is older than 5",
        "INVALID_REQUEST: config is addressed to another kiosk",
        f"INVALID_REQUEST: message larger than {CONFIG_BYTES_MAX} bytes",
    ]
    assert all(line["level"] == "warning" for line in log_lines(kiosk, "config ignored"))
    state = kiosk.state()
    assert state["config"] == applied["config"]
    _, menu = kiosk.get("/api/menu")
    assert {p["sku"]: p["unit_price_cents"] for p in menu["products"]}["beer"] == 700
    # The kiosk kept version 5 on disk: the last retained message (the oversize one) is what
    # the broker will hand over after a restart, and is ignored again.
    assert kiosk.stop() == 0
    kiosk.start()
    state = kiosk.wait_for(
        lambda s: s["online"] and s["counters"]["cloud_messages_ignored"] == 1,
        "the retained oversize copy to be ignored after the restart",
    )
    assert state["config"]["version"] == 5


def test_a_denylist_is_applied_kept_and_newer_only(
    kiosk_broker: MosquittoBroker,
    responder: MqttResponder,
    ledger: FakeLedger,
    make_kiosk: Callable[..., KioskProcess],
) -> None:
    kiosk = make_kiosk(kiosk_broker).start()
    kiosk.wait_for(lambda s: s["online"], "the kiosk to connect")
    cards = [f"04{index:012X}" for index in range(6000)]
    publish_retained(kiosk_broker, DENYLIST_TOPIC, denylist_message(ledger.cloud_key, 8, cards))
    kiosk.wait_for(
        lambda s: s["denylist"] == {"version": 8, "cards": 6000}, "the 6000-card deny-list"
    )
    publish_retained(kiosk_broker, DENYLIST_TOPIC, denylist_message(ledger.cloud_key, 7, []))
    publish_retained(kiosk_broker, DENYLIST_TOPIC, denylist_message(generate_private_key(), 9, []))
    state = kiosk.wait_for(
        lambda s: s["counters"]["cloud_messages_ignored"] == 2, "two ignored deny-lists"
    )
    assert state["denylist"] == {"version": 8, "cards": 6000}
    assert [line["reason"] for line in log_lines(kiosk, "denylist ignored")] == [
        "version 7 is older than 8",
        "INVALID_SIGNATURE: signature does not verify",
    ]
    # Online the cloud decides: a sale on a listed card is still sent (this cloud approves it).
    kiosk.sell([{"sku": "shot", "quantity": 1}], CARD)
    kiosk.wait_for(lambda s: s["screen"] == "approved", "the sale")
    publish_retained(kiosk_broker, DENYLIST_TOPIC, denylist_message(ledger.cloud_key, 10, [CARD]))
    kiosk.wait_for(lambda s: s["denylist"] == {"version": 10, "cards": 1}, "version 10")


def test_an_order_priced_from_a_menu_the_kiosk_no_longer_sells_from_is_refused(
    kiosk_broker: MosquittoBroker,
    responder: MqttResponder,
    ledger: FakeLedger,
    make_kiosk: Callable[..., KioskProcess],
) -> None:
    kiosk = make_kiosk(kiosk_broker).start()
    kiosk.wait_for(lambda s: s["online"], "the kiosk to connect")
    status, file_menu = kiosk.get("/api/menu")
    assert status == 200 and file_menu["source"] == "file" and file_menu["config_version"] is None
    publish_retained(kiosk_broker, CONFIG_TOPIC, config_message(ledger.cloud_key, version=1))
    kiosk.wait_for(lambda s: s["config"]["version"] == 1, "the config")
    order = {"items": [{"sku": "beer", "quantity": 1}], "menu_tag": file_menu["tag"]}
    status, reply = kiosk.post("/api/order", order)
    assert (status, reply["error"]) == (409, "the menu changed: check the order and charge again")
    assert kiosk.state()["screen"] == "idle" and not kiosk.outbox_rows()
    status, menu = kiosk.get("/api/menu")
    assert status == 200 and menu["config_version"] == 1
    status, reply = kiosk.post("/api/order", {**order, "menu_tag": menu["tag"]})
    assert status == 200, reply
    assert reply["state"]["order"]["total_cents"] == 600
    assert reply["state"]["order"]["config_version"] == 1
    # A script that sends no tag is priced from the menu the kiosk sells from now.
    assert kiosk.post("/api/tap", {"card_uid": CARD})[0] == 202
    kiosk.wait_for(lambda s: s["screen"] == "approved", "the sale")
    wait_until(lambda: ledger.received_ids(), timeout_s=10, what="the request")
    assert ledger.requests[ledger.received_ids()[0]].config_version == 1


def test_old_retained_messages_replayed_while_the_kiosk_was_away_are_ignored(
    kiosk_broker: MosquittoBroker,
    responder: MqttResponder,
    ledger: FakeLedger,
    make_kiosk: Callable[..., KioskProcess],
) -> None:
    """Genuine, cloud-signed but older messages put back as the retained copies while the kiosk
    was down (a broker restored from an old backup, or a replay with the cloud's credentials):
    the restarted kiosk gets each twice (its durable session's copy and its new subscription's),
    ignores all four and logs why; the deny-list rollback, which would un-block a card, with
    them."""
    key = ledger.cloud_key
    old_config = config_message(key, version=1, items=repriced(300))
    old_denylist = denylist_message(key, 3, [])  # from before the card was blocked
    publish_retained(kiosk_broker, CONFIG_TOPIC, old_config)
    publish_retained(kiosk_broker, DENYLIST_TOPIC, old_denylist)
    publish_retained(kiosk_broker, CONFIG_TOPIC, config_message(key, version=2))
    publish_retained(kiosk_broker, DENYLIST_TOPIC, denylist_message(key, 4, [BLOCKED]))
    kiosk = make_kiosk(kiosk_broker).start()
    kiosk.wait_for(
        lambda s: s["online"] and s["config"]["version"] == 2 and s["denylist"]["version"] == 4,
        "the current config and deny-list",
    )
    assert kiosk.state()["counters"]["cloud_messages_ignored"] == 0
    assert kiosk.stop() == 0

    publish_retained(kiosk_broker, CONFIG_TOPIC, old_config)
    publish_retained(kiosk_broker, DENYLIST_TOPIC, old_denylist)
    kiosk.start()
    state = kiosk.wait_for(
        lambda s: s["online"] and s["counters"]["cloud_messages_ignored"] == 4,
        "the four replayed copies to be ignored",
    )
    assert state["config"]["version"] == 2
    assert state["denylist"] == {"version": 4, "cards": 1}
    assert [line["reason"] for line in log_lines(kiosk, "config ignored")][-2:] == [
        "version 1 is older than 2"
    ] * 2
    assert [line["reason"] for line in log_lines(kiosk, "denylist ignored")][-2:] == [
        "version 3 is older than 4"
    ] * 2
    _, menu = kiosk.get("/api/menu")
    assert {p["sku"]: p["unit_price_cents"] for p in menu["products"]}["beer"] == 600
