"""The MQTT broker's configuration and its control channel: Mosquitto 2 with the dynamic security
plugin (PROTOCOL.md "Topics", DESIGN.md `festival-cloud broker config`).

Why the dynamic security plugin and not a password file with an ACL file: Mosquitto's `acl_file`
only filters what a session may *receive*; it never refuses a SUBSCRIBE. A kiosk's credentials
could join the consumers' shared subscription `$share/ledger/…/+/tx`, be handed its turn of every
kiosk's payments and drop them (ENVIRONMENT.md, reproduced in tests/broker). The plugin (shipped
by Debian's mosquitto 2.0.11) checks subscribe patterns themselves, binds a client to one client
id, and can be changed at run time through its control topic, so `kiosk add` and `kiosk disable`
take effect without a restart.

What this module writes (`write_broker_config`), into one folder:

- `mosquitto.conf`: listeners, the plugin, packet cap, bounded sessions and queues, persistence;
- `data/dynamic-security.json`: the plugin's state (salted PBKDF2-SHA512 hashes only, never a
  password), owned by the broker's system user, which rewrites it on every change;
- `admin.json` (0600, for the operator's `festival-cloud`): the control identity's credentials.

Identities (each a dynsec client):

- one per registered kiosk: username = client id = kiosk id, a role of its own with literal
  topics only (publish its tx/scan/status; subscribe to and receive its result and config and the
  deny-list). ACL topics with `%c`/`%u` did not match in Mosquitto 2.0.11 (ENVIRONMENT.md), hence
  one role per kiosk.
- the service user named in `MQTT_URL`, shared by the cloud's processes (each its own client id);
  it may subscribe only to the consumers' shared subscriptions and publish results, configs and
  the deny-list.
- `festival-admin`: may only publish to the control topic and read its responses.

The pure part (`render_config`, `dynsec_state`, `hash_password`) does no I/O; `BrokerAdmin` is the
control channel, which speaks MQTT through the cloud's MQTT adapter (cloud/consumer/mqtt_link.py,
`short_session`, imported only when used).
"""

from __future__ import annotations

import base64
import glob
import hashlib
import hmac
import json
import os
import pwd
import secrets
import sys
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from cloud.limits import (
    AUTOSAVE_INTERVAL_S,
    CONTROL_TIMEOUT_S,
    INFLIGHT_MESSAGES_MAX,
    PACKET_BYTES_MAX,
    PASSWORD_BYTES,
    PASSWORD_HASH_ITERATIONS,
    PASSWORD_SALT_BYTES,
    QUEUED_BYTES_MAX,
    QUEUED_MESSAGES_MAX,
    SESSION_EXPIRY_MAX,
)
from protocol.limits import KIOSK_ID_PATTERN
from protocol.mqtt_url import MqttEndpoint, parse_mqtt_url
from protocol.topics import SHARE_GROUP_DEFAULT, TopicKind, shared_subscription

CONTROL_TOPIC: Final = "$CONTROL/dynamic-security/v1"
CONTROL_RESPONSE_TOPIC: Final = "$CONTROL/dynamic-security/v1/response"
ADMIN_USERNAME: Final = "festival-admin"
ADMIN_ROLE: Final = "festival-admin"
SERVICE_ROLE: Final = "festival-service"
KIOSK_ROLE_PREFIX: Final = "kiosk:"
# Cloud processes' client ids start with this (CONSUMER_ID's default is consumer-<host>): a kiosk
# may not be registered under such an id, or its credentials could take over a consumer's session.
CLOUD_CLIENT_ID_PREFIXES: Final = ("consumer-", "festival-admin", "deploy-check-")

CONFIG_FILE: Final = "mosquitto.conf"
DATA_DIR: Final = "data"
DYNSEC_FILE: Final = "dynamic-security.json"
ADMIN_FILE: Final = "admin.json"
ADMIN_FILE_MODE: Final = 0o600
PLUGIN_NAME: Final = "mosquitto_dynamic_security.so"
PLUGIN_SEARCH: Final = (
    "/usr/lib/*-linux-gnu*/mosquitto_dynamic_security.so",
    "/usr/lib/mosquitto_dynamic_security.so",
    "/usr/local/lib/mosquitto_dynamic_security.so",
    "/usr/lib64/mosquitto_dynamic_security.so",
)


class BrokerConfigError(ValueError):
    """The configuration cannot be generated as asked; the message says why."""


