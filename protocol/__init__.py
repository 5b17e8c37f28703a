"""Kiosk <-> cloud wire protocol v1: models, strict validation, Ed25519 JWS, topics.

Pure: no network, database, files or clock (time comes in as arguments). See docs/protocol.md.

The package's face is the one screen docs/protocol.md shows; everything else is imported from
its own module (``protocol.models``, ``protocol.codec``, ``protocol.limits``, ...), which is
what the kiosk and the cloud do.
"""

from __future__ import annotations

from protocol.codec import (
    authenticate,
    build_result,
    encode_request,
    encode_result,
    parse_authenticated,
    verify_result,
)
from protocol.errors import ErrorCode, ProtocolError
from protocol.keys import (
    generate_private_key,
    load_public_key_b64,
    private_key_from_pem,
    private_key_pem,
    public_key_b64,
)
from protocol.models import (
    BarItem,
    BarOrder,
    CardSwap,
    CashOut,
    CheckpointRecharge,
    StaffLogin,
    StaffLogout,
    Void,
)
from protocol.topics import TopicKind, parse_topic, shared_subscription, topic_for

__all__ = [
    "BarItem",
    "BarOrder",
    "CardSwap",
    "CashOut",
    "CheckpointRecharge",
    "ErrorCode",
    "ProtocolError",
    "StaffLogin",
    "StaffLogout",
    "TopicKind",
    "Void",
    "authenticate",
    "build_result",
    "encode_request",
    "encode_result",
    "generate_private_key",
    "load_public_key_b64",
    "parse_authenticated",
    "parse_topic",
    "private_key_from_pem",
    "private_key_pem",
    "public_key_b64",
    "shared_subscription",
    "topic_for",
    "verify_result",
]
