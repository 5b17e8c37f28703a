"""Kiosk processes against the real cloud: `festival-cloud consumer`, PostgreSQL, Mosquitto.

The broker is this test's own (tests/device/conftest.py): no durable consumer session left in
the "ledger" group by another test can take a share of these requests.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy

from cloud.database import service_url
from cloud.sandbox import MosquittoBroker
from device.keys import load_private_key, save_private_key
from protocol.keys import generate_private_key, public_key_b64
from tests.consumer.support import ConsumerProcess, festival_cloud
from tests.device.kiosk_process import KioskProcess
from tests.waiting import wait_until

CARD = "04C0FFEE123456"
BAR_KIOSK = "bar-2"
CHECKPOINT_KIOSK = "checkpoint-1"


@pytest.fixture
def cloud(
    database_url: str, kiosk_broker: MosquittoBroker, tmp_path: Path
) -> Iterator[tuple[str, Path, ConsumerProcess]]:
    """The real consumer on a fresh migrated database: (database url, cloud key file, consumer)."""
    key_file = tmp_path / "cloud.pem"
    save_private_key(generate_private_key(), key_file)
    consumer = ConsumerProcess(
        database_url=service_url(database_url),
        mqtt_url=kiosk_broker.url("cloud-consumer"),
        signing_key_file=key_file,
        consumer_id=f"consumer-kiosk-e2e-{tmp_path.name[-8:]}",
        workdir=tmp_path / "consumer",
    )
    try:
        consumer.start()
        yield database_url, key_file, consumer
    finally:
        consumer.close()


def start_kiosk(
    kiosk_id: str,
    mode: str,
    broker: MosquittoBroker,
    cloud_key_file: Path,
    database_url: str,
    tmp_path: Path,
    started: list[KioskProcess],
) -> KioskProcess:
    key_file = tmp_path / f"{kiosk_id}.pem"
    save_private_key(generate_private_key(), key_file)
    festival_cloud(
        "kiosk",
        "add",
        kiosk_id,
        f"--public-key={public_key_b64(load_private_key(key_file))}",
        "--role",
        mode,
        database_url=database_url,
    )
    kiosk = KioskProcess(
        env={
            "KIOSK_ID": kiosk_id,
            "KIOSK_KEY_FILE": str(key_file),
            "CLOUD_PUBLIC_KEY": public_key_b64(load_private_key(cloud_key_file)),
            "MQTT_URL": broker.url(kiosk_id),
            "KIOSK_STATE_DIR": str(tmp_path / f"state-{kiosk_id}"),
            "KIOSK_MODE": mode,
            "KIOSK_READER": "sim",
            "KIOSK_GPIO": "fake",
        },
        log_file=tmp_path / f"{kiosk_id}.log",
    )
    started.append(kiosk)
    kiosk.start()
    kiosk.wait_for(lambda s: s["online"], f"{kiosk_id} to connect")
    return kiosk


@pytest.fixture
def kiosks() -> Iterator[list[KioskProcess]]:
    started: list[KioskProcess] = []
    yield started
    for kiosk in started:
        kiosk.stop()


def test_top_up_then_sales_through_the_real_consumer(
    cloud: tuple[str, Path, ConsumerProcess],
    kiosk_broker: MosquittoBroker,
    tmp_path: Path,
    kiosks: list[KioskProcess],
) -> None:
    database_url, cloud_key_file, consumer = cloud
    try:
        sales_through_the_cloud(database_url, cloud_key_file, kiosk_broker, tmp_path, kiosks)
    except AssertionError as error:
        log = consumer.log_text()[-4000:]
        raise AssertionError(f"{error}\n--- consumer log ---\n{log}") from None


def sales_through_the_cloud(
    database_url: str,
    cloud_key_file: Path,
    kiosk_broker: MosquittoBroker,
    tmp_path: Path,
    kiosks: list[KioskProcess],
) -> None:
    start: Callable[[str, str], KioskProcess] = lambda kiosk_id, mode: start_kiosk(  # noqa: E731
        kiosk_id, mode, kiosk_broker, cloud_key_file, database_url, tmp_path, kiosks
    )
    checkpoint = start(CHECKPOINT_KIOSK, "checkpoint")
    bar = start(BAR_KIOSK, "bar")

    status, reply = checkpoint.post(
        "/api/recharge", {"amount_cents": 2_000, "payment_method": "cash", "staff_id": "anna"}
    )
    assert status == 200, reply
    assert checkpoint.post("/api/tap", {"card_uid": CARD})[0] == 202
    state = checkpoint.wait_for(lambda s: s["screen"] == "approved", "the top-up")
    assert (state["outcome"]["previous_balance_cents"], state["outcome"]["new_balance_cents"]) == (
        0,
        2_000,
    )

    bar.sell([{"sku": "beer", "quantity": 2}], CARD)  # 2 x 5.50 + 2 cups x 2.00
    state = bar.wait_for(lambda s: s["screen"] == "approved", "the sale")
    assert state["outcome"]["new_balance_cents"] == 500

    bar.sell([{"sku": "wine", "quantity": 1}], CARD)
    state = bar.wait_for(lambda s: s["screen"] == "declined", "the decline")
    assert state["outcome"]["error_code"] == "INSUFFICIENT_FUNDS"
    assert state["outcome"]["new_balance_cents"] == 500
    assert state["outbox"]["pending"] == 0

    shown = festival_cloud("card", "show", CARD, "--json", database_url=database_url)
    assert json.loads(shown.stdout)["balance_cents"] == 500
    festival_cloud("check", database_url=database_url)

    # Every tap also left a signed scan record in the seed's nfc_scan_log.
    engine = sqlalchemy.create_engine(database_url)
    try:

        def scans() -> list[tuple[str, str, str]]:
            with engine.connect() as connection:
                rows = connection.execute(
                    sqlalchemy.text(
                        "SELECT kiosk_id, card_id, scan_status FROM nfc_scan_log ORDER BY id"
                    )
                )
                return [(row[0], row[1], row[2]) for row in rows]

        wait_until(lambda: len(scans()) == 3, timeout_s=10, what="three scan records")
        assert sorted(scans()) == sorted(
            [(CHECKPOINT_KIOSK, CARD, "ok"), (BAR_KIOSK, CARD, "ok"), (BAR_KIOSK, CARD, "ok")]
        )
    finally:
        engine.dispose()
