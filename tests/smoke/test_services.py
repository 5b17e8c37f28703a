"""Smoke tests: each real service the suite relies on starts and does its job."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
import sqlalchemy as sa
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from smartcard.CardMonitoring import CardMonitor, CardObserver
from smartcard.System import readers

from cloud.sandbox import MosquittoBroker
from device.virtual_card import VirtualCard
from tests.waiting import wait_until


def test_plpgsql_function_created_and_called(make_database: Callable[..., str]) -> None:
    engine = sa.create_engine(make_database())
    try:
        with engine.begin() as connection:
            connection.execute(
                sa.text(
                    "CREATE FUNCTION add_cents(a bigint, b bigint) RETURNS bigint "
                    "LANGUAGE plpgsql AS $$ BEGIN RETURN a + b; END $$"
                )
            )
            total = connection.execute(sa.text("SELECT add_cents(250, 9223372036854775000)"))
            assert total.scalar_one() == 9223372036854775250
            version = connection.execute(sa.text("SHOW server_version_num")).scalar_one()
            assert int(version) >= 150000
    finally:
        engine.dispose()


def _client(broker: MosquittoBroker, user: str) -> mqtt.Client:
    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=user,  # a kiosk's client id must equal its username
        protocol=mqtt.MQTTv5,
    )
    client.username_pw_set(user, broker.users[user])
    return client


def test_mqtt_acl_delivers_own_topic_and_refuses_foreign_topic(
    mosquitto_broker: MosquittoBroker,
) -> None:
    received: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
    pubacks: dict[int, ReasonCode] = {}
    connected = threading.Event()
    subscribed = threading.Event()

    cloud = _client(mosquitto_broker, "cloud-consumer")
    cloud.on_connect = lambda c, u, f, rc, p: connected.set()
    cloud.on_subscribe = lambda c, u, mid, rcs, p: subscribed.set()
    cloud.on_message = lambda c, u, message: received.put(message)
    cloud.connect("127.0.0.1", mosquitto_broker.port)
    cloud.loop_start()
    kiosk = _client(mosquitto_broker, "bar-1")

    def on_publish(c: Any, u: Any, mid: int, reason: ReasonCode, p: Properties) -> None:
        pubacks[mid] = reason

    kiosk.on_publish = on_publish
    try:
        assert connected.wait(10)
        cloud.subscribe("$share/ledger/festival/v1/kiosks/+/tx", qos=1)
        assert subscribed.wait(10)
        kiosk.connect("127.0.0.1", mosquitto_broker.port)
        kiosk.loop_start()
        own = kiosk.publish("festival/v1/kiosks/bar-1/tx", b"own", qos=1)
        foreign = kiosk.publish("festival/v1/kiosks/bar-2/tx", b"forged", qos=1)
        wait_until(lambda: own.mid in pubacks and foreign.mid in pubacks, what="both PUBACKs")
        assert not pubacks[own.mid].is_failure
        assert pubacks[foreign.mid].is_failure
        assert str(pubacks[foreign.mid]) == "Not authorized"
        message = received.get(timeout=10)
        assert (message.topic, message.payload, message.qos) == (
            "festival/v1/kiosks/bar-1/tx",
            b"own",
            1,
        )
        assert received.empty()
    finally:
        kiosk.loop_stop()
        kiosk.disconnect()
        cloud.loop_stop()
        cloud.disconnect()


class _RecordingObserver(CardObserver):  # type: ignore[misc]
    def __init__(self) -> None:
        self.events: queue.Queue[tuple[str, str]] = queue.Queue()

    def update(self, observable: object, handlers: Any) -> None:
        added, removed = handlers
        for card in added:
            self.events.put(("inserted", str(card.reader)))
        for card in removed:
            self.events.put(("removed", str(card.reader)))


def test_virtual_card_uid_read_through_pcscd(pcscd: object) -> None:
    wait_until(lambda: readers(), timeout_s=10, what="the vpcd readers")
    observer = _RecordingObserver()
    monitor = CardMonitor()
    monitor.addObserver(observer)
    card = VirtualCard("04A1B2C3D4E5F6")
    try:
        card.insert()
        assert observer.events.get(timeout=10) == ("inserted", "Virtual PCD 00 00")
        reader = next(r for r in readers() if str(r) == "Virtual PCD 00 00")
        connection = reader.createConnection()
        connection.connect()
        data, sw1, sw2 = connection.transmit([0xFF, 0xCA, 0x00, 0x00, 0x00])
        connection.disconnect()
        assert (bytes(data).hex().upper(), sw1, sw2) == ("04A1B2C3D4E5F6", 0x90, 0x00)
        card.remove()
        assert observer.events.get(timeout=10) == ("removed", "Virtual PCD 00 00")
    finally:
        card.remove()
        monitor.deleteObserver(observer)
