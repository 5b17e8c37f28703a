"""The Stripe adapter: the only module that imports `stripe` (STYLE.md: one adapter per outside
thing). It creates Checkout Sessions and translates the library's errors into ours."""

from __future__ import annotations

from dataclasses import dataclass

import stripe
from stripe.params.checkout import SessionCreateParams

from cloud.api.limits import STRIPE_NETWORK_RETRIES_MAX, STRIPE_TIMEOUT_S
from cloud.settings import CloudSettings

PRODUCT_NAME = "Festival wristband top-up"


class PaymentProviderError(RuntimeError):
    """Stripe could not create the session (network, outage, refused parameters)."""


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
    ) -> None:
        self._client = client
        self._currency = currency.lower()
        self._success_url = success_url
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
        }
        try:
            session = self._client.v1.checkout.sessions.create(
                params=params,
                options={"idempotency_key": topup_id},
            )
        except stripe.StripeError as error:
            # The message is Stripe's, safe to log; the attendee sees a generic text.
            raise PaymentProviderError(
                f"{type(error).__name__}: {error.user_message or error}"
            ) from error
        if not session.id or not session.url:
            raise PaymentProviderError("Stripe answered a session without id or url")
        return CheckoutSession(session_id=str(session.id), checkout_url=str(session.url))
