"""Bytes on the wire <-> models: the decode pipeline and the signed encoders.

(1.1) The cloud's own messages to kiosks, config and deny-list, are signed like results
(``encode_config``, ``encode_denylist``) and checked by the kiosk against its pinned cloud key
(``verify_config``, ``verify_denylist``); their limit is CONFIG_BYTES_MAX, not MESSAGE_BYTES_MAX.

Decoding a request is two steps because the cloud must know whether a failure happened before
or after authentication (PROTOCOL.md: every outcome of an authenticated request is stored, a
message that did not authenticate only becomes a dead letter):

1. ``authenticate``: size, structure, header, kid = topic kiosk, key, signature, strict JSON
   object, payload kiosk_id = topic kiosk. Any failure: NOT authenticated.
2. ``parse_authenticated``: schema, then staleness. Failures carry ``.echo``, computed here once
   (the consumer answers with it).

Models check themselves when they are built (protocol.models), so the encoders only serialise
and sign: nothing is validated by serialising it and parsing it back.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Container
from dataclasses import dataclass
from typing import Final, TypeAlias

from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from protocol.errors import ErrorCode, ProtocolError, json_type_name, status_for
from protocol.jws import parse_compact, sign_compact, verify
from protocol.limits import (
    CLOUD_KID,
    CONFIG_BYTES_MAX,
    FUTURE_SKEW_S_DEFAULT,
    MESSAGE_BYTES_MAX,
    RESULT_MESSAGE_LENGTH_MAX,
    STALE_AFTER_S_DEFAULT,
    TEXT_FORBIDDEN_PATTERN,
    TOPUP_CENTS_MAX_DEFAULT,
    TOPUP_CENTS_MIN,
)
from protocol.models import (
    CheckpointRecharge,
    DenyList,
    KioskConfig,
    KioskStatus,
    Request,
    Result,
    ScanRecord,
    check_result,
    config_to_dict,
    denylist_to_dict,
    echo_fields,
    parse_config,
    parse_denylist,
    parse_request,
    parse_result,
    parse_scan,
    parse_status,
    request_echo,
    request_to_dict,
    result_to_dict,
    scan_to_dict,
    status_to_dict,
)
from protocol.strict_json import dumps_canonical, loads_strict
from protocol.topics import is_valid_kiosk_id

PublicKeyLookup: TypeAlias = Callable[[str], Ed25519PublicKey | None]
MILLISECONDS_PER_SECOND: Final = 1000


@dataclass(frozen=True, slots=True)
class AuthenticatedMessage:
    """A message whose signature verified under the key of the kiosk named by its topic.

    ``payload`` is the exact signed payload bytes; ``payload_sha256`` (hex) is the identity the
    idempotency rules compare ("same payload"); ``document`` is the decoded JSON object, whose
    schema has NOT been checked yet.
    """

    kiosk_id: str
    payload: bytes
    payload_sha256: str
    document: dict[str, object]


def authenticate(
    raw: bytes, *, topic_kiosk_id: str, public_key_for: PublicKeyLookup
) -> AuthenticatedMessage:
    """Authenticate a signed kiosk message that arrived on ``topic_kiosk_id``'s topic.

    Checks, in order: size, ASCII, JWS structure, header (alg, members, kid) — see
    jws.parse_compact; kid = topic kiosk (INVALID_SIGNATURE); a key is registered
    (``public_key_for`` returns None: UNKNOWN_KIOSK); signature (INVALID_SIGNATURE); the payload is
    a strict JSON object (INVALID_REQUEST); its ``kiosk_id`` = topic kiosk (INVALID_SIGNATURE).

    Exceptions raised by ``public_key_for`` (a database that is away) propagate unchanged: they
    are transient faults, not verdicts on the message.
    """
    if not is_valid_kiosk_id(topic_kiosk_id):
        raise ProtocolError(ErrorCode.INVALID_REQUEST, "topic names no valid kiosk")
    parts = parse_compact(raw)
    if parts.kid != topic_kiosk_id:
        raise ProtocolError(ErrorCode.INVALID_SIGNATURE, "JWS kid does not match the topic kiosk")
    public_key = public_key_for(topic_kiosk_id)
    if public_key is None:
        raise ProtocolError(ErrorCode.UNKNOWN_KIOSK, "no public key registered for this kiosk")
    verify(parts, public_key)
    document = loads_strict(parts.payload)
    if type(document) is not dict:
        raise ProtocolError(
            ErrorCode.INVALID_REQUEST,
            f"payload must be a JSON object, got {json_type_name(document)}",
        )
    if document.get("kiosk_id") != topic_kiosk_id:
        raise ProtocolError(
            ErrorCode.INVALID_SIGNATURE, "payload kiosk_id does not match the topic kiosk"
        )
    return AuthenticatedMessage(
        kiosk_id=topic_kiosk_id,
        payload=parts.payload,
        payload_sha256=hashlib.sha256(parts.payload).hexdigest(),
        document=document,
    )


def parse_authenticated(
    message: AuthenticatedMessage,
    *,
    currency: str,
    now_ms: int,
    stale_after_s: int = STALE_AFTER_S_DEFAULT,
    future_skew_s: int = FUTURE_SKEW_S_DEFAULT,
    topup_cents_max: int = TOPUP_CENTS_MAX_DEFAULT,
) -> Request:
    """Validate an authenticated request: schema (INVALID_REQUEST), then age (STALE_REQUEST).

    A request is stale when ``created_at_ms`` is more than ``stale_after_s`` before ``now_ms``
    or more than ``future_skew_s`` after it; exactly at either bound it is accepted. A raised
    ProtocolError carries ``echo``: request_id, kiosk_id, seq and card_uid, each the payload's
    value when that field is valid, else None.
    """
    try:
        request = parse_request(
            message.document, currency=currency, topup_cents_max=topup_cents_max
        )
    except ProtocolError as error:
        raise error.with_echo(echo_fields(message.document)) from None
    age_ms = now_ms - request.created_at_ms
    if age_ms > stale_after_s * MILLISECONDS_PER_SECOND:
        raise ProtocolError(
            ErrorCode.STALE_REQUEST,
            f"created_at_ms is more than {stale_after_s} s in the past",
            echo=request_echo(request),
        )
    if -age_ms > future_skew_s * MILLISECONDS_PER_SECOND:
        raise ProtocolError(
            ErrorCode.STALE_REQUEST,
            f"created_at_ms is more than {future_skew_s} s in the future",
            echo=request_echo(request),
        )
    return request


def _signed(
    payload: bytes, private_key: Ed25519PrivateKey, kid: str, bytes_max: int = MESSAGE_BYTES_MAX
) -> bytes:
    token = sign_compact(payload, private_key, kid)
    if len(token) > bytes_max:
        raise ProtocolError(
            ErrorCode.INVALID_REQUEST,
            f"signed message would be {len(token)} bytes, over {bytes_max}",
        )
    return token


def encode_request(
    request: Request,
    private_key: Ed25519PrivateKey,
    *,
    topup_cents_max: int = TOPUP_CENTS_MAX_DEFAULT,
) -> bytes:
    """The kiosk side: serialise ``request`` canonically and sign it (kid = kiosk_id).

    ``request`` checked itself when it was built; what is left for the cloud to reject is a
    top-up over ``topup_cents_max`` (the deployment's limit) and a signed form over
    MESSAGE_BYTES_MAX (split the order): both raise ProtocolError(INVALID_REQUEST). The returned
    bytes are what the kiosk stores in its outbox and resends unchanged on every retry.
    """
    if type(topup_cents_max) is not int or topup_cents_max < TOPUP_CENTS_MIN:
        raise ValueError(f"topup_cents_max must be an integer >= {TOPUP_CENTS_MIN}")
    if isinstance(request, CheckpointRecharge) and request.amount_cents > topup_cents_max:
        raise ProtocolError(
            ErrorCode.INVALID_REQUEST,
            f"amount_cents must be {TOPUP_CENTS_MIN}..{topup_cents_max},"
            f" got {request.amount_cents}",
        )
    return _signed(dumps_canonical(request_to_dict(request)), private_key, request.kiosk_id)


def result_message_text(message: str) -> str:
    """``message`` made fit for a result: forbidden characters replaced, at most 200 chars."""
    cleaned = TEXT_FORBIDDEN_PATTERN.sub("\ufffd", message)
    return cleaned[:RESULT_MESSAGE_LENGTH_MAX]


def build_result(
    *,
    request_id: str | None,
    kiosk_id: str | None,
    seq: int | None,
    card_uid: str | None,
    error_code: ErrorCode | None,
    message: str,
    transaction_id: str | None,
    previous_balance_cents: int | None,
    new_balance_cents: int | None,
    debt_cents: int | None,
    replayed: bool,
    processed_at_ms: int,
) -> Result:
    """The cloud side: a Result for an outcome; ``status`` follows from ``error_code``.

    ``message`` is cut to 200 characters (forbidden characters replaced by U+FFFD). Raises
    ProtocolError (a ValueError) when the outcome contradicts PROTOCOL.md (a programmer error
    in the caller): the Result checks itself, see models.check_result.
    """
    code = None if error_code is None else ErrorCode(error_code)
    return Result(
        request_id=request_id,
        kiosk_id=kiosk_id,
        seq=seq,
        card_uid=card_uid,
        status=status_for(code),
        error_code=code,
        message=result_message_text(message),
        transaction_id=transaction_id,
        previous_balance_cents=previous_balance_cents,
        new_balance_cents=new_balance_cents,
        debt_cents=debt_cents,
        replayed=replayed,
        processed_at_ms=processed_at_ms,
    )


def encode_result(result: Result, cloud_private_key: Ed25519PrivateKey) -> bytes:
    """Serialise ``result`` canonically and sign it with the cloud key (kid ``cloud``).

    A Result checked itself when it was built. An instance of a subclass that does not (the
    ledger's Outcome: its Stripe outcomes are no answers to a kiosk) is checked here, once, by
    the same rules (ProtocolError, a ValueError, when it is no valid result).
    """
    if type(result) is not Result:
        check_result(result)
    return _signed(dumps_canonical(result_to_dict(result)), cloud_private_key, CLOUD_KID)


def verify_result(
    raw: bytes,
    *,
    cloud_public_key: Ed25519PublicKey,
    outstanding: Container[str] | None = None,
    kiosk_id: str | None = None,
) -> Result:
    """The kiosk side: accept a result only if the pinned cloud key signed it.

    Checks: structure and header as jws.parse_compact; kid ``cloud`` and the signature under
    ``cloud_public_key`` (INVALID_SIGNATURE); strict JSON and result schema (INVALID_REQUEST);
    when given, ``kiosk_id`` must equal the result's (a null kiosk_id passes) and the result's
    request_id must be in ``outstanding`` (a null request_id never is) (INVALID_REQUEST).
    """
    parts = parse_compact(raw)
    if parts.kid != CLOUD_KID:
        raise ProtocolError(ErrorCode.INVALID_SIGNATURE, "result kid must be cloud")
    verify(parts, cloud_public_key)
    result = parse_result(loads_strict(parts.payload))
    if kiosk_id is not None and result.kiosk_id is not None and result.kiosk_id != kiosk_id:
        raise ProtocolError(ErrorCode.INVALID_REQUEST, "result is addressed to another kiosk")
    if outstanding is not None and (
        result.request_id is None or result.request_id not in outstanding
    ):
        raise ProtocolError(ErrorCode.INVALID_REQUEST, "result for no outstanding request")
    return result


def encode_config(config: KioskConfig, cloud_private_key: Ed25519PrivateKey) -> bytes:
    """(1.1) The cloud side: serialise ``config`` canonically and sign it (kid ``cloud``).

    ``config`` checked itself when it was built; a signed form over CONFIG_BYTES_MAX raises
    ProtocolError(INVALID_REQUEST) (it could not be published: nothing may be sent then).
    """
    return _signed(
        dumps_canonical(config_to_dict(config)), cloud_private_key, CLOUD_KID, CONFIG_BYTES_MAX
    )


def verify_config(raw: bytes, *, cloud_public_key: Ed25519PublicKey, kiosk_id: str) -> KioskConfig:
    """(1.1) The kiosk side: a config the pinned cloud key signed for ``kiosk_id``.

    Checks, in order: the size of the raw bytes (at most CONFIG_BYTES_MAX, before anything is
    decoded), structure and header as jws.parse_compact; kid ``cloud`` and the signature under
    ``cloud_public_key`` (INVALID_SIGNATURE); strict JSON and the config schema, then its
    ``kiosk_id`` = ``kiosk_id`` (INVALID_REQUEST). Whether its version is newer than the one the
    kiosk holds is the kiosk's to judge.
    """
    payload = _verified_cloud_payload(raw, cloud_public_key, "config")
    config = parse_config(loads_strict(payload))
    if config.kiosk_id != kiosk_id:
        raise ProtocolError(ErrorCode.INVALID_REQUEST, "config is addressed to another kiosk")
    return config


def encode_denylist(denylist: DenyList, cloud_private_key: Ed25519PrivateKey) -> bytes:
    """(1.1) The cloud side: serialise ``denylist`` canonically and sign it (kid ``cloud``);
    over CONFIG_BYTES_MAX: ProtocolError(INVALID_REQUEST)."""
    return _signed(
        dumps_canonical(denylist_to_dict(denylist)), cloud_private_key, CLOUD_KID, CONFIG_BYTES_MAX
    )


def verify_denylist(raw: bytes, *, cloud_public_key: Ed25519PublicKey) -> DenyList:
    """(1.1) The kiosk side: a deny-list the pinned cloud key signed (checks as verify_config)."""
    payload = _verified_cloud_payload(raw, cloud_public_key, "denylist")
    return parse_denylist(loads_strict(payload))


def _verified_cloud_payload(raw: bytes, cloud_public_key: Ed25519PublicKey, what: str) -> bytes:
    """The payload of a config or deny-list message once its size, header, kid and signature
    passed; the signature is checked before the payload is decoded."""
    parts = parse_compact(raw, bytes_max=CONFIG_BYTES_MAX)
    if parts.kid != CLOUD_KID:
        raise ProtocolError(ErrorCode.INVALID_SIGNATURE, f"{what} kid must be cloud")
    verify(parts, cloud_public_key)
    return parts.payload


def encode_scan(record: ScanRecord, private_key: Ed25519PrivateKey) -> bytes:
    """Serialise and sign a scan record (kid = its kiosk_id); it checked itself when built."""
    return _signed(dumps_canonical(scan_to_dict(record)), private_key, record.kiosk_id)


def decode_scan(raw: bytes, *, topic_kiosk_id: str, public_key_for: PublicKeyLookup) -> ScanRecord:
    """Authenticate (as ``authenticate``) and validate a scan record."""
    message = authenticate(raw, topic_kiosk_id=topic_kiosk_id, public_key_for=public_key_for)
    return parse_scan(message.document)


def encode_status(status: KioskStatus) -> bytes:
    """Serialise a status message (canonical JSON, unsigned); it checked itself when built."""
    return dumps_canonical(status_to_dict(status))


def decode_status(raw: bytes, *, topic_kiosk_id: str) -> KioskStatus:
    """Parse a retained status message; its kiosk_id must equal the topic's (INVALID_REQUEST)."""
    if len(raw) > MESSAGE_BYTES_MAX:
        raise ProtocolError(
            ErrorCode.INVALID_REQUEST, f"message larger than {MESSAGE_BYTES_MAX} bytes"
        )
    status = parse_status(loads_strict(raw))
    if status.kiosk_id != topic_kiosk_id:
        raise ProtocolError(ErrorCode.INVALID_REQUEST, "status kiosk_id does not match the topic")
    return status
