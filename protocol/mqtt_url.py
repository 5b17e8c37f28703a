"""Parse `MQTT_URL` (mqtt://user:pass@host:port or mqtts://...), shared by kiosk and cloud."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

MQTT_PORT_DEFAULT = 1883
MQTTS_PORT_DEFAULT = 8883


@dataclass(frozen=True, slots=True)
class MqttEndpoint:
    host: str
    port: int
    username: str | None
    password: str | None
    tls: bool

    def __repr__(self) -> str:  # never print the password
        scheme = "mqtts" if self.tls else "mqtt"
        user = f"{self.username}:***@" if self.username else ""
        return f"MqttEndpoint({scheme}://{user}{self.host}:{self.port})"


def parse_mqtt_url(url: str) -> MqttEndpoint:
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts"):
        raise ValueError("MQTT_URL must start with mqtt:// or mqtts://")
    if not parts.hostname:
        raise ValueError("MQTT_URL has no host")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError("MQTT_URL must be scheme://[user:password@]host[:port]")
    tls = parts.scheme == "mqtts"
    port = parts.port or (MQTTS_PORT_DEFAULT if tls else MQTT_PORT_DEFAULT)
    username = unquote(parts.username) if parts.username is not None else None
    password = unquote(parts.password) if parts.password is not None else None
    return MqttEndpoint(parts.hostname, port, username, password, tls)
