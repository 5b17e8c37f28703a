"""MQTT topics of protocol v1: ``{prefix}/v1/kiosks/{kiosk_id}/{tx|result|scan|status|config}``
and (1.1) the one deployment-wide topic ``{prefix}/v1/denylist``."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from protocol.errors import ErrorCode, ProtocolError, quote
from protocol.limits import (
    KIOSK_ID_PATTERN,
    KIOSK_IDS_RESERVED,
    SHARE_GROUP_PATTERN,
    TOPIC_PREFIX_LENGTH_MAX,
    TOPIC_PREFIX_PATTERN,
)

TOPIC_VERSION_LEVEL: Final = "v1"
TOPIC_KIOSKS_LEVEL: Final = "kiosks"
TOPIC_DENYLIST_LEVEL: Final = "denylist"
SHARE_GROUP_DEFAULT: Final = "ledger"


class TopicKind(StrEnum):
    """The last topic level: what the message is."""

    TX = "tx"
    RESULT = "result"
    SCAN = "scan"
    STATUS = "status"
    CONFIG = "config"  # 1.1: cloud -> kiosk, signed, retained


def validate_kiosk_id(kiosk_id: object) -> str:
    """Return ``kiosk_id`` if it is a valid kiosk id, else raise ProtocolError(INVALID_REQUEST).

    Valid: 1-32 characters of ``[a-z0-9-]`` starting with a letter (ASCII only: a Cyrillic
    look-alike of "a" is not an "a"), and not reserved: ``cloud`` is the kid of results.
    """
    if not isinstance(kiosk_id, str) or not KIOSK_ID_PATTERN.match(kiosk_id):
        raise ProtocolError(ErrorCode.INVALID_REQUEST, f"invalid kiosk_id {quote(kiosk_id)}")
    if kiosk_id in KIOSK_IDS_RESERVED:
        raise ProtocolError(ErrorCode.INVALID_REQUEST, f"kiosk_id {quote(kiosk_id)} is reserved")
    return kiosk_id


def is_valid_kiosk_id(kiosk_id: object) -> bool:
    """Whether ``validate_kiosk_id`` would accept ``kiosk_id``."""
    return (
        isinstance(kiosk_id, str)
        and KIOSK_ID_PATTERN.match(kiosk_id) is not None
        and kiosk_id not in KIOSK_IDS_RESERVED
    )


def validate_topic_prefix(prefix: str) -> str:
    """Return ``prefix`` if usable as a topic prefix, else raise ValueError (a configuration error).

    One or more levels of ``[A-Za-z0-9_-]``, at most 64 characters: no wildcard, no ``$``,
    no empty level.
    """
    if len(prefix) > TOPIC_PREFIX_LENGTH_MAX or not TOPIC_PREFIX_PATTERN.match(prefix):
        raise ValueError(f"invalid MQTT topic prefix {quote(prefix)}")
    return prefix


@dataclass(frozen=True, slots=True)
class Topic:
    """One concrete topic; ``str(topic)`` and ``topic.text`` give the MQTT topic name."""

    prefix: str
    kiosk_id: str
    kind: TopicKind

    def __post_init__(self) -> None:
        validate_topic_prefix(self.prefix)
        validate_kiosk_id(self.kiosk_id)
        object.__setattr__(self, "kind", TopicKind(self.kind))

    @property
    def text(self) -> str:
        return (
            f"{self.prefix}/{TOPIC_VERSION_LEVEL}/{TOPIC_KIOSKS_LEVEL}/{self.kiosk_id}/{self.kind}"
        )

    def __str__(self) -> str:
        return self.text


def topic_for(prefix: str, kiosk_id: str, kind: TopicKind | str) -> str:
    """The topic name for ``kind`` messages of ``kiosk_id``."""
    return Topic(prefix, kiosk_id, TopicKind(kind)).text


def config_topic(prefix: str, kiosk_id: str) -> str:
    """(1.1) ``{prefix}/v1/kiosks/{kiosk_id}/config``: the kiosk's signed config (retained)."""
    return topic_for(prefix, kiosk_id, TopicKind.CONFIG)


def denylist_topic(prefix: str) -> str:
    """(1.1) ``{prefix}/v1/denylist``: the signed deny-list every kiosk reads (retained)."""
    validate_topic_prefix(prefix)
    return f"{prefix}/{TOPIC_VERSION_LEVEL}/{TOPIC_DENYLIST_LEVEL}"


def parse_topic(topic: str, prefix: str) -> Topic:
    """Parse a topic of this deployment; raise ProtocolError(INVALID_REQUEST) on anything else."""
    validate_topic_prefix(prefix)
    head = f"{prefix}/{TOPIC_VERSION_LEVEL}/{TOPIC_KIOSKS_LEVEL}/"
    if not topic.startswith(head):
        raise ProtocolError(ErrorCode.INVALID_REQUEST, f"not a v1 kiosk topic: {quote(topic)}")
    levels = topic[len(head) :].split("/")
    if len(levels) != 2:
        raise ProtocolError(ErrorCode.INVALID_REQUEST, f"not a v1 kiosk topic: {quote(topic)}")
    kiosk_id, kind_text = levels
    validate_kiosk_id(kiosk_id)
    try:
        kind = TopicKind(kind_text)
    except ValueError:
        raise ProtocolError(
            ErrorCode.INVALID_REQUEST, f"unknown topic kind {quote(kind_text)}"
        ) from None
    return Topic(prefix, kiosk_id, kind)


def subscription(prefix: str, kind: TopicKind | str) -> str:
    """A plain subscription to ``kind`` messages of every kiosk (e.g. status for a dashboard)."""
    validate_topic_prefix(prefix)
    return f"{prefix}/{TOPIC_VERSION_LEVEL}/{TOPIC_KIOSKS_LEVEL}/+/{TopicKind(kind)}"


def shared_subscription(
    prefix: str, kind: TopicKind | str, group: str = SHARE_GROUP_DEFAULT
) -> str:
    """The MQTT 5 shared subscription ``$share/{group}/{prefix}/v1/kiosks/+/{kind}``."""
    if not SHARE_GROUP_PATTERN.match(group):
        raise ValueError(f"invalid shared subscription group {quote(group)}")
    return f"$share/{group}/{subscription(prefix, kind)}"
