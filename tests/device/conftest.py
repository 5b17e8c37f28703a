"""Fixtures for the kiosk's integration tests: a private broker, keys, the responder, kiosks.

The kiosk tests use their own Mosquitto (same sandbox class, same ACL and users as the session
broker) so that they can stop and restart it freely, and so that durable sessions of the
stand-in consumer never share the "ledger" group with the real consumer's tests.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cloud.sandbox import MosquittoBroker
from device.keys import save_private_key
from protocol.keys import generate_private_key, public_key_b64
from tests.device.kiosk_process import KioskProcess
from tests.device.responder import FakeLedger, MqttResponder

KIOSK_IDS = ("bar-1", "bar-2", "checkpoint-1")
CARD = "04A1B2C3D4E5F6"
CARD_BALANCE_CENTS = 10_000


def make_broker(root: Path) -> MosquittoBroker:
    broker = MosquittoBroker(root, prefix="festival")
    broker.add_user("cloud-consumer", role="cloud")
    broker.add_user("operator", role="observer")
    for kiosk_id in KIOSK_IDS:
        broker.add_user(kiosk_id)
    return broker


@pytest.fixture
def kiosk_broker() -> Iterator[MosquittoBroker]:
    """A broker of this test alone (stop, kill and restart it at will)."""
    root = Path(tempfile.mkdtemp(prefix="festival-kiosk-broker-"))
    broker = make_broker(root)
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture
def kiosk_key_files(tmp_path: Path) -> dict[str, Path]:
    files = {}
    for kiosk_id in KIOSK_IDS:
        path = tmp_path / f"{kiosk_id}.pem"
        save_private_key(generate_private_key(), path)
        files[kiosk_id] = path
    return files


@pytest.fixture
def ledger(kiosk_key_files: dict[str, Path]) -> FakeLedger:
    from device.keys import load_private_key

    return FakeLedger(
        cloud_key=generate_private_key(),
        kiosk_keys={
            kiosk_id: load_private_key(path).public_key()
            for kiosk_id, path in kiosk_key_files.items()
        },
        balances={CARD: CARD_BALANCE_CENTS},
    )


@pytest.fixture
def responder(kiosk_broker: MosquittoBroker, ledger: FakeLedger) -> Iterator[MqttResponder]:
    responder = MqttResponder(kiosk_broker, ledger).start()
    yield responder
    responder.stop()


@pytest.fixture
def make_kiosk(
    tmp_path: Path, kiosk_key_files: dict[str, Path], ledger: FakeLedger
) -> Iterator[Callable[..., KioskProcess]]:
    """Build (not start) a kiosk process; every one is stopped by its pid at teardown."""
    made: list[KioskProcess] = []

    def make(
        broker: MosquittoBroker,
        kiosk_id: str = "bar-1",
        *,
        mqtt_url: str | None = None,
        mode: str = "bar",
        **settings: str,
    ) -> KioskProcess:
        env = {
            "KIOSK_ID": kiosk_id,
            "KIOSK_KEY_FILE": str(kiosk_key_files[kiosk_id]),
            "CLOUD_PUBLIC_KEY": public_key_b64(ledger.cloud_key),
            "MQTT_URL": mqtt_url or broker.url(kiosk_id),
            "KIOSK_STATE_DIR": str(tmp_path / f"state-{kiosk_id}"),
            "KIOSK_MODE": mode,
            "KIOSK_READER": "sim",
            "KIOSK_GPIO": "fake",
            "KIOSK_RESULT_TIMEOUT_S": "3",
            **settings,
        }
        kiosk = KioskProcess(env=env, log_file=tmp_path / f"{kiosk_id}.log")
        made.append(kiosk)
        return kiosk

    yield make
    for kiosk in made:
        kiosk.stop()
