"""The real `festival-cloud consumer` over MQTT with TLS (`mqtts://` + `MQTT_CA_FILE`, and a
client certificate with `MQTT_CERT_FILE` / `MQTT_KEY_FILE`) against a private Mosquitto whose TLS
listener presents a certificate signed by a throw-away test CA (tests/tls.py).

With the pinned CA the consumer connects, subscribes and answers a test kiosk (also over TLS)
with signed, verified results; pinned to a CA that did not sign the broker's certificate it
never connects: it stays up, says so in its log and metrics, processes nothing and still stops
cleanly on SIGTERM.
"""

from __future__ import annotations

import re
import socket
import ssl
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cloud.database import make_engine
from cloud.ledger import Ledger
from cloud.sandbox import free_port
from protocol.errors import Status
from protocol.keys import generate_private_key, public_key_b64
from tests.consumer.conftest import CloudKey
from tests.consumer.kiosk_client import KioskClient, TlsClientFiles, uuid7
from tests.consumer.support import ConsumerProcess
from tests.tls import TlsBroker, TlsFiles, make_tls_files
from tests.waiting import wait_until

KIOSK_ROLES = {"checkpoint-1": "checkpoint", "bar-1": "bar"}
CLOUD_USER = "cloud-consumer"
CARD = "C1000001"
HANDSHAKE_FAILURE_TIMEOUT_S = 15.0
# What Mosquitto logs when the client aborts the handshake because it does not trust the
# broker's certificate ("... SSL routines::tlsv1 alert unknown ca").
UNKNOWN_CA = re.compile(r"alert unknown ca")


@pytest.fixture(scope="module")
def tls_files(service_dirs: Callable[[str], Path]) -> TlsFiles:
    return make_tls_files(service_dirs("consumer-tls-certs"))


@pytest.fixture
def start_broker(
    tls_files: TlsFiles, service_dirs: Callable[[str], Path]
) -> Iterator[Callable[..., TlsBroker]]:
    """Start a private Mosquitto with a TLS listener (optionally requiring client certificates);
    each one is stopped by its pid at teardown."""
    started: list[TlsBroker] = []

    def start(require_certificate: bool = False) -> TlsBroker:
        broker = TlsBroker(
            service_dirs("consumer-tls-broker"),
            tls=tls_files,
            tls_port=free_port(),
            require_certificate=require_certificate,
        )
        broker.add_user(CLOUD_USER, role="cloud")
        for kiosk_id in KIOSK_ROLES:
            broker.add_user(kiosk_id)
        started.append(broker)
        broker.start()
        return broker

    yield start
    for broker in started:
        broker.stop()


@dataclass
class Scenario:
    ledger: Ledger
    keys: dict[str, Ed25519PrivateKey]
    cloud_key: CloudKey
    service_url: str
    workdir: Path
    consumers: list[ConsumerProcess]
    kiosks: list[KioskClient]

    def consumer(self, broker: TlsBroker, **tls_env: str) -> ConsumerProcess:
        consumer = ConsumerProcess(
            database_url=self.service_url,
            mqtt_url=broker.tls_url(CLOUD_USER),
            signing_key_file=self.cloud_key.path,
            consumer_id=f"consumer-tls-{uuid7()[-8:]}",
            workdir=self.workdir,
            extra_env=tls_env,
        )
        self.consumers.append(consumer)
        return consumer

    def kiosk(self, broker: TlsBroker, kiosk_id: str, tls: TlsClientFiles) -> KioskClient:
        client = KioskClient(
            broker.tls_url(kiosk_id),
            kiosk_id,
            self.keys[kiosk_id],
            self.cloud_key.private_key.public_key(),
            tls=tls,
        )
        self.kiosks.append(client)
        return client.connect()


@pytest.fixture
def scenario(
    database_url: str,
    service_database_url: str,
    cloud_key: CloudKey,
    service_dirs: Callable[[str], Path],
) -> Iterator[Scenario]:
    """This test's own ledger database with the kiosks registered; consumers and kiosks made
    through it are stopped at teardown (their sessions die with the private broker)."""
    engine = make_engine(database_url, pool_size=2)
    ledger = Ledger(engine)
    keys = {kiosk_id: generate_private_key() for kiosk_id in KIOSK_ROLES}
    for kiosk_id, role in KIOSK_ROLES.items():
        ledger.add_kiosk(kiosk_id, public_key_b64(keys[kiosk_id]), role)
    made = Scenario(
        ledger, keys, cloud_key, service_database_url, service_dirs("consumer-tls"), [], []
    )
    try:
        yield made
    finally:
        for client in made.kiosks:
            client.close(purge=False)
        for consumer in made.consumers:
            consumer.close(purge=False)
        engine.dispose()


def metrics_text(consumer: ConsumerProcess) -> str:
    url = f"http://127.0.0.1:{consumer.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        return str(response.read().decode())


