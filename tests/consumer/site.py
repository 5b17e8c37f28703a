"""One real `festival-cloud consumer` with its own kiosks, for a test module: the kiosks
registered in the broker and the ledger (their keys made here), the consumer started, a
connected KioskClient per kiosk; everything stopped afterwards, by pid."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cloud.database import make_engine
from cloud.ledger import Ledger
from cloud.sandbox import MosquittoBroker
from protocol.keys import generate_private_key, public_key_b64
from tests.consumer.conftest import CloudKey, LedgerDatabase
from tests.consumer.kiosk_client import KioskClient, uuid7
from tests.consumer.support import ConsumerProcess


@dataclass
class ConsumerSite:
    ledger: Ledger  # the database owner's (setup and assertions)
    kiosks: dict[str, KioskClient]
    consumer: ConsumerProcess


@contextmanager
def consumer_site(
    name: str,
    roles: Mapping[str, str],
    *,
    ledger_database: LedgerDatabase,
    cloud_key: CloudKey,
    broker: MosquittoBroker,
    service_dirs: Callable[[str], Path],
    prepare: Callable[[Ledger], None] | None = None,
    extra_env: Mapping[str, str] | None = None,
) -> Iterator[ConsumerSite]:
    """``roles``: kiosk id -> role. ``prepare`` runs on the ledger once the kiosks are
    registered and before the consumer starts (configs, staff, …)."""
    for kiosk_id in roles:
        if kiosk_id not in broker.users:
            broker.add_user(kiosk_id)
    engine = make_engine(ledger_database.owner_url, pool_size=2)
    ledger = Ledger(engine)
    keys = {kiosk_id: generate_private_key() for kiosk_id in roles}
    for kiosk_id, role in roles.items():
        ledger.add_kiosk(kiosk_id, public_key_b64(keys[kiosk_id]), role)
    if prepare is not None:
        prepare(ledger)
    consumer = ConsumerProcess(
        database_url=ledger_database.service_url,
        mqtt_url=broker.url("cloud-consumer"),
        signing_key_file=cloud_key.path,
        consumer_id=f"consumer-{name}-{uuid7()[-8:]}",
        workdir=service_dirs(f"consumer-{name}"),
        extra_env=dict(extra_env or {}),
    )
    kiosks: dict[str, KioskClient] = {}
    try:
        consumer.start()
        for kiosk_id, key in keys.items():
            kiosks[kiosk_id] = KioskClient(
                broker.url(kiosk_id), kiosk_id, key, cloud_key.private_key.public_key()
            ).connect()
        yield ConsumerSite(ledger, kiosks, consumer)
    finally:
        for client in kiosks.values():
            client.close()
        consumer.close()
        engine.dispose()
