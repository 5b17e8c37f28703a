"""Two consumers on one host (issue 11 item 14): the metrics port never stops payments.

Before: the second `festival-cloud consumer` with the same settings (only CONSUMER_ID differs)
died with `OSError: [Errno 98] Address already in use` on the metrics port. Now a taken port is
one logged error and both consumers process payments; /metrics binds 127.0.0.1 by default.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Callable
from pathlib import Path

from cloud.database import make_engine
from cloud.ledger import Ledger
from cloud.sandbox import MosquittoBroker, free_port
from cloud.settings import CloudSettings
from protocol.errors import Status
from protocol.keys import generate_private_key, public_key_b64
from tests.consumer.conftest import CloudKey, LedgerDatabase
from tests.consumer.kiosk_client import KioskClient, uuid7
from tests.consumer.support import ConsumerProcess
from tests.waiting import wait_until

REQUESTS = 24
TAKEN_PORT_EVENT = "metrics port unavailable: running without /metrics"


def _listening_addresses(port: int) -> set[str]:
    """Local addresses with a TCP socket listening on ``port`` (from /proc/net/tcp{,6})."""
    found: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in Path(table).read_text().splitlines()[1:]:
            fields = row.split()
            address, port_hex = fields[1].rsplit(":", 1)
            if fields[3] == "0A" and int(port_hex, 16) == port:  # 0A: LISTEN
                found.add(address)
    return found


def test_two_consumers_with_one_metrics_port_both_process_payments(
    ledger_database: LedgerDatabase,
    cloud_key: CloudKey,
    mosquitto_broker: MosquittoBroker,
    service_dirs: Callable[[str], Path],
) -> None:
    kiosk_id = "checkpoint-ports"
    if kiosk_id not in mosquitto_broker.users:
        mosquitto_broker.add_user(kiosk_id)
    key = generate_private_key()
    engine = make_engine(ledger_database.owner_url, pool_size=1)
    Ledger(engine).add_kiosk(kiosk_id, public_key_b64(key), "checkpoint")
    engine.dispose()
    port = free_port()
    workdir = service_dirs("consumer-ports")
    # The same settings, as two processes on one host read them from one cloud.env.
    consumers = [
        ConsumerProcess(
            database_url=ledger_database.service_url,
            mqtt_url=mosquitto_broker.url("cloud-consumer"),
            signing_key_file=cloud_key.path,
            consumer_id=f"consumer-ports-{name}-{uuid7()[-6:]}",
            workdir=workdir,
            metrics_port=port,
        )
        for name in ("a", "b")
    ]
    kiosk = KioskClient(
        mosquitto_broker.url(kiosk_id), kiosk_id, key, cloud_key.private_key.public_key()
    )
    try:
        first, second = consumers
        first.start()
        second.start()  # used to exit with Errno 98 here
        assert first.process is not None and second.process is not None
        assert first.process.poll() is None and second.process.poll() is None

        # One logged error, in the second consumer only; the first serves /metrics on loopback.
        assert not first.events(TAKEN_PORT_EVENT)
        [taken] = second.events(TAKEN_PORT_EVENT)
        assert taken["level"] == "error" and taken["port"] == port
        assert "Address already in use" in taken["error"]
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
        assert b"festival_consumer_connected 1.0" in text
        assert _listening_addresses(port) == {"0100007F"}  # 127.0.0.1, not 0.0.0.0

        kiosk.connect()
        requests = [kiosk.recharge(f"B{index:07d}", 100) for index in range(REQUESTS)]
        for request in requests:
            kiosk.send(request)
        for request in requests:
            assert kiosk.wait_result(request.request_id).status is Status.APPROVED

        def processed_by(consumer: ConsumerProcess) -> set[str]:
            return {str(line.get("request_id")) for line in consumer.events("request processed")}

        wait_until(
            lambda: len(processed_by(first) | processed_by(second)) == REQUESTS,
            timeout_s=10,
            what="a log line per request",
        )
        # The broker's shared subscription hands requests to both: both are processing payments.
        assert processed_by(first) and processed_by(second)
        assert not processed_by(first) & processed_by(second)
        assert first.process.poll() is None and second.process.poll() is None
        assert len(second.events(TAKEN_PORT_EVENT)) == 1
        assert first.stop() == 0 and second.stop() == 0
    finally:
        kiosk.close()
        for consumer in consumers:
            consumer.close()


def test_each_unit_instance_gets_its_own_metrics_port_on_loopback() -> None:
    """festival-consumer@N sets CONSUMER_METRICS_PORT_OFFSET=N (its unit file)."""
    unit = (
        Path(__file__).resolve().parents[2] / "systemd" / "festival-consumer@.service"
    ).read_text()
    assert "Environment=CONSUMER_METRICS_PORT_OFFSET=%i" in unit.splitlines()
    base = CloudSettings()
    assert (base.metrics_port, base.consumer_metrics_host) == (9108, "127.0.0.1")
    ports = {
        CloudSettings(consumer_metrics_port_offset=instance).metrics_port for instance in (1, 2, 3)
    }
    assert ports == {9109, 9110, 9111}
    assert CloudSettings(consumer_metrics_port=0, consumer_metrics_port_offset=2).metrics_port == 0


def test_a_consumer_id_that_is_a_kiosks_id_is_refused_at_start(
    ledger_database: LedgerDatabase,
    cloud_key: CloudKey,
    mosquitto_broker: MosquittoBroker,
    service_dirs: Callable[[str], Path],
) -> None:
    """PROTOCOL.md 1.1: no kiosk credentials may connect with a cloud process's client id. The
    broker binds a kiosk to client id = its kiosk id, so a consumer whose CONSUMER_ID is a
    registered kiosk's id would hand that kiosk its durable session: it refuses to start."""
    kiosk_id = "till-consumer-7"
    engine = make_engine(ledger_database.owner_url, pool_size=1)
    Ledger(engine).add_kiosk(kiosk_id, public_key_b64(generate_private_key()), "bar")
    engine.dispose()
    consumer = ConsumerProcess(
        database_url=ledger_database.service_url,
        mqtt_url=mosquitto_broker.url("cloud-consumer"),
        signing_key_file=cloud_key.path,
        consumer_id=kiosk_id,
        workdir=service_dirs("consumer-kiosk-id"),
    )
    try:
        consumer.start(wait_ready=False)
        assert consumer.process is not None
        assert consumer.process.wait(timeout=30) == 2
        stderr = consumer.log_file.read_text()
        assert "is a registered kiosk's id" in stderr and kiosk_id in stderr
    finally:
        consumer.close(purge=False)
