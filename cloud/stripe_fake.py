"""A small local stand-in for the Stripe API endpoints we call, plus Stripe-shaped webhook events.

Stripe's servers are the one outside thing that cannot run here (stripe-mock does not install,
localstripe has no Checkout), so tests, benchmarks and the demo use this fake:

    fake = FakeStripe(port=0)
    base_url = fake.start()          # STRIPE_API_BASE=base_url
    ...                              # the API creates sessions: POST /v1/checkout/sessions
                                     # and refunds payments: POST /v1/refunds (then the fake
                                     # POSTs charge.refunded to webhook_url, if configured)
    session = fake.complete_session(session_id)          # the attendee paid
    event = checkout_session_completed_event(session)    # what Stripe would POST to us
    deliver_event(webhook_url, event, webhook_secret)    # signed exactly like Stripe signs
    fake.stop()

The fake speaks Stripe's wire format: form-encoded requests with bracketed keys
(`metadata[card_uid]=...`), `Authorization: Bearer sk_...`, `Idempotency-Key` replays (same key and
same parameters: the same answer; other parameters: 400 `idempotency_error`), JSON answers shaped
like Stripe's API objects, errors as `{"error": {"type", "message", "param"}}`.

It also serves the hosted page a Checkout URL points to (`GET /c/pay/{id}`): pressing "Pay" there
completes the session, POSTs a signed `checkout.session.completed` event to `webhook_url` when one
is configured, and redirects to the session's `success_url` — enough for the demo to click through.

Nothing here imports the `stripe` library: signatures are the documented scheme,
`Stripe-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of f"{t}.{body}" keyed by the secret>`.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import json
import secrets
import string
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.resources import files
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from cloud.limits import (
    STRIPE_CHECKOUT_SESSION_LIFETIME_MIN_S,
    STRIPE_CHECKOUT_SESSION_LIFETIME_S,
    STRIPE_FAKE_DELIVERY_TIMEOUT_S,
    STRIPE_FAKE_REQUEST_BYTES_MAX,
)

# The API version stripe-python 16 pins; events carry the version of the account's endpoint.
API_VERSION = "2026-10-28.endive"

_ID_ALPHABET = string.ascii_letters + string.digits
# Queued failures: "no answer at all", the connection closed before the request is handled
# (drop_next); and the request handled, then its answer lost (lose_answer_next).
DROP_CONNECTION = 0
LOSE_ANSWER = -1


def stripe_id(prefix: str, length: int = 24) -> str:
    """An id shaped like Stripe's: `prefix_` + random alphanumerics (`cs_test_` has 58)."""
    return prefix + "".join(secrets.choice(_ID_ALPHABET) for _ in range(length))


# --------------------------------------------------------------------------------------------
# Form encoding (Stripe's request format)
# --------------------------------------------------------------------------------------------


def _split_key(key: str) -> list[str]:
    """`line_items[0][price_data][currency]` -> ["line_items", "0", "price_data", "currency"]."""
    head, _, rest = key.partition("[")
    parts = [head]
    while rest:
        part, _, rest = rest.partition("]")
        parts.append(part)
        rest = rest[1:] if rest.startswith("[") else rest
    return parts


def _listify(node: Any) -> Any:
    """Dicts whose keys are all 0..n-1 become lists, as Stripe reads `a[0]=x&a[1]=y`."""
    if isinstance(node, dict):
        converted = {key: _listify(value) for key, value in node.items()}
        if converted and all(key.isdigit() for key in converted):
            indexes = sorted(int(key) for key in converted)
            if indexes == list(range(len(indexes))):
                return [converted[str(index)] for index in indexes]
        return converted
    return node


def decode_form(body: bytes) -> dict[str, Any]:
    """Decode a Stripe form body into nested dicts and lists (all leaves are strings)."""
    root: dict[str, Any] = {}
    for key, value in parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False):
        parts = _split_key(key)
        node = root
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ValueError(f"parameter {key!r} conflicts with another parameter")
            node = child
        node[parts[-1]] = value
    result = _listify(root)
    assert isinstance(result, dict)
    return result


def _copy(obj: dict[str, Any]) -> dict[str, Any]:
    """A deep copy a caller may change without touching the fake's state."""
    copied = json.loads(json.dumps(obj))
    assert isinstance(copied, dict)
    return copied


