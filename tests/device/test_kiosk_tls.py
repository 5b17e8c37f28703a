"""The kiosk's MQTT link over TLS (mqtts:// with MQTT_CA_FILE) against Mosquitto."""

from __future__ import annotations

import datetime
import ipaddress
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from cloud.sandbox import MosquittoBroker, free_port
from tests.device.conftest import CARD, CARD_BALANCE_CENTS, KIOSK_IDS
from tests.device.kiosk_process import KioskProcess
from tests.device.responder import FakeLedger, MqttResponder

BEER_CENTS = 2 * 550 + 2 * 200


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def make_ca(folder: Path, name: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(_name(name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    path = folder / f"{name}.pem"
    path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return certificate, key, path


@dataclass
class TlsFiles:
    ca_file: Path
    other_ca_file: Path
    cert_file: Path
    key_file: Path


@pytest.fixture
def tls_files(tmp_path: Path) -> TlsFiles:
    ca, ca_key, ca_file = make_ca(tmp_path, "festival-test-ca")
    _, _, other_ca_file = make_ca(tmp_path, "some-other-ca")
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(_name("broker"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    cert_file = tmp_path / "broker.pem"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file = tmp_path / "broker.key"
    _write_key(key, key_file)
    return TlsFiles(ca_file, other_ca_file, cert_file, key_file)


@dataclass
class TlsBroker(MosquittoBroker):
    """The sandbox broker plus a second, TLS listener on ``tls_port``."""

    tls: TlsFiles | None = None
    tls_port: int = 0

    def write_config(self) -> None:
        super().write_config()
        assert self.tls is not None
        with self.config_file.open("a") as config:
            config.write(
                f"listener {self.tls_port} 127.0.0.1\n"
                f"cafile {self.tls.ca_file}\n"
                f"certfile {self.tls.cert_file}\n"
                f"keyfile {self.tls.key_file}\n"
                "tls_version tlsv1.2\n"
            )

    def tls_url(self, user: str) -> str:
        return f"mqtts://{user}:{self.users[user]}@127.0.0.1:{self.tls_port}"


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