def assert_client_certificate_required(broker: TlsBroker, ca_file: Path) -> None:
    """A TLS client without a certificate is turned away by this broker's TLS listener."""
    context = ssl.create_default_context(cafile=str(ca_file))
    with socket.create_connection(("127.0.0.1", broker.tls_port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            try:  # TLS 1.3: the client learns of the refusal only when it reads
                answer = tls.recv(1)
            except (ssl.SSLError, OSError):
                answer = b""
    assert answer == b""
    wait_until(
        lambda: "peer did not return a certificate" in broker.log_file.read_text(),
        timeout_s=5,
        what="the broker to refuse a client without a certificate",
    )


def stop_cleanly(consumer: ConsumerProcess) -> None:
    """SIGTERM: exit code 0 and a `stopped` line."""
    assert consumer.process is not None and consumer.process.poll() is None
    assert consumer.stop(timeout_s=30) == 0, consumer.log_text()[-3000:]
    assert consumer.events("stopped"), consumer.log_text()[-3000:]
    assert not [line for line in consumer.log_lines() if line.get("level") == "error"]


@pytest.mark.parametrize("client_certificate", [False, True], ids=["server-auth", "mutual-tls"])
def test_top_up_and_order_over_tls_with_the_pinned_ca(
    start_broker: Callable[..., TlsBroker],
    tls_files: TlsFiles,
    scenario: Scenario,
    client_certificate: bool,
) -> None:
    broker = start_broker(require_certificate=client_certificate)
    tls_env = {"MQTT_CA_FILE": str(tls_files.ca_file)}
    kiosk_tls = TlsClientFiles(ca_file=tls_files.ca_file)
    if client_certificate:
        assert_client_certificate_required(broker, tls_files.ca_file)
        tls_env |= {
            "MQTT_CERT_FILE": str(tls_files.client_cert_file),
            "MQTT_KEY_FILE": str(tls_files.client_key_file),
        }
        kiosk_tls = TlsClientFiles(
            tls_files.ca_file, tls_files.client_cert_file, tls_files.client_key_file
        )
    consumer = scenario.consumer(broker, **tls_env).start()  # READY=1: connected and subscribed
    checkpoint = scenario.kiosk(broker, "checkpoint-1", kiosk_tls)
    bar = scenario.kiosk(broker, "bar-1", kiosk_tls)

    recharge = checkpoint.recharge(CARD, 5000)
    checkpoint.send(recharge)
    topped = checkpoint.wait_result(recharge.request_id)
    assert topped.status is Status.APPROVED and topped.error_code is None
    assert (topped.kiosk_id, topped.seq, topped.card_uid) == ("checkpoint-1", recharge.seq, CARD)
    assert (topped.previous_balance_cents, topped.new_balance_cents) == (0, 5000)

    order = bar.bar_order(CARD, 1100)
    bar.send(order)
    paid = bar.wait_result(order.request_id)
    assert paid.status is Status.APPROVED and not paid.replayed
    assert (paid.previous_balance_cents, paid.new_balance_cents) == (5000, 3900)

    # Every result the kiosks got verified under the pinned cloud key (KioskClient checks each
    # one with protocol.codec.verify_result); nothing else arrived.
    for kiosk in (checkpoint, bar):
        assert not kiosk.invalid_results()
        assert len(kiosk.all_results()) == 1
    card = scenario.ledger.card(CARD)
    assert card is not None and card.balance_cents == 3900

    processed = {line["request_id"]: line for line in consumer.events("request processed")}
    assert {processed[r.request_id]["outcome"] for r in (recharge, order)} == {"approved"}
    starting = consumer.events("consumer starting")[0]
    assert f"mqtts://{CLOUD_USER}:***@127.0.0.1:{broker.tls_port}" in starting["broker"]
    assert broker.users[CLOUD_USER] not in consumer.log_text()
    assert "festival_consumer_connected 1.0" in metrics_text(consumer)
    stop_cleanly(consumer)


def test_a_broker_certificate_from_another_ca_is_never_trusted(
    start_broker: Callable[..., TlsBroker], tls_files: TlsFiles, scenario: Scenario
) -> None:
    broker = start_broker()
    consumer = scenario.consumer(broker, MQTT_CA_FILE=str(tls_files.other_ca_file))
    consumer.start(wait_ready=False)

    def handshake_failed() -> bool:
        assert consumer.process is not None
        assert consumer.process.poll() is None, f"consumer exited:\n{consumer.log_text()[-3000:]}"
        return bool(consumer.events("broker unavailable"))

    wait_until(handshake_failed, timeout_s=HANDSHAKE_FAILURE_TIMEOUT_S, what="the TLS failure")
    # Mosquitto saw the handshake refused by the consumer, and saw it retried: it is not a
    # broker that was never reached.
    wait_until(
        lambda: len(UNKNOWN_CA.findall(broker.log_file.read_text())) >= 2,
        timeout_s=HANDSHAKE_FAILURE_TIMEOUT_S,
        what="two refused TLS handshakes in the broker's log",
    )

    # A kiosk that does trust the broker gets its request accepted with PUBACK "no matching
    # subscribers": the consumer never subscribed, so nobody takes it.
    checkpoint = scenario.kiosk(broker, "checkpoint-1", TlsClientFiles(ca_file=tls_files.ca_file))
    raw = checkpoint.send(checkpoint.recharge(CARD, 5000))
    assert checkpoint.take_unrouted() == [raw]

    assert consumer.process is not None and consumer.process.poll() is None
    assert [line["reason"] for line in consumer.events("broker unavailable")] == ["connect failed"]
    assert not consumer.events("broker connected")
    assert not consumer.events("subscribed; ready")
    assert not consumer.events("request processed")
    assert "READY=1" not in consumer.read_notifications()
    metrics = metrics_text(consumer)
    assert "festival_consumer_connected 0.0" in metrics
    assert "festival_consumer_messages_total{" not in metrics
    assert checkpoint.all_results() == []
    assert scenario.ledger.card(CARD) is None
    with scenario.ledger.engine.connect() as connection:
        for table in ("processed_requests", "dead_letters", "transactions", "cards"):
            rows = connection.execute(sqlalchemy.text(f"SELECT count(*) FROM {table}"))
            assert rows.scalar_one() == 0, table

    stop_cleanly(consumer)
