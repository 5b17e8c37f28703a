"""A throw-away certificate authority and a private Mosquitto with a TLS listener, for the kiosk's
and the consumer's MQTT-over-TLS tests.

`make_tls_files` writes a test CA, a broker certificate it signed (for 127.0.0.1 and localhost),
a client certificate it signed (for brokers that require one) and a second, unrelated CA whose
pinning must make every handshake fail. `TlsBroker` is the sandbox broker generated with the
TLS options of `festival-cloud broker config` (a TLS listener on `tls_port`, plain loopback on
`port`).
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass, replace
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cloud.broker import BrokerOptions, TlsListener
from cloud.sandbox import MosquittoBroker


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


def _validity(builder: x509.CertificateBuilder) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return builder.not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(
        now + datetime.timedelta(days=1)
    )


def make_ca(folder: Path, name: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey, Path]:
    """A self-signed CA; returns its certificate, key and PEM file (folder/name.pem)."""
    key = ec.generate_private_key(ec.SECP256R1())
    certificate = (
        _validity(x509.CertificateBuilder())
        .subject_name(_name(name))
        .issuer_name(_name(name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    path = folder / f"{name}.pem"
    path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return certificate, key, path


def _issue(
    folder: Path,
    name: str,
    ca: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    *,
    usage: x509.ObjectIdentifier,
    alt_names: list[x509.GeneralName] | None = None,
) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        _validity(x509.CertificateBuilder())
        .subject_name(_name(name))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    )
    if alt_names:
        builder = builder.add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
    certificate = builder.sign(ca_key, hashes.SHA256())
    cert_file = folder / f"{name}.pem"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file = folder / f"{name}.key"
    _write_key(key, key_file)
    return cert_file, key_file


@dataclass(frozen=True)
class TlsFiles:
    ca_file: Path  # the CA that signed both certificates below: the one to pin
    other_ca_file: Path  # a CA that signed nothing here: pinning it must fail the handshake
    cert_file: Path  # the broker's certificate (127.0.0.1, localhost)
    key_file: Path
    client_cert_file: Path  # a client certificate, for a listener that requires one
    client_key_file: Path


def make_tls_files(folder: Path) -> TlsFiles:
    folder.mkdir(parents=True, exist_ok=True)
    ca, ca_key, ca_file = make_ca(folder, "festival-test-ca")
    _, _, other_ca_file = make_ca(folder, "some-other-ca")
    cert_file, key_file = _issue(
        folder,
        "broker",
        ca,
        ca_key,
        usage=ExtendedKeyUsageOID.SERVER_AUTH,
        alt_names=[x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
    )
    client_cert_file, client_key_file = _issue(
        folder, "client", ca, ca_key, usage=ExtendedKeyUsageOID.CLIENT_AUTH
    )
    return TlsFiles(ca_file, other_ca_file, cert_file, key_file, client_cert_file, client_key_file)


@dataclass
class TlsBroker(MosquittoBroker):
    """The sandbox broker generated with TLS options (`broker config --certfile … --keyfile …
    --cafile … [--require-certificate] --port TLS_PORT --local-port PORT`): the TLS listener on
    ``tls_port`` (TLS 1.2 and up) and the plain loopback listener on ``port``.

    With ``require_certificate`` the TLS listener also demands a client certificate signed by
    the test CA (the password is still checked)."""

    tls: TlsFiles | None = None
    tls_port: int = 0
    require_certificate: bool = False

    def broker_options(self) -> BrokerOptions:
        assert self.tls is not None and self.tls_port
        return replace(
            super().broker_options(),
            port=self.tls_port,
            local_port=self.port,
            tls=TlsListener(
                cert_file=self.tls.cert_file,
                key_file=self.tls.key_file,
                ca_file=self.tls.ca_file,
                require_certificate=self.require_certificate,
            ),
        )

    def tls_url(self, user: str) -> str:
        return f"mqtts://{user}:{self.users[user]}@127.0.0.1:{self.tls_port}"
