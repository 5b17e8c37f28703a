"""The Stripe adapter: the only module that imports `stripe` (STYLE.md: one adapter per outside
thing). It creates Checkout Sessions, refunds payments and translates the library's errors into
ours."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeAlias

import stripe
from stripe.params import RefundCreateParams
from stripe.params.checkout import SessionCreateParams

from cloud.api.limits import STRIPE_NETWORK_RETRIES_MAX, STRIPE_TIMEOUT_S
from cloud.settings import CloudSettings

# The client's type, for the composition root's signature (create_app(stripe_client=…)).
StripeClient: TypeAlias = stripe.StripeClient

PRODUCT_NAME = "Festival wristband top-up"
# Unpaid top-ups expire after 24 hours (DESIGN.md 1.1). Stripe refuses an expires_at more than 24 h
# after the session's creation by its own clock: five minutes less leaves room for clock skew and
# the request's own time, and the ledger's expiry (24 h after the top-up row) is never earlier.
CHECKOUT_SESSION_LIFETIME_S = 24 * 3600 - 300
# Stripe's error code when the payment was refunded in full already (by us or in the dashboard).
ALREADY_REFUNDED_CODES = frozenset({"charge_already_refunded"})


class PaymentProviderError(RuntimeError):
    """Stripe could not do what we asked (network, outage, refused parameters).

    `retryable` is True when the same call may succeed later (connection, 5xx, rate limit), False
    when Stripe refused it for good (invalid request, authentication, idempotency conflict).
    """

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


@dataclass(frozen=True, slots=True)
class RefundResult:
    """Stripe's refund id, or None with `already_refunded` when nothing was left to refund."""

    refund_id: str | None
    already_refunded: bool = False


def live_mode_of(secret_key: str | None) -> bool:
    """True for a live secret or restricted key (sk_live_..., rk_live_...), else False."""
    return bool(secret_key) and str(secret_key).startswith(("sk_live_", "rk_live_"))


def _describe(error: stripe.StripeError) -> str:
    # The message is Stripe's, safe to log (it never carries our key); the attendee sees a
    # generic text.
    return f"{type(error).__name__}: {error.user_message or error}"


def _retryable(error: stripe.StripeError) -> bool:
    if isinstance(error, stripe.APIConnectionError | stripe.RateLimitError):
        return True
    status = error.http_status
    return status is None or status >= 500 or status == 409


@dataclass(frozen=True, slots=True)
class CheckoutSession:
    session_id: str
    checkout_url: str


def build_stripe_client(settings: CloudSettings) -> stripe.StripeClient | None:
    """A client for settings.stripe_secret_key (and STRIPE_API_BASE for a local fake)."""
    if settings.stripe_secret_key is None or not settings.stripe_secret_key.get_secret_value():
        return None
    base_addresses: dict[str, str] = {}
    if settings.stripe_api_base:
        base_addresses["api"] = settings.stripe_api_base.rstrip("/")
    return stripe.StripeClient(
        settings.stripe_secret_key.get_secret_value(),
        base_addresses=base_addresses,  # type: ignore[arg-type]
        max_network_retries=STRIPE_NETWORK_RETRIES_MAX,
        http_client=stripe.RequestsClient(timeout=STRIPE_TIMEOUT_S),
    )


