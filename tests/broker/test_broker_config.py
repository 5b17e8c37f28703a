"""The pure part of cloud/broker.py: the plugin's state and mosquitto.conf, no broker needed."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from cloud.broker import (
    ADMIN_USERNAME,
    BrokerConfigError,
    BrokerOptions,
    KioskAccount,
    TlsListener,
    dynsec_state,
    hash_password,
    password_matches,
    render_config,
)

PREFIX = "festival"


def state(*kiosks: KioskAccount, existing: dict[str, object] | None = None) -> dict[str, object]:
    return dynsec_state(
        prefix=PREFIX,
        service_username="cloud-consumer",
        service_password="service-secret",
        admin_password="admin-secret",
        kiosks=kiosks,
        existing=existing,
    )


def clients(of: dict[str, object]) -> dict[str, dict[str, object]]:
    return {str(c["username"]): c for c in of["clients"]}  # type: ignore[attr-defined]


def roles(of: dict[str, object]) -> dict[str, list[dict[str, object]]]:
    return {str(r["rolename"]): r["acls"] for r in of["roles"]}  # type: ignore[attr-defined]


def test_the_hash_is_the_plugins_own() -> None:
    # Written by `mosquitto_ctrl dynsec init FILE admin adminpw` (Mosquitto 2.0.11) here.
    salt = base64.b64decode("EuYX2K14dc99fgiV")
    stored = hash_password("adminpw", salt=salt, iterations=101)
    assert stored["password"] == (
        "GctxkDseuL5WDAGI1eKnz4mD1beJhUes0xx8sc/R5k5rc0wEiZEAIjbhiyz7qZwG5K3fyDKT/1DvOkcJkyezFA=="
    )
    assert password_matches(stored, "adminpw") and not password_matches(stored, "adminpw2")
    assert hash_password("x")["salt"] != hash_password("x")["salt"]  # a fresh salt each time


def test_a_kiosk_role_is_literal_and_its_own() -> None:
    generated = state(KioskAccount("bar-1", password="p1"), KioskAccount("bar-2", enabled=False))
    acls = roles(generated)["kiosk:bar-1"]
    for acl in acls:
        assert acl["allow"] is True
        assert not set(str(acl["topic"])) & {"+", "#", "$"}, acl
    by_type: dict[str, set[str]] = {}
    for acl in acls:
        by_type.setdefault(str(acl["acltype"]), set()).add(str(acl["topic"]))
    base = "festival/v1/kiosks/bar-1"
    readable = {f"{base}/result", f"{base}/config", "festival/v1/denylist"}
    assert by_type == {
        "publishClientSend": {f"{base}/tx", f"{base}/scan", f"{base}/status"},
        "publishClientReceive": readable,
        "subscribeLiteral": readable,
    }
    bar = clients(generated)["bar-1"]
    assert bar["clientid"] == "bar-1" and bar["disabled"] is False
    assert password_matches(bar, "p1")
    assert clients(generated)["bar-2"]["disabled"] is True
    assert "password" not in clients(generated)["bar-2"]
    assert generated["defaultACLAccess"] == {
        "publishClientSend": False,
        "publishClientReceive": False,
        "subscribe": False,
        "unsubscribe": True,
    }


def test_the_service_user_and_the_admin_get_only_their_jobs() -> None:
    generated = state()
    service = {(a["acltype"], a["topic"]) for a in roles(generated)["festival-service"]}
    assert ("subscribeLiteral", "$share/ledger/festival/v1/kiosks/+/tx") in service
    assert not any(kind == "subscribePattern" for kind, _ in service)
    assert ("publishClientSend", "festival/v1/kiosks/+/tx") not in service
    admin = {(a["acltype"], a["topic"]) for a in roles(generated)["festival-admin"]}
    assert {topic for _, topic in admin} == {
        "$CONTROL/dynamic-security/v1",
        "$CONTROL/dynamic-security/v1/response",
    }
    assert password_matches(clients(generated)[ADMIN_USERNAME], "admin-secret")
    assert password_matches(clients(generated)["cloud-consumer"], "service-secret")


def test_regeneration_keeps_stored_hashes_and_follows_the_registry() -> None:
    first = state(KioskAccount("bar-1", password="p1"), KioskAccount("bar-3", password="p3"))
    stranger = {"username": "intruder", "password": "x", "salt": "y", "iterations": 1}
    existing = {**first, "clients": [*first["clients"], stranger]}  # type: ignore[list-item]
    again = state(KioskAccount("bar-1", enabled=False), existing=existing)
    assert password_matches(clients(again)["bar-1"], "p1")  # kept, not re-issued
    assert clients(again)["bar-1"]["disabled"] is True
    assert set(clients(again)) == {ADMIN_USERNAME, "cloud-consumer", "bar-1"}  # bar-3 is gone


@pytest.mark.parametrize(
    "kiosk_id", ["consumer-host-1", "festival-admin", "deploy-check-1", "cloud-consumer", "Bar"]
)
def test_ids_of_the_cloud_or_invalid_ids_are_never_kiosks(kiosk_id: str) -> None:
    with pytest.raises(BrokerConfigError):
        state(KioskAccount(kiosk_id))


def test_the_configuration_caps_packets_sessions_and_queues(tmp_path: Path) -> None:
    options = BrokerOptions(
        out_dir=tmp_path,
        service_username="cloud-consumer",
        service_password="service-secret",
        tls=TlsListener(tmp_path / "b.pem", tmp_path / "b.key", tmp_path / "ca.pem", True),
        local_port=1883,
    )
    lines = render_config(options, Path("/usr/lib/x/mosquitto_dynamic_security.so")).splitlines()
    for expected in (
        "allow_anonymous false",
        "per_listener_settings false",
        "user mosquitto",
        "max_packet_size 262144",
        "persistent_client_expiration 3d",
        "set_tcp_nodelay true",
    ):
        assert expected in lines
    tls_at = lines.index("listener 8883 0.0.0.0")
    assert lines[tls_at + 1 : tls_at + 6] == [
        f"cafile {tmp_path / 'ca.pem'}",
        f"certfile {tmp_path / 'b.pem'}",
        f"keyfile {tmp_path / 'b.key'}",
        "tls_version tlsv1.2",
        "require_certificate true",
    ]
    assert "listener 1883 127.0.0.1" in lines
    assert "service-secret" not in "\n".join(lines)
