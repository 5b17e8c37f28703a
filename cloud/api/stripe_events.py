"""Stripe webhooks, the pure part: signature verification and what an event asks us to do.

`verify_signature` checks `Stripe-Signature` over the raw body exactly as Stripe documents it
(`t=<unix seconds>,v1=<hex HMAC-SHA256 of f"{t}.{body}">`, several `v1` allowed during a secret
rotation), and refuses timestamps more than the tolerance in the past *or* the future
(stripe-python's `construct_event` accepts future ones). `parse_event` decodes the body strictly;
`classify` turns an event into one action for the ledger. Nothing here does I/O: the clock, the
secret and the deployment's currency come in as arguments.

Events are triggers, not truth we re-check against Stripe (pretix's model): the signature is what
makes them trustworthy, and each handler in the ledger is idempotent on its own key.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cloud.api.limits import (
    PAYOUT_REFUNDS_LISTED_MAX,
    STRIPE_DISPUTE_STATUS_LENGTH_MAX,
    STRIPE_EVENT_ID_PATTERN,
    STRIPE_EVENT_TYPE_PATTERN,
    STRIPE_OBJECT_ID_PATTERN,
    STRIPE_SIGNATURE_HEADER_BYTES_MAX,
    STRIPE_SIGNATURE_TIMESTAMP_DIGITS_MAX,
    STRIPE_SIGNATURES_PER_HEADER_MAX,
    TOPUP_ID_PATTERN,
    UUID_PATTERN,
    WEBHOOK_JSON_DEPTH_MAX,
)
from protocol.errors import ProtocolError, quote
from protocol.limits import CARD_UID_PATTERN
from protocol.strict_json import loads_strict


class SignatureError(ValueError):
    """The Stripe-Signature header is missing, malformed, wrong or outside the tolerance."""


class EventError(ValueError):
    """A correctly signed body that is not a Stripe event we can read."""


# --------------------------------------------------------------------------------------------
# Signature
# --------------------------------------------------------------------------------------------


def verify_signature(
    payload: bytes, header: str | None, secret: str, *, now_s: float, tolerance_s: int
) -> int:
    """Return the signed timestamp if one `v1` signature matches and the time is within range."""
    if not header:
        raise SignatureError("missing Stripe-Signature header")
    if len(header) > STRIPE_SIGNATURE_HEADER_BYTES_MAX:
        raise SignatureError("Stripe-Signature header too long")
    timestamps: list[str] = []
    signatures: list[str] = []
    for element in header.split(","):
        key, separator, value = element.strip().partition("=")
        if not separator:
            continue
        if key == "t":
            timestamps.append(value)
        elif key == "v1":
            signatures.append(value)
    if len(timestamps) != 1:
        raise SignatureError("Stripe-Signature needs exactly one timestamp")
    timestamp_text = timestamps[0]
    if not (timestamp_text.isascii() and timestamp_text.isdigit()) or (
        len(timestamp_text) > STRIPE_SIGNATURE_TIMESTAMP_DIGITS_MAX
    ):
        raise SignatureError("Stripe-Signature timestamp is not a number")
    if not signatures:
        raise SignatureError("no v1 signature in Stripe-Signature")
    if len(signatures) > STRIPE_SIGNATURES_PER_HEADER_MAX:
        raise SignatureError("too many signatures in Stripe-Signature")
    expected = hmac.new(
        secret.encode("utf-8"), timestamp_text.encode("ascii") + b"." + payload, hashlib.sha256
    ).hexdigest()
    # Compare every candidate (constant time each) so timing says nothing about which matched.
    matched = False
    for signature in signatures:
        matched |= hmac.compare_digest(expected.encode("ascii"), signature.encode("utf-8"))
    if not matched:
        raise SignatureError("no signature matches the payload")
    timestamp = int(timestamp_text)
    if now_s - timestamp > tolerance_s:
        raise SignatureError("signature timestamp too old")
    if timestamp - now_s > tolerance_s:
        raise SignatureError("signature timestamp in the future")
    return timestamp


# --------------------------------------------------------------------------------------------
# Events
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StripeEvent:
    event_id: str
    event_type: str
    created: int
    livemode: bool
    data_object: Mapping[str, Any]
    document: Mapping[str, Any]


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise EventError(message)


def parse_event(payload: bytes) -> StripeEvent:
    """Decode a webhook body into an event; raise EventError when it is not one."""
    try:
        document = loads_strict(payload, depth_max=WEBHOOK_JSON_DEPTH_MAX)
    except ProtocolError as error:
        raise EventError(error.message) from None
    _require(type(document) is dict, "event body is not a JSON object")
    assert isinstance(document, dict)
    _require(document.get("object") == "event", "body is not a Stripe event object")
    event_id = document.get("id")
    _require(
        type(event_id) is str and STRIPE_EVENT_ID_PATTERN.match(event_id) is not None,
        f"invalid event id {quote(event_id)}",
    )
    event_type = document.get("type")
    _require(
        type(event_type) is str and STRIPE_EVENT_TYPE_PATTERN.match(event_type) is not None,
        f"invalid event type {quote(event_type)}",
    )
    created = document.get("created")
    _require(type(created) is int and created >= 0, "event created is not a timestamp")
    data = document.get("data")
    _require(type(data) is dict, "event data is not an object")
    assert isinstance(data, dict)
    data_object = data.get("object")
    _require(type(data_object) is dict, "event data.object is not an object")
    assert isinstance(event_id, str) and isinstance(event_type, str) and isinstance(created, int)
    assert isinstance(data_object, dict)
    return StripeEvent(
        event_id=event_id,
        event_type=event_type,
        created=created,
        livemode=document.get("livemode") is True,
        data_object=data_object,
        document=document,
    )


# --- actions -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CreditTopup:
    """A Checkout payment succeeded: credit it if it is one of our top-ups (the ledger decides).

    `topup_id` and `card_uid` are the session's metadata (None when absent or malformed); the
    ledger credits only a top-up made by /api/topups/checkout whose card, amount and currency
    equal the session's, and records anything else as an anomaly.
    """

    session_id: str
    card_uid: str | None
    amount_cents: int
    currency: str
    payment_intent_id: str | None
    topup_id: str | None


@dataclass(frozen=True, slots=True)
class ExpireTopup:
    """checkout.session.expired: the attendee never paid."""

    session_id: str


@dataclass(frozen=True, slots=True)
class DisputeClosed:
    """charge.dispute.closed: `status` lost books the disputed amount to the loss account."""

    dispute_id: str
    payment_intent_id: str
    status: str
    amount_cents: int


@dataclass(frozen=True, slots=True)
class FailTopup:
    """A delayed payment failed: the pending top-up will never be paid."""

    session_id: str


@dataclass(frozen=True, slots=True)
class RefundCharge:
    """A charge was refunded (partly): `amount_refunded_cents` is Stripe's cumulative total."""

    payment_intent_id: str
    charge_id: str
    amount_refunded_cents: int
    currency: str
    # The charge's own metadata.card_uid, when it carries a valid one: the ledger uses it only
    # when no top-up has this payment intent (the payment intent stays the primary link).
    card_uid: str | None = None
    # (issue 16) The refunds the charge lists that name a payout part (metadata.payout_id):
    # our own refunds of payouts, which move no money again.
    payout_refunds: tuple[PayoutRefundSeen, ...] = ()


