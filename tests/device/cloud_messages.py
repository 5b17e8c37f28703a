"""Signed config and deny-list messages for the kiosk's tests, as the cloud publishes them.

``config_message`` and ``denylist_message`` sign with a given (test) cloud key through the
protocol's own encoders; ``publish_retained`` puts one on a real broker as the cloud's user,
QoS 1 and retained, and waits for the broker's acknowledgement.
"""

from __future__ import annotations

import threading
from typing import Final

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.enums import CallbackAPIVersion

from cloud.sandbox import MosquittoBroker
from protocol.codec import encode_config, encode_denylist
from protocol.models import DenyList, KioskConfig, Menu, MenuItem, OfflinePolicy
from protocol.topics import config_topic, denylist_topic

PREFIX: Final = "festival"
ISSUED_AT_MS: Final = 1_760_000_000_000
PUBLISH_TIMEOUT_S: Final = 10.0

# A central menu: the beer costs 6.00 (the local file says 5.50), a cup deposit and its return
# are items of their own, and the shot is gone.
CENTRAL_ITEMS: Final = (
    MenuItem("beer", "Beer 0.5 l", 600, vat_rate_bp=1900, category="beer"),
    MenuItem("water", "Water 0.5 l", 300, category="soft"),
    MenuItem("cup", "Cup deposit", 200, is_deposit=True),
    MenuItem("cup-return", "Cup return", 200, is_deposit=True, is_return=True),
)
OFFLINE: Final = OfflinePolicy(sale_max_cents=2000, card_max_cents=5000, kiosk_max_cents=50_000)


def config(
    kiosk_id: str = "bar-1",
    version: int = 1,
    *,
    items: tuple[MenuItem, ...] | None = CENTRAL_ITEMS,
    menu_id: str = "main-bar",
    offline: OfflinePolicy | None = OFFLINE,
    currency: str = "EUR",
) -> KioskConfig:
    return KioskConfig(
        kiosk_id=kiosk_id,
        version=version,
        issued_at_ms=ISSUED_AT_MS + version,
        currency=currency,
        menu=None if items is None else Menu(menu_id, items),
        offline=offline,
    )


def config_message(
    key: Ed25519PrivateKey,
    kiosk_id: str = "bar-1",
    version: int = 1,
    *,
    items: tuple[MenuItem, ...] | None = CENTRAL_ITEMS,
    offline: OfflinePolicy | None = OFFLINE,
    currency: str = "EUR",
) -> bytes:
    made = config(kiosk_id, version, items=items, offline=offline, currency=currency)
    return encode_config(made, key)


def repriced(price_cents: int) -> tuple[MenuItem, ...]:
    """The central menu with the beer at ``price_cents``."""
    beer, *rest = CENTRAL_ITEMS
    return (MenuItem(beer.sku, beer.name, price_cents, vat_rate_bp=1900, category="beer"), *rest)


def denylist_message(key: Ed25519PrivateKey, version: int, cards: list[str]) -> bytes:
    return encode_denylist(DenyList(version, ISSUED_AT_MS + version, tuple(sorted(cards))), key)


def publish_retained(broker: MosquittoBroker, topic: str, payload: bytes) -> None:
    """Publish ``payload`` retained, QoS 1, as the cloud's user; return once the broker has it."""
    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=f"test-cloud-publisher-{threading.get_ident()}",
        protocol=mqtt.MQTTv5,
    )
    client.username_pw_set("cloud-consumer", broker.users["cloud-consumer"])
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    try:
        info = client.publish(topic, payload, qos=1, retain=True)
        info.wait_for_publish(PUBLISH_TIMEOUT_S)
        assert info.is_published(), f"the broker did not take the message on {topic}"
    finally:
        client.loop_stop()
        client.disconnect()


def kiosk_config_topic(kiosk_id: str = "bar-1") -> str:
    return config_topic(PREFIX, kiosk_id)


DENYLIST_TOPIC: Final = denylist_topic(PREFIX)