class BrokerControlError(RuntimeError):
    """The broker's control channel refused a command or could not be reached."""


# --- the pure part ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TlsListener:
    cert_file: Path
    key_file: Path
    ca_file: Path | None = None
    require_certificate: bool = False


@dataclass(frozen=True, slots=True)
class BrokerOptions:
    out_dir: Path
    service_username: str
    service_password: str
    prefix: str = "festival"
    port: int | None = None  # default 1883, or 8883 with TLS
    bind: str = "0.0.0.0"
    user: str = "mosquitto"
    tls: TlsListener | None = None
    local_port: int | None = None  # an extra plain listener on 127.0.0.1
    log_file: Path | None = None  # default: stderr (journald under systemd)
    plugin_path: Path | None = None

    @property
    def listen_port(self) -> int:
        if self.port is not None:
            return self.port
        return 8883 if self.tls else 1883


@dataclass(frozen=True, slots=True)
class KioskAccount:
    """A registered kiosk as the broker knows it; ``password`` only when issuing a new one,
    ``password_hash`` the plugin's stored form kept in the registry (revision 0008)."""

    kiosk_id: str
    enabled: bool = True
    password: str | None = None
    password_hash: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class AdminCredentials:
    username: str
    password: str
    url: str | None = None  # where to reach the broker from the broker's host

    def to_json(self) -> str:
        return json.dumps({"username": self.username, "password": self.password, "url": self.url})

    def __repr__(self) -> str:  # never print the password
        return f"AdminCredentials({self.username!r}, url={self.url!r})"


@dataclass(frozen=True, slots=True)
class BrokerConfigSummary:
    config_file: Path
    dynsec_file: Path
    admin_file: Path
    kiosks: int
    kiosks_without_password: tuple[str, ...]


def new_password() -> str:
    return secrets.token_urlsafe(PASSWORD_BYTES)


def hash_password(
    password: str, *, salt: bytes | None = None, iterations: int = PASSWORD_HASH_ITERATIONS
) -> dict[str, Any]:
    """The plugin's stored form: PBKDF2-HMAC-SHA512 (64 bytes) over a 12-byte salt, base64."""
    salt = salt if salt is not None else secrets.token_bytes(PASSWORD_SALT_BYTES)
    assert len(salt) == PASSWORD_SALT_BYTES and iterations >= 1
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return {
        "password": base64.b64encode(digest).decode(),
        "salt": base64.b64encode(salt).decode(),
        "iterations": iterations,
    }


def password_matches(stored: Mapping[str, Any], password: str) -> bool:
    try:
        salt = base64.b64decode(stored["salt"])
        expected = base64.b64decode(stored["password"])
        iterations = int(stored["iterations"])
    except (KeyError, ValueError, TypeError):
        return False
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return hmac.compare_digest(digest, expected)


def _acl(acltype: str, topic: str) -> dict[str, Any]:
    return {"acltype": acltype, "topic": topic, "allow": True, "priority": 0}


def kiosk_role_name(kiosk_id: str) -> str:
    return f"{KIOSK_ROLE_PREFIX}{kiosk_id}"


def kiosk_acls(prefix: str, kiosk_id: str) -> list[dict[str, Any]]:
    """PROTOCOL.md: kiosk X publishes only its tx/scan/status and reads only its result, its
    config and the deny-list. Literal topics: no wildcard, no `$share`, nothing else."""
    base = f"{prefix}/v1/kiosks/{kiosk_id}"
    readable = [f"{base}/result", f"{base}/config", f"{prefix}/v1/denylist"]
    acls = [_acl("publishClientSend", f"{base}/{kind}") for kind in ("tx", "scan", "status")]
    acls += [_acl("publishClientReceive", topic) for topic in readable]
    acls += [_acl("subscribeLiteral", topic) for topic in readable]
    return acls


def service_acls(prefix: str) -> list[dict[str, Any]]:
    """The cloud's processes: the consumers' shared subscriptions (exactly those filters), and
    results, configs and the deny-list to publish."""
    base = f"{prefix}/v1/kiosks"
    acls = [
        _acl("subscribeLiteral", shared_subscription(prefix, kind, SHARE_GROUP_DEFAULT))
        for kind in (TopicKind.TX, TopicKind.SCAN, TopicKind.STATUS)
    ]
    acls += [_acl("publishClientReceive", f"{base}/+/{kind}") for kind in ("tx", "scan", "status")]
    acls += [_acl("publishClientSend", f"{base}/+/{kind}") for kind in ("result", "config")]
    acls.append(_acl("publishClientSend", f"{prefix}/v1/denylist"))
    return acls


