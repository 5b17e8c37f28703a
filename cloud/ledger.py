"""The ledger: a thin SQLAlchemy Core layer over the stored procedures (cloud/migrations).

Every money decision is made inside PostgreSQL, in one transaction per call; this module only
serialises requests, calls the procedures and maps their jsonb outcomes to `Outcome` (the
protocol's `Result`, with the order id). Errors come out through
`cloud.database.translate_errors`: `TransientDatabaseError` means "retry the same call later"
(safe: every procedure is idempotent by its request id or Stripe key); anything else is a bug.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final, TypeVar
from uuid import UUID

from cloud.database import (
    Connection,
    Engine,
    TransientDatabaseError,
    hide_parameters,
    text,
    translate_errors,
)
from cloud.ledger_records import (
    BATCH_REQUESTS_MAX,
    CARD_TRANSACTIONS_MAX,
    CHECKPOINT_ID_LENGTH_MAX,
    CONFLICT_RETRIES_MAX,
    CONFLICT_RETRY_PAUSE_S,
    DEAD_LETTER_BYTES_MAX,
    DEAD_LETTERS_PER_KIOSK_MINUTE_MAX,
    KIOSK_ROLES,
    MISSING_SEQ_RANGES_MAX,
    REFUND_LEASE_S,
    REJECTION_CODES,
    RETRYABLE_AT_ONCE_SQLSTATES,
    SHA256_HEX_LENGTH,
    SOURCES,
    TOPUP_RETENTION_DAYS,
    UNCHANGED,
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
    outcome_from_document,
    request_document,
)
from cloud.pos_devices import claimed_device_id
from protocol.errors import ErrorCode
from protocol.limits import (
    BALANCE_CENTS_MAX_DEFAULT,
    CARD_UID_PATTERN,
    KIOSK_ID_PATTERN,
    KIOSK_IDS_RESERVED,
    MENU_GRACE_S_DEFAULT,
    ORDER_TOTAL_CENTS_MAX,
    RETURN_CENTS_MAX_DEFAULT,
    TEXT_FORBIDDEN_PATTERN,
    TOPUP_CENTS_MAX_DEFAULT,
    VOID_WINDOW_S_DEFAULT,
)
from protocol.models import (
    KioskStatus,
    Menu,
    OfflinePolicy,
    ScanRecord,
    menu_to_dict,
    offline_policy_to_dict,
)

if TYPE_CHECKING:
    from cloud.settings import CloudSettings

T = TypeVar("T")


def _json(document: object) -> str:
    return json.dumps(document, separators=(",", ":"))


def _jsonable(value: object) -> object:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Decimal):
        # Monitoring figures (averages, percentages), never money: money columns are bigint.
        return float(value)
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, bytes | memoryview):
        return bytes(value).hex()
    return value


class _UnknownKiosk(Exception):
    """Raised inside a transaction to roll it back: a kiosk it names is not registered."""


def _optional_card_uid(card_uid: str | None) -> str | None:
    """A card uid the caller read from Stripe metadata: None, or a valid uid (else a bug)."""
    if card_uid is not None and not CARD_UID_PATTERN.match(card_uid):
        raise ValueError("invalid card uid")
    return card_uid


def _dead_letter_document(
    topic: str, payload: bytes, error_code: ErrorCode, reason: str, kiosk_id: str | None
) -> dict[str, object]:
    """What sp_record_dead_letters takes for one letter: at most DEAD_LETTER_BYTES_MAX bytes of
    the payload, with the length and SHA-256 of the whole of it."""
    return {
        "topic": topic,
        "payload_hex": bytes(payload[:DEAD_LETTER_BYTES_MAX]).hex(),
        "payload_length": len(payload),
        "payload_sha256": hashlib.sha256(payload).hexdigest(),
        "error_code": ErrorCode(error_code).value,
        "reason": reason,
        "kiosk_id": kiosk_id,
    }


def _rows(connection: Connection, sql: str, **params: object) -> list[dict[str, object]]:
    result = connection.execute(text(sql), params)
    return [{key: _jsonable(value) for key, value in row.items()} for row in result.mappings()]


def _sqlstate(error: BaseException) -> str | None:
    cause = error.__cause__
    original = getattr(cause, "orig", cause)
    code = getattr(original, "pgcode", None)
    return code if isinstance(code, str) else None


CHECK_SQL: Final = "SELECT * FROM ledger_check()"
CHECK_ACCOUNTS_SQL: Final = "SELECT * FROM ledger_check_accounts()"
CHECK_ACCOUNTS_EXISTS_SQL: Final = (
    "SELECT to_regprocedure('ledger_check_accounts(integer)') IS NOT NULL"
)

# The seed's monitoring queries, verbatim (docs/ledger.md; tests/ledger/test_seed_sql.py).
SEED_PROCESSING_TIMES_SQL: Final = """
SELECT
    edge_function_name,
    AVG(EXTRACT(EPOCH FROM (updated_at - created_at))) as avg_processing_seconds,
    COUNT(*) as total_requests
FROM app_transaction_log
WHERE timestamp > NOW() - INTERVAL '1 hour'
GROUP BY edge_function_name;
"""
SEED_ERROR_RATES_SQL: Final = """
SELECT
    status,
    COUNT(*) as count,
    ROUND(COUNT(*) * 100.0 / SUM(COUNT(*)) OVER (), 2) as percentage
FROM app_transaction_log
WHERE timestamp > NOW() - INTERVAL '1 hour'
GROUP BY status;
"""
SEED_IDEMPOTENCY_USAGE_SQL: Final = """
SELECT
    source_function,
    status,
    COUNT(*) as requests,
    AVG(EXTRACT(EPOCH FROM (updated_at - created_at))) as avg_processing_time
