"""What to do with one received request: the consumer's pure core (no I/O, no clock).

PROTOCOL.md's rules, in the order they are checked:
1. ``authenticate`` (signature under the key of the kiosk named by the topic, kid and payload
   kiosk_id equal to it). Not authenticated -> a dead letter, answered with a rejection that
   echoes nothing. A message that never authenticated claims no request_id.
2. Authenticated: the kiosk is disabled -> KIOSK_DISABLED; its role does not permit the request's
   type -> OPERATION_NOT_ALLOWED; the schema or the age is wrong -> INVALID_REQUEST /
   STALE_REQUEST; (1.1) a top-up naming a checkpoint other than the one the kiosk is registered
   for -> INVALID_REQUEST. Each is a permanent outcome stored under the request_id (replays
   return it), which needs a valid request_id: without one it can only be a dead letter.
3. Otherwise the request goes to the ledger; a top-up that names no checkpoint goes with the
   kiosk's registered checkpoint filled in, so its cash lands in that checkpoint's drawer.
4. (1.1) In sun mode (FESTIVAL_CARD_AUTH=sun) ``check_sun`` verifies the request's ``card_sun``
   (decrypt, UID, MAC: CPU only, no database) and the ledger gets the verified counter or the
   failure's reason: the counter rule needs the accepted counters, so the ledger decides it in
   the transaction that applies the request (revision 0014), where CARD_NOT_GENUINE falls in
   PROTOCOL.md's order of checks (after PRICE_MISMATCH, before CARD_NOT_FOUND).
5. (1.1) ``check_pins`` checks a staff_login's PIN against the staff member's stored hash (read
   for the batch); the ledger gets the verdict, never the PIN, and decides the login (band,
   lock, enabled) and, with FESTIVAL_STAFF_REQUIRED, STAFF_NOT_ALLOWED for every other request
   (revision 0024). STALE_REQUEST is decided here, before the ledger, so a request both stale
   and not allowed to its staff member is STALE_REQUEST (docs/protocol.md).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Final, TypeAlias, cast

from cloud.staff import keyed_payload_hash, verify_pin
from protocol.codec import AuthenticatedMessage, authenticate, parse_authenticated
from protocol.errors import ErrorCode, ProtocolError, quote
from protocol.keys import Ed25519PublicKey
from protocol.models import (
    ECHO_FIELDS,
    REQUEST_TYPES,
    CardSun,
    CardSwap,
    CheckpointRecharge,
    Request,
    StaffLogin,
    StaffLogout,
    Void,
    echo_fields,
    role_may_send,
)
from protocol.sun import SunError, SunFailure, SunVerifier

# The role rule lives with the protocol (protocol.models.REQUEST_TYPES_BY_ROLE).
TYPES_ALL: Final = frozenset(REQUEST_TYPES)


@dataclass(frozen=True, slots=True)
class KioskView:
    """What the decision needs to know about the kiosk named by the topic, read for this batch."""

    public_key: Ed25519PublicKey
    enabled: bool
    role: str
    # The checkpoint the kiosk is registered for (kiosk add --checkpoint); None: its kiosk id.
    checkpoint_id: str | None = None


@dataclass(frozen=True, slots=True)
class RequestPolicy:
    """The deployment's rules for requests (from CloudSettings)."""

    currency: str
    stale_after_s: int
    future_skew_s: int
    topup_cents_max: int


@dataclass(frozen=True, slots=True)
class Echo:
    """The request fields a result may carry back (each None when not valid)."""

    request_id: str | None
    kiosk_id: str | None
    seq: int | None
    card_uid: str | None

    @classmethod
    def of(cls, fields: Mapping[str, object]) -> Echo:
        """From fields ``protocol.models.echo_fields`` computed (as ``ProtocolError.echo``):
        each is already the payload's valid value or None, so nothing is checked again."""
        return cls(*(cast(Any, fields.get(name)) for name in ECHO_FIELDS))

    @classmethod
    def of_request(cls, request: Request) -> Echo:
        return cls(request.request_id, request.kiosk_id, request.seq, request.card_uid)


NO_ECHO: Final = Echo(None, None, None, None)


