"""(1.1, issue 14 §4) Offline sales end to end: a real `festival-kiosk run` (KIOSK_READER=sim, no
pcscd), the real `festival-cloud consumer` on real PostgreSQL, a real Mosquitto with the
project's ACL that is stopped and started again. The broker stopped, the kiosk approves sales
itself under the policy of the config the cloud issued; the broker back, its backlog is applied
exactly once, the card pays what it holds and the rest is its debt; a top-up pays it."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cloud.database import make_engine, service_url
from cloud.ledger import Ledger
from cloud.sandbox import MosquittoBroker
from device.keys import load_private_key, save_private_key
from protocol.codec import encode_config
from protocol.keys import generate_private_key, public_key_b64
from protocol.models import Menu, OfflinePolicy, parse_config
from tests.consumer.support import ConsumerProcess, festival_cloud
from tests.device.cloud_messages import CENTRAL_ITEMS, kiosk_config_topic, publish_retained
from tests.device.conftest import make_broker
from tests.device.kiosk_process import KioskProcess
from tests.ledger.helpers import recharge

KIOSK = "bar-1"
CARD = "04A1B2C3D4E5F6"  # holds 15.00: pays the first sale, part of the second
STRANGER = "04B1B2C3D4E5F6"  # unknown to the cloud: its sale becomes its debt
POLICY = OfflinePolicy(sale_max_cents=2_000, card_max_cents=3_000, kiosk_max_cents=5_000)
TWO_BEERS = [{"sku": "beer", "quantity": 2}]  # 2 x 6.00 on the central menu


@pytest.fixture
def broker() -> Iterator[MosquittoBroker]:
    broker = make_broker(Path(tempfile.mkdtemp(prefix="festival-offline-broker-")))
    broker.start()
    yield broker
    broker.stop()


def sell_offline(kiosk: KioskProcess, card_uid: str) -> dict[str, Any]:
    kiosk.sell(TWO_BEERS, card_uid)
    state = kiosk.wait_for(lambda s: s["screen"] == "approved_offline", "approved offline")
    status, reply = kiosk.post("/api/dismiss", {})
    assert status == 200, reply
    return state


@pytest.fixture
def ledger(database_url: str) -> Iterator[Ledger]:
    engine = make_engine(database_url, pool_size=2, application_name="test-offline-kiosk")
    yield Ledger(engine)
    engine.dispose()


@pytest.mark.slow
def test_sales_approved_offline_are_applied_once_with_debts_when_the_broker_is_back(
    ledger: Ledger, database_url: str, broker: MosquittoBroker, tmp_path: Path
) -> None:
    cloud_key_file = tmp_path / "cloud.pem"
    save_private_key(generate_private_key(), cloud_key_file)
    cloud_key = load_private_key(cloud_key_file)
    kiosk_key_file = tmp_path / f"{KIOSK}.pem"
    save_private_key(generate_private_key(), kiosk_key_file)
    festival_cloud(
        "kiosk",
        "add",
        KIOSK,
        f"--public-key={public_key_b64(load_private_key(kiosk_key_file))}",
        "--role",
        "bar",
        database_url=database_url,
    )
    ledger.add_kiosk("checkpoint-1", public_key_b64(generate_private_key()), "checkpoint")
    assert ledger.apply(recharge(CARD, 1_500)).approved
    # The cloud issues the config (menu and offline policy) and publishes it, as its publisher
    # does: the stored document, signed, retained; marked published once the broker has it.
    version = ledger.issue_kiosk_config(KIOSK, menu=Menu("bar", CENTRAL_ITEMS), offline=POLICY)
    issued = ledger.latest_config(KIOSK)
    assert version is not None and issued is not None
    publish_retained(
        broker, kiosk_config_topic(KIOSK), encode_config(parse_config(issued.document), cloud_key)
    )
    ledger.mark_config_published(KIOSK, version)

    consumer = ConsumerProcess(
        database_url=service_url(database_url),
        mqtt_url=broker.url("cloud-consumer"),
        signing_key_file=cloud_key_file,
        consumer_id=f"consumer-offline-kiosk-{tmp_path.name[-8:]}",
        workdir=tmp_path / "consumer",
    )
    kiosk = KioskProcess(
        env={
            "KIOSK_ID": KIOSK,
            "KIOSK_KEY_FILE": str(kiosk_key_file),
            "CLOUD_PUBLIC_KEY": public_key_b64(cloud_key),
            "MQTT_URL": broker.url(KIOSK),
            "KIOSK_STATE_DIR": str(tmp_path / f"state-{KIOSK}"),
            "KIOSK_MODE": "bar",
            "KIOSK_READER": "sim",
            "KIOSK_GPIO": "fake",
            "KIOSK_RESEND_AFTER_S": "0.5",
            "KIOSK_OFFLINE_AFTER_S": "1",
        },
        log_file=tmp_path / f"{KIOSK}.log",
    )
    try:
        consumer.start()
        kiosk.start()
        kiosk.wait_for(
            lambda s: s["online"] and (s.get("config") or {}).get("version") == version,
            "the cloud's config on the kiosk",
            30,
        )
        broker.stop()
        kiosk.wait_for(lambda s: not s["online"], "the kiosk to notice the broker is gone")
        for card_uid in (CARD, CARD, STRANGER):
            sell_offline(kiosk, card_uid)
        assert ledger.card(CARD).balance_cents == 1_500  # type: ignore[union-attr]

        broker.start()
        try:
            state = kiosk.wait_for(
                lambda s: s["online"] and s["outbox"]["pending"] == 0, "the backlog to drain", 45
            )
        except AssertionError as error:
            raise AssertionError(
                f"{error}\n--- kiosk ---\n{kiosk.log_tail()}\n"
                f"--- consumer ---\n{consumer.log_text()[-3000:]}"
            ) from None
        late = sorted(state["late_results"], key=lambda entry: entry["seq"])[-3:]
        assert all(entry["offline"] for entry in late)  # in seq order: CARD, CARD, STRANGER
        # Which of CARD's two sales carries the debt depends on which reached the consumer
        # first: a publish the restarted broker took before the consumer had resubscribed is
        # dropped and comes back with the kiosk's resend, behind the next one (docs/protocol.md).
        assert sorted(entry["debt_cents"] for entry in late[:2]) == [0, 900]
        assert late[2]["debt_cents"] == 1_200
        card = ledger.card(CARD)
        stranger = ledger.card(STRANGER)
        assert card is not None and (card.balance_cents, card.debt_cents) == (0, 900)
        assert stranger is not None and (stranger.balance_cents, stranger.debt_cents) == (0, 1_200)
        with ledger.engine.connect() as connection:
            applied = connection.exec_driver_sql(
                "SELECT count(*), sum(shortfall_cents) FROM offline_sales"
            ).one()
        assert tuple(applied) == (3, 2_100), "each offline sale applied once"
        paid = ledger.apply(recharge(CARD, 1_000))
        assert (paid.new_balance_cents, paid.debt_cents) == (100, 0)
        assert ledger.check() == []
    finally:
        kiosk.stop()
        consumer.close()