@dataclass(frozen=True, slots=True)
class PayoutRefundSeen:
    """A refund in a charge.refunded event whose metadata names one of our payout parts."""

    refund_id: str
    amount_cents: int
    payout_id: str

    def as_dict(self) -> dict[str, object]:
        return {"id": self.refund_id, "amount": self.amount_cents, "payout_id": self.payout_id}


@dataclass(frozen=True, slots=True)
class DisputeCharge:
    """The payer disputed a charge: the card is blocked."""

    payment_intent_id: str
    charge_id: str | None
    reason: str | None
    # The dispute's own metadata.card_uid, if any: only when no top-up has this payment intent.
    card_uid: str | None = None


@dataclass(frozen=True, slots=True)
class Ignore:
    """Nothing to do (an event type we do not handle, a session that is not paid yet, ...)."""

    reason: str


@dataclass(frozen=True, slots=True)
class Anomaly:
    """Correctly signed, but we cannot act on it (no card uid, no payment intent, ...).

    Recorded with the event and logged as an error for a human; answered 200 because Stripe
    resending it would not change anything.
    """

    reason: str


Action = (
    CreditTopup
    | FailTopup
    | ExpireTopup
    | RefundCharge
    | DisputeCharge
    | DisputeClosed
    | Ignore
    | Anomaly
)