class CheckoutGateway:
    def __init__(
        self,
        client: stripe.StripeClient,
        *,
        currency: str,
        success_url: str,
        cancel_url: str,
        clock_s: Callable[[], float] = time.time,
    ) -> None:
        self._client = client
        self._clock_s = clock_s
        self._currency = currency.lower()
        self._success_url = with_session_id(success_url)
        self._cancel_url = cancel_url

    def create_session(self, *, topup_id: str, card_uid: str, amount_cents: int) -> CheckoutSession:
        """One Checkout Session in payment mode for one top-up.

        The idempotency key is our top-up id: the client's automatic retries (and ours, if any)
        can never create a second session for the same top-up.
        """
        metadata = {"card_uid": card_uid, "topup_id": topup_id}
        params: SessionCreateParams = {
            "mode": "payment",
            "line_items": [
                {
                    "quantity": 1,
                    "price_data": {
                        "currency": self._currency,
                        "unit_amount": amount_cents,
                        "product_data": {
                            "name": PRODUCT_NAME,
                            "description": f"Wristband {card_uid}",
                        },
                    },
                }
            ],
            "client_reference_id": card_uid,
            "metadata": metadata,
            "payment_intent_data": {"metadata": metadata},
            "success_url": self._success_url,
            "cancel_url": self._cancel_url,
            "expires_at": int(self._clock_s()) + CHECKOUT_SESSION_LIFETIME_S,
        }
        try:
            session = self._client.v1.checkout.sessions.create(
                params=params,
                options={"idempotency_key": topup_id},
            )
        except stripe.StripeError as error:
            raise PaymentProviderError(_describe(error), retryable=_retryable(error)) from error
        if not session.id or not session.url:
            raise PaymentProviderError("Stripe answered a session without id or url")
        return CheckoutSession(session_id=str(session.id), checkout_url=str(session.url))

    def refund_in_full(
        self,
        *,
        payment_intent_id: str,
        idempotency_key: str,
        topup_id: str,
        session_id: str,
        card_uid: str,
    ) -> RefundResult:
        """Refund whatever is left of a payment (no amount: Stripe refunds it all).

        One idempotency key per session: every retry (the client's, the next webhook's, the
        cleanup's) sends the same parameters under the same key, so Stripe refunds at most once.
        """
        params: RefundCreateParams = {
            "payment_intent": payment_intent_id,
            "reason": "requested_by_customer",
            "metadata": {"topup_id": topup_id, "session_id": session_id, "card_uid": card_uid},
        }
        try:
            refund = self._client.v1.refunds.create(
                params=params, options={"idempotency_key": idempotency_key}
            )
        except stripe.InvalidRequestError as error:
            if error.code in ALREADY_REFUNDED_CODES:
                return RefundResult(refund_id=None, already_refunded=True)
            raise PaymentProviderError(_describe(error), retryable=_retryable(error)) from error
        except stripe.StripeError as error:
            raise PaymentProviderError(_describe(error), retryable=_retryable(error)) from error
        if not refund.id:
            raise PaymentProviderError("Stripe answered a refund without id")
        return RefundResult(refund_id=str(refund.id))


class PayoutRefundGateway:
    """Refunds of payout parts (DESIGN.md "Attendee portal and payouts"): part of one top-up's
    payment, by its payment intent, under the part's own idempotency key."""

    def __init__(self, client: stripe.StripeClient) -> None:
        self._client = client

    def refund_part(
        self, *, payment_intent_id: str, amount_cents: int, payout_id: str, card_uid: str
    ) -> str:
        """Refund `amount_cents` of the payment; Stripe's refund id.

        The idempotency key is payout-<payout id>: every attempt for one part (the client's own
        retries, the runner's after a backoff, another API process's after a lease ran out)
        sends the same parameters under the same key, so Stripe refunds the part at most once.
        Raises PaymentProviderError; `retryable` False when Stripe refused the refund itself for
        good (the charge already refunded, an amount above its unrefunded rest, an unknown
        payment), True for a connection error, 5xx, 429 or a key Stripe does not accept.
        """
        params: RefundCreateParams = {
            "payment_intent": payment_intent_id,
            "amount": amount_cents,
            "reason": "requested_by_customer",
            "metadata": {"payout_id": payout_id, "card_uid": card_uid},
        }
        try:
            refund = self._client.v1.refunds.create(
                params=params, options={"idempotency_key": payout_idempotency_key(payout_id)}
            )
        except (stripe.AuthenticationError, stripe.PermissionError) as error:
            # Our key, not the refund, is wrong: the operator fixes it and the part waits
            # (failing it would hand the money back to the card for nothing).
            raise PaymentProviderError(_describe(error), retryable=True) from error
        except stripe.StripeError as error:
            raise PaymentProviderError(_describe(error), retryable=_retryable(error)) from error
        if not refund.id:
            raise PaymentProviderError("Stripe answered a refund without id")
        return str(refund.id)


def payout_idempotency_key(payout_id: str) -> str:
    return f"payout-{payout_id}"


def with_session_id(success_url: str) -> str:
    """TOPUP_SUCCESS_URL with Stripe's ``{CHECKOUT_SESSION_ID}`` template (Stripe puts the
    session id there when it redirects the payer), so the success page can say "credited X,
    balance Y" (issue 16 §1). A URL that already has the template is left as it is."""
    if "{CHECKOUT_SESSION_ID}" in success_url:
        return success_url
    separator = "&" if "?" in success_url else "?"
    return f"{success_url}{separator}session_id={{CHECKOUT_SESSION_ID}}"
