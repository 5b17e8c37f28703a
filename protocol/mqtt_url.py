"""Parse `MQTT_URL` (mqtt://user:pass@host:port or mqtts://...), shared by kiosk and cloud.

Errors never carry the password: they name what is wrong and show the URL redacted
(``protocol.redaction.redact``), never the library's own message, which may quote part of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from protocol.redaction import redact

MQTT_PORT_DEFAULT = 1883
MQTTS_PORT_DEFAULT = 8883
SHAPE = "mqtt[s]://[user[:password]@]host[:port]"
SPECIAL_CHARACTERS_HINT = "percent-encode / # ? @ : in the user or password (%2F %23 %3F %40 %3A)"


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
    """Raise ValueError naming the problem (with the URL redacted) for a malformed URL."""

    def invalid(problem: str) -> ValueError:
        return ValueError(f"MQTT_URL {redact(url)!r}: {problem}")

    try:
        parts = urlsplit(url)
        port_text = parts.port
        hostname = parts.hostname
    except ValueError:  # its message can quote the password (a bad port after a '#' in it)
        raise invalid(f"not a valid URL {SHAPE}: {SPECIAL_CHARACTERS_HINT}") from None
    if parts.scheme not in ("mqtt", "mqtts"):
        raise invalid("must start with mqtt:// or mqtts://")
    if not hostname:
        raise invalid("has no host")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise invalid(f"must be {SHAPE}: {SPECIAL_CHARACTERS_HINT}")
    tls = parts.scheme == "mqtts"
    port = port_text or (MQTTS_PORT_DEFAULT if tls else MQTT_PORT_DEFAULT)
    username = unquote(parts.username) if parts.username is not None else None
    password = unquote(parts.password) if parts.password is not None else None
    return MqttEndpoint(hostname, port, username, password, tls)
