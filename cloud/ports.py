"""The ledger's ports: what each part of the cloud needs of the ledger, as `typing.Protocol`.

    RequestLedger   the consumer: requests (one batch, one transaction), rejections, dead
                    letters, scans, kiosk statuses, the kiosk directory
    CardLedger      a card's record, block and unblock
    RefundLedger    owed Stripe refunds, leased and settled (cloud/api/refunds.py)
    ConfigLedger    (1.1) kiosk configs and deny-lists: issued (stored, version allocated)
                    before they are sent, then marked published (cloud/publisher.py)
    Ledger          the API: all of the above, Stripe, top-ups, monitoring, and the engine the
                    API's own SQL modules share (queries, rate limits, point-of-sale devices)

Two implementations: `cloud.ledger.Ledger` (the stored procedures on PostgreSQL) implements
every port; `cloud.ledger_fake.FakeLedger` (in memory, for tests and benchmarks) implements
RequestLedger and CardLedger. tests/contract/ runs one set of behaviours against both, and
mypy checks both against their ports at the bottom of this module, so neither can drift from
the signatures the callers are typed against.

No library is imported here: the record types (`cloud.ledger.Outcome`, `KioskRecord`, ...) are
named for the type checker only.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import cloud.ledger
    import cloud.ledger_fake
    from cloud.database import Engine
    from cloud.ledger_records import (
        CardRecord,
        DeadLetterLike,
        IssuedConfig,
        IssuedDenyList,
        KioskRecord,
        LedgerRequest,
        Outcome,
        OwedRefund,
        StripeCheckoutResult,
        Unchanged,
    )
    from protocol.errors import ErrorCode
    from protocol.models import KioskStatus, Menu, OfflinePolicy, ScanRecord


class RequestLedger(Protocol):
    """What the consumer needs: every call is one transaction, idempotent by its request id."""

    def apply(self, item: LedgerRequest) -> Outcome:
        """One request in its own transaction."""
        ...

    def apply_batch(self, items: Sequence[LedgerRequest]) -> list[Outcome]:
        """Many requests in one transaction; outcomes in input order; a request id repeated
        inside the batch is a replay of its first occurrence."""
        ...

    def record_rejection(
        self,
        *,
        request_id: str,
        kiosk_id: str,
        seq: int | None,
        card_uid: str | None,
        payload_sha256: str,
        error_code: ErrorCode,
        message: str,
        source: str = ...,
        kind: str | None = ...,
        trace_id: str | None = ...,
    ) -> Outcome:
        """Store the outcome of an authenticated request refused before the ledger, forever."""
        ...

    def record_dead_letters(self, letters: Sequence[DeadLetterLike]) -> list[bool]:
        """Keep messages that could not be accepted; per letter, whether it was stored (False:
        over its kiosk's bound for this minute, only counted)."""
        ...

    def record_scans(self, scans: Iterable[ScanRecord]) -> int: ...

    def staff_pin_hashes(self, staff_ids: Iterable[str]) -> dict[str, str]:
        """(revision 0024) The PIN hashes of these staff members (unknown ids absent)."""
        ...

    def record_kiosk_status(self, status: KioskStatus, *, received_at_ms: int) -> None: ...

    def kiosk(self, kiosk_id: str) -> KioskRecord | None: ...

    def kiosks(self) -> list[KioskRecord]: ...

    def kiosks_named(self, kiosk_ids: Collection[str]) -> list[KioskRecord]:
        """The registered kiosks among ``kiosk_ids``, in kiosk id order (unknown ids absent)."""
        ...


class CardLedger(Protocol):
    def card(self, card_uid: str) -> CardRecord | None: ...

    def block_card(self, card_uid: str, reason: str) -> bool: ...

    def unblock_card(self, card_uid: str) -> bool: ...

    # (1.1) A portal login by GET /t: the SUN counter by the online rule (revision 0014).
    def accept_sun_counter(self, card_uid: str, counter: int) -> bool: ...


class SunMonitoringLedger(Protocol):
    """(1.1) The SUN failures the dashboard shows (the cloning alarm)."""

    def sun_failures(self, *, minutes: int) -> list[dict[str, object]]: ...

    def stale_sun_cards(self, *, minutes: int, limit: int) -> list[dict[str, object]]: ...


class RefundLedger(Protocol):
    """The refunds owed for paid Checkout Sessions that could not be credited."""

    def claim_topup_refunds(
        self,
        *,
        limit: int,
        topup_id: str | None = ...,
        due_only: bool = ...,
        lease_s: int = ...,
    ) -> list[OwedRefund]: ...

    def finish_topup_refund(
        self,
        *,
        topup_id: str,
        result: str,
        refund_id: str | None = ...,
        error: str | None = ...,
        retry_after_s: int = ...,
    ) -> bool: ...


class ConfigLedger(Protocol):
    """(1.1) What the publisher, the CLI's menu/offline verbs and the admin API need: a config or
    deny-list version is allocated and its document stored before anything is sent, so a version
    is never reused (PROTOCOL.md "Config and deny-list")."""

    def issue_kiosk_config(
        self,
        kiosk_id: str,
        *,
        menu: Menu | Unchanged | None = ...,
        offline: OfflinePolicy | Unchanged | None = ...,
    ) -> int | None:
        """Change what is assigned to the kiosk (None: no menu / no offline sales; UNCHANGED:
        keep it) and store its next config version, unsent; None for an unregistered kiosk."""
        ...

    def issue_kiosk_configs(
        self,
        kiosk_ids: Sequence[str],
        *,
        menu: Menu | Unchanged | None = ...,
        offline: OfflinePolicy | Unchanged | None = ...,
    ) -> dict[str, int] | None:
        """The same for several kiosks in one transaction: each kiosk's new version, or None
        (nothing issued) when one of them is not registered."""
        ...

    def unpublished_configs(self, limit: int = ...) -> list[IssuedConfig]:
        """Issued configs not yet acknowledged by the broker, oldest first; of a kiosk with
        several, only its newest (an older one would be superseded on arrival anyway)."""
        ...

    def mark_config_published(self, kiosk_id: str, version: int) -> None:
        """The broker acknowledged this version, and every older one of the kiosk is moot."""
        ...

    def latest_config(self, kiosk_id: str) -> IssuedConfig | None: ...

    def denylist_stale(self) -> bool:
        """True when cards changed since the latest deny-list was computed."""
        ...

    def issue_denylist(self) -> int | None:
        """Compute the deny-list; store and return its next version when it changed."""
        ...

    def unpublished_denylist(self) -> IssuedDenyList | None:
        """The newest deny-list version when it is not yet acknowledged by the broker."""
        ...

    def mark_denylist_published(self, version: int) -> None: ...


class Ledger(RequestLedger, CardLedger, RefundLedger, ConfigLedger, SunMonitoringLedger, Protocol):
    """What the API (create_app and its routes) needs."""

    @property
    def engine(self) -> Engine:
        """The database the API's own SQL modules share with the ledger."""
        ...

    # --- cards and monitoring --------------------------------------------------------------------

    def card_transactions(self, card_uid: str, limit: int = ...) -> list[dict[str, object]]: ...

    def check(self) -> list[str]: ...

    def kiosk_overview(self) -> list[dict[str, object]]: ...

    def error_rates(self) -> list[dict[str, object]]: ...

    # --- online top-ups and Stripe's webhooks ----------------------------------------------------

    def create_topup(
        self, *, topup_id: str, card_uid: str, amount_cents: int, currency: str
    ) -> None: ...

    def attach_checkout_session(self, *, topup_id: str, session_id: str) -> None: ...

    def record_stripe_event(
        self, *, event_id: str, event_type: str, payload: dict[str, Any]
    ) -> bool: ...

    def handle_stripe_checkout(
        self,
        *,
        event_id: str,
        session_id: str,
        topup_id: str | None,
        card_uid: str | None,
        amount_cents: int,
        currency: str,
        payment_intent_id: str | None,
        trace_id: str | None = ...,
    ) -> StripeCheckoutResult: ...

    def process_stripe_refund(
        self,
        *,
        event_id: str,
        payment_intent_id: str,
        amount_refunded_cents: int,
        trace_id: str | None = ...,
        card_uid: str | None = ...,
    ) -> Outcome: ...

    def process_stripe_dispute(
        self,
        *,
        event_id: str,
        payment_intent_id: str,
        trace_id: str | None = ...,
        card_uid: str | None = ...,
    ) -> Outcome: ...

    def process_stripe_dispute_closed(
        self,
        *,
        event_id: str,
        dispute_id: str,
        payment_intent_id: str,
        status: str,
        amount_cents: int,
        trace_id: str | None = ...,
    ) -> Outcome: ...

    def mark_topup_failed(self, *, session_id: str, event_id: str) -> None: ...

    def expire_checkout_session(self, *, session_id: str, event_id: str) -> bool: ...

    def record_stripe_note(
        self, *, event_id: str, disposition: str, reason: str, trace_id: str | None = ...
    ) -> bool: ...

    def refunds_owed(self) -> int: ...


if TYPE_CHECKING:

    def _implementations_conform(
        real: cloud.ledger.Ledger, fake: cloud.ledger_fake.FakeLedger
    ) -> Mapping[str, object]:
        """Never called: mypy checks here that each implementation has its ports' methods with
        the signatures the callers are typed against."""
        api: Ledger = real
        consumer: RequestLedger = real
        fake_requests: RequestLedger = fake
        fake_cards: CardLedger = fake
        return {"api": api, "consumer": consumer, "fake": (fake_requests, fake_cards)}