FROM idempotency_keys
WHERE created_at > NOW() - INTERVAL '1 hour'
GROUP BY source_function, status;
"""
SEED_NFC_SCAN_ACTIVITY_SQL: Final = """
SELECT scan_status, COUNT(*)
FROM nfc_scan_log
WHERE scan_timestamp > NOW() - INTERVAL '1 hour'
GROUP BY scan_status;
"""
SEED_TRANSACTION_LOG_SQL: Final = """
SELECT * FROM app_transaction_log
ORDER BY timestamp DESC
LIMIT 10;
"""


class Ledger:
    """The ledger's operations, each one database transaction through the given engine."""

    def __init__(
        self,
        engine: Engine,
        *,
        max_balance_cents: int = BALANCE_CENTS_MAX_DEFAULT,
        max_topup_cents: int = TOPUP_CENTS_MAX_DEFAULT,
        return_cents_max: int = RETURN_CENTS_MAX_DEFAULT,
        currency: str = "EUR",
        menu_grace_s: int = MENU_GRACE_S_DEFAULT,
        void_window_s: int = VOID_WINDOW_S_DEFAULT,
        staff_required: bool = False,
    ) -> None:
        """The limits are the deployment's settings (FESTIVAL_MAX_BALANCE_CENTS, ...,
        FESTIVAL_MENU_GRACE_S, FESTIVAL_VOID_WINDOW_S), passed to every request procedure; each
        defaults to the protocol's default, as the procedures' own parameters do (ledger_limit).
        ``staff_required`` (FESTIVAL_STAFF_REQUIRED, revision 0024): every kiosk request must
        name a staff member logged in at that kiosk whose role allows it."""
        assert max_balance_cents >= 0 and max_topup_cents >= 1
        assert 0 <= return_cents_max <= ORDER_TOTAL_CENTS_MAX
        assert menu_grace_s >= 0 and void_window_s >= 0
        self._engine = engine
        self.void_window_s = void_window_s
        self.staff_required = staff_required
        self.max_balance_cents = max_balance_cents
        self.max_topup_cents = max_topup_cents
        self.return_cents_max = return_cents_max
        self.menu_grace_s = menu_grace_s
        self.currency = currency.upper()

    @classmethod
    def from_settings(
        cls, engine: Engine, settings: CloudSettings, *, staff_required: bool
    ) -> Ledger:
        """The ledger of a composition root (the consumer, the API, the operator's CLI): every
        limit from the deployment's settings. ``staff_required`` is the root's to say: only the
        consumer passes FESTIVAL_STAFF_REQUIRED; the POS endpoints and the CLI verbs are exempt
        (docs/protocol.md, staff)."""
        return cls(
            engine,
            max_balance_cents=settings.festival_max_balance_cents,
            max_topup_cents=settings.festival_max_topup_cents,
            return_cents_max=settings.festival_return_max_cents,
            currency=settings.festival_currency,
            menu_grace_s=settings.festival_menu_grace_s,
            void_window_s=settings.festival_void_window_s,
            staff_required=staff_required,
        )

    @property
    def engine(self) -> Engine:
        return self._engine

    # --- plumbing ------------------------------------------------------------------------------

    def _transaction(self, work: Callable[[Connection], T]) -> T:
        """Run `work` in one transaction; retry at once on serialization failure or deadlock."""
        attempt = 1
        while True:
            try:
                with translate_errors(), self._engine.begin() as connection:
                    return work(connection)
            except TransientDatabaseError as error:
                if attempt >= CONFLICT_RETRIES_MAX or (
                    _sqlstate(error) not in RETRYABLE_AT_ONCE_SQLSTATES
                ):
                    raise
                attempt += 1
                time.sleep(CONFLICT_RETRY_PAUSE_S * attempt)

    def _scalar(self, sql: str, **params: object) -> Any:
        return self._transaction(lambda c: c.execute(text(sql), params).scalar_one())

    def _select(self, sql: str, **params: object) -> list[dict[str, object]]:
        return self._transaction(lambda c: _rows(c, sql, **params))

    def _select_one(self, make: Callable[..., T], sql: str, **params: object) -> T | None:
        """``make(**row)`` of the one row ``sql`` selects (by its key, or LIMIT 1); None: none."""
        rows = self._select(sql, **params)
        return make(**rows[0]) if rows else None

    # --- requests --------------------------------------------------------------------------------

    def _request_limits(self) -> dict[str, object]:
        """The limits sp_handle_request and sp_process_batch take after the request(s)."""
        return {
            "balance_max": self.max_balance_cents,
            "topup_max": self.max_topup_cents,
            "return_max": self.return_cents_max,
            "menu_grace_s": self.menu_grace_s,
            "void_window_s": self.void_window_s,
            "staff_required": self.staff_required,
        }

    def apply(self, item: LedgerRequest) -> Outcome:
        """Apply one request in its own transaction (sp_handle_request)."""
        document = self._scalar(
            "SELECT sp_handle_request(CAST(:request AS jsonb), :balance_max, :topup_max,"
            " :return_max, :menu_grace_s, :void_window_s, :staff_required)",
            request=json.dumps(request_document(item), separators=(",", ":")),
            **self._request_limits(),
        )
        return outcome_from_document(document)

    def apply_pos(self, token: str | None, item: LedgerRequest) -> Outcome | None:
        """Apply one request of a registered POS device in its own transaction
        (sp_pos_handle_request, revision 0025: the API's role has no other way to the ledger's
        requests). ``token`` is the device's bearer token as presented; the database hashes it
        and finds the enabled device it belongs to, or answers None (the API's 401). The
        request must be that device's own (its id, source http, a seq sp_pos_authenticate
        gave it); a request type its role does not allow and a top-up into another drawer
        come back as stored rejections, decided by the database."""
        device_id = claimed_device_id(token)
        try:
            document = self._scalar(
                "SELECT sp_pos_handle_request(:device_id, :token, CAST(:request AS jsonb),"
                " :balance_max, :topup_max, :return_max, :menu_grace_s)",
                device_id=device_id,
                token=token if device_id is not None else None,
                request=json.dumps(request_document(item), separators=(",", ":")),
                balance_max=self.max_balance_cents,
                topup_max=self.max_topup_cents,
                return_max=self.return_cents_max,
                menu_grace_s=self.menu_grace_s,
            )
        except Exception as error:
            hide_parameters(error)  # the token is a parameter: never in a logged traceback
            raise
        return None if document is None else outcome_from_document(document)

    def apply_batch(self, items: Sequence[LedgerRequest]) -> list[Outcome]:
        """Apply many requests in one transaction and one round trip; outcomes in input order."""
        if not items:
            return []
        assert len(items) <= BATCH_REQUESTS_MAX, "split larger batches"
        payload = json.dumps([request_document(item) for item in items], separators=(",", ":"))
        documents = self._scalar(
            "SELECT sp_process_batch(CAST(:requests AS jsonb), :balance_max, :topup_max,"
            " :return_max, :menu_grace_s, :void_window_s, :staff_required)",
            requests=payload,
            **self._request_limits(),
        )
        assert len(documents) == len(items)
        return [outcome_from_document(document) for document in documents]

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
        source: str = "mqtt",
        kind: str | None = None,
        trace_id: str | None = None,
    ) -> Outcome:
        """Store the outcome of an authenticated request rejected before the ledger, forever.

        Same payload again: the stored outcome, replayed. Another payload under the same id:
        IDEMPOTENCY_CONFLICT, not stored. The seq counts as seen (when given).
        """
        assert ErrorCode(error_code) in REJECTION_CODES, error_code
        assert len(payload_sha256) == SHA256_HEX_LENGTH
        assert source in SOURCES
        document = self._scalar(
            """
            SELECT sp_record_rejection(
                p_request_id => :request_id, p_kiosk_id => :kiosk_id, p_seq => :seq,
                p_card_uid => :card_uid, p_payload_sha256 => :payload_sha256,
                p_error_code => :error_code, p_message => :message, p_source => :source,
                p_kind => :kind, p_trace_id => :trace_id)
            """,
            request_id=request_id,
            kiosk_id=kiosk_id,
            seq=seq,
            card_uid=card_uid,
            payload_sha256=payload_sha256,
            error_code=ErrorCode(error_code).value,
            message=message[:200],
            source=source,
            kind=kind,
            trace_id=trace_id,
        )
        return outcome_from_document(document)

    def record_dead_letter(
        self,
        *,
        topic: str,
        payload: bytes,
        error_code: ErrorCode,
        reason: str,
        kiosk_id: str | None,
    ) -> bool:
        """Keep one message the consumer could not accept; False when it was only counted."""
        return self._record_dead_letter_documents(
            [_dead_letter_document(topic, payload, error_code, reason, kiosk_id)]
        )[0]

    def record_dead_letters(self, letters: Sequence[DeadLetterLike]) -> list[bool]:
        """Keep messages the consumer could not accept, in one transaction; per letter, whether
        it was stored (False: over its kiosk's bound for this minute, only counted).

        Each keeps at most DEAD_LETTER_BYTES_MAX bytes of its raw payload, with the full length
        and the SHA-256 of the whole payload, so a flood of large junk costs bounded space.
        """
        return self._record_dead_letter_documents(
            [
                _dead_letter_document(
                    letter.topic, letter.payload, letter.error_code, letter.reason, letter.kiosk_id
                )
                for letter in letters
            ]
        )

    def _record_dead_letter_documents(self, documents: list[dict[str, object]]) -> list[bool]:
        if not documents:
            return []
        ids = self._scalar(
            "SELECT sp_record_dead_letters(CAST(:letters AS jsonb), :per_minute_max)",
            letters=json.dumps(documents, separators=(",", ":")),
            per_minute_max=DEAD_LETTERS_PER_KIOSK_MINUTE_MAX,
        )
        assert len(ids) == len(documents)
        return [letter_id is not None for letter_id in ids]

    # --- kiosks ----------------------------------------------------------------------------------

    def kiosk(self, kiosk_id: str) -> KioskRecord | None:
        return self._select_one(
            KioskRecord,
            "SELECT kiosk_id, public_key_b64, role, enabled, checkpoint_id FROM kiosks"
            " WHERE kiosk_id = :kiosk_id",
            kiosk_id=kiosk_id,
        )

    def kiosks(self) -> list[KioskRecord]:
        rows = self._select(
            "SELECT kiosk_id, public_key_b64, role, enabled, checkpoint_id FROM kiosks"
            " ORDER BY kiosk_id"
        )
        return [KioskRecord(**row) for row in rows]  # type: ignore[arg-type]

    def kiosks_named(self, kiosk_ids: Collection[str]) -> list[KioskRecord]:
        """The registered kiosks among ``kiosk_ids`` (unknown ids absent), in kiosk id order:
        one query however many are named (the consumer reads its batch's kiosks so)."""
        rows = self._select(
            "SELECT kiosk_id, public_key_b64, role, enabled, checkpoint_id FROM kiosks"
            " WHERE kiosk_id = ANY(:kiosk_ids) ORDER BY kiosk_id",
            kiosk_ids=sorted(kiosk_ids),
        )
        return [KioskRecord(**row) for row in rows]  # type: ignore[arg-type]

    def add_kiosk(
        self, kiosk_id: str, public_key_b64: str, role: str, checkpoint_id: str | None = None
    ) -> KioskRecord:
        """Register a kiosk's public key, role and checkpoint (None: the kiosk id); re-adding
        updates all three and re-enables it."""
        from protocol.keys import load_public_key_b64

        if not KIOSK_ID_PATTERN.match(kiosk_id) or kiosk_id in KIOSK_IDS_RESERVED:
            raise ValueError(f"invalid kiosk id {kiosk_id!r}: 1-32 of [a-z0-9-], a letter first")
        if role not in KIOSK_ROLES:
            raise ValueError(f"role must be one of {', '.join(KIOSK_ROLES)}")
        if checkpoint_id is not None and (
            not 1 <= len(checkpoint_id) <= CHECKPOINT_ID_LENGTH_MAX
            or TEXT_FORBIDDEN_PATTERN.search(checkpoint_id)
        ):
            raise ValueError(
                f"invalid checkpoint {checkpoint_id!r}: 1-{CHECKPOINT_ID_LENGTH_MAX} characters,"
                " no control characters"
            )
        load_public_key_b64(public_key_b64)  # ValueError when it is not a key

        def work(connection: Connection) -> dict[str, Any]:
            params = {"kiosk_id": kiosk_id, "public_key_b64": public_key_b64, "role": role}
            connection.execute(
                text("SELECT sp_add_kiosk(:kiosk_id, :public_key_b64, :role)"), params
            )
            row: dict[str, Any] = connection.execute(
                text("SELECT sp_set_kiosk_checkpoint(:kiosk_id, :checkpoint_id)"),
                {"kiosk_id": kiosk_id, "checkpoint_id": checkpoint_id},
            ).scalar_one()
            return row

        return KioskRecord(**self._transaction(work))

    def set_kiosk_mqtt_password_hash(self, kiosk_id: str, password_hash: Mapping[str, Any]) -> bool:
        """Keep the broker's stored form of a kiosk's MQTT password (revision 0008); False when
        the kiosk is not registered."""
        return bool(
            self._scalar(
                "SELECT sp_set_kiosk_mqtt_password(:kiosk_id, CAST(:password_hash AS jsonb))",
                kiosk_id=kiosk_id,
                password_hash=json.dumps(dict(password_hash)),
            )
        )

    def kiosk_mqtt_password_hashes(self) -> dict[str, dict[str, Any]]:
        """Every stored kiosk MQTT password hash, by kiosk id (for `broker config`)."""
        rows = self._select("SELECT kiosk_id, password_hash FROM kiosk_mqtt_credentials")
        return {str(row["kiosk_id"]): dict(row["password_hash"]) for row in rows}  # type: ignore[call-overload]

    def disable_kiosk(self, kiosk_id: str) -> bool:
        return bool(self._scalar("SELECT sp_disable_kiosk(:kiosk_id)", kiosk_id=kiosk_id))

    # --- configs and the deny-list (revision 0010; cloud/publisher.py sends them) ------------

    def issue_kiosk_config(
        self,
        kiosk_id: str,
        *,
        menu: Menu | Unchanged | None = UNCHANGED,
        offline: OfflinePolicy | Unchanged | None = UNCHANGED,
    ) -> int | None:
        """Change what is assigned to the kiosk (None: no menu / no offline sales; UNCHANGED:
        keep it) and store its next config version, unsent (sp_issue_kiosk_config); None for
        an unregistered kiosk. The models checked themselves when they were built."""
        version = self._scalar(
            "SELECT sp_issue_kiosk_config(:kiosk_id, :currency, :set_menu,"
            " CAST(:menu AS jsonb), :set_offline, CAST(:offline AS jsonb))",
            kiosk_id=kiosk_id,
            currency=self.currency,
            set_menu=not isinstance(menu, Unchanged),
            menu=None if menu is None or isinstance(menu, Unchanged) else _json(menu_to_dict(menu)),
            set_offline=not isinstance(offline, Unchanged),
            offline=(
                None
                if offline is None or isinstance(offline, Unchanged)
                else _json(offline_policy_to_dict(offline))
            ),
        )
        return None if version is None else int(version)

    def issue_kiosk_configs(
        self,
        kiosk_ids: Sequence[str],
        *,
        menu: Menu | Unchanged | None = UNCHANGED,
        offline: OfflinePolicy | Unchanged | None = UNCHANGED,
    ) -> dict[str, int] | None:
        """issue_kiosk_config for several kiosks in ONE transaction: every kiosk gets its next
        version, or (one of them not registered) none does and the answer is None. An operator
        assigning a menu to five bars must never leave two on the old one because a name was
        mistyped; and the publisher is notified only at the commit."""
        set_menu = not isinstance(menu, Unchanged)
        set_offline = not isinstance(offline, Unchanged)
        params = {
            "currency": self.currency,
            "set_menu": set_menu,
            "menu": None
            if menu is None or isinstance(menu, Unchanged)
            else _json(menu_to_dict(menu)),
            "set_offline": set_offline,
            "offline": (
                None
                if offline is None or isinstance(offline, Unchanged)
                else _json(offline_policy_to_dict(offline))
            ),
        }

        def work(connection: Connection) -> dict[str, int]:
            versions: dict[str, int] = {}
            for kiosk_id in kiosk_ids:
                version = connection.execute(
                    text(
                        "SELECT sp_issue_kiosk_config(:kiosk_id, :currency, :set_menu,"
                        " CAST(:menu AS jsonb), :set_offline, CAST(:offline AS jsonb))"
                    ),
                    {"kiosk_id": kiosk_id, **params},
                ).scalar_one()
                if version is None:
                    raise _UnknownKiosk  # rolls back the versions issued so far
                versions[kiosk_id] = int(version)
            return versions

        try:
            return self._transaction(work)
        except _UnknownKiosk:
            return None

    def unpublished_configs(self, limit: int = 100) -> list[IssuedConfig]:
        rows = self._select(
            "SELECT DISTINCT ON (kiosk_id) kiosk_id, version, document, created_at"
            " FROM kiosk_configs c WHERE published_at IS NULL"
            " AND NOT EXISTS (SELECT 1 FROM kiosk_configs newer WHERE newer.kiosk_id = c.kiosk_id"
            "   AND newer.version > c.version AND newer.published_at IS NOT NULL)"
            " ORDER BY kiosk_id, version DESC",
        )
        rows.sort(key=lambda row: row["created_at"])  # type: ignore[arg-type,return-value]
        return [
            IssuedConfig(
                kiosk_id=str(row["kiosk_id"]),
                version=int(row["version"]),  # type: ignore[call-overload]
                document=row["document"],  # type: ignore[arg-type]
                published=False,
            )
            for row in rows[:limit]
        ]

    def mark_config_published(self, kiosk_id: str, version: int) -> None:
        self._scalar(
            "SELECT count(*) FROM (SELECT sp_mark_kiosk_config_published(:kiosk_id, :version))"
            " AS marked",
            kiosk_id=kiosk_id,
            version=version,
        )

    def latest_config(self, kiosk_id: str) -> IssuedConfig | None:
        return self._select_one(
            IssuedConfig,
            "SELECT kiosk_id, version, document, published_at IS NOT NULL AS published"
            " FROM kiosk_configs WHERE kiosk_id = :kiosk_id ORDER BY version DESC LIMIT 1",
            kiosk_id=kiosk_id,
        )

    def denylist_stale(self) -> bool:
        return bool(
            self._scalar(
                "SELECT s.changes IS DISTINCT FROM (SELECT changes_seen FROM denylists"
                " ORDER BY version DESC LIMIT 1) FROM denylist_state s"
            )
        )

    def issue_denylist(self) -> int | None:
        version = self._scalar("SELECT sp_issue_denylist()")
        return None if version is None else int(version)

    def unpublished_denylist(self) -> IssuedDenyList | None:
        rows = self._select(
            "SELECT version, issued_at_ms, card_uids::text[] AS card_uids,"
            " published_at IS NOT NULL AS published FROM denylists ORDER BY version DESC LIMIT 1"
        )
        if not rows or rows[0]["published"]:
            return None
        row = rows[0]
        return IssuedDenyList(
            version=int(row["version"]),  # type: ignore[call-overload]
            issued_at_ms=int(row["issued_at_ms"]),  # type: ignore[call-overload]
            card_uids=tuple(row["card_uids"]),  # type: ignore[arg-type]
            published=False,
        )

    def mark_denylist_published(self, version: int) -> None:
        self._scalar(
            "SELECT count(*) FROM (SELECT sp_mark_denylist_published(:version)) AS marked",
            version=version,
        )

    def record_kiosk_status(self, status: KioskStatus, *, received_at_ms: int) -> None:
        self._scalar(
            "SELECT sp_record_kiosk_status(:kiosk_id, :state, :at_ms, :firmware, :received_at_ms)",
            kiosk_id=status.kiosk_id,
            state=status.state,
            at_ms=status.at_ms,
            firmware=status.firmware,
            received_at_ms=received_at_ms,
        )

    def record_scan(self, scan: ScanRecord) -> None:
        self.record_scans([scan])

    def record_scans(self, scans: Iterable[ScanRecord]) -> int:
        """Store scan records (nfc_scan_log) in one statement; returns how many."""
        documents = [
            {
                "kiosk_id": scan.kiosk_id,
                "card_uid": scan.card_uid,
                "status": scan.status,
                "scanned_at_ms": scan.scanned_at_ms,
                "reader": scan.reader,
                "duration_ms": scan.duration_ms,
            }
            for scan in scans
        ]
        if not documents:
            return 0
        return int(
            self._scalar(
                "SELECT sp_record_scans(CAST(:scans AS jsonb))", scans=json.dumps(documents)
            )
        )

    def kiosk_overview(self) -> list[dict[str, object]]:
        """Every registered kiosk (disabled ones too) with presence and missing seq ranges."""
        rows = self._select(
            """
            SELECT kiosk_id, role, checkpoint_id, enabled, state, last_seen_at,
                   CASE WHEN isempty(seen_seqs) THEN NULL ELSE upper(seen_seqs) - 1 END
                       AS last_seq,
                   CASE WHEN isempty(seen_seqs) THEN '{}'::bigint[] ELSE ARRAY(
                       SELECT ARRAY[lower(gap), upper(gap) - 1]
                         FROM unnest(int8multirange(int8range(1, upper(seen_seqs)))
                                     - seen_seqs) AS gap
                        ORDER BY lower(gap)
                        LIMIT :ranges_max) END AS missing_seq_ranges
              FROM kiosks ORDER BY kiosk_id
            """,
            ranges_max=MISSING_SEQ_RANGES_MAX,
        )
        for row in rows:
            row["missing_seq_ranges"] = [list(pair) for pair in row["missing_seq_ranges"] or []]  # type: ignore[attr-defined]
        return rows

    # --- cards -----------------------------------------------------------------------------------

    # --- genuine wristbands (1.1, revision 0014) ----------------------------------------------

    def accept_sun_counter(self, card_uid: str, counter: int) -> bool:
        """A portal login by GET /t: accept a verified SUN message's counter by the online rule
        (above every counter accepted for that wristband), in one transaction. False: stale,
        counted as a stale-counter failure (the cloning alarm)."""
        return bool(
            self._scalar(
                "SELECT sp_accept_sun_counter(:card_uid, :counter)",
                card_uid=card_uid,
                counter=counter,
            )
        )

    def sun_failures(self, *, minutes: int) -> list[dict[str, object]]:
        """SUN failures per minute and reason over the last ``minutes`` (oldest first):
        ``{"minute": ISO 8601 text, "reason": str, "failures": int}``."""
        return self._select(
            "SELECT minute, reason, failures FROM sun_failure_minutes"
            " WHERE minute >= date_trunc('minute', now()) - make_interval(mins => :minutes)"
            " ORDER BY minute, reason",
            minutes=minutes,
        )

    def stale_sun_cards(self, *, minutes: int, limit: int) -> list[dict[str, object]]:
        """The wristbands with a stale counter in the last ``minutes``, most stale first: the
        cards a clone (or a replayed message) was used for."""
        return self._select(
            "SELECT card_uid, stale_count, last_stale_at FROM card_sun_counters"
            " WHERE last_stale_at >= now() - make_interval(mins => :minutes)"
            " ORDER BY stale_count DESC, card_uid LIMIT :limit",
            minutes=minutes,
            limit=limit,
        )

    def card(self, card_uid: str) -> CardRecord | None:
        return self._select_one(
            CardRecord,
            "SELECT card_uid, balance_cents, status, debt_cents FROM cards"
            " WHERE card_uid = :card_uid",
            card_uid=card_uid,
        )

    def card_transactions(self, card_uid: str, limit: int = 20) -> list[dict[str, object]]:
        """The card's recent ledger movements, newest first; amounts signed from the card's view."""
        return self._select(
            """
            SELECT p.transaction_id::text AS transaction_id, t.kind,
                   p.amount_cents, p.balance_after_cents, t.created_at,
                   t.request_id, t.stripe_event_id
              FROM cards c
              JOIN postings p ON p.account_id = c.account_id
              JOIN transactions t ON t.transaction_id = p.transaction_id
             WHERE c.card_uid = :card_uid
             ORDER BY t.created_at DESC, p.transaction_id DESC
             LIMIT :limit
            """,
            card_uid=card_uid,
            limit=max(0, min(limit, CARD_TRANSACTIONS_MAX)),
        )

    def block_card(self, card_uid: str, reason: str) -> bool:
        return bool(
            self._scalar(
                "SELECT sp_block_card(:card_uid, :reason)", card_uid=card_uid, reason=reason
            )
        )

    def unblock_card(self, card_uid: str) -> bool:
        return bool(self._scalar("SELECT sp_unblock_card(:card_uid)", card_uid=card_uid))

    def swap_card(self, *, request_id: str, old_card_uid: str, new_card_uid: str) -> Outcome:
        """(1.1) The info desk's card swap (sp_card_swap): the card_swap request on the
        operator's word, idempotent by ``request_id``."""
        document = self._scalar(
            "SELECT sp_card_swap(:request_id, :old_card_uid, :new_card_uid, :balance_max)",
            request_id=request_id,
            old_card_uid=old_card_uid,
            new_card_uid=new_card_uid,
            balance_max=self.max_balance_cents,
        )
        return outcome_from_document(document)

    def cash_out(
        self, *, request_id: str, card_uid: str, checkpoint_id: str, staff_id: str
    ) -> Outcome | None:
        """(1.1, our extension) The operator's cash-out (sp_cash_out): the cash_out request of
        a checkpoint kiosk on the operator's word, paid from ``checkpoint_id``'s drawer and
        idempotent by ``request_id``. None: no such checkpoint. Approved, the outcome's message
        says what to hand out; ``cash_out_parts`` reads the amounts."""
        document = self._scalar(
            "SELECT sp_cash_out(:request_id, :card_uid, :checkpoint_id, :staff_id)",
            request_id=request_id,
            card_uid=card_uid,
            checkpoint_id=checkpoint_id,
            staff_id=staff_id,
        )
        return None if document is None else outcome_from_document(document)

    # --- staff (revision 0024) -----------------------------------------------------------------

    def add_staff(
        self, *, staff_id: str, name: str, role: str, card_uid: str, pin_hash: str
    ) -> str:
        """`staff add`: 'added', or why not ('exists', 'card in use'). ``pin_hash``: the
        PIN's cloud.staff.hash_pin (the database never sees a PIN)."""
        return str(
            self._scalar(
                "SELECT sp_staff_add(:staff_id, :name, :role, :card_uid, :pin_hash)",
                staff_id=staff_id,
                name=name,
                role=role,
                card_uid=card_uid,
                pin_hash=pin_hash,
            )
        )

    def set_staff_pin(self, staff_id: str, pin_hash: str) -> bool:
        """`staff pin`: a new PIN's hash (the lock goes, open logins end); False: no such id."""
        return bool(
            self._scalar(
                "SELECT sp_staff_set_pin(:staff_id, :pin_hash)",
                staff_id=staff_id,
                pin_hash=pin_hash,
            )
        )

    def staff_pin_hashes(self, staff_ids: Iterable[str]) -> dict[str, str]:
        """The PIN hashes of these staff members (unknown ids are absent), for the consumer to
        check staff_login PINs against."""
        rows = self._select(
            "SELECT staff_id, pin_hash FROM sp_staff_pin_hashes(CAST(:ids AS text[]))",
            ids=sorted(set(staff_ids)),
        )
        return {str(row["staff_id"]): str(row["pin_hash"]) for row in rows}

    def disable_staff(self, staff_id: str) -> bool:
        """`staff disable`: no more logins, open logins end; False: no such staff id."""
        return bool(self._scalar("SELECT sp_staff_disable(:staff_id)", staff_id=staff_id))

    def staff_members(self) -> list[dict[str, Any]]:
        """`staff list`: every staff member (no PIN hash) and the kiosks they are logged in at."""
        return list(self._scalar("SELECT sp_staff_list()"))

    def cash_out_parts(self, request_id: str) -> tuple[int, int] | None:
        """What an approved cash-out paid: (cash from the drawer, refunded to Stripe), in cents;
        None when ``request_id`` paid nothing out."""
        rows = self._select(
            "SELECT cash_cents, stripe_refund_cents FROM cash_outs WHERE request_id = :r",
            r=request_id,
        )
        if not rows:
            return None
        return int(rows[0]["cash_cents"]), int(rows[0]["stripe_refund_cents"])  # type: ignore[call-overload]

    # --- Stripe ----------------------------------------------------------------------------------

    def record_stripe_event(
        self, *, event_id: str, event_type: str, payload: dict[str, Any]
    ) -> bool:
        """Store a webhook event; False when this event id was already stored.

        Storing is not processing: call the process_* method for a duplicate too (each is
        idempotent by its own key), so that a crash between the two calls loses nothing.
        """
        return bool(
            self._scalar(
                "SELECT sp_record_stripe_event(:event_id, :event_type, CAST(:payload AS jsonb))",
                event_id=event_id,
                event_type=event_type,
                payload=json.dumps(payload),
            )
        )

    def create_topup(
        self, *, topup_id: str, card_uid: str, amount_cents: int, currency: str
    ) -> None:
        """Record a pending online top-up, before its Checkout Session exists."""
        if not CARD_UID_PATTERN.match(card_uid):
            raise ValueError("invalid card uid")
        if amount_cents < 1:
            raise ValueError("amount_cents must be >= 1")
        self._scalar(
            "SELECT sp_create_topup(:topup_id, :card_uid, :amount_cents, :currency)",
            topup_id=topup_id,
            card_uid=card_uid,
            amount_cents=amount_cents,
            currency=currency,
        )

    def attach_checkout_session(self, *, topup_id: str, session_id: str) -> None:
        self._scalar(
            "SELECT sp_attach_checkout_session(:topup_id, :session_id)",
            topup_id=topup_id,
            session_id=session_id,
        )

    def process_stripe_recharge(
        self,
        *,
        event_id: str,
        session_id: str,
        card_uid: str,
        amount_cents: int,
        currency: str,
        payment_intent_id: str | None,
        topup_id: str | None,
        trace_id: str | None = None,
    ) -> Outcome:
        """Credit a paid Checkout Session, once per session forever (see docs/ledger.md)."""
        document = self._scalar(
            """
            SELECT sp_process_stripe_recharge(
                p_event_id => :event_id, p_session_id => :session_id, p_card_uid => :card_uid,
                p_amount_cents => :amount_cents, p_currency => :currency,
                p_payment_intent_id => :payment_intent_id, p_topup_id => :topup_id,
                p_expected_currency => :expected_currency,
                p_balance_cents_max => :balance_max, p_trace_id => :trace_id)
            """,
            event_id=event_id,
            session_id=session_id,
            card_uid=card_uid,
            amount_cents=amount_cents,
            currency=currency,
            payment_intent_id=payment_intent_id,
            topup_id=topup_id,
            expected_currency=self.currency,
            balance_max=self.max_balance_cents,
            trace_id=trace_id,
        )
        return outcome_from_document(document)

    def mark_topup_failed(self, *, session_id: str, event_id: str) -> None:
        self._scalar(
            "SELECT sp_mark_topup_failed(:session_id, :event_id)",
            session_id=session_id,
            event_id=event_id,
        )

    def process_stripe_refund(
        self,
        *,
        event_id: str,
        payment_intent_id: str,
        amount_refunded_cents: int,
        trace_id: str | None = None,
        card_uid: str | None = None,
    ) -> Outcome:
        """Take the not-yet-reversed part of Stripe's cumulative refund off the card.

        Linked to the top-up by `payment_intent_id`; `card_uid` (the charge's metadata) only
        when no top-up has that payment intent: then nothing is taken (what was credited is
        unknown) but that card is blocked until an operator reconciles (docs/ledger.md).
        """
        document = self._scalar(
            """
            SELECT sp_handle_stripe_refund(
                p_event_id => :event_id, p_payment_intent_id => :payment_intent_id,
                p_card_uid => :card_uid, p_amount_refunded_cents => :amount,
                p_trace_id => :trace_id)
            """,
            event_id=event_id,
            payment_intent_id=payment_intent_id,
            card_uid=_optional_card_uid(card_uid),
            amount=amount_refunded_cents,
            trace_id=trace_id,
        )
        return outcome_from_document(document)

    def process_stripe_dispute(
        self,
        *,
        event_id: str,
        payment_intent_id: str,
        trace_id: str | None = None,
        card_uid: str | None = None,
    ) -> Outcome:
        """Block the disputed top-up's card; `card_uid` (metadata) when no top-up matches."""
        document = self._scalar(
            """
            SELECT sp_handle_stripe_dispute(
                p_event_id => :event_id, p_payment_intent_id => :payment_intent_id,
                p_card_uid => :card_uid, p_trace_id => :trace_id)
            """,
            event_id=event_id,
            payment_intent_id=payment_intent_id,
            card_uid=_optional_card_uid(card_uid),
            trace_id=trace_id,
        )
        return outcome_from_document(document)

    # --- Stripe, revision 0006: only sessions this API created; refunds owed; lost disputes ----

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
        trace_id: str | None = None,
    ) -> StripeCheckoutResult:
        """A paid Checkout Session: credited only when it is one of our top-ups (docs/ledger.md).

        `card_uid` is the session's metadata.card_uid (None when absent). Declined (card blocked,
        maximum balance) means a full refund is now owed (`refund_owed`), recorded in the same
        transaction; anything that is not our top-up is an anomaly, neither credited nor refunded.
        """
        document = self._scalar(
            """
            SELECT sp_handle_stripe_checkout(
                p_event_id => :event_id, p_session_id => :session_id, p_topup_id => :topup_id,
                p_card_uid => :card_uid, p_amount_cents => :amount_cents,
                p_currency => :currency, p_payment_intent_id => :payment_intent_id,
                p_expected_currency => :expected_currency,
                p_balance_cents_max => :balance_max, p_trace_id => :trace_id)
            """,
            event_id=event_id,
            session_id=session_id,
            topup_id=topup_id,
            card_uid=_optional_card_uid(card_uid),
            amount_cents=amount_cents,
            currency=currency,
            payment_intent_id=payment_intent_id,
            expected_currency=self.currency,
            balance_max=self.max_balance_cents,
            trace_id=trace_id,
        )
        return StripeCheckoutResult(
            outcome=outcome_from_document(document),
            topup_id=document.get("topup_id"),
            refund_owed=document.get("refund") == "owed",
            anomaly=bool(document.get("anomaly")),
        )

    def record_stripe_note(
        self, *, event_id: str, disposition: str, reason: str, trace_id: str | None = None
    ) -> bool:
        """Store why an event is ignored or an anomaly on its row; False for a duplicate."""
        assert disposition in ("ignored", "anomaly"), disposition
        return bool(
            self._scalar(
                "SELECT sp_record_stripe_note(:event_id, :disposition, :reason, :trace_id)",
                event_id=event_id,
                disposition=disposition,
                reason=reason[:300],
                trace_id=trace_id,
            )
        )

    def expire_checkout_session(self, *, session_id: str, event_id: str) -> bool:
        """checkout.session.expired: the top-up was never paid (status 'expired')."""
        return bool(
            self._scalar(
                "SELECT sp_expire_checkout_session(:session_id, :event_id)",
                session_id=session_id,
                event_id=event_id,
            )
        )

    def process_stripe_dispute_closed(
        self,
        *,
        event_id: str,
        dispute_id: str,
        payment_intent_id: str,
        status: str,
        amount_cents: int,
        trace_id: str | None = None,
    ) -> Outcome:
        """charge.dispute.closed: 'lost' reverses the disputed amount (card, then loss account)."""
        document = self._scalar(
            """
            SELECT sp_handle_stripe_dispute_closed(
                p_event_id => :event_id, p_dispute_id => :dispute_id,
                p_payment_intent_id => :payment_intent_id, p_status => :status,
                p_amount_cents => :amount_cents, p_trace_id => :trace_id)
            """,
            event_id=event_id,
            dispute_id=dispute_id,
            payment_intent_id=payment_intent_id,
            status=status,
            amount_cents=amount_cents,
            trace_id=trace_id,
        )
        return outcome_from_document(document)

    def claim_topup_refunds(
        self,
        *,
        limit: int,
        topup_id: str | None = None,
        due_only: bool = True,
        lease_s: int = REFUND_LEASE_S,
    ) -> list[OwedRefund]:
        """Lease up to `limit` owed refunds for one attempt each (see sp_claim_topup_refunds)."""
        rows = self._select(
            "SELECT * FROM sp_claim_topup_refunds(:limit, :topup_id, :due_only, :lease_s)",
            limit=limit,
            topup_id=topup_id,
            due_only=due_only,
            lease_s=lease_s,
        )
        return [OwedRefund(**row) for row in rows]  # type: ignore[arg-type]

    def finish_topup_refund(
        self,
        *,
        topup_id: str,
        result: str,
        refund_id: str | None = None,
        error: str | None = None,
        retry_after_s: int = 60,
    ) -> bool:
        """Record Stripe's answer: 'succeeded', 'failed' (for good) or 'retry' (owed again)."""
        assert result in ("succeeded", "failed", "retry"), result
        return bool(
            self._scalar(
                "SELECT sp_finish_topup_refund(:topup_id, :result, :refund_id, :error, :retry)",
                topup_id=topup_id,
                result=result,
                refund_id=refund_id,
                error=None if error is None else error[:500],
                retry=retry_after_s,
            )
        )

    def refunds_owed(self) -> int:
        """How many full refunds are still owed (not yet accepted by Stripe)."""
        return int(self._scalar("SELECT count(*) FROM topup_refunds WHERE status = 'owed'"))

    def topup_refund(self, topup_id: str) -> dict[str, object] | None:
        """The refund row of a top-up (status, attempts, refund_id, last_error), if any."""
        return self._select_one(
            dict,
            "SELECT topup_id, session_id, payment_intent_id, amount_cents, status, attempts, "
            "refund_id, last_error, idempotency_key FROM topup_refunds WHERE topup_id = :t",
            t=topup_id,
        )

    def cleanup_topups(self, *, retention_days: int = TOPUP_RETENTION_DAYS) -> dict[str, int]:
        """Expire unpaid top-ups past expires_at; delete old expired/failed ones (no money)."""
        document = self._scalar("SELECT sp_cleanup_topups(:days)", days=retention_days)
        return {"expired": int(document["expired"]), "deleted": int(document["deleted"])}

    # --- maintenance and monitoring --------------------------------------------------------------

    def check(self) -> list[str]:
        """Every violation of the ledger's invariants, human-readable; empty means all is well.

        ledger_check() (transactions, postings, card balances, requests, Stripe) and, from
        revision 0005, ledger_check_accounts() (sales and deposit accounts below zero, the
        deposit account's cached balance).
        """

        def work(connection: Connection) -> list[str]:
            lines = [str(line) for line in connection.execute(text(CHECK_SQL)).scalars()]
            # A database rolled back below revision 0005 is checked with what it has.
            if connection.execute(text(CHECK_ACCOUNTS_EXISTS_SQL)).scalar_one():
                lines += [
                    str(line) for line in connection.execute(text(CHECK_ACCOUNTS_SQL)).scalars()
                ]
            return lines

        return self._transaction(work)

    def cleanup_expired_idempotency_keys(self) -> int:
        return int(self._scalar("SELECT cleanup_expired_idempotency_keys()"))

    def cleanup_expired_dead_letters(self) -> int:
        """Delete dead letters (and their per-minute counters) older than 30 days."""
        return int(self._scalar("SELECT cleanup_expired_dead_letters()"))

    def deposit_balance_cents(self) -> int:
        """What the deposit account 'deposit:cups' holds: cup deposits not yet returned."""
        return int(
            self._scalar(
                "SELECT d.balance_cents FROM deposit_balances d"
                " JOIN accounts a ON a.account_id = d.account_id WHERE a.name = 'deposit:cups'"
            )
        )

    def processing_times(self) -> list[dict[str, object]]:
        return self._select(SEED_PROCESSING_TIMES_SQL)

    def error_rates(self) -> list[dict[str, object]]:
        return self._select(SEED_ERROR_RATES_SQL)

    def idempotency_usage(self) -> list[dict[str, object]]:
        return self._select(SEED_IDEMPOTENCY_USAGE_SQL)

    def nfc_scan_activity(self) -> list[dict[str, object]]:
        return self._select(SEED_NFC_SCAN_ACTIVITY_SQL)

    def transaction_log(self) -> list[dict[str, object]]:
        """The seed's "Monitor transaction log" query: the 10 latest audit rows."""
        return self._select(SEED_TRANSACTION_LOG_SQL)

    def sales_report(self) -> dict[str, object]:
        """Per bar: orders and sales (sales lines only: cup deposits and returns are not sales;
        voided orders not at all); per checkpoint: cash and card taken; Stripe totals; the cup
        deposits held."""

        def work(connection: Connection) -> dict[str, object]:
            bars = _rows(
                connection,
                """
                SELECT o.kiosk_id, count(*) AS orders,
                       coalesce(sum(l.sales_cents), 0)::bigint AS sales_cents
                  FROM bar_orders o
                  LEFT JOIN LATERAL (
                       SELECT sum(i.line_total_cents) FILTER (
                                  WHERE NOT i.is_deposit AND NOT i.is_return) AS sales_cents
                         FROM bar_order_items i WHERE i.order_id = o.order_id) l ON true
                 -- (revision 0016) net of voids: a voided order is no sale
                 WHERE NOT EXISTS (SELECT 1 FROM voids v WHERE v.order_id = o.order_id)
                 GROUP BY o.kiosk_id ORDER BY o.kiosk_id
                """,
            )
            deposits = _rows(
                connection,
                """
                SELECT d.balance_cents,
                       coalesce(sum(i.line_total_cents)
                                FILTER (WHERE i.is_deposit AND NOT i.is_return), 0)::bigint
                           AS deposits_cents,
                       coalesce(-sum(i.line_total_cents) FILTER (WHERE i.is_return), 0)::bigint
                           AS returns_cents
                  FROM deposit_balances d
                  JOIN accounts a ON a.account_id = d.account_id AND a.name = 'deposit:cups'
                  LEFT JOIN bar_order_items i ON i.is_deposit OR i.is_return
                 GROUP BY d.balance_cents
                """,
            )
            checkpoints = _rows(
                connection,
                """
                SELECT checkpoint_id,
                       coalesce(sum(amount_cents) FILTER (WHERE payment_method = 'cash'), 0)::bigint
                           AS cash_cents,
                       coalesce(sum(amount_cents) FILTER (WHERE payment_method = 'card'), 0)::bigint
                           AS card_cents,
                       count(*) AS count
                  FROM recharges WHERE payment_method IN ('cash', 'card')
                 GROUP BY checkpoint_id ORDER BY checkpoint_id
                """,
            )
            stripe = _rows(
                connection,
                """
                SELECT coalesce(sum(credited_cents), 0)::bigint AS credited_cents,
                       coalesce(sum(refunded_cents), 0)::bigint AS refunded_cents,
                       coalesce(sum(shortfall_cents), 0)::bigint AS shortfall_cents,
                       count(*) FILTER (WHERE status = 'credited') AS credited_count,
                       count(*) FILTER (
                           WHERE status IN ('declined', 'anomaly')
                             AND NOT EXISTS (SELECT 1 FROM topup_refunds r
                                              WHERE r.topup_id = topups.topup_id
                                                AND r.status = 'succeeded'))
                           AS to_refund_count
                  FROM topups
                """,
            )[0]
            return {
                "bars": bars,
                "checkpoints": checkpoints,
                "stripe": stripe,
                "deposits": deposits[0] if deposits else None,
            }

        return self._transaction(work)
