"""The ledger's records: what its methods take and return, without the database.

`Outcome` (a protocol `Result` with the bar order's id), `LedgerRequest`, the directory's
`KioskRecord`, cards, Stripe results and owed refunds, and the mapping from the procedures' jsonb
outcome. `cloud/ledger.py` (SQLAlchemy) and `cloud/ledger_fake.py` (in memory) both build them;
`cloud/ports.py` names them. Nothing here imports a database library.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol

from protocol.errors import ErrorCode, Status
from protocol.models import BarOrder, Request, Result, StaffLogin, request_to_dict

SOURCES: Final = ("mqtt", "http")
KIOSK_ROLES: Final = ("bar", "checkpoint", "all")
# Outcome codes an authenticated request can be rejected with before it reaches the ledger.
REJECTION_CODES: Final = frozenset(
    {
        ErrorCode.KIOSK_DISABLED,
        ErrorCode.OPERATION_NOT_ALLOWED,
        ErrorCode.STALE_REQUEST,
        ErrorCode.INVALID_REQUEST,
    }
)
# A serialization failure or deadlock rolls the whole transaction back: trying again at once is
# what PostgreSQL asks for. Other transient faults go to the caller, who backs off.
CONFLICT_RETRIES_MAX: Final = 3
CONFLICT_RETRY_PAUSE_S: Final = 0.005
BATCH_REQUESTS_MAX: Final = 1000
CARD_TRANSACTIONS_MAX: Final = 500
MISSING_SEQ_RANGES_MAX: Final = 100
# Dead letters (DESIGN.md "Database"): the first 8192 bytes of a message are kept, with its full
# length and SHA-256; at most this many are stored per kiosk per minute, the rest only counted;
# `festival-cloud cleanup` removes them after 30 days (cleanup_expired_dead_letters()).
DEAD_LETTER_BYTES_MAX: Final = 8192
DEAD_LETTERS_PER_KIOSK_MINUTE_MAX: Final = 60
CHECKPOINT_ID_LENGTH_MAX: Final = 64
SHA256_HEX_LENGTH: Final = 64
RETRYABLE_AT_ONCE_SQLSTATES: Final = frozenset({"40001", "40P01"})
# Seconds an owed refund is leased to the process calling Stripe for it.
REFUND_LEASE_S: Final = 60
# Expired and failed top-ups (never any money) are deleted this many days after expiry.
TOPUP_RETENTION_DAYS: Final = 30

_NONE: Final = type(None)
# The type each field of an Outcome has (the wire's rules come later, see Outcome).
_OUTCOME_FIELD_TYPES: Final = (
    ("request_id", (str, _NONE)),
    ("kiosk_id", (str, _NONE)),
    ("seq", (int, _NONE)),
    ("card_uid", (str, _NONE)),
    ("status", (Status,)),
    ("error_code", (ErrorCode, _NONE)),
    ("message", (str,)),
    ("transaction_id", (str, _NONE)),
    ("previous_balance_cents", (int, _NONE)),
    ("new_balance_cents", (int, _NONE)),
    ("debt_cents", (int, _NONE)),
    ("replayed", (bool,)),
    ("processed_at_ms", (int,)),
    ("order_id", (str, _NONE)),
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome(Result):
    """What happened to one request or Stripe event: the protocol's Result, plus ``order_id``
    (a bar order's row, which the wire does not carry).

    The procedures know no ``kiosk_id`` or ``seq`` (None unless their answer names them): who
    answers a kiosk fills them in (``dataclasses.replace``) and ``encode_result`` then checks
    the result against every rule of the wire before signing it. Built, an Outcome has only
    checked its field types, because not every outcome is an answer to a kiosk: a Stripe event's
    has no kiosk, may be approved without a transaction (a dispute blocks the card) or carry a
    longer message.
    """

    kiosk_id: str | None = None
    seq: int | None = None
    card_uid: str | None = None
    order_id: str | None = None

    def __post_init__(self) -> None:
        for name, types in _OUTCOME_FIELD_TYPES:
            if type(getattr(self, name)) not in types:
                raise TypeError(f"Outcome.{name} is a {type(getattr(self, name)).__name__}")


@dataclass(frozen=True, slots=True)
class LedgerRequest:
    """A validated request and the SHA-256 (hex) of its exact payload bytes."""

    request: Request
    payload_sha256: str
    source: str = "mqtt"
    trace_id: str | None = None
    # (1.1) sun mode only (both None in uid mode): the SDMReadCtr of the request's verified SUN
    # message, or why it did not verify (protocol.sun.SunFailure's value, never stale_counter:
    # freshness is the ledger's to decide, in the transaction that applies the request).
    sun_counter: int | None = None
    sun_failure: str | None = None
    # (1.1) sun mode, a card swap: the same verdict on its old_card_sun (the old band presented)
    old_sun_counter: int | None = None
    old_sun_failure: str | None = None
    # (1.1) a staff_login only: the consumer's verdict on its PIN (cloud.staff.verify_pin) and
    # the stored hash it checked it against (None: the staff id is unknown). The PIN itself is
    # never sent to the database (request_document leaves it out).
    pin_verified: bool | None = None
    pin_hash_checked: str | None = None


@dataclass(frozen=True, slots=True)
class KioskRecord:
    kiosk_id: str
    public_key_b64: str
    role: str
    enabled: bool
    # The checkpoint whose drawer its top-ups go to (kiosk add --checkpoint; default: its id).
    checkpoint_id: str | None = None


class DeadLetterLike(Protocol):
    """A message the consumer could not accept, and why (see Ledger.record_dead_letters)."""

    @property
    def topic(self) -> str: ...
    @property
    def payload(self) -> bytes: ...
    @property
    def error_code(self) -> ErrorCode: ...
    @property
    def reason(self) -> str: ...
    @property
    def kiosk_id(self) -> str | None: ...


@dataclass(frozen=True, slots=True)
class CardRecord:
    card_uid: str
    balance_cents: int
    status: str
    # (1.1, revision 0013) what the card owes from offline sales; never both this and a balance
    debt_cents: int = 0


@dataclass(frozen=True, slots=True)
class StripeCheckoutResult:
    """What sp_handle_stripe_checkout decided for a paid session."""

    outcome: Outcome
    topup_id: str | None
    refund_owed: bool
    anomaly: bool


@dataclass(frozen=True, slots=True)
class OwedRefund:
    """A full refund of a declined paid session, leased for one attempt."""

    topup_id: str
    session_id: str
    payment_intent_id: str | None
    card_uid: str
    amount_cents: int
    currency: str
    idempotency_key: str
    attempts: int


def outcome_from_document(document: Mapping[str, Any]) -> Outcome:
    """Map a procedure's jsonb outcome to an Outcome.

    (1.1) ``debt_cents`` is the document's when it names one; else 0 when the balances are
    integers and None when they are not: the procedures of revisions before debts exist know
    none, and a card without debts owes 0 (the wire's rule: null exactly when the balances are).
    """
    error_code = document.get("error_code")
    previous_balance_cents = document.get("previous_balance_cents")
    new_balance_cents = document.get("new_balance_cents")
    if "debt_cents" in document and document["debt_cents"] is not None:
        debt_cents = document["debt_cents"]
    elif previous_balance_cents is None and new_balance_cents is None:
        debt_cents = None
    else:
        debt_cents = 0
    return Outcome(
        request_id=document.get("request_id"),
        kiosk_id=document.get("kiosk_id"),
        seq=document.get("seq"),
        status=Status(document["status"]),
        error_code=ErrorCode(error_code) if error_code else None,
        message=str(document.get("message") or ""),
        transaction_id=document.get("transaction_id"),
        previous_balance_cents=previous_balance_cents,
        new_balance_cents=new_balance_cents,
        debt_cents=debt_cents,
        replayed=bool(document.get("replayed", False)),
        processed_at_ms=int(document["processed_at_ms"]),
        order_id=document.get("order_id"),
        card_uid=document.get("card_uid"),
    )


def request_document(item: LedgerRequest) -> dict[str, Any]:
    """The JSON object sp_handle_request and sp_process_batch take for one request: the
    protocol's own form of it (request_to_dict) with what only the ledger adds, the SHA-256 of
    its payload bytes, where it came from and its trace id (and, in sun mode, the consumer's
    SUN verdict)."""
    assert item.source in SOURCES, item.source
    assert len(item.payload_sha256) == SHA256_HEX_LENGTH, "payload_sha256 must be hex SHA-256"
    request = item.request
    if isinstance(request, BarOrder):
        assert request.total_cents == sum(i.signed_cents for i in request.items), "total"
    document = {
        **request_to_dict(request),
        "payload_sha256": item.payload_sha256,
        "source": item.source,
        "trace_id": item.trace_id,
    }
    # (1.1) sun mode only: uid mode's documents stay exactly the protocol's form
    if item.sun_counter is not None:
        document["sun_counter"] = item.sun_counter
    if item.sun_failure is not None:
        document["sun_failure"] = item.sun_failure
    if item.old_sun_counter is not None:
        document["old_sun_counter"] = item.old_sun_counter
    if item.old_sun_failure is not None:
        document["old_sun_failure"] = item.old_sun_failure
    if isinstance(request, StaffLogin):
        # (1.1) the PIN stays in the consumer: the ledger gets the verdict (revision 0024)
        assert item.pin_verified is not None, "a staff_login needs the consumer's PIN verdict"
        del document["pin"]
        document["pin_verified"] = item.pin_verified
        document["pin_hash_checked"] = item.pin_hash_checked
    return document


# --- configs and deny-lists the cloud issues (revision 0010) ------------------------------------


class Unchanged:
    """The type of UNCHANGED: 'leave this part of a kiosk's config as it is'."""

    _instance: Unchanged | None = None

    def __new__(cls) -> Unchanged:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNCHANGED"


UNCHANGED: Final = Unchanged()


@dataclass(frozen=True, slots=True)
class IssuedConfig:
    """A config version as stored when it was issued (before it is sent): `document` is
    protocol.models.config_to_dict of it; `published` once the broker acknowledged it."""

    kiosk_id: str
    version: int
    document: Mapping[str, Any]
    published: bool


@dataclass(frozen=True, slots=True)
class IssuedDenyList:
    """A deny-list version as stored when it was issued (before it is sent)."""

    version: int
    issued_at_ms: int
    card_uids: tuple[str, ...]
    published: bool