@dataclass(frozen=True, slots=True)
class Apply:
    """A valid, authenticated request for the ledger."""

    request: Request
    payload_sha256: str
    echo: Echo
    # (1.1) sun mode, set by check_sun: the verified SDMReadCtr, or why the message failed
    sun_counter: int | None = None
    sun_failure: SunFailure | None = None
    # (1.1) sun mode, a card swap: the same for its old_card_sun (the old band presented)
    old_sun_counter: int | None = None
    old_sun_failure: SunFailure | None = None
    # (1.1) a staff_login, set by check_pins: whether its PIN matches the staff member's stored
    # hash, and that hash (None: no such staff member). The ledger gets these, never the PIN.
    pin_verified: bool | None = None
    pin_hash_checked: str | None = None


@dataclass(frozen=True, slots=True)
class Reject:
    """An authenticated request refused for good; stored under its request_id."""

    code: ErrorCode
    message: str
    payload_sha256: str
    echo: Echo
    request_id: str
    kiosk_id: str
    request_type: str | None  # one of REQUEST_TYPES when the payload says so


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message that cannot own a request_id: kept with its raw bytes and the reason."""

    code: ErrorCode
    message: str
    echo: Echo
    authenticated: bool


Decision: TypeAlias = Apply | Reject | DeadLetter


def decide_request(
    raw: bytes,
    *,
    topic_kiosk_id: str,
    kiosk: KioskView | None,
    policy: RequestPolicy,
    now_ms: int,
) -> Decision:
    def public_key_for(kiosk_id: str) -> Ed25519PublicKey | None:
        return kiosk.public_key if kiosk is not None and kiosk_id == topic_kiosk_id else None

    try:
        message = authenticate(raw, topic_kiosk_id=topic_kiosk_id, public_key_for=public_key_for)
    except ProtocolError as error:
        return DeadLetter(error.code, error.message, NO_ECHO, authenticated=False)
    assert kiosk is not None  # authenticate() found its key
    return _decide_authenticated(message, kiosk, policy, now_ms)


def check_sun(decision: Decision, verifier: SunVerifier) -> Decision:
    """(1.1) sun mode: an Apply with its ``card_sun`` verified for its ``card_uid`` (once per
    request) and, for a card swap, its ``old_card_sun`` for its ``old_card_uid`` (whether the
    old band is presented); any other decision as it is, a void (it names an order, no band
    is read) and a staff login or logout (their band's proof is the PIN): PROTOCOL.md lists
    which requests are checked. Never raises: a failure is its
    reason."""
    if not isinstance(decision, Apply) or isinstance(
        decision.request, Void | StaffLogin | StaffLogout
    ):
        return decision
    request = decision.request
    counter, failure = _verified(verifier, request.card_uid, request.card_sun)
    decision = replace(decision, sun_counter=counter, sun_failure=failure)
    if isinstance(request, CardSwap):
        counter, failure = _verified(verifier, request.old_card_uid, request.old_card_sun)
        decision = replace(decision, old_sun_counter=counter, old_sun_failure=failure)
    return decision


def staff_ids_to_check(decisions: Sequence[Decision]) -> set[str]:
    """The staff ids of the staff_login requests among ``decisions`` (their PINs to check)."""
    return {
        d.request.staff_id
        for d in decisions
        if isinstance(d, Apply) and isinstance(d.request, StaffLogin)
    }


def check_pins(decision: Decision, pin_hashes: Mapping[str, str]) -> Decision:
    """(1.1) A staff_login's PIN checked against its staff member's stored hash (cloud.staff:
    scrypt, CPU only); any other decision as it is. The ledger decides the rest (band, lock,
    enabled) in the transaction that records the login."""
    if not isinstance(decision, Apply) or not isinstance(decision.request, StaffLogin):
        return decision
    stored = pin_hashes.get(decision.request.staff_id)
    return replace(
        decision, pin_verified=verify_pin(decision.request.pin, stored), pin_hash_checked=stored
    )


def key_staff_login(decision: Decision, key: bytes) -> Decision:
    """(1.1) A staff_login's payload identity keyed (cloud.staff.keyed_payload_hash): its
    payload bytes contain the PIN, so their plain SHA-256 is not stored. An Apply or a Reject of
    a staff_login gets the keyed value; any other decision as it is."""
    login = (isinstance(decision, Apply) and isinstance(decision.request, StaffLogin)) or (
        isinstance(decision, Reject) and decision.request_type == StaffLogin.type
    )
    if not login:
        return decision
    assert isinstance(decision, Apply | Reject)
    return replace(decision, payload_sha256=keyed_payload_hash(key, decision.payload_sha256))


def _verified(
    verifier: SunVerifier, card_uid: str, card_sun: CardSun | None
) -> tuple[int | None, SunFailure | None]:
    """The verified SDMReadCtr of ``card_sun`` for ``card_uid``, or why it failed."""
    try:
        if card_sun is None:
            raise SunError(SunFailure.MISSING, "no SUN message")
        verified = verifier.verify(card_uid, card_sun.picc_data, card_sun.cmac)
    except SunError as error:
        return None, error.reason
    return verified.counter, None


def _decide_authenticated(
    message: AuthenticatedMessage, kiosk: KioskView, policy: RequestPolicy, now_ms: int
) -> Decision:
    document = message.document
    refusal = _refusal_by_kiosk(document, kiosk)
    if refusal is not None:
        # Refused before the schema was looked at: the echo is computed here, once.
        return _refused(message, refusal, Echo.of(echo_fields(document)))
    try:
        request: Request = parse_authenticated(
            message,
            currency=policy.currency,
            now_ms=now_ms,
            stale_after_s=policy.stale_after_s,
            future_skew_s=policy.future_skew_s,
            topup_cents_max=policy.topup_cents_max,
        )
    except ProtocolError as error:
        # parse_authenticated computed the echo of its refusal (ProtocolError.echo).
        return _refused(message, error, Echo.of(error.echo))
    echo = Echo.of_request(request)
    if isinstance(request, CheckpointRecharge):
        bound, refusal = _bind_checkpoint(request, kiosk)
        if bound is None:
            assert refusal is not None
            return _refused(message, refusal, echo)
        request = bound
    return Apply(request, message.payload_sha256, echo)


def _refusal_by_kiosk(document: dict[str, object], kiosk: KioskView) -> ProtocolError | None:
    """KIOSK_DISABLED, or OPERATION_NOT_ALLOWED for a type the kiosk's role does not permit."""
    if not kiosk.enabled:
        return ProtocolError(ErrorCode.KIOSK_DISABLED, "this kiosk is disabled")
    request_type = document.get("type")
    if (
        isinstance(request_type, str)
        and request_type in TYPES_ALL
        and not role_may_send(kiosk.role, request_type)
    ):
        return ProtocolError(
            ErrorCode.OPERATION_NOT_ALLOWED, f"a {kiosk.role} kiosk may not send {request_type}"
        )
    return None


def _refused(message: AuthenticatedMessage, refusal: ProtocolError, echo: Echo) -> Decision:
    """A stored rejection, or a dead letter when there is no valid request_id to store it under."""
    if echo.request_id is None:
        return DeadLetter(refusal.code, refusal.message, echo, authenticated=True)
    request_type = message.document.get("type")
    return Reject(
        refusal.code,
        refusal.message,
        message.payload_sha256,
        echo,
        echo.request_id,
        message.kiosk_id,
        request_type if isinstance(request_type, str) and request_type in TYPES_ALL else None,
    )


def _bind_checkpoint(
    request: CheckpointRecharge, kiosk: KioskView
) -> tuple[CheckpointRecharge | None, ProtocolError | None]:
    """A top-up books into the drawer of the checkpoint its kiosk is registered for (1.1): an
    absent checkpoint_id means that one, any other is INVALID_REQUEST (a cashier cannot book
    cash into another checkpoint's drawer)."""
    registered = kiosk.checkpoint_id if kiosk.checkpoint_id is not None else request.kiosk_id
    if request.checkpoint_id is None:
        return replace(request, checkpoint_id=registered), None
    if request.checkpoint_id != registered:
        return None, ProtocolError(
            ErrorCode.INVALID_REQUEST,
            f"checkpoint_id {quote(request.checkpoint_id)} is not this kiosk's checkpoint"
            f" {quote(registered)}",
        )
    return request, None