def admin_acls() -> list[dict[str, Any]]:
    return [
        _acl("publishClientSend", CONTROL_TOPIC),
        _acl("publishClientReceive", CONTROL_RESPONSE_TOPIC),
        _acl("subscribeLiteral", CONTROL_RESPONSE_TOPIC),
    ]


def kiosk_client(
    kiosk_id: str, *, enabled: bool, stored_password: Mapping[str, Any] | None
) -> dict[str, Any]:
    client: dict[str, Any] = {
        "username": kiosk_id,
        "clientid": kiosk_id,  # the plugin refuses any other client id for this username
        "textName": f"kiosk {kiosk_id}",
        "roles": [{"rolename": kiosk_role_name(kiosk_id), "priority": 0}],
        "disabled": not enabled,
    }
    if stored_password:
        client.update({key: stored_password[key] for key in ("password", "salt", "iterations")})
    return client


def reserved_kiosk_id_reason(kiosk_id: str, *usernames: str) -> str | None:
    """Why ``kiosk_id`` may not be a kiosk on this broker, or None."""
    if kiosk_id in (ADMIN_USERNAME, *usernames):
        return f"{kiosk_id!r} is a broker user of the cloud"
    if kiosk_id.startswith(CLOUD_CLIENT_ID_PREFIXES):
        prefixes = ", ".join(f"{p}…" for p in CLOUD_CLIENT_ID_PREFIXES)
        return f"{kiosk_id!r}: client ids {prefixes} belong to the cloud's processes"
    return None


