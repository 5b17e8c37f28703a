"""`festival-cloud broker config` and `kiosk add|password|disable` as the operator runs them:
the real console script writes the configuration from the database, the real Mosquitto runs it
as is, and kiosk changes reach the running broker within 5 s without a restart."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import text

from cloud.broker import password_matches
from cloud.database import make_engine
from cloud.ledger import Ledger
from cloud.sandbox import free_port, require_program, stop_process, wait_for_port
from protocol.keys import generate_private_key, public_key_b64
from tests.broker.sessions import Session
from tests.consumer.support import FESTIVAL_CLOUD, cloud_env
from tests.tls import TlsFiles, make_tls_files
from tests.waiting import wait_until

SERVICE_USER = "cloud-consumer"
EFFECT_S = 5.0  # DESIGN.md: kiosk add / disable take effect within 5 s
NOT_AUTHORIZED = "Not authorized"


@dataclass
class Deployment:
    database_url: str
    folder: Path
    port: int
    service_password: str
    process: subprocess.Popen[bytes] | None = None

    @property
    def mqtt_url(self) -> str:
        return f"mqtt://{SERVICE_USER}:{self.service_password}@127.0.0.1:{self.port}"

    @property
    def admin_file(self) -> Path:
        return self.folder / "admin.json"

    def cli(self, *args: str, admin: bool = True, **extra: str) -> subprocess.CompletedProcess[str]:
        env = cloud_env(self.database_url, self.mqtt_url, **extra)
        if admin:
            env["MQTT_ADMIN_FILE"] = str(self.admin_file)
        return subprocess.run(
            [FESTIVAL_CLOUD, *args], env=env, capture_output=True, text=True, timeout=60
        )

    def configure(self, *options: str) -> subprocess.CompletedProcess[str]:
        done = self.cli(
            "broker",
            "config",
            "--out",
            str(self.folder),
            "--bind",
            "127.0.0.1",
            "--user",
            "root" if os.geteuid() == 0 else os.environ.get("USER", "root"),
            "--log-file",
            str(self.folder / "mosquitto.log"),
            *options,
            admin=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done

    def start(self, port: int | None = None) -> None:
        mosquitto = require_program("mosquitto", "mosquitto")
        self.process = subprocess.Popen(
            [mosquitto, "-c", str(self.folder / "mosquitto.conf")],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(port or self.port, 10, self.process)

    def stop(self) -> None:
        stop_process(self.process)
        self.process = None

    def session(self, username: str, password: str, client_id: str | None = None) -> Session:
        return Session(self.port, username, password, client_id or username)


@pytest.fixture
def deployment(database_url: str) -> Iterator[Deployment]:
    folder = Path(tempfile.mkdtemp(prefix="festival-broker-cli-"))
    folder.chmod(0o755)  # the broker's system user must be able to enter it (see below)
    made = Deployment(database_url, folder, free_port(), "service-" + os.urandom(8).hex())
    engine = make_engine(database_url, pool_size=1)
    try:
        ledger = Ledger(engine)
        ledger.add_kiosk("bar-1", public_key_b64(generate_private_key()), "bar")
        ledger.add_kiosk("bar-2", public_key_b64(generate_private_key()), "bar")
        ledger.disable_kiosk("bar-2")
    finally:
        engine.dispose()
    yield made
    made.stop()
    shutil.rmtree(folder, ignore_errors=True)


def connack(deployment: Deployment, username: str, password: str) -> str:
    session = deployment.session(username, password)
    try:
        return session.connect()
    finally:
        session.close()


def test_generated_configuration_runs_with_hashed_credentials_only(
    deployment: Deployment,
) -> None:
    done = deployment.configure("--port", str(deployment.port))
    assert "2 kiosk(s)" in done.stdout and "bar-1, bar-2" in done.stdout  # no password yet
    config = (deployment.folder / "mosquitto.conf").read_text()
    for line in (
        "allow_anonymous false",
        "max_packet_size 262144",
        "persistent_client_expiration 3d",
        "max_queued_messages 100000",
        "max_queued_bytes 134217728",
        "max_inflight_messages 1000",
        "set_tcp_nodelay true",
        "persistence true",
        f"listener {deployment.port} 127.0.0.1",
    ):
        assert line in config.splitlines(), line
    assert "mosquitto_dynamic_security.so" in config
    assert "acl_file" not in config and "password_file" not in config
    admin_file = deployment.admin_file
    assert stat.S_IMODE(admin_file.stat().st_mode) == 0o600
    admin_password = json.loads(admin_file.read_text())["password"]
    state_file = deployment.folder / "data" / "dynamic-security.json"
    state_text = state_file.read_text()
    assert stat.S_IMODE(state_file.stat().st_mode) == 0o600
    # Hashes only: neither the service password nor the admin's appears in any file written,
    # and the service user's stored hash verifies.
    for path in deployment.folder.rglob("*"):
        if path.is_file() and path != admin_file:
            assert deployment.service_password not in path.read_text()
            assert admin_password not in path.read_text()
    clients = {client["username"]: client for client in json.loads(state_text)["clients"]}
    assert password_matches(clients[SERVICE_USER], deployment.service_password)
    assert clients["bar-1"]["clientid"] == "bar-1" and "password" not in clients["bar-1"]
    assert clients["bar-2"]["disabled"] is True

    deployment.start()
    service = deployment.session(SERVICE_USER, deployment.service_password, "consumer-cli-1")
    assert service.connect() == "Success"
    service.close()
    assert connack(deployment, SERVICE_USER, "wrong") == NOT_AUTHORIZED
    assert connack(deployment, "bar-1", "") == NOT_AUTHORIZED  # no password issued yet


def test_kiosk_add_and_disable_take_effect_within_5_s_without_a_restart(
    deployment: Deployment,
) -> None:
    deployment.configure("--port", str(deployment.port))
    deployment.start()
    pid = deployment.process.pid if deployment.process else None

    added = deployment.cli(
        "kiosk",
        "add",
        "bar-5",
        f"--public-key={public_key_b64(generate_private_key())}",
        "--role",
        "bar",
        "--json",
    )
    # Measured from the command's return: its own run (a Python start, the database, one
    # control round trip bounded by CONTROL_TIMEOUT_S) depends on the machine's load.
    started = time.monotonic()
    assert added.returncode == 0, added.stderr
    credentials = json.loads(added.stdout)
    assert set(credentials) == {"kiosk_id", "mqtt_username", "mqtt_password"}
    assert credentials["kiosk_id"] == credentials["mqtt_username"] == "bar-5"
    password = credentials["mqtt_password"]
    assert isinstance(password, str) and len(password) >= 32
    kiosk = deployment.session("bar-5", password)
    assert kiosk.connect() == "Success"
    assert time.monotonic() - started < EFFECT_S
    # Its own topics only, as every kiosk.
    assert kiosk.subscribe("$share/ledger/festival/v1/kiosks/+/tx") == [NOT_AUTHORIZED]
    assert kiosk.subscribe("festival/v1/kiosks/bar-5/result") == ["Granted QoS 1"]

    disabled = deployment.cli("kiosk", "disable", "bar-5")
    started = time.monotonic()
    assert disabled.returncode == 0, disabled.stderr
    assert "session was kicked" in disabled.stdout
    wait_until(lambda: kiosk.disconnects, timeout_s=EFFECT_S, what="the disabled kiosk's kick")
    kiosk.close()
    assert connack(deployment, "bar-5", password) == NOT_AUTHORIZED
    assert time.monotonic() - started < EFFECT_S
    assert deployment.process is not None and deployment.process.pid == pid  # no restart

    # The human output gives the credentials once and no command line carrying a password.
    human = deployment.cli(
        "kiosk", "add", "bar-6", f"--public-key={public_key_b64(generate_private_key())}",
        "--role", "bar",
    )  # fmt: skip
    assert human.returncode == 0, human.stderr
    assert "mosquitto_passwd" not in human.stdout
    shown = [line for line in human.stdout.splitlines() if line.startswith("MQTT password: ")]
    assert len(shown) == 1
    assert connack(deployment, "bar-6", shown[0].removeprefix("MQTT password: ")) == "Success"


def test_rotation_and_regeneration_keep_the_broker_in_step_with_the_database(
    deployment: Deployment,
) -> None:
    deployment.configure("--port", str(deployment.port))
    deployment.start()
    first = deployment.cli("kiosk", "password", "bar-1", "--json")
    assert first.returncode == 0, first.stderr
    old = json.loads(first.stdout)["mqtt_password"]
    live = deployment.session("bar-1", old)
    assert live.connect() == "Success"

    second = deployment.cli("kiosk", "password", "bar-1", "--json")
    new = json.loads(second.stdout)["mqtt_password"]
    wait_until(lambda: live.disconnects, timeout_s=EFFECT_S, what="the old session's kick")
    live.close()
    assert connack(deployment, "bar-1", old) == NOT_AUTHORIZED
    assert connack(deployment, "bar-1", new) == "Success"

    # A disabled kiosk's rotated password does not let it in.
    rotated = deployment.cli("kiosk", "password", "bar-2", "--json")
    assert rotated.returncode == 0, rotated.stderr
    assert connack(deployment, "bar-2", json.loads(rotated.stdout)["mqtt_password"]) == (
        NOT_AUTHORIZED
    )
    assert deployment.cli("kiosk", "password", "bar-404").returncode == 1

    # Regenerating (broker stopped) keeps the broker's stored hashes and the admin identity.
    deployment.stop()
    deployment.configure("--port", str(deployment.port))
    deployment.start()
    assert connack(deployment, "bar-1", new) == "Success"
    assert deployment.cli("kiosk", "disable", "bar-1").returncode == 0
    assert connack(deployment, "bar-1", new) == NOT_AUTHORIZED


def test_kiosk_add_without_a_running_broker_gives_a_password_broker_config_installs(
    deployment: Deployment,
) -> None:
    """DESIGN.md: `kiosk add --json` prints a fresh password (only its hash is stored). Before the
    broker exists (first setup, no MQTT_ADMIN_FILE) the hash waits in the registry (revision
    0008) and `broker config` installs it: that very password logs the kiosk in."""
    added = deployment.cli(
        "kiosk", "add", "bar-7", f"--public-key={public_key_b64(generate_private_key())}",
        "--role", "bar", "--json", admin=False,
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    credentials = json.loads(added.stdout)
    assert set(credentials) == {"kiosk_id", "mqtt_username", "mqtt_password"}
    assert credentials["kiosk_id"] == credentials["mqtt_username"] == "bar-7"
    password = credentials["mqtt_password"]
    assert isinstance(password, str) and len(password) >= 24
    assert "broker config" in added.stderr
    # Only a salted hash is in the database, never the password.
    engine = make_engine(deployment.database_url, pool_size=1)
    try:
        with engine.connect() as connection:
            stored = connection.execute(
                text(
                    "SELECT password_hash::text FROM kiosk_mqtt_credentials"
                    " WHERE kiosk_id = 'bar-7'"
                )
            ).scalar_one()
    finally:
        engine.dispose()
    assert password not in stored and '"salt"' in stored

    done = deployment.configure("--port", str(deployment.port))
    assert "bar-7" not in done.stdout.split("no MQTT password yet")[-1]
    assert password not in (deployment.folder / "data" / "dynamic-security.json").read_text()
    deployment.start()
    assert connack(deployment, "bar-7", password) == "Success"
    assert connack(deployment, "bar-7", password + "x") != "Success"

    reserved = deployment.cli(
        "kiosk", "add", "consumer-1", f"--public-key={public_key_b64(generate_private_key())}",
        "--role", "bar",
    )  # fmt: skip
    assert reserved.returncode == 2 and "cloud's processes" in reserved.stderr


@pytest.fixture
def tls_files() -> Iterator[TlsFiles]:
    folder = Path(tempfile.mkdtemp(prefix="festival-broker-cli-tls-"))
    yield make_tls_files(folder)
    shutil.rmtree(folder, ignore_errors=True)


def test_the_tls_variant_runs_and_requires_a_client_certificate(
    deployment: Deployment, tls_files: TlsFiles
) -> None:
    import ssl

    tls_port = free_port()
    deployment.configure(
        "--port", str(tls_port), "--local-port", str(deployment.port),
        "--certfile", str(tls_files.cert_file), "--keyfile", str(tls_files.key_file),
        "--cafile", str(tls_files.ca_file), "--require-certificate",
    )  # fmt: skip
    config = (deployment.folder / "mosquitto.conf").read_text().splitlines()
    assert "require_certificate true" in config and "tls_version tlsv1.2" in config
    deployment.start(tls_port)
    # The CLI reaches the control topic on the local listener named in the admin file.
    issued = deployment.cli("kiosk", "password", "bar-1", "--json")
    assert issued.returncode == 0, issued.stderr
    password = json.loads(issued.stdout)["mqtt_password"]

    def over_tls(certificate: bool) -> str:
        session = Session(tls_port, "bar-1", password, "bar-1")
        session.client.tls_set(
            ca_certs=str(tls_files.ca_file),
            certfile=str(tls_files.client_cert_file) if certificate else None,
            keyfile=str(tls_files.client_key_file) if certificate else None,
            cert_reqs=ssl.CERT_REQUIRED,
            tls_version=ssl.PROTOCOL_TLS_CLIENT,
        )
        try:
            return session.connect()
        except (OSError, AssertionError) as error:
            return f"refused: {type(error).__name__}"
        finally:
            session.close()

    assert over_tls(certificate=True) == "Success"
    assert over_tls(certificate=False).startswith("refused")


def test_as_the_broker_system_user_control_changes_survive_a_restart(
    deployment: Deployment,
) -> None:
    """Production runs the broker as `--user mosquitto` (the default): it drops root, and must
    still write the plugin's state when `kiosk password` changes it, so that the change
    survives a restart."""
    import pwd

    system_user = "mosquitto" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
    if os.geteuid() == 0:
        # A folder the broker's user cannot enter is refused up front: Mosquitto would run
        # with no clients at all and say so only in its log.
        deployment.folder.chmod(0o700)
        refused = deployment.cli(
            "broker", "config", "--out", str(deployment.folder), "--user", system_user,
            admin=False,
        )  # fmt: skip
        assert refused.returncode == 2 and "cannot enter" in refused.stderr, refused.stderr
        deployment.folder.chmod(0o755)
    done = deployment.cli(
        "broker", "config", "--out", str(deployment.folder), "--bind", "127.0.0.1",
        "--port", str(deployment.port), "--user", system_user, admin=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    state = deployment.folder / "data" / "dynamic-security.json"
    assert pwd.getpwuid(state.stat().st_uid).pw_name == system_user
    assert pwd.getpwuid((deployment.folder / "data").stat().st_uid).pw_name == system_user
    assert (deployment.folder / "admin.json").stat().st_uid == os.geteuid()
    deployment.start()
    issued = deployment.cli("kiosk", "password", "bar-1", "--json")
    assert issued.returncode == 0, issued.stderr
    password = json.loads(issued.stdout)["mqtt_password"]
    assert connack(deployment, "bar-1", password) == "Success"
    deployment.stop()
    assert password_matches(
        next(c for c in json.loads(state.read_text())["clients"] if c["username"] == "bar-1"),
        password,
    )
    deployment.start()
    assert connack(deployment, "bar-1", password) == "Success"