CHECKOUT_CREDIT_TYPES = frozenset(
    {"checkout.session.completed", "checkout.session.async_payment_succeeded"}
)
HANDLED_TYPES = CHECKOUT_CREDIT_TYPES | {
    "checkout.session.async_payment_failed",
    "checkout.session.expired",
    "charge.refunded",
    "charge.dispute.created",
    "charge.dispute.closed",
}


def _object_id(value: object, prefix: str, what: str) -> str:
    _require(
        type(value) is str
        and value.startswith(prefix)
        and STRIPE_OBJECT_ID_PATTERN.match(value) is not None,
        f"invalid {what} {quote(value)}",
    )
    assert isinstance(value, str)
    return value


def _expandable_id(value: object, prefix: str, what: str) -> str | None:
    """An id field Stripe may send as a string, as the expanded object, or null."""
    if value is None:
        return None
    if type(value) is dict:
        value = value.get("id")
    return _object_id(value, prefix, what)


def _amount(value: object, what: str) -> int:
    _require(type(value) is int and 0 <= value < 2**63, f"invalid {what} {quote(value)}")
    assert isinstance(value, int)
    return value


def _currency(value: object) -> str:
    _require(
        type(value) is str and len(value) == 3 and value.isascii() and value.isalpha(),
        f"invalid currency {quote(value)}",
    )
    assert isinstance(value, str)
    return value.upper()