def dynsec_state(
    *,
    prefix: str,
    service_username: str,
    service_password: str,
    admin_password: str,
    kiosks: Sequence[KioskAccount],
    existing: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The plugin's whole state: roles, the admin, the service user and one client per kiosk.

    A kiosk's hash is, in this order: a new password's, the registry's (``password_hash``, what
    `kiosk add`/`kiosk password` stored), the one in ``existing`` (the broker's current file);
    a kiosk with none has no password and cannot log in until `festival-cloud kiosk password`
    issues one. Clients that are not ours are dropped: the
    database's kiosk table is the registry.
    """
    stored: dict[str, Mapping[str, Any]] = {}
    for client in (existing or {}).get("clients", []):
        if isinstance(client, dict) and "password" in client and "salt" in client:
            stored[str(client.get("username"))] = client
    if service_username == ADMIN_USERNAME:
        raise BrokerConfigError(f"the service user may not be called {ADMIN_USERNAME!r}")
    roles = [
        {"rolename": ADMIN_ROLE, "acls": admin_acls()},
        {"rolename": SERVICE_ROLE, "acls": service_acls(prefix)},
    ]
    clients: list[dict[str, Any]] = [
        {
            "username": ADMIN_USERNAME,
            "textName": "festival-cloud kiosk add/disable (control topic only)",
            "roles": [{"rolename": ADMIN_ROLE, "priority": 0}],
            **hash_password(admin_password),
        },
        {
            "username": service_username,
            "textName": "the cloud's processes (consumer, API, CLI); each its own client id",
            "roles": [{"rolename": SERVICE_ROLE, "priority": 0}],
            **hash_password(service_password),
        },
    ]
    seen: set[str] = set()
    for kiosk in kiosks:
        if not KIOSK_ID_PATTERN.match(kiosk.kiosk_id):
            raise BrokerConfigError(f"invalid kiosk id {kiosk.kiosk_id!r}")
        reason = reserved_kiosk_id_reason(kiosk.kiosk_id, service_username)
        if reason:
            raise BrokerConfigError(f"kiosk {reason}")
        if kiosk.kiosk_id in seen:
            raise BrokerConfigError(f"kiosk {kiosk.kiosk_id!r} listed twice")
        seen.add(kiosk.kiosk_id)
        password = (
            hash_password(kiosk.password)
            if kiosk.password
            else (kiosk.password_hash or stored.get(kiosk.kiosk_id))
        )
        roles.append(
            {
                "rolename": kiosk_role_name(kiosk.kiosk_id),
                "acls": kiosk_acls(prefix, kiosk.kiosk_id),
            }
        )
        clients.append(
            kiosk_client(kiosk.kiosk_id, enabled=kiosk.enabled, stored_password=password)
        )
    return {
        "defaultACLAccess": {
            "publishClientSend": False,
            "publishClientReceive": False,
            "subscribe": False,
            "unsubscribe": True,
        },
        "clients": clients,
        "groups": [],
        "roles": roles,
    }


def find_plugin() -> Path:
    for pattern in PLUGIN_SEARCH:
        for match in sorted(glob.glob(pattern)):
            return Path(match)
    raise BrokerConfigError(
        f"{PLUGIN_NAME} not found (apt-get install mosquitto); name it with --plugin PATH"
    )


def render_config(options: BrokerOptions, plugin_path: Path) -> str:
    """mosquitto.conf for Mosquitto 2.0.x; every security-relevant line has its reason."""
    out = options.out_dir
    data = out / DATA_DIR
    lines = [
        "# Generated by `festival-cloud broker config`; regenerate rather than edit.",
        "# Run: mosquitto -c " + str(out / CONFIG_FILE),
        "per_listener_settings false",
        "allow_anonymous false",
        f"user {options.user}",
        "",
        f"listener {options.listen_port} {options.bind}",
    ]
    if options.tls is not None:
        tls = options.tls
        if tls.ca_file is not None:
            lines.append(f"cafile {tls.ca_file}")
        lines += [
            f"certfile {tls.cert_file}",
            f"keyfile {tls.key_file}",
            "tls_version tlsv1.2",
            f"require_certificate {'true' if tls.require_certificate else 'false'}",
        ]
    if options.local_port is not None:
        lines += ["", "# processes on the broker's host (the operator's CLI, a local consumer)"]
        lines.append(f"listener {options.local_port} 127.0.0.1")
    lines += [
        "",
        "# Who may do what: the dynamic security plugin refuses SUBSCRIBE itself (no kiosk joins",
        "# $share/...), binds each kiosk to its client id, and is changed through its control",
        "# topic without a restart.",
        f"plugin {plugin_path}",
        f"plugin_opt_config_file {data / DYNSEC_FILE}",
        "",
        f"max_packet_size {PACKET_BYTES_MAX}",
        f"persistent_client_expiration {SESSION_EXPIRY_MAX}",
        f"max_inflight_messages {INFLIGHT_MESSAGES_MAX}",
        f"max_queued_messages {QUEUED_MESSAGES_MAX}",
        f"max_queued_bytes {QUEUED_BYTES_MAX}",
        "# Nagle + delayed ACK add ~88 ms to a lone request/result round trip (ENVIRONMENT.md).",
        "set_tcp_nodelay true",
        "",
        "persistence true",
        f"persistence_location {data}/",
        f"autosave_interval {AUTOSAVE_INTERVAL_S}",
        "",
        f"log_dest {'file ' + str(options.log_file) if options.log_file else 'stderr'}",
        "log_type error",
        "log_type warning",
        "log_type notice",
        "log_type information",
        "connection_messages true",
    ]
    return "\n".join(lines) + "\n"


def admin_url(options: BrokerOptions) -> str:
    """Where the operator's CLI on the broker's host reaches the control topic."""
    if options.local_port is not None:
        return f"mqtt://127.0.0.1:{options.local_port}"
    host = "127.0.0.1" if options.bind in ("0.0.0.0", "::", "") else options.bind
    if ":" in host:
        host = f"[{host}]"
    return f"{'mqtts' if options.tls else 'mqtt'}://{host}:{options.listen_port}"


# --- the imperative shell: files --------------------------------------------------------------


def read_admin_file(path: Path) -> AdminCredentials:
    try:
        raw = json.loads(path.read_text())
        credentials = AdminCredentials(
            str(raw["username"]), str(raw["password"]), raw.get("url") or None
        )
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise BrokerControlError(
            f"{path}: not a broker admin file ({type(error).__name__})"
        ) from None
    if credentials.url is not None:
        parse_mqtt_url(credentials.url)
    return credentials


def _write_private(path: Path, text: str, mode: int) -> None:
    temporary = path.with_name(path.name + ".new")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(text)
    os.chmod(temporary, mode)
    os.replace(temporary, path)


def _unreachable_folder(folder: Path, uid: int, gids: set[int]) -> Path | None:
    """The first folder from ``folder`` up to / that user ``uid`` cannot enter, if any.

    Mosquitto loads the plugin's state after dropping to its user; a folder it cannot enter
    leaves it running with no clients at all (every login refused, one line in its log)."""
    for current in [folder, *folder.parents]:
        status = current.stat()
        if status.st_uid == uid:
            allowed = status.st_mode & 0o100
        elif status.st_gid in gids:
            allowed = status.st_mode & 0o010
        else:
            allowed = status.st_mode & 0o001
        if not allowed:
            return current
    return None


def _owner(user: str) -> tuple[int, int] | None:
    """uid/gid to give the broker's writable files when we run as root and it will not."""
    if os.geteuid() != 0 or user == "root":
        return None
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise BrokerConfigError(f"no system user {user!r} (--user)") from None
    return entry.pw_uid, entry.pw_gid


def write_broker_config(
    options: BrokerOptions, kiosks: Sequence[KioskAccount]
) -> BrokerConfigSummary:
    """Write mosquitto.conf, the plugin's state and the admin file into ``options.out_dir``.

    Run again on the same folder (broker stopped), it keeps the admin's password and every
    kiosk's stored hash, and follows the database for which kiosks exist and are enabled.
    """
    plugin_path = (options.plugin_path or find_plugin()).resolve()
    if not plugin_path.exists():
        raise BrokerConfigError(f"{plugin_path}: no such plugin")
    for name, port in (("--port", options.port), ("--local-port", options.local_port)):
        if port is not None and not 1 <= port <= 65535:
            raise BrokerConfigError(f"{name} {port}: not a TCP port")
    if options.tls is not None:
        for path in (options.tls.cert_file, options.tls.key_file, options.tls.ca_file):
            if path is not None and not path.is_file():
                raise BrokerConfigError(f"{path}: no such file")
    owner = _owner(options.user)
    options = _absolute(options)  # Mosquitto resolves relative paths against its cwd
    out = options.out_dir
    out.mkdir(parents=True, exist_ok=True)
    if owner is not None:
        gids = {owner[1], *os.getgrouplist(options.user, owner[1])}
        blocked = _unreachable_folder(out, owner[0], gids)
        if blocked is not None:
            raise BrokerConfigError(
                f"{blocked}: user {options.user!r} cannot enter it, so the broker could not "
                f"read its state (chmod o+x {blocked}, or choose another --out)"
            )
    data = out / DATA_DIR
    data.mkdir(mode=0o700, exist_ok=True)
    dynsec_file = data / DYNSEC_FILE
    admin_file = out / ADMIN_FILE

    existing: dict[str, Any] | None = None
    if dynsec_file.exists():
        try:
            existing = json.loads(dynsec_file.read_text())
        except ValueError as error:
            raise BrokerConfigError(f"{dynsec_file}: not JSON ({error})") from None
    admin_password = new_password()
    if admin_file.exists():
        try:
            admin_password = read_admin_file(admin_file).password
        except BrokerControlError as error:
            raise BrokerConfigError(f"{error}; remove it to issue a new admin password") from None
    state = dynsec_state(
        prefix=options.prefix,
        service_username=options.service_username,
        service_password=options.service_password,
        admin_password=admin_password,
        kiosks=kiosks,
        existing=existing,
    )
    _write_private(dynsec_file, json.dumps(state, indent=1) + "\n", 0o600)
    credentials = AdminCredentials(ADMIN_USERNAME, admin_password, admin_url(options))
    _write_private(admin_file, credentials.to_json() + "\n", ADMIN_FILE_MODE)
    config_file = out / CONFIG_FILE
    _write_private(config_file, render_config(options, plugin_path), 0o644)
    if owner is not None:
        for path in (data, dynsec_file):
            os.chown(path, *owner)
    without = tuple(
        client["username"]
        for client in state["clients"]
        if client.get("clientid") and "password" not in client
    )
    return BrokerConfigSummary(config_file, dynsec_file, admin_file, len(kiosks), without)


def _absolute(options: BrokerOptions) -> BrokerOptions:
    from dataclasses import replace

    tls = options.tls
    if tls is not None:
        tls = replace(
            tls,
            cert_file=tls.cert_file.resolve(),
            key_file=tls.key_file.resolve(),
            ca_file=tls.ca_file.resolve() if tls.ca_file else None,
        )
    return replace(
        options,
        out_dir=options.out_dir.resolve(),
        tls=tls,
        log_file=options.log_file.resolve() if options.log_file else None,
        plugin_path=options.plugin_path.resolve() if options.plugin_path else None,
    )


# --- the control channel ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ControlTls:
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None


@dataclass
class BrokerAdmin:
    """Commands to the plugin's control topic, as the admin identity; one connection per call.

    Each command's answer is checked; `ignore` lists the errors that mean "already so" (deleting
    what does not exist before creating it again)."""

    endpoint: MqttEndpoint
    username: str
    password: str
    tls: ControlTls = field(default_factory=ControlTls)
    timeout_s: float = CONTROL_TIMEOUT_S

    def __repr__(self) -> str:
        return f"BrokerAdmin({self.endpoint!r}, {self.username!r})"

    @classmethod
    def from_file(
        cls, path: Path, *, endpoint: MqttEndpoint | None = None, tls: ControlTls | None = None
    ) -> BrokerAdmin:
        credentials = read_admin_file(path)
        if credentials.url is not None:
            endpoint = parse_mqtt_url(credentials.url)
        if endpoint is None:
            raise BrokerControlError(f"{path} names no broker and MQTT_URL is not set")
        return cls(endpoint, credentials.username, credentials.password, tls or ControlTls())

    def run(
        self, commands: Sequence[Mapping[str, Any]], ignore: Iterable[str] = ()
    ) -> list[dict[str, Any]]:
        """Send the commands in one message; returns the responses, raises on an error."""
        from dataclasses import replace

        from cloud.consumer.mqtt_link import TlsFiles, short_session

        correlation = uuid.uuid4().hex
        tagged = [
            {**command, "correlationData": f"{correlation}-{index}"}
            for index, command in enumerate(commands)
        ]
        payload = json.dumps({"commands": tagged}).encode()
        received: list[dict[str, Any]] = []

        def on_message(data: bytes) -> bool:
            try:
                answer = json.loads(data)
            except ValueError:
                return False
            for response in answer.get("responses", []):
                if str(response.get("correlationData", "")).startswith(correlation):
                    received.append(response)
            return len(received) >= len(tagged)

        try:
            seen = short_session(
                replace(self.endpoint, username=self.username, password=self.password),
                client_id=f"festival-admin-{os.getpid()}-{secrets.token_hex(3)}",
                timeout_s=self.timeout_s,
                tls=TlsFiles(self.tls.ca_file, self.tls.cert_file, self.tls.key_file),
                subscribe=CONTROL_RESPONSE_TOPIC,
                publish=(CONTROL_TOPIC, payload),
                on_message=on_message,
            )
        except OSError as error:
            raise BrokerControlError(
                f"broker {self.endpoint.host}:{self.endpoint.port} unreachable: {error}"
            ) from None
        if seen.connect_refused is not None:
            raise BrokerControlError(
                f"the broker refused the admin identity: {seen.connect_refused}"
            )
        if seen.subscribe_refused:
            raise BrokerControlError(
                f"control response topic refused: {', '.join(seen.subscribe_refused)}"
            )
        if not seen.finished:
            raise BrokerControlError(
                f"no answer from the broker's control topic within {self.timeout_s} s"
            )
        ignored = set(ignore)
        by_tag = {r.get("correlationData"): r for r in received}
        responses = [by_tag.get(command["correlationData"], {}) for command in tagged]
        for command, response in zip(tagged, responses, strict=True):
            refusal = response.get("error")
            if refusal and refusal not in ignored:
                raise BrokerControlError(f"{command['command']}: {refusal}")
        return responses

    # --- what the CLI and the sandbox ask for ------------------------------------------------

    def issue_kiosk(self, prefix: str, kiosk_id: str, password: str) -> None:
        """(Re)create kiosk X with a fresh password, its own role and client id = X, enabled.
        Any session of the old credentials is kicked (deleting a client does that)."""
        role = kiosk_role_name(kiosk_id)
        self.run(
            [
                {"command": "deleteClient", "username": kiosk_id},
                {"command": "deleteRole", "rolename": role},
                {"command": "createRole", "rolename": role, "acls": kiosk_acls(prefix, kiosk_id)},
                {
                    "command": "createClient",
                    "username": kiosk_id,
                    "password": password,
                    "clientid": kiosk_id,
                    "textname": f"kiosk {kiosk_id}",
                    "roles": [{"rolename": role, "priority": 0}],
                },
            ],
            ignore={"Client not found", "Role not found"},
        )

    def disable_client(self, username: str) -> bool:
        """Refuse further logins and kick the live session; False if the broker has no such
        client (then there was nothing to kick either)."""
        [response] = self.run(
            [{"command": "disableClient", "username": username}], ignore={"Client not found"}
        )
        return not response.get("error")

    def enable_client(self, username: str) -> bool:
        """Accept the client's logins again (after disable_client); False if there is none."""
        [response] = self.run(
            [{"command": "enableClient", "username": username}], ignore={"Client not found"}
        )
        return not response.get("error")

    def create_client(
        self, username: str, password: str, role: str, *, clientid: str | None = None
    ) -> None:
        command: dict[str, Any] = {
            "command": "createClient",
            "username": username,
            "password": password,
            "roles": [{"rolename": role, "priority": 0}],
        }
        if clientid:
            command["clientid"] = clientid
        delete = {"command": "deleteClient", "username": username}
        self.run([delete, command], ignore={"Client not found"})

    def create_role(self, role: str, acls: Sequence[Mapping[str, Any]]) -> None:
        self.run(
            [
                {"command": "deleteRole", "rolename": role},
                {"command": "createRole", "rolename": role, "acls": list(acls)},
            ],
            ignore={"Role not found"},
        )


# --- `festival-cloud broker config` -----------------------------------------------------------


def broker_config_command(args: Any, settings: Any) -> int:
    """The CLI verb: kiosks from the database, the service user from MQTT_URL."""
    from cloud.database import TransientDatabaseError, make_engine, translate_errors
    from cloud.ledger import Ledger

    settings.require("database_url", "mqtt_url")
    endpoint = settings.mqtt_endpoint
    if not endpoint.username or not endpoint.password:
        print(
            "festival-cloud broker config: MQTT_URL must name the service user and its password",
            file=sys.stderr,
        )
        return 2
    tls = None
    if args.certfile or args.keyfile:
        if not (args.certfile and args.keyfile):
            print("festival-cloud broker config: --certfile needs --keyfile", file=sys.stderr)
            return 2
        tls = TlsListener(
            Path(args.certfile),
            Path(args.keyfile),
            Path(args.cafile) if args.cafile else None,
            bool(args.require_certificate),
        )
    elif args.cafile or args.require_certificate:
        print(
            "festival-cloud broker config: --cafile/--require-certificate need --certfile and "
            "--keyfile",
            file=sys.stderr,
        )
        return 2
    engine = make_engine(settings.database_url, pool_size=1, application_name="festival-cloud")
    started = time.monotonic()
    try:
        with translate_errors():
            ledger = Ledger(engine)
            records = ledger.kiosks()
            hashes = ledger.kiosk_mqtt_password_hashes()
    except TransientDatabaseError as error:
        print(f"festival-cloud: database unavailable: {error}", file=sys.stderr)
        return 2
    finally:
        engine.dispose()
    options = BrokerOptions(
        out_dir=Path(args.out),
        service_username=endpoint.username,
        service_password=endpoint.password,
        prefix=settings.festival_topic_prefix,
        port=args.port,
        bind=args.bind,
        user=args.user,
        tls=tls,
        local_port=args.local_port,
        log_file=Path(args.log_file) if args.log_file else None,
        plugin_path=Path(args.plugin) if args.plugin else None,
    )
    try:
        summary = write_broker_config(
            options,
            [
                KioskAccount(r.kiosk_id, bool(r.enabled), password_hash=hashes.get(r.kiosk_id))
                for r in records
            ],
        )
    except BrokerConfigError as error:
        print(f"festival-cloud broker config: {error}", file=sys.stderr)
        return 2
    print(f"wrote {summary.config_file} ({time.monotonic() - started:.1f} s)")
    print(f"  broker state (hashes only): {summary.dynsec_file}")
    print(f"  admin credentials (0600, set MQTT_ADMIN_FILE to it): {summary.admin_file}")
    print(f"  {summary.kiosks} kiosk(s), service user {endpoint.username!r}")
    if summary.kiosks_without_password:
        print(
            f"  {len(summary.kiosks_without_password)} kiosk(s) have no MQTT password yet: "
            "festival-cloud kiosk password KIOSK_ID, then run broker config again (or, with "
            "MQTT_ADMIN_FILE, on the running broker at once): "
            + ", ".join(summary.kiosks_without_password)
        )
    print(f"start it: mosquitto -c {summary.config_file}")
    return 0