class StripeApiError(Exception):
    """An error the fake answers in Stripe's shape."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        error_type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        error: dict[str, Any] = {"type": error_type, "message": message}
        if code is not None:
            error["code"] = code
        if param is not None:
            error["param"] = param
        self.body: dict[str, Any] = {"error": error}


def _int_param(params: Mapping[str, Any], name: str, path: str) -> int:
    value = params.get(name)
    if not isinstance(value, str) or not value.isdigit() or len(value) > 12:
        raise StripeApiError(400, f"Invalid integer: {value}", param=path)
    return int(value)


# --------------------------------------------------------------------------------------------
# Stripe-shaped API objects (their static fields are package data: cloud/stripe_fake_data/)
# --------------------------------------------------------------------------------------------


def _template(name: str) -> dict[str, Any]:
    """A fresh copy of the Stripe-shaped object in stripe_fake_data/<name>.json.

    The files hold every field of the object in Stripe's order, with null where the functions
    below put the object's own values (assigning an existing key keeps its place).
    """
    text = _TEMPLATES.get(name)
    if text is None:
        text = (files("cloud") / "stripe_fake_data" / f"{name}.json").read_text(encoding="utf-8")
        _TEMPLATES[name] = text
    document = json.loads(text)
    assert isinstance(document, dict)
    return document


_TEMPLATES: dict[str, str] = {}


def checkout_session_object(
    *,
    session_id: str | None = None,
    amount_total: int,
    currency: str = "eur",
    client_reference_id: str | None = None,
    metadata: Mapping[str, str] | None = None,
    success_url: str | None = "https://example.com/success",
    cancel_url: str | None = "https://example.com/cancel",
    url: str | None = None,
    created: int | None = None,
    status: str = "open",
    payment_status: str = "unpaid",
    payment_intent: str | None = None,
    customer_email: str | None = None,
    expires_at: int | None = None,
    livemode: bool = False,
) -> dict[str, Any]:
    """A full `checkout.session` object as the API returns it (payment mode, hosted UI)."""
    created = int(time.time()) if created is None else created
    session_id = session_id or stripe_id("cs_test_", 58)
    complete = status == "complete"
    if expires_at is None:
        expires_at = created + STRIPE_CHECKOUT_SESSION_LIFETIME_S
    customer_details = None
    if complete:
        customer_details = _template("checkout_session_customer_details")
        customer_details["email"] = customer_email or "attendee@example.com"
    session = _template("checkout_session")
    session.update(
        id=session_id,
        amount_subtotal=amount_total,
        amount_total=amount_total,
        cancel_url=cancel_url,
        client_reference_id=client_reference_id,
        created=created,
        currency=currency,
        customer_details=customer_details,
        customer_email=customer_email,
        expires_at=expires_at,
        livemode=livemode,
        metadata=dict(metadata or {}),
        payment_intent=payment_intent,
        payment_status=payment_status,
        status=status,
        success_url=success_url,
        url=None if complete else url,
    )
    return session


def charge_object(
    *,
    payment_intent: str,
    amount: int,
    amount_refunded: int = 0,
    currency: str = "eur",
    charge_id: str | None = None,
    metadata: Mapping[str, str] | None = None,
    created: int | None = None,
    disputed: bool = False,
) -> dict[str, Any]:
    """A full `charge` object of a card payment made through a PaymentIntent."""
    created = int(time.time()) if created is None else created
    charge_id = charge_id or stripe_id("ch_3", 24)
    refunds = []
    if amount_refunded:
        refund = _template("charge_refund")
        refund.update(
            id=stripe_id("re_3", 24),
            amount=amount_refunded,
            balance_transaction=stripe_id("txn_3", 24),
            charge=charge_id,
            created=created,
            currency=currency,
            payment_intent=payment_intent,
        )
        refunds.append(refund)
    charge = _template("charge")
    charge.update(
        id=charge_id,
        amount=amount,
        amount_captured=amount,
        amount_refunded=amount_refunded,
        balance_transaction=stripe_id("txn_3", 24),
        created=created,
        currency=currency,
        disputed=disputed,
        metadata=dict(metadata or {}),
        payment_intent=payment_intent,
        payment_method=stripe_id("pm_1", 24),
    )
    card = charge["payment_method_details"]["card"]
    card["amount_authorized"] = amount
    card["fingerprint"] = stripe_id("", 16)
    charge["receipt_url"] = f"https://pay.stripe.com/receipts/payment/{stripe_id('', 40)}"
    charge["refunded"] = amount_refunded >= amount
    charge["refunds"].update(
        data=refunds, total_count=len(refunds), url=f"/v1/charges/{charge_id}/refunds"
    )
    return charge


def dispute_object(
    *,
    charge_id: str,
    payment_intent: str,
    amount: int,
    currency: str = "eur",
    reason: str = "fraudulent",
    dispute_id: str | None = None,
    created: int | None = None,
    status: str = "needs_response",
) -> dict[str, Any]:
    """A full `dispute` object as `charge.dispute.*` events carry it (status: needs_response
    when created; won, lost or warning_closed when closed)."""
    created = int(time.time()) if created is None else created
    dispute = _template("dispute")
    dispute.update(
        id=dispute_id or stripe_id("du_1", 24),
        amount=amount,
        charge=charge_id,
        created=created,
        currency=currency,
        payment_intent=payment_intent,
        reason=reason,
        status=status,
    )
    dispute["evidence_details"]["due_by"] = created + 7 * 24 * 3600
    return dispute


def refund_object(
    *,
    payment_intent: str,
    charge_id: str,
    amount: int,
    currency: str = "eur",
    metadata: Mapping[str, str] | None = None,
    reason: str | None = None,
    refund_id: str | None = None,
    created: int | None = None,
) -> dict[str, Any]:
    """A `refund` object as POST /v1/refunds answers it (a card refund, succeeded)."""
    refund = _template("refund")
    refund.update(
        id=refund_id or stripe_id("re_3", 24),
        amount=amount,
        balance_transaction=stripe_id("txn_3", 24),
        charge=charge_id,
        created=int(time.time()) if created is None else created,
        currency=currency,
        metadata=dict(metadata or {}),
        payment_intent=payment_intent,
        reason=reason,
    )
    return refund


def make_event(
    event_type: str,
    data_object: Mapping[str, Any],
    *,
    previous_attributes: Mapping[str, Any] | None = None,
    event_id: str | None = None,
    created: int | None = None,
    api_version: str = API_VERSION,
    request_id: str | None = None,
    livemode: bool = False,
) -> dict[str, Any]:
    """An `event` object exactly as Stripe POSTs it to a webhook endpoint."""
    data: dict[str, Any] = {"object": dict(data_object)}
    if previous_attributes is not None:
        data["previous_attributes"] = dict(previous_attributes)
    return {
        "id": event_id or stripe_id("evt_1", 24),
        "object": "event",
        "api_version": api_version,
        "created": int(time.time()) if created is None else created,
        "data": data,
        "livemode": livemode,
        "pending_webhooks": 1,
        "request": {"id": request_id, "idempotency_key": None},
        "type": event_type,
    }


def checkout_session_completed_event(session: Mapping[str, Any], **kwargs: Any) -> dict[str, Any]:
    return make_event("checkout.session.completed", session, **kwargs)


def checkout_session_async_payment_succeeded_event(
    session: Mapping[str, Any], **kwargs: Any
) -> dict[str, Any]:
    return make_event("checkout.session.async_payment_succeeded", session, **kwargs)


def checkout_session_async_payment_failed_event(
    session: Mapping[str, Any], **kwargs: Any
) -> dict[str, Any]:
    return make_event("checkout.session.async_payment_failed", session, **kwargs)


def charge_refunded_event(
    charge: Mapping[str, Any], *, previous_amount_refunded: int = 0, **kwargs: Any
) -> dict[str, Any]:
    previous = {"amount_refunded": previous_amount_refunded, "refunded": False}
    return make_event("charge.refunded", charge, previous_attributes=previous, **kwargs)


def charge_dispute_created_event(dispute: Mapping[str, Any], **kwargs: Any) -> dict[str, Any]:
    return make_event("charge.dispute.created", dispute, **kwargs)


def charge_dispute_closed_event(dispute: Mapping[str, Any], **kwargs: Any) -> dict[str, Any]:
    previous = {"status": "under_review"}
    return make_event("charge.dispute.closed", dispute, previous_attributes=previous, **kwargs)


def checkout_session_expired_event(session: Mapping[str, Any], **kwargs: Any) -> dict[str, Any]:
    return make_event("checkout.session.expired", session, **kwargs)


# --------------------------------------------------------------------------------------------
# Signing and delivery (Stripe's webhook scheme)
# --------------------------------------------------------------------------------------------


def encode_event(event: Mapping[str, Any]) -> bytes:
    """The body bytes Stripe sends: pretty-printed JSON (the signature covers these bytes)."""
    return json.dumps(event, indent=2).encode("utf-8")


def signature_header(payload: bytes, secret: str, timestamp: int | None = None) -> str:
    """`Stripe-Signature` for `payload`: `t=<seconds>,v1=<hex HMAC-SHA256(f"{t}.{payload}")>`."""
    timestamp = int(time.time()) if timestamp is None else timestamp
    signed = f"{timestamp}.".encode() + payload
    digest = hmac.new(secret.encode("utf-8"), signed, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def deliver_event(
    url: str,
    event: Mapping[str, Any] | bytes,
    secret: str,
    *,
    timestamp: int | None = None,
    timeout_s: float = STRIPE_FAKE_DELIVERY_TIMEOUT_S,
) -> tuple[int, bytes]:
    """POST a signed event to a webhook endpoint the way Stripe does; returns (status, body)."""
    payload = event if isinstance(event, bytes) else encode_event(event)
    request = urllib.request.Request(  # noqa: S310 - the caller gives an http(s) URL
        url,
        data=payload,
        method="POST",
        headers={
            "Content-Type": "application/json; charset=utf-8",
            "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
            "Stripe-Signature": signature_header(payload, secret, timestamp),
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310
            return int(response.status), response.read()
    except urllib.error.HTTPError as error:
        with error:
            return int(error.code), error.read()


# --------------------------------------------------------------------------------------------
# The fake server
# --------------------------------------------------------------------------------------------


class FakeStripe:
    """A local HTTP server answering the Stripe endpoints we call; see the module docstring.

    State is kept in memory: `sessions` (id -> checkout.session object), `created_with` (id ->
    the decoded parameters), `charges` (session id -> the charge of its payment), `requests`
    (every API call received: method, path, headers, params), `refunds` (id -> every refund made
    through the API), `deliveries` (each charge.refunded it POSTed to `webhook_url` after an API
    refund, with the answer's status). `fail_next(status, times)` makes the next API calls fail
    as Stripe's servers sometimes do; `drop_next(times)` closes the connection unanswered, and
    `lose_answer_next(times)` carries a call out but loses its answer.
    """

    def __init__(
        self,
        port: int = 0,
        *,
        host: str = "127.0.0.1",
        webhook_url: str | None = None,
        webhook_secret: str | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.webhook_url = webhook_url
        self.webhook_secret = webhook_secret
        self.sessions: dict[str, dict[str, Any]] = {}
        self.charges: dict[str, dict[str, Any]] = {}
        # Every refund created through POST /v1/refunds, by id.
        self.refunds: dict[str, dict[str, Any]] = {}
        self.requests: list[dict[str, Any]] = []
        # The decoded parameters each session was created with (payment_intent_data is not
        # part of the session object Stripe returns, so tests check it here).
        self.created_with: dict[str, dict[str, Any]] = {}
        self._idempotent: dict[str, tuple[dict[str, Any], int, dict[str, Any]]] = {}
        self._in_flight: set[str] = set()
        # Every charge.refunded the fake sent after an API refund: event id, type, HTTP status.
        self.deliveries: list[dict[str, Any]] = []
        self._failures: list[int] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> str:
        """Start serving in a daemon thread; returns the base URL (for STRIPE_API_BASE)."""
        fake = self

        class Handler(_Handler):
            owner = fake

        self._server = ThreadingHTTPServer((self.host, self.port), Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        # A short poll interval: stop() returns within it instead of the default 0.5 s.
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="fake-stripe",
            daemon=True,
        )
        self._thread.start()
        return self.base_url

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None

    def __enter__(self) -> FakeStripe:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def fail_next(self, status: int = 500, times: int = 1) -> None:
        """The next `times` API calls answer `status` with a Stripe `api_error` body."""
        with self._lock:
            self._failures.extend([status] * times)

    def drop_next(self, times: int = 1) -> None:
        """The next `times` API calls get no answer: the connection is closed (a network drop)."""
        with self._lock:
            self._failures.extend([DROP_CONNECTION] * times)

    def lose_answer_next(self, times: int = 1) -> None:
        """The next `times` API calls are carried out, but their answers are lost (the
        connection closes): the caller cannot know that Stripe did it."""
        with self._lock:
            self._failures.extend([LOSE_ANSWER] * times)

    # --- state changes a test or the demo drives (what the attendee does on Stripe's side) ----

    def complete_session(self, session_id: str, *, payment_status: str = "paid") -> dict[str, Any]:
        """The attendee paid (or, with payment_status="unpaid", started a delayed payment)."""
        with self._lock:
            session = self.sessions[session_id]
            session["status"] = "complete"
            session["payment_status"] = payment_status
            session["url"] = None
            session["payment_intent"] = session["payment_intent"] or stripe_id("pi_3", 24)
            session["customer_details"] = checkout_session_object(
                amount_total=0, status="complete"
            )["customer_details"]
            return _copy(session)

    def settle_async_payment(self, session_id: str, *, succeeded: bool = True) -> dict[str, Any]:
        """A delayed payment method (SEPA debit, ...) finally succeeded or failed."""
        with self._lock:
            session = self.sessions[session_id]
            session["payment_status"] = "paid" if succeeded else "unpaid"
            return _copy(session)

    def charge_for(self, session_id: str) -> dict[str, Any]:
        """The charge behind a completed session's PaymentIntent."""
        with self._lock:
            session = self.sessions[session_id]
            if session_id not in self.charges:
                self.charges[session_id] = charge_object(
                    payment_intent=session["payment_intent"],
                    amount=session["amount_total"],
                    currency=session["currency"],
                )
            return _copy(self.charges[session_id])

    def refund(
        self,
        session_id: str,
        amount: int,
        *,
        metadata: Mapping[str, str] | None = None,
        reason: str | None = "requested_by_customer",
    ) -> dict[str, Any]:
        """Refund `amount` more (at most what is left) of a session's payment, as someone in the
        dashboard would; returns the charge: cumulative `amount_refunded` and each refund in
        `refunds.data`, newest first, with its own metadata."""
        self.charge_for(session_id)
        with self._lock:
            charge = self.charges[session_id]
            take = min(amount, charge["amount"] - charge["amount_refunded"])
            if take > 0:
                entry = _template("charge_refund")
                entry.update(
                    id=stripe_id("re_3", 24),
                    amount=take,
                    balance_transaction=stripe_id("txn_3", 24),
                    charge=charge["id"],
                    created=int(time.time()),
                    currency=charge["currency"],
                    metadata=dict(metadata or {}),
                    payment_intent=charge["payment_intent"],
                    reason=reason,
                )
                charge["refunds"]["data"].insert(0, entry)
                charge["refunds"]["total_count"] = len(charge["refunds"]["data"])
                charge["amount_refunded"] += take
                charge["refunded"] = charge["amount_refunded"] >= charge["amount"]
            return _copy(charge)

    def dispute(
        self,
        session_id: str,
        *,
        reason: str = "fraudulent",
        status: str = "needs_response",
        dispute_id: str | None = None,
    ) -> dict[str, Any]:
        """The dispute of a session's charge (status needs_response; won/lost once closed)."""
        charge = self.charge_for(session_id)
        return dispute_object(
            charge_id=charge["id"],
            payment_intent=charge["payment_intent"],
            amount=charge["amount"] - charge["amount_refunded"],
            currency=charge["currency"],
            reason=reason,
            status=status,
            dispute_id=dispute_id,
        )

    def expire_session(self, session_id: str) -> dict[str, Any]:
        """The session reached expires_at unpaid (Stripe then sends checkout.session.expired)."""
        with self._lock:
            session = self.sessions[session_id]
            session["status"] = "expired"
            session["url"] = None
            return _copy(session)

    def refunds_of(self, payment_intent: str) -> list[dict[str, Any]]:
        """The refunds created through the API for a payment intent, oldest first."""
        with self._lock:
            return [
                _copy(refund)
                for refund in self.refunds.values()
                if refund["payment_intent"] == payment_intent
            ]

    # --- API endpoints ---------------------------------------------------------------------

    def _create_checkout_session(self, params: dict[str, Any]) -> dict[str, Any]:
        mode = params.get("mode")
        if mode not in {"payment", "setup", "subscription"}:
            raise StripeApiError(400, "Missing required param: mode.", param="mode")
        if mode != "payment":
            raise StripeApiError(400, "The fake supports mode=payment only.", param="mode")
        for required in ("success_url",):
            if not params.get(required):
                raise StripeApiError(400, f"Missing required param: {required}.", param=required)
        line_items = params.get("line_items")
        if not isinstance(line_items, list) or not line_items:
            raise StripeApiError(400, "Missing required param: line_items.", param="line_items")
        amount_total = 0
        currencies = set()
        for index, item in enumerate(line_items):
            path = f"line_items[{index}]"
            price_data = item.get("price_data") if isinstance(item, dict) else None
            if not isinstance(price_data, dict):
                raise StripeApiError(400, "price_data is required.", param=f"{path}[price_data]")
            currency = price_data.get("currency")
            if not isinstance(currency, str) or len(currency) != 3:
                raise StripeApiError(
                    400, "Invalid currency.", param=f"{path}[price_data][currency]"
                )
            product = price_data.get("product_data")
            if not isinstance(product, dict) or not product.get("name"):
                raise StripeApiError(
                    400, "Missing product name.", param=f"{path}[price_data][product_data][name]"
                )
            unit_amount = _int_param(price_data, "unit_amount", f"{path}[price_data][unit_amount]")
            quantity = _int_param(item, "quantity", f"{path}[quantity]")
            currencies.add(currency.lower())
            amount_total += unit_amount * quantity
        if len(currencies) != 1:
            raise StripeApiError(400, "All line items must share one currency.")
        if amount_total < 50:
            raise StripeApiError(
                400, "The Checkout Session's total amount due must add up to at least 0.50 EUR"
            )
        metadata = params.get("metadata") or {}
        if not isinstance(metadata, dict) or len(metadata) > 50:
            raise StripeApiError(400, "Invalid metadata.", param="metadata")
        created = int(time.time())
        expires_at = None
        if "expires_at" in params:
            expires_at = _int_param(params, "expires_at", "expires_at")
            # Stripe: at least 30 minutes and at most 24 hours after the session's creation.
            if expires_at > created + STRIPE_CHECKOUT_SESSION_LIFETIME_S:
                raise StripeApiError(
                    400,
                    "The `expires_at` timestamp must be less than 24 hours from Checkout "
                    "Session creation.",
                    param="expires_at",
                )
            if expires_at < created + STRIPE_CHECKOUT_SESSION_LIFETIME_MIN_S:
                raise StripeApiError(
                    400,
                    "The `expires_at` timestamp must be at least 30 minutes from Checkout "
                    "Session creation.",
                    param="expires_at",
                )
        session_id = stripe_id("cs_test_", 58)
        session = checkout_session_object(
            session_id=session_id,
            amount_total=amount_total,
            currency=currencies.pop(),
            client_reference_id=params.get("client_reference_id"),
            metadata=metadata,
            success_url=params.get("success_url"),
            cancel_url=params.get("cancel_url"),
            url=f"{self.base_url}/c/pay/{session_id}",
            customer_email=params.get("customer_email"),
            created=created,
            expires_at=expires_at,
        )
        with self._lock:
            self.sessions[session_id] = session
            self.created_with[session_id] = params
        return session

    def _create_refund(self, params: dict[str, Any]) -> dict[str, Any]:
        """POST /v1/refunds: by payment_intent (or charge); without amount, all that is left."""
        payment_intent = params.get("payment_intent")
        charge_param = params.get("charge")
        if not payment_intent and not charge_param:
            raise StripeApiError(
                400,
                "One of the following params should be provided for this request: "
                "payment_intent or charge.",
            )
        with self._lock:
            session_id = next(
                (
                    key
                    for key, session in self.sessions.items()
                    if payment_intent and session["payment_intent"] == payment_intent
                ),
                None,
            ) or next(
                (key for key, charge in self.charges.items() if charge["id"] == charge_param),
                None,
            )
            paid = session_id is not None and self.sessions[session_id]["payment_status"] == "paid"
        if session_id is None:
            what, value = (
                ("payment_intent", payment_intent) if payment_intent else ("charge", charge_param)
            )
            raise StripeApiError(
                404, f"No such {what}: '{value}'", param=what, code="resource_missing"
            )
        if not paid:
            raise StripeApiError(
                400,
                f"This PaymentIntent ({payment_intent}) does not have a successful charge to "
                "refund.",
                param="payment_intent",
                code="charge_not_refundable",
            )
        charge = self.charge_for(session_id)
        remaining = charge["amount"] - charge["amount_refunded"]
        if remaining <= 0:
            raise StripeApiError(
                400,
                f"Charge {charge['id']} has already been refunded.",
                code="charge_already_refunded",
            )
        amount = remaining
        if "amount" in params:
            amount = _int_param(params, "amount", "amount")
            if amount < 1 or amount > remaining:
                raise StripeApiError(
                    400,
                    f"Refund amount ({amount}) is greater than unrefunded amount on charge "
                    f"({remaining})",
                    param="amount",
                    code="amount_too_large",
                )
        reason = params.get("reason")
        if reason is not None and reason not in {
            "duplicate",
            "fraudulent",
            "requested_by_customer",
        }:
            raise StripeApiError(400, f"Invalid reason: {reason}", param="reason")
        metadata = params.get("metadata") or {}
        if not isinstance(metadata, dict):
            raise StripeApiError(400, "Invalid metadata.", param="metadata")
        refunded = self.refund(session_id, amount, metadata=metadata, reason=reason)
        refund = refund_object(
            payment_intent=charge["payment_intent"],
            charge_id=charge["id"],
            amount=amount,
            currency=charge["currency"],
            metadata=metadata,
            reason=reason,
            refund_id=refunded["refunds"]["data"][0]["id"],
        )
        with self._lock:
            self.refunds[refund["id"]] = refund
        # Stripe then tells the account's webhook endpoint, on its own time (after or before we
        # answer: the API must handle either order).
        self._deliver_later(
            charge_refunded_event(refunded, previous_amount_refunded=charge["amount_refunded"])
        )
        return refund

    def _deliver_later(self, event: dict[str, Any]) -> None:
        if not (self.webhook_url and self.webhook_secret):
            return
        url, secret = self.webhook_url, self.webhook_secret

        def deliver() -> None:
            try:
                status, _ = deliver_event(url, event, secret)
            except OSError as error:
                status = 0
                detail = str(error)
            else:
                detail = ""
            with self._lock:
                self.deliveries.append(
                    {
                        "event_id": event["id"],
                        "type": event["type"],
                        "status": status,
                        "error": detail,
                    }
                )

        threading.Thread(target=deliver, name="fake-stripe-webhook", daemon=True).start()

    def handle_api(
        self, method: str, path: str, headers: Mapping[str, str], body: bytes
    ) -> tuple[int, dict[str, Any]]:
        """Answer one API call: (status, JSON body). Pure dispatch; the handler does the I/O."""
        try:
            params = decode_form(body) if body else {}
        except (UnicodeDecodeError, ValueError) as error:
            return 400, StripeApiError(400, f"Invalid request body: {error}").body
        with self._lock:
            self.requests.append(
                {"method": method, "path": path, "headers": dict(headers), "params": params}
            )
            failure = self._failures.pop(0) if self._failures else None
        if failure == DROP_CONNECTION:
            return DROP_CONNECTION, {}
        if failure == LOSE_ANSWER:
            self._answer(method, path, headers, params)
            return DROP_CONNECTION, {}
        if failure is not None:
            return failure, StripeApiError(
                failure, "An unknown error occurred", error_type="api_error"
            ).body
        return self._answer(method, path, headers, params)

    def _answer(
        self, method: str, path: str, headers: Mapping[str, str], params: dict[str, Any]
    ) -> tuple[int, dict[str, Any]]:
        authorization = headers.get("authorization", "")
        key = authorization.removeprefix("Bearer ").strip()
        if not authorization.startswith("Bearer ") or not key.startswith(("sk_", "rk_")):
            return 401, StripeApiError(
                401,
                "You did not provide an API key. You need to provide your API key in the "
                "Authorization header, using Bearer auth.",
            ).body
        idempotency_key = headers.get("idempotency-key")
        if method == "POST" and idempotency_key:
            with self._lock:
                stored = self._idempotent.get(idempotency_key)
                busy = stored is None and idempotency_key in self._in_flight
                if not busy and stored is None:
                    self._in_flight.add(idempotency_key)
            if busy:
                return 409, StripeApiError(
                    409,
                    "There is currently another in-progress request using this Stripe-"
                    "Idempotency-Key. Please try again later.",
                    error_type="idempotency_error",
                    code="idempotency_key_in_use",
                ).body
            if stored is not None:
                stored_params, status, response = stored
                if stored_params != params:
                    return 400, StripeApiError(
                        400,
                        "Keys for idempotent requests can only be used with the same parameters "
                        "they were first used with.",
                        error_type="idempotency_error",
                    ).body
                return status, response
        try:
            status, response = self._route(method, path, params)
        except StripeApiError as error:
            status, response = error.status, error.body
        if method == "POST" and idempotency_key:
            with self._lock:
                if status < 500:
                    self._idempotent[idempotency_key] = (params, status, response)
                self._in_flight.discard(idempotency_key)
        return status, response

    def _route(self, method: str, path: str, params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if path == "/v1/checkout/sessions" and method == "POST":
            return 200, self._create_checkout_session(params)
        if path == "/v1/refunds" and method == "POST":
            return 200, self._create_refund(params)
        if path.startswith("/v1/checkout/sessions/") and method == "GET":
            session_id = path.rsplit("/", 1)[1]
            with self._lock:
                session = self.sessions.get(session_id)
            if session is None:
                raise StripeApiError(
                    404, f"No such checkout.session: '{session_id}'", param="session"
                )
            return 200, session
        raise StripeApiError(404, f"Unrecognized request URL ({method}: {path}).")

    # --- the hosted payment page the Checkout URL points to ---------------------------------

    def hosted_page(self, session_id: str) -> tuple[int, str]:
        with self._lock:
            session = self.sessions.get(session_id)
        if session is None:
            return 404, "<h1>Unknown checkout session</h1>"
        amount = session["amount_total"]
        label = f"{amount // 100}.{amount % 100:02d} {session['currency'].upper()}"
        return 200, (
            "<!doctype html><meta charset=utf-8><title>Fake Stripe Checkout</title>"
            "<h1>Fake Stripe Checkout</h1>"
            f"<p>Top-up of <strong>{html.escape(label)}</strong> for wristband "
            f"{html.escape(str(session['client_reference_id']))}.</p>"
            f'<form method="post" action="/c/pay/{html.escape(session_id)}">'
            '<button type="submit" id="pay">Pay</button></form>'
        )

    def pay_from_page(self, session_id: str) -> str | None:
        """The Pay button: complete, notify the webhook (if configured), return success_url."""
        if session_id not in self.sessions:
            return None
        session = self.complete_session(session_id)
        if self.webhook_url and self.webhook_secret:
            deliver_event(
                self.webhook_url, checkout_session_completed_event(session), self.webhook_secret
            )
        # As Stripe does: the session's id where the success URL has its template.
        return str(session.get("success_url") or "/").replace("{CHECKOUT_SESSION_ID}", session_id)


class _Handler(BaseHTTPRequestHandler):
    owner: FakeStripe
    protocol_version = "HTTP/1.1"
    server_version = "FakeStripe/1.0"

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: tests read .requests instead

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        if length > STRIPE_FAKE_REQUEST_BYTES_MAX:
            raise StripeApiError(413, "Request too large.")
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, body: bytes, content_type: str, **headers: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Request-Id", stripe_id("req_", 14))
        for name, value in headers.items():
            self.send_header(name.replace("_", "-"), value)
        self.end_headers()
        self.wfile.write(body)

    def _dispatch(self, method: str) -> None:
        path = urlsplit(self.path).path
        try:
            body = self._body()
        except StripeApiError as error:
            self._send(error.status, json.dumps(error.body).encode(), "application/json")
            return
        if path.startswith("/c/pay/"):
            session_id = path.removeprefix("/c/pay/")
            if method == "GET":
                status, page = self.owner.hosted_page(session_id)
                self._send(status, page.encode(), "text/html; charset=utf-8")
                return
            target = self.owner.pay_from_page(session_id)
            if target is None:
                self._send(404, b"unknown session", "text/plain")
            else:
                self._send(HTTPStatus.SEE_OTHER, b"", "text/plain", Location=target)
            return
        headers = {name.lower(): value for name, value in self.headers.items()}
        status, response = self.owner.handle_api(method, path, headers, body)
        if status == DROP_CONNECTION:
            self.close_connection = True
            return
        self._send(status, json.dumps(response, indent=2).encode(), "application/json")

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")
