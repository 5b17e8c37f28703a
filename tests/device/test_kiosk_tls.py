"""The kiosk's MQTT link over TLS (mqtts:// with MQTT_CA_FILE) against Mosquitto."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cloud.sandbox import free_port
from tests.device.conftest import CARD, CARD_BALANCE_CENTS, KIOSK_IDS
from tests.device.kiosk_process import KioskProcess
from tests.device.responder import FakeLedger, MqttResponder
from tests.tls import TlsBroker, TlsFiles, make_tls_files

BEER_CENTS = 2 * 550 + 2 * 200


@pytest.fixture
def tls_files(tmp_path: Path) -> TlsFiles:
    return make_tls_files(tmp_path)


@pytest.fixture
def tls_broker(tls_files: TlsFiles) -> Iterator[TlsBroker]:
    broker = TlsBroker(
        Path(tempfile.mkdtemp(prefix="festival-kiosk-tls-")), tls=tls_files, tls_port=free_port()
    )
    broker.add_user("cloud-consumer", role="cloud")
    for kiosk_id in KIOSK_IDS:
        broker.add_user(kiosk_id)
    broker.start()
    yield broker
    broker.stop()


def test_sale_over_tls_with_the_pinned_ca(
    tls_broker: TlsBroker,
    tls_files: TlsFiles,
    ledger: FakeLedger,
    make_kiosk: Callable[..., KioskProcess],
) -> None:
    responder = MqttResponder(tls_broker, ledger).start()
    try:
        kiosk = make_kiosk(
            tls_broker,
            mqtt_url=tls_broker.tls_url("bar-1"),
            MQTT_CA_FILE=str(tls_files.ca_file),
        ).start()
        kiosk.wait_for(lambda s: s["online"], "the kiosk to connect over TLS")
        kiosk.sell([{"sku": "beer", "quantity": 2}], CARD)
        state = kiosk.wait_for(lambda s: s["screen"] == "approved", "the sale over TLS")
        assert state["outcome"]["new_balance_cents"] == CARD_BALANCE_CENTS - BEER_CENTS
    finally:
        responder.stop()


def test_broker_certificate_from_another_ca_is_refused(
    tls_broker: TlsBroker, tls_files: TlsFiles, make_kiosk: Callable[..., KioskProcess]
) -> None:
    kiosk = make_kiosk(
        tls_broker,
        mqtt_url=tls_broker.tls_url("bar-1"),
        MQTT_CA_FILE=str(tls_files.other_ca_file),
    ).start()
    state = kiosk.wait_for(
        lambda s: s["link"]["reason"] is not None, "the TLS handshake to fail", timeout_s=10
    )
    assert not state["online"]
    assert kiosk.state()["online"] is False