def _metadata(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    metadata = obj.get("metadata")
    if metadata is None:
        return {}
    _require(type(metadata) is dict, "metadata is not an object")
    assert isinstance(metadata, dict)
    return metadata


def _metadata_card_uid(obj: Mapping[str, Any]) -> str | None:
    """metadata.card_uid when it is a valid card uid, else None (never an error).

    For refunds and disputes only a secondary link (the payment intent is the primary one), so
    a charge or dispute with odd metadata is still processed as before rather than refused; for
    a checkout session, what the ledger compares with the top-up's card.
    """
    metadata = obj.get("metadata")
    candidate = metadata.get("card_uid") if type(metadata) is dict else None
    if type(candidate) is str and CARD_UID_PATTERN.match(candidate):
        return candidate
    return None


def _payout_refunds(charge: Mapping[str, Any]) -> tuple[PayoutRefundSeen, ...]:
    """The charge's listed refunds that name a payout part (never an error: a refund that does
    not read as ours is simply not ours, and the cumulative amount decides as before).

    Stripe lists them in `refunds.data` on API versions that include the list (the fake does);
    without a list the ledger still recognises our parts by their attempts (docs/ledger.md).
    """
    refunds = charge.get("refunds")
    data = refunds.get("data") if type(refunds) is dict else None
    if type(data) is not list:
        return ()
    found: list[PayoutRefundSeen] = []
    for refund in data[:PAYOUT_REFUNDS_LISTED_MAX]:
        if type(refund) is not dict:
            continue
        refund_id, amount = refund.get("id"), refund.get("amount")
        metadata = refund.get("metadata")
        payout_id = metadata.get("payout_id") if type(metadata) is dict else None
        if (
            type(refund_id) is str
            and refund_id.startswith("re_")
            and STRIPE_OBJECT_ID_PATTERN.match(refund_id)
            and type(amount) is int
            and 0 < amount < 2**63
            and type(payout_id) is str
            and UUID_PATTERN.match(payout_id)
        ):
            found.append(PayoutRefundSeen(refund_id, amount, payout_id.lower()))
    return tuple(found)


def classify(event: StripeEvent, *, live_mode: bool = False) -> Action:
    """What `event` asks of the ledger.

    `live_mode` is the mode of our secret key (sk_live_... or not): an event of the other mode
    is an anomaly whatever it says (a test payment must never become real credit, DESIGN.md 1.1).
    Whether a paid session is one of ours is the ledger's decision (it holds the top-ups), so a
    paid session always goes there, with its metadata as found. Raises EventError when an event
    of a type we handle lacks the fields that type always has.
    """
    obj = event.data_object
    event_type = event.event_type
    object_livemode = obj.get("livemode")
    if event.livemode is not live_mode or (
        type(object_livemode) is bool and object_livemode is not live_mode
    ):
        return Anomaly(
            f"livemode {str(event.livemode).lower()} event, but the secret key is "
            f"{'live' if live_mode else 'test'} mode: not acted on"
        )
    if event_type not in HANDLED_TYPES:
        return Ignore(f"event type {event_type} is not handled")

    if event_type.startswith("checkout.session."):
        _require(obj.get("object") == "checkout.session", "data.object is not a checkout.session")
        session_id = _object_id(obj.get("id"), "cs_", "checkout session id")
        if event_type == "checkout.session.async_payment_failed":
            return FailTopup(session_id)
        if event_type == "checkout.session.expired":
            return ExpireTopup(session_id)
        if obj.get("mode") != "payment":
            return Ignore(f"checkout session mode {quote(obj.get('mode'))} is not payment")
        payment_status = obj.get("payment_status")
        if event_type == "checkout.session.completed" and payment_status != "paid":
            # "unpaid": a delayed payment method; async_payment_succeeded will follow.
            return Ignore(f"checkout session payment_status is {quote(payment_status)}")
        amount_cents = _amount(obj.get("amount_total"), "amount_total")
        session_currency = _currency(obj.get("currency"))
        payment_intent_id = _expandable_id(obj.get("payment_intent"), "pi_", "payment_intent")
        topup_id = _metadata(obj).get("topup_id")
        if amount_cents == 0:
            return Ignore("checkout session total is zero")
        return CreditTopup(
            session_id=session_id,
            # metadata.card_uid only: client_reference_id can be set by anyone opening a
            # Payment Link (?client_reference_id=...), so it never names the card.
            card_uid=_metadata_card_uid(obj),
            amount_cents=amount_cents,
            currency=session_currency,
            payment_intent_id=payment_intent_id,
            # Ours are "tu_<hex>"; anything else in a foreign session's metadata is not an id
            # the ledger should look up.
            topup_id=topup_id
            if type(topup_id) is str and TOPUP_ID_PATTERN.match(topup_id)
            else None,
        )

    if event_type == "charge.refunded":
        _require(obj.get("object") == "charge", "data.object is not a charge")
        charge_id = _object_id(obj.get("id"), "ch_", "charge id")
        amount_refunded_cents = _amount(obj.get("amount_refunded"), "amount_refunded")
        charge_currency = _currency(obj.get("currency"))
        payment_intent_id = _expandable_id(obj.get("payment_intent"), "pi_", "payment_intent")
        if payment_intent_id is None:
            return Anomaly("refunded charge has no payment_intent to link it to a top-up")
        return RefundCharge(
            payment_intent_id=payment_intent_id,
            charge_id=charge_id,
            amount_refunded_cents=amount_refunded_cents,
            currency=charge_currency,
            card_uid=_metadata_card_uid(obj),
            payout_refunds=_payout_refunds(obj),
        )

    assert event_type in ("charge.dispute.created", "charge.dispute.closed")
    _require(obj.get("object") == "dispute", "data.object is not a dispute")
    dispute_id = _object_id(obj.get("id"), "d", "dispute id")  # "du_" today, "dp_" before
    disputed_charge_id = _expandable_id(obj.get("charge"), "ch_", "charge")
    payment_intent_id = _expandable_id(obj.get("payment_intent"), "pi_", "payment_intent")
    if payment_intent_id is None:
        return Anomaly("dispute has no payment_intent to link it to a top-up")
    if event_type == "charge.dispute.closed":
        status = obj.get("status")
        _require(
            type(status) is str
            and 0 < len(status) <= STRIPE_DISPUTE_STATUS_LENGTH_MAX
            and status.replace("_", "").isalpha(),
            f"invalid dispute status {quote(status)}",
        )
        assert isinstance(status, str)
        return DisputeClosed(
            dispute_id=dispute_id,
            payment_intent_id=payment_intent_id,
            status=status,
            amount_cents=_amount(obj.get("amount"), "dispute amount"),
        )
    reason = obj.get("reason")
    return DisputeCharge(
        payment_intent_id=payment_intent_id,
        charge_id=disputed_charge_id,
        reason=reason if type(reason) is str else None,
        card_uid=_metadata_card_uid(obj),
    )
