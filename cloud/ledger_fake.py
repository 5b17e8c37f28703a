"""An in-memory ledger that decides like the stored procedures: for tests and benchmarks.

`FakeLedger` implements the consumer's port (`cloud.ports.RequestLedger`: requests in batches,
rejections, dead letters, scans, kiosk statuses, the kiosk directory) and the card port
(`cloud.ports.CardLedger`), plus the few calls a test needs to set the scene and look at it
(`add_kiosk`, `disable_kiosk`, `kiosk_overview`, `deposit_balance_cents`, `nfc_scan_activity`)
with the real `cloud.ledger.Ledger`'s names and signatures.

It decides what `ledger_process_requests` and its neighbours in cloud/migrations decide, in the
same order: idempotent by request id (the same payload hash gets the stored outcome, replayed;
another payload IDEMPOTENCY_CONFLICT, nothing stored), a repeated request id inside a batch is a
replay of its first occurrence, (1.1) PRICE_MISMATCH for a kiosk's bar order that does not match
the menu of the config it cites (revision 0011), the first top-up opens a card, then CARD_NOT_FOUND,
CARD_BLOCKED, RETURN_LIMIT_EXCEEDED (per order, then against the cup deposits held),
INSUFFICIENT_FUNDS, BALANCE_LIMIT_EXCEEDED; seq tracking per kiosk; dead letters bounded per
kiosk per minute. tests/contract/ runs one set of behaviours against this and against the real
ledger on PostgreSQL, so the two cannot drift apart.

It issues kiosk configs like sp_issue_kiosk_config (`issue_kiosk_config`, `latest_config`,
`unpublished_configs`, `mark_config_published`: the part of `cloud.ports.ConfigLedger` the price
check needs); it keeps no deny-lists.

What it leaves out: the double-entry accounts and postings (a card's balance is a number), the
audit and idempotency-cache tables, Stripe, the deny-list, and concurrency between processes
(one lock makes every call atomic). A call that the procedures refuse as a caller's bug (a top-up
above the cap, a malformed request) raises `ValueError` here and changes nothing, as the
rolled-back transaction does there.

It takes the record types and limits from `cloud.ledger` (one definition each), so importing it
loads SQLAlchemy, but nothing here opens a connection.
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from cloud.ledger_records import (
    BATCH_REQUESTS_MAX,
    CHECKPOINT_ID_LENGTH_MAX,
    DEAD_LETTERS_PER_KIOSK_MINUTE_MAX,
    KIOSK_ROLES,
    MISSING_SEQ_RANGES_MAX,
    REJECTION_CODES,
    SHA256_HEX_LENGTH,
    SOURCES,
    UNCHANGED,
    CardRecord,
    DeadLetterLike,
    IssuedConfig,
    KioskRecord,
    LedgerRequest,
    Outcome,
    Unchanged,
    outcome_from_document,
)
from cloud.limits import LEDGER_FAKE_RECORDS_KEPT_MAX, SUN_COUNTER_WINDOW
from protocol.errors import ErrorCode, Status
from protocol.keys import load_public_key_b64
from protocol.limits import (
    BALANCE_CENTS_MAX_DEFAULT,
    KIOSK_ID_PATTERN,
    KIOSK_IDS_RESERVED,
    MENU_GRACE_S_DEFAULT,
    ORDER_TOTAL_CENTS_MAX,
    RESULT_MESSAGE_LENGTH_MAX,
    RETURN_CENTS_MAX_DEFAULT,
    TEXT_FORBIDDEN_PATTERN,
    TOPUP_CENTS_MAX_DEFAULT,
    VOID_WINDOW_S_DEFAULT,
)
from protocol.models import (
    BarOrder,
    CardSwap,
    CheckpointRecharge,
    KioskConfig,
    KioskStatus,
    Menu,
    OfflinePolicy,
    ScanRecord,
    Void,
    config_to_dict,
)

# The procedures' texts (ledger_process_requests, sp_record_rejection), word for word.
DECLINE_MESSAGES: Final = {
    ErrorCode.CARD_NOT_FOUND: "Unknown card: top it up first",
    ErrorCode.CARD_BLOCKED: "Card blocked: please see the info desk",
    ErrorCode.INSUFFICIENT_FUNDS: "Insufficient funds",
    ErrorCode.BALANCE_LIMIT_EXCEEDED: "Balance limit exceeded",
}
APPROVED_MESSAGES: Final = {"bar_order": "Paid", "checkpoint_recharge": "Topped up"}
CONFLICT_MESSAGE: Final = "Request id already used for a different request"
RETURNS_OVER_LIMIT_MESSAGE: Final = "Returns of {returns} exceed the limit of {limit} per order"
RETURNS_OVER_DEPOSITS_MESSAGE: Final = (
    "More cups returned than deposits were charged: see a supervisor"
)
# Revision 0013's texts (ledger_sun_message), word for word, by protocol.sun.SunFailure value.
SUN_MESSAGES: Final = {
    reason: f"Wristband not genuine: see the info desk ({detail})"
    for reason, detail in (
        ("missing", "no SUN message"),
        ("malformed", "malformed SUN message"),
        ("not_ours", "not a wristband of this festival"),
        ("wrong_uid", "SUN message of another wristband"),
        ("bad_mac", "SUN message does not verify"),
        ("stale_counter", "SUN message already used"),
    )
}
SUN_FAILURES_FROM_CONSUMER: Final = frozenset(SUN_MESSAGES) - {"stale_counter"}
# Revision 0011's texts (ledger_price_problems, ledger_menu_problem), word for word.
PRICE_NO_VERSION_MESSAGE: Final = (
    "Price mismatch: this kiosk sells from a menu the cloud sent it, and the order cites no"
    " config_version"
)
PRICE_NEVER_SENT_MESSAGE: Final = (
    "Price mismatch: config version {version} was never sent to this kiosk"
)
PRICE_SUPERSEDED_MESSAGE: Final = (
    "Price mismatch: config version {version} was replaced more than {grace_s} s before the"
    " order was made"
)
PRICE_NO_SKU_MESSAGE: Final = (
    "Price mismatch: line {line} has no sku, and config version {version} has a menu"
)
PRICE_UNKNOWN_SKU_MESSAGE: Final = (
    "Price mismatch: line {line}: sku '{sku}' is not on the menu of config version {version}"
)
PRICE_OTHER_PRICE_MESSAGE: Final = (
    "Price mismatch: line {line}: sku '{sku}' costs {menu_price} on the menu of config version"
    " {version}, not {price}"
)
PRICE_FLAGS_MESSAGE: Final = (
    "Price mismatch: line {line}: sku '{sku}' is_deposit/is_return differ from the menu of"
    " config version {version}"
)
# Revision 0013's texts (ledger_process_requests, offline sales), word for word.
OFFLINE_APPROVED_MESSAGE: Final = "Paid (offline sale)"
# Revision 0021's: an offline sale whose SUN failed, approved and charged to the loss account
# (followed by the SUN message of its reason).
OFFLINE_LOSS_MESSAGE: Final = "Paid (offline sale) by the festival's loss account: {sun}"
VOID_LOSS_MESSAGE: Final = "Not voided: the order was charged to the festival's loss account"
OFFLINE_NO_VERSION_MESSAGE: Final = "Offline sale refused: it cites no config_version"
OFFLINE_UNPUBLISHED_MESSAGE: Final = (
    "Offline sale refused: config version {version} was never published to this kiosk"
)
OFFLINE_NO_POLICY_MESSAGE: Final = (
    "Offline sale refused: config version {version} allows no offline sales"
)
OFFLINE_OVER_SALE_MESSAGE: Final = (
    "Offline sale refused: {total} is over the offline limit of {limit} per sale"
)
OFFLINE_BOUND_MESSAGE: Final = (
    "Offline sale refused: this kiosk's offline sales created {created} of debts within 24"
    " hours, more than twice its offline limit of {limit}"
)
# Revision 0016's texts (ledger_decide_void, ledger_decide_card_swap), word for word.
VOID_APPROVED_MESSAGE: Final = "Voided"
VOID_UNKNOWN_MESSAGE: Final = "Not voided: no approved order of this kiosk has that request id"
VOID_OTHER_CARD_MESSAGE: Final = "Not voided: the order was paid with another wristband"
VOID_AGAIN_MESSAGE: Final = "Not voided: the order was voided already"
VOID_TOO_OLD_MESSAGE: Final = "Not voided: the order is older than {minutes} minutes"
VOID_RETURNS_MESSAGE: Final = "Not voided: an order of returns only cannot be voided"
VOID_DEPOSITS_MESSAGE: Final = "Not voided: its cup deposits were returned already"
SWAP_APPROVED_MESSAGE: Final = "Wristband replaced"
SWAP_UNKNOWN_MESSAGE: Final = "Unknown old wristband: nothing to move"
SWAP_OLD_BLOCKED_MESSAGE: Final = "Old wristband cannot be replaced: {reason}"
SWAP_NOT_PRESENTED_MESSAGE: Final = "Old wristband not presented: block it as lost first"
SWAP_NEW_BLOCKED_MESSAGE: Final = "New wristband blocked: use another one"
# ledger_blocked_by_the_system: reasons the system gives a card (not swappable).
SYSTEM_BLOCK_REASON_PATTERN: Final = re.compile(
    "(replaced by|payment disputed|payout|cashed out|refund shortfall)", re.IGNORECASE
)
# The kiosk's bound counts the debts its offline sales created within this window.
OFFLINE_BOUND_WINDOW_MS: Final = 24 * 3_600_000
# A kiosk's seq is tracked when it is 1 .. the largest bigint but one (ledger_track_seqs).
_SEQ_TRACKED_MAX: Final = 2**63 - 2
# kiosks.config_version is an integer column: a larger cited version counts as none.
_CONFIG_VERSION_STORED_MAX: Final = 2**31 - 1
SCAN_ACTIVITY_WINDOW_MS: Final = 3_600_000  # the seed's "NFC scan activity": the last hour
MINUTE_MS: Final = 60_000


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


def _uuid7(now_ms: int) -> str:
    """A time-ordered UUID like ledger_uuid7(): 48 bits of milliseconds, then random bits."""
    raw = bytearray(uuid.uuid4().bytes)
    raw[0:6] = now_ms.to_bytes(6, "big")
    raw[6] = (raw[6] & 0x0F) | 0x70
    return str(uuid.UUID(bytes=bytes(raw)))


def _amount_text(cents: int) -> str:
    """'12.50' for 1250, as ledger_amount_text() writes amounts in the kiosk's texts."""
    sign = "-" if cents < 0 else ""
    return f"{sign}{abs(cents) // 100}.{abs(cents) % 100:02d}"


def _iso(at_ms: int | None) -> str | None:
    return None if at_ms is None else datetime.fromtimestamp(at_ms / 1000, UTC).isoformat()


@dataclass
class _Kiosk:
    kiosk_id: str
    public_key_b64: str
    role: str
    checkpoint_id: str
    enabled: bool = True
    state: str = "unknown"
    state_at_ms: int | None = None
    firmware: str | None = None
    last_seen_at_ms: int | None = None
    seen_seqs: set[int] = field(default_factory=set)
    # (1.1) What is assigned (kiosks.menu, .offline_policy), every config issued (by version,
    # from 1), and the version its latest request cited (kiosks.config_version).
    menu: Menu | None = None
    offline: OfflinePolicy | None = None
    configs: list[_Config] = field(default_factory=list)
    config_version: int | None = None

    def record(self) -> KioskRecord:
        fields = (self.kiosk_id, self.public_key_b64, self.role, self.enabled)
        return KioskRecord(*fields, checkpoint_id=self.checkpoint_id)

    def saw(self, seq: int | None, at_ms: int) -> None:
        if seq is None or not 1 <= seq <= _SEQ_TRACKED_MAX:
            return
        self.seen_seqs.add(seq)
        if self.last_seen_at_ms is None or self.last_seen_at_ms < at_ms:
            self.last_seen_at_ms = at_ms

    def missing_seq_ranges(self) -> list[list[int]]:
        """The gaps in 1 .. the highest seq seen, as [first, last] pairs, lowest first."""
        gaps: list[list[int]] = []
        expected = 1
        for seq in sorted(self.seen_seqs):
            if seq > expected:
                gaps.append([expected, seq - 1])
                if len(gaps) >= MISSING_SEQ_RANGES_MAX:
                    break
            expected = seq + 1
        return gaps


@dataclass
class _Config:
    """One config issued to a kiosk (a kiosk_configs row)."""

    config: KioskConfig
    published: bool = False


@dataclass(frozen=True, slots=True)
class _Order:
    """(1.1) An approved bar order, as a void reads it (bar_orders, bar_order_items)."""

    kiosk_id: str
    card_uid: str
    total_cents: int
    deposit_delta: int | None
    created_at_ms: int
    # (0021) an offline sale charged to the festival's loss account (it cannot be voided)
    loss: bool = False


@dataclass(frozen=True, slots=True)
class _Claim:
    """A processed request id: the hash of its payload and its outcome (a procedure's jsonb)."""

    payload_sha256: str
    document: Mapping[str, Any]


class FakeLedger:
    """The ledger in memory; every public call is atomic (one lock), like a transaction."""

    def __init__(
        self,
        *,
        balances: Mapping[str, int] | None = None,
        max_balance_cents: int = BALANCE_CENTS_MAX_DEFAULT,
        max_topup_cents: int = TOPUP_CENTS_MAX_DEFAULT,
        return_cents_max: int = RETURN_CENTS_MAX_DEFAULT,
        deposits_held_cents: int = 0,
        clock_ms: Callable[[], int] = _wall_ms,
        menu_grace_s: int = MENU_GRACE_S_DEFAULT,
        currency: str = "EUR",
        void_window_s: int = VOID_WINDOW_S_DEFAULT,
    ) -> None:
        """`balances`: cards that exist already (uid -> cents), as if topped up before;
        `deposits_held_cents`: cup deposits charged before and not yet returned."""
        assert max_balance_cents >= 0 and max_topup_cents >= 1
        assert 0 <= return_cents_max <= ORDER_TOTAL_CENTS_MAX
        assert deposits_held_cents >= 0 and menu_grace_s >= 0
        self.menu_grace_s = menu_grace_s
        self.void_window_s = void_window_s
        self.currency = currency.upper()
        self.max_balance_cents = max_balance_cents
        self.max_topup_cents = max_topup_cents
        self.return_cents_max = return_cents_max
        # Public and mutable: a test may set a card's balance as it likes (no cap applies).
        self.balances: dict[str, int] = dict(balances or {})
        self._blocked: dict[str, str] = {}  # card uid -> reason
        # (0013) what cards owe (only cards with a debt are here; never with a balance > 0),
        # and every approved offline sale: (kiosk id, applied at, total, shortfall, loss)
        self.debts: dict[str, int] = {}
        self.offline_sales: list[tuple[str, int, int, int, int]] = []
        # (0021) what the festival's loss account paid for offline sales whose SUN failed
        self.offline_loss_cents = 0
        self._deposits_held_cents = deposits_held_cents
        self._claims: dict[str, _Claim] = {}
        self._kiosks: dict[str, _Kiosk] = {}
        self._dead_letter_counts: dict[str | None, list[int]] = {}  # kiosk -> [received, stored]
        self._dead_letter_minute: int | None = None
        # The letters stored (not those only counted), as given.
        self.dead_letters: deque[DeadLetterLike] = deque(maxlen=LEDGER_FAKE_RECORDS_KEPT_MAX)
        self.scans: deque[ScanRecord] = deque(maxlen=LEDGER_FAKE_RECORDS_KEPT_MAX)
        self._clock_ms = clock_ms
        self._lock = threading.RLock()
        # (1.1) per wristband, the SUN counters accepted (card_sun_counters: the highest and
        # those within SUN_COUNTER_WINDOW below it), and the failures by reason
        self._sun_counters: dict[str, set[int]] = {}
        self.sun_failures: dict[str, int] = {}
        # (1.1, revision 0016) every approved bar order by request id, the orders voided, and
        # each replaced card's replacement (cards.replaced_by)
        self._orders: dict[str, _Order] = {}
        self._voided: set[str] = set()
        self.replaced_by: dict[str, str] = {}

    # --- requests --------------------------------------------------------------------------------

    def apply(self, item: LedgerRequest) -> Outcome:
        return self.apply_batch([item])[0]

    def apply_batch(self, items: Sequence[LedgerRequest]) -> list[Outcome]:
        if not items:
            return []
        assert len(items) <= BATCH_REQUESTS_MAX, "split larger batches"
        for item in items:  # all or nothing: a bad request refuses the whole batch
            self._check(item)
        with self._lock:
            now_ms = self._clock_ms()
            documents: list[Mapping[str, Any]] = []
            for item in items:
                request = item.request
                claim = self._claims.get(request.request_id)
                if claim is None and isinstance(request, CardSwap | Void):
                    document = self._counter(item, now_ms)
                    self._claims[request.request_id] = _Claim(item.payload_sha256.lower(), document)
                    if item.source == "mqtt":
                        self._saw(request.kiosk_id, request.seq, now_ms)
                elif claim is None:
                    assert isinstance(request, BarOrder | CheckpointRecharge)
                    problem = self._price_problem(item)
                    sun_problem = self._sun_problem(item)  # accepts a fresh counter
                    offline_problem = (
                        None if problem is not None else self._offline_problem(item, now_ms)
                    )
                    if offline_problem is not None:
                        document = {
                            **_rejected(request.request_id, request.card_uid, now_ms),
                            "error_code": ErrorCode.OFFLINE_LIMIT_EXCEEDED.value,
                            "message": offline_problem,
                            "debt_cents": None,
                        }
                    elif (
                        problem is None
                        and sun_problem is not None
                        and isinstance(request, BarOrder)
                        and request.offline
                    ):
                        document = self._charged_to_loss(request, sun_problem, now_ms)
                    elif problem is None and sun_problem is not None:
                        document = self._not_genuine(request, sun_problem, now_ms)
                    elif problem is None:
                        document = self._decide(request, now_ms)
                    else:
                        document = {
                            **_rejected(request.request_id, request.card_uid, now_ms),
                            "error_code": ErrorCode.PRICE_MISMATCH.value,
                            "message": problem,
                        }
                    self._claims[request.request_id] = _Claim(item.payload_sha256.lower(), document)
                    if item.source == "mqtt":
                        self._saw(request.kiosk_id, request.seq, now_ms)
                        self._runs(request.kiosk_id, request.config_version)
                elif claim.payload_sha256 == item.payload_sha256.lower():
                    document = {**claim.document, "replayed": True}
                else:
                    document = _conflict(request.request_id, request.card_uid, now_ms)
                documents.append(document)
            return [outcome_from_document(document) for document in documents]

    def staff_pin_hashes(self, staff_ids: Iterable[str]) -> dict[str, str]:
        """No staff members in memory (staff logins are the real ledger's: revision 0024)."""
        return {}

    def _sun_problem(self, item: LedgerRequest) -> str | None:
        """(1.1) As revision 0013: the consumer's failure, or the counter rule (online: above
        every accepted counter; offline: not accepted before, within the window). A fresh
        counter is accepted here, whatever the outcome."""
        reason = item.sun_failure
        if reason is None and item.sun_counter is not None:
            counter = item.sun_counter
            accepted = self._sun_counters.setdefault(item.request.card_uid, set())
            highest = max(accepted, default=-1)
            if getattr(item.request, "offline", False):
                fresh = counter > highest - SUN_COUNTER_WINDOW and counter not in accepted
            else:
                fresh = counter > highest
            if fresh:
                accepted.add(counter)
                highest = max(highest, counter)
                accepted.difference_update(
                    {c for c in accepted if c <= highest - SUN_COUNTER_WINDOW}
                )
            else:
                reason = "stale_counter"
        if reason is not None:
            self.sun_failures[reason] = self.sun_failures.get(reason, 0) + 1
        return reason

    def _not_genuine(
        self, request: BarOrder | CheckpointRecharge, reason: str, now_ms: int
    ) -> dict[str, Any]:
        """CARD_NOT_GENUINE: declined, the card's balance in both (null on an unknown card)."""
        balance = self.balances.get(request.card_uid)
        return {
            **_rejected(request.request_id, request.card_uid, now_ms),
            "status": Status.DECLINED.value,
            "error_code": ErrorCode.CARD_NOT_GENUINE.value,
            "message": SUN_MESSAGES[reason],
            "previous_balance_cents": balance,
            "new_balance_cents": balance,
            "debt_cents": None if balance is None else self.debts.get(request.card_uid, 0),
        }

    def _charged_to_loss(self, request: BarOrder, reason: str, now_ms: int) -> dict[str, Any]:
        """(0021) An offline sale whose SUN failed: approved, the whole total on the festival's
        loss account, the card untouched; an unknown card stays unknown (0, 0, debt 0)."""
        card_uid = request.card_uid
        while card_uid in self.replaced_by:  # (0016) a late sale follows the replacement
            card_uid = self.replaced_by[card_uid]
        balance = self.balances.get(card_uid, 0)
        debt = self.debts.get(card_uid, 0)
        deposit_delta, _returns = _deposit_lines(request)
        if deposit_delta is not None:
            self._deposits_held_cents += deposit_delta
        self.offline_sales.append(
            (request.kiosk_id, now_ms, request.total_cents, 0, request.total_cents)
        )
        self.offline_loss_cents += request.total_cents
        self._orders[request.request_id] = _Order(
            request.kiosk_id,
            card_uid,
            request.total_cents,
            deposit_delta,
            request.created_at_ms,
            loss=True,
        )
        return {
            "request_id": request.request_id,
            "status": Status.APPROVED.value,
            "error_code": None,
            "message": OFFLINE_LOSS_MESSAGE.format(sun=SUN_MESSAGES[reason]),
            "transaction_id": _uuid7(now_ms),
            "previous_balance_cents": balance,
            "new_balance_cents": balance,
            "debt_cents": debt,
            "replayed": False,
            "processed_at_ms": now_ms,
            "order_id": _uuid7(now_ms),
            "card_uid": card_uid,
        }

    def accept_sun_counter(self, card_uid: str, counter: int) -> bool:
        """As sp_accept_sun_counter (a portal login by GET /t): the online rule."""
        with self._lock:
            accepted = self._sun_counters.setdefault(card_uid, set())
            if counter <= max(accepted, default=-1):
                self.sun_failures["stale_counter"] = self.sun_failures.get("stale_counter", 0) + 1
                return False
            accepted.add(counter)
            accepted.difference_update({c for c in accepted if c <= counter - SUN_COUNTER_WINDOW})
            return True

    def _check(self, item: LedgerRequest) -> None:
        """What request_document asserts and the procedures refuse as a caller's bug."""
        request = item.request
        if item.sun_failure is not None and (
            item.sun_failure not in SUN_FAILURES_FROM_CONSUMER or item.sun_counter is not None
        ):
            raise ValueError(f"request {request.request_id}: sun_failure is not a consumer's")
        assert item.source in SOURCES, item.source
        assert len(item.payload_sha256) == SHA256_HEX_LENGTH, "payload_sha256 must be hex SHA-256"
        int(item.payload_sha256, 16)  # ValueError when it is not hex
        if isinstance(request, BarOrder):
            assert request.total_cents == sum(i.signed_cents for i in request.items), "total"
        elif isinstance(request, CardSwap | Void):
            if item.source != "mqtt":
                raise ValueError(f"{request.type} {request.request_id} must come from a kiosk")
            if item.old_sun_failure is not None and (
                item.old_sun_failure not in SUN_FAILURES_FROM_CONSUMER
                or item.old_sun_counter is not None
            ):
                raise ValueError(
                    f"request {request.request_id}: old_sun_failure is not a consumer's"
                )
        elif not isinstance(request, CheckpointRecharge):
            raise ValueError(f"{request.type} is not modelled by the fake ledger")
        elif not (
            1 <= request.amount_cents <= self.max_topup_cents
            and request.payment_method in ("cash", "card")
        ):
            raise ValueError(
                f"checkpoint recharge {request.request_id} needs amount_cents "
                f"1..{self.max_topup_cents} and payment_method cash|card"
            )

    def _price_problem(self, item: LedgerRequest) -> str | None:
        """Why a kiosk's bar order does not match the menu of the config it cites, as
        ledger_price_problems says it (None: it matches, or it is not checked)."""
        order = item.request
        if not isinstance(order, BarOrder) or item.source != "mqtt":
            return None
        kiosk = self._kiosks.get(order.kiosk_id)
        configs = [] if kiosk is None else kiosk.configs
        version = order.config_version
        if version is None:
            return PRICE_NO_VERSION_MESSAGE if kiosk is not None and kiosk.menu else None
        if not 1 <= version <= len(configs):
            return PRICE_NEVER_SENT_MESSAGE.format(version=version)
        if version < len(configs):
            replaced_at_ms = configs[version].config.issued_at_ms
            if order.created_at_ms - replaced_at_ms > self.menu_grace_s * 1000:
                return PRICE_SUPERSEDED_MESSAGE.format(version=version, grace_s=self.menu_grace_s)
        menu = configs[version - 1].config.menu
        if menu is None:
            return None
        for line_no, line in enumerate(order.items, start=1):
            sku = line.sku
            if sku is None:
                return PRICE_NO_SKU_MESSAGE.format(line=line_no, version=version)
            listed = menu.item(sku)
            if listed is None:
                return PRICE_UNKNOWN_SKU_MESSAGE.format(line=line_no, sku=sku, version=version)
            if listed.unit_price_cents != line.unit_price_cents:
                return PRICE_OTHER_PRICE_MESSAGE.format(
                    line=line_no,
                    sku=sku,
                    menu_price=_amount_text(listed.unit_price_cents),
                    version=version,
                    price=_amount_text(line.unit_price_cents),
                )
            if (listed.is_deposit, listed.is_return) != (line.is_deposit, line.is_return):
                return PRICE_FLAGS_MESSAGE.format(line=line_no, sku=sku, version=version)
        return None

    def _offline_problem(self, item: LedgerRequest, now_ms: int) -> str | None:
        """Why an offline sale is OFFLINE_LIMIT_EXCEEDED, as revision 0013 says it (None: it is
        allowed, or it is not an offline sale)."""
        order = item.request
        if not isinstance(order, BarOrder) or not order.offline:
            return None
        version = order.config_version
        if version is None:
            return OFFLINE_NO_VERSION_MESSAGE
        kiosk = self._kiosks.get(order.kiosk_id)
        configs = [] if kiosk is None else kiosk.configs
        if not 1 <= version <= len(configs) or not configs[version - 1].published:
            return OFFLINE_UNPUBLISHED_MESSAGE.format(version=version)
        policy = configs[version - 1].config.offline
        if policy is None:
            return OFFLINE_NO_POLICY_MESSAGE.format(version=version)
        if order.total_cents > policy.sale_max_cents:
            return OFFLINE_OVER_SALE_MESSAGE.format(
                total=_amount_text(order.total_cents), limit=_amount_text(policy.sale_max_cents)
            )
        created = sum(
            shortfall + loss  # (0021) debts and losses
            for kiosk_id, at_ms, _total, shortfall, loss in self.offline_sales
            if kiosk_id == order.kiosk_id and at_ms > now_ms - OFFLINE_BOUND_WINDOW_MS
        )
        if created > 2 * policy.kiosk_max_cents:
            return OFFLINE_BOUND_MESSAGE.format(
                created=_amount_text(created), limit=_amount_text(policy.kiosk_max_cents)
            )
        return None

    def _runs(self, kiosk_id: str, config_version: int | None) -> None:
        """kiosks.config_version: what the kiosk's latest request cited."""
        kiosk = self._kiosks.get(kiosk_id)
        if kiosk is not None:
            fits = config_version is not None and config_version <= _CONFIG_VERSION_STORED_MAX
            kiosk.config_version = config_version if fits else None

    def _decide(self, request: BarOrder | CheckpointRecharge, now_ms: int) -> dict[str, Any]:
        """One new request, in ledger_process_requests's order of rules."""
        card_uid = request.card_uid
        offline = isinstance(request, BarOrder) and request.offline
        if offline:  # (0016) a late offline sale on a replaced band follows its replacement
            while card_uid in self.replaced_by:
                card_uid = self.replaced_by[card_uid]
        if isinstance(request, BarOrder):
            delta = -request.total_cents
            deposit_delta, returns_cents = _deposit_lines(request)
            if offline:  # an offline sale the config allows happened: it opens an unknown card
                self.balances.setdefault(card_uid, 0)
        else:
            delta = request.amount_cents
            deposit_delta, returns_cents = None, 0
            self.balances.setdefault(card_uid, 0)  # the first top-up activates a wristband
        balance = self.balances.get(card_uid)
        debt = self.debts.get(card_uid, 0)
        # The rules work on the net position (balance - debt), as revision 0013 does.
        net = None if balance is None else balance - debt
        code: ErrorCode | None = None
        message: str | None = None
        if offline:
            pass  # the card rules are skipped
        elif net is None:
            code = ErrorCode.CARD_NOT_FOUND
        elif card_uid in self._blocked:
            code = ErrorCode.CARD_BLOCKED
        elif deposit_delta is not None and returns_cents > self.return_cents_max:
            code = ErrorCode.RETURN_LIMIT_EXCEEDED
            message = RETURNS_OVER_LIMIT_MESSAGE.format(
                returns=_amount_text(returns_cents), limit=_amount_text(self.return_cents_max)
            )
        elif deposit_delta is not None and self._deposits_held_cents + deposit_delta < 0:
            code = ErrorCode.RETURN_LIMIT_EXCEEDED
            message = RETURNS_OVER_DEPOSITS_MESSAGE
        elif delta < 0 and net + delta < 0:
            code = ErrorCode.INSUFFICIENT_FUNDS
        elif delta > 0 and net + delta > self.max_balance_cents:
            code = ErrorCode.BALANCE_LIMIT_EXCEEDED
        new_balance = balance
        transaction_id = order_id = None
        if code is None:
            assert net is not None
            new_net = net + delta
            new_balance = max(new_net, 0)
            self.balances[card_uid] = new_balance
            if new_net < 0:
                self.debts[card_uid] = -new_net
            else:
                self.debts.pop(card_uid, None)
            if offline:
                assert isinstance(request, BarOrder)
                shortfall = max(-new_net, 0) - debt
                self.offline_sales.append(
                    (request.kiosk_id, now_ms, request.total_cents, max(shortfall, 0), 0)
                )
            if deposit_delta is not None:
                self._deposits_held_cents += deposit_delta
            transaction_id = _uuid7(now_ms)
            order_id = _uuid7(now_ms) if isinstance(request, BarOrder) else None
            if isinstance(request, BarOrder):
                self._orders[request.request_id] = _Order(
                    request.kiosk_id,
                    card_uid,
                    request.total_cents,
                    deposit_delta,
                    request.created_at_ms,
                )
        return {
            "request_id": request.request_id,
            "status": (Status.APPROVED if code is None else Status.DECLINED).value,
            "error_code": None if code is None else code.value,
            "message": message
            or (
                (OFFLINE_APPROVED_MESSAGE if offline else APPROVED_MESSAGES[request.type])
                if code is None
                else DECLINE_MESSAGES[code]
            ),
            "transaction_id": transaction_id,
            "previous_balance_cents": balance,
            "new_balance_cents": new_balance,
            "debt_cents": None if new_balance is None else self.debts.get(card_uid, 0),
            "replayed": False,
            "processed_at_ms": now_ms,
            "order_id": order_id,
            "card_uid": card_uid,
        }

    # --- (1.1) void and card swap, as revision 0016 decides them ------------------------------

    def _counter(self, item: LedgerRequest, now_ms: int) -> dict[str, Any]:
        request = item.request
        if isinstance(request, Void):
            target = request.card_uid
            while target in self.replaced_by:
                target = self.replaced_by[target]
            refusal, text, moved = self._void_rule(request, now_ms)
            order = self._orders.get(request.original_request_id)
            if refusal is None:
                assert order is not None
                self._voided.add(request.original_request_id)
                if order.deposit_delta is not None:
                    self._deposits_held_cents -= order.deposit_delta
            return self._move(request, target, refusal, text, moved, now_ms)
        assert isinstance(request, CardSwap)
        new_problem = item.sun_failure
        presented = False
        for card_uid, counter in sorted(
            ((request.card_uid, item.sun_counter), (request.old_card_uid, item.old_sun_counter))
        ):
            if counter is None:
                continue
            fresh = self._accept_online(card_uid, counter)
            if card_uid == request.card_uid and not fresh:
                new_problem = "stale_counter"
            if card_uid == request.old_card_uid and fresh:
                presented = True
        uid_mode = (item.sun_counter, item.sun_failure, item.old_sun_counter) == (None,) * 3 and (
            item.old_sun_failure is None
        )
        old = request.old_card_uid
        old_net = None
        if old in self.balances:
            old_net = self.balances[old] - self.debts.get(old, 0)
        new_net = None
        if request.card_uid in self.balances:
            new_net = self.balances[request.card_uid] - self.debts.get(request.card_uid, 0)
        code: ErrorCode | None = None
        message = SWAP_APPROVED_MESSAGE
        if new_problem is not None:
            code, message = ErrorCode.CARD_NOT_GENUINE, SUN_MESSAGES[new_problem]
        elif old_net is None:
            code, message = ErrorCode.CARD_NOT_FOUND, SWAP_UNKNOWN_MESSAGE
        elif old in self._blocked and (
            old in self.replaced_by or SYSTEM_BLOCK_REASON_PATTERN.search(self._blocked[old])
        ):
            reason = self._blocked[old] or "blocked"
            code = ErrorCode.CARD_BLOCKED
            message = SWAP_OLD_BLOCKED_MESSAGE.format(reason=reason)[:RESULT_MESSAGE_LENGTH_MAX]
        elif old not in self._blocked and not (presented or uid_mode):
            code, message = ErrorCode.CARD_BLOCKED, SWAP_NOT_PRESENTED_MESSAGE
        elif request.card_uid in self._blocked:
            code, message = ErrorCode.CARD_BLOCKED, SWAP_NEW_BLOCKED_MESSAGE
        elif (new_net or 0) + old_net > self.max_balance_cents:
            code = ErrorCode.BALANCE_LIMIT_EXCEEDED
            message = DECLINE_MESSAGES[code]
        delta = 0
        if code is None:
            assert old_net is not None
            delta = old_net
            self.balances.setdefault(request.card_uid, 0)
            self.balances[old] = 0
            self.debts.pop(old, None)
            self._blocked[old] = f"replaced by {request.card_uid}"
            self.replaced_by[old] = request.card_uid
        document = self._move(request, request.card_uid, code, message, delta, now_ms)
        if code is ErrorCode.CARD_NOT_FOUND:
            document.update(previous_balance_cents=None, new_balance_cents=None, debt_cents=None)
        elif document["new_balance_cents"] is None and code is not ErrorCode.CARD_NOT_GENUINE:
            document.update(previous_balance_cents=0, new_balance_cents=0, debt_cents=0)
        return document

    def _void_rule(self, request: Void, now_ms: int) -> tuple[ErrorCode | None, str, int]:
        order = self._orders.get(request.original_request_id)
        refused = ErrorCode.VOID_NOT_ALLOWED
        if order is None or order.kiosk_id != request.kiosk_id:
            return refused, VOID_UNKNOWN_MESSAGE, 0
        if order.card_uid != request.card_uid:
            return refused, VOID_OTHER_CARD_MESSAGE, 0
        if request.original_request_id in self._voided:
            return refused, VOID_AGAIN_MESSAGE, 0
        if order.loss:
            return refused, VOID_LOSS_MESSAGE, 0
        if now_ms - order.created_at_ms > self.void_window_s * 1000:
            minutes = f"{round(self.void_window_s / 60, 1):.1f}"
            return refused, VOID_TOO_OLD_MESSAGE.format(minutes=minutes), 0
        if order.total_cents < 0:
            return refused, VOID_RETURNS_MESSAGE, 0
        deposit = order.deposit_delta or 0
        if deposit > 0 and self._deposits_held_cents - deposit < 0:
            return refused, VOID_DEPOSITS_MESSAGE, 0
        return None, VOID_APPROVED_MESSAGE, order.total_cents

    def _move(
        self,
        request: CardSwap | Void,
        card_uid: str,
        code: ErrorCode | None,
        message: str,
        delta: int,
        now_ms: int,
    ) -> dict[str, Any]:
        """The credited card's net position moves by ``delta`` when approved (a debt first)."""
        balance = self.balances.get(card_uid)
        new_balance = balance
        if code is None:
            assert balance is not None
            net = balance - self.debts.get(card_uid, 0) + delta
            new_balance = max(net, 0)
            self.balances[card_uid] = new_balance
            if net < 0:
                self.debts[card_uid] = -net
            else:
                self.debts.pop(card_uid, None)
        return {
            "request_id": request.request_id,
            "status": (Status.APPROVED if code is None else Status.DECLINED).value,
            "error_code": None if code is None else code.value,
            "message": message,
            "transaction_id": None if code is not None else _uuid7(now_ms),
            "previous_balance_cents": balance,
            "new_balance_cents": new_balance,
            "debt_cents": None if new_balance is None else self.debts.get(card_uid, 0),
            "replayed": False,
            "processed_at_ms": now_ms,
            "order_id": None,
            "card_uid": request.card_uid,
        }

    def _accept_online(self, card_uid: str, counter: int) -> bool:
        accepted = self._sun_counters.setdefault(card_uid, set())
        if counter <= max(accepted, default=-1):
            return False
        accepted.add(counter)
        accepted.difference_update({c for c in accepted if c <= counter - SUN_COUNTER_WINDOW})
        return True

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
        """As sp_record_rejection: stored forever under its request id, replayed for the same
        payload, IDEMPOTENCY_CONFLICT (not stored) for another; its seq counts as seen."""
        assert ErrorCode(error_code) in REJECTION_CODES, error_code
        assert len(payload_sha256) == SHA256_HEX_LENGTH
        assert source in SOURCES
        with self._lock:
            now_ms = self._clock_ms()
            claim = self._claims.get(request_id)
            if claim is None:
                document = {
                    **_rejected(request_id, card_uid, now_ms),
                    "error_code": ErrorCode(error_code).value,
                    "message": message[:RESULT_MESSAGE_LENGTH_MAX],
                }
                self._claims[request_id] = _Claim(payload_sha256.lower(), document)
                if source == "mqtt":
                    self._saw(kiosk_id, seq, now_ms)
                return outcome_from_document(document)
            if claim.payload_sha256 == payload_sha256.lower():
                return outcome_from_document({**claim.document, "replayed": True})
            return outcome_from_document(_conflict(request_id, card_uid, now_ms))

    def record_dead_letters(self, letters: Sequence[DeadLetterLike]) -> list[bool]:
        """As sp_record_dead_letters: at most DEAD_LETTERS_PER_KIOSK_MINUTE_MAX stored per kiosk
        (None: topics without one) per minute; the rest are only counted."""
        with self._lock:
            minute = self._clock_ms() // MINUTE_MS
            if minute != self._dead_letter_minute:  # only this minute's counters matter
                self._dead_letter_counts.clear()
                self._dead_letter_minute = minute
            stored: list[bool] = []
            for letter in letters:
                kiosk_id = letter.kiosk_id
                counts = self._dead_letter_counts.setdefault(kiosk_id, [0, 0])
                counts[0] += 1
                if counts[1] >= DEAD_LETTERS_PER_KIOSK_MINUTE_MAX:
                    stored.append(False)
                    continue
                counts[1] += 1
                self.dead_letters.append(letter)
                stored.append(True)
            return stored

    def record_scans(self, scans: Iterable[ScanRecord]) -> int:
        records = list(scans)
        with self._lock:
            self.scans.extend(records)
        return len(records)

    def nfc_scan_activity(self) -> list[dict[str, object]]:
        """The seed's query: scans per status over the last hour."""
        with self._lock:
            since_ms = self._clock_ms() - SCAN_ACTIVITY_WINDOW_MS
            counts: dict[str, int] = {}
            for scan in self.scans:
                if scan.scanned_at_ms > since_ms:
                    counts[scan.status] = counts.get(scan.status, 0) + 1
        return [{"scan_status": status, "count": count} for status, count in counts.items()]

    def record_kiosk_status(self, status: KioskStatus, *, received_at_ms: int) -> None:
        """As sp_record_kiosk_status: older news than what is known changes nothing."""
        if status.state not in ("online", "offline"):
            raise ValueError("state must be online or offline")
        with self._lock:
            kiosk = self._kiosks.get(status.kiosk_id)
            if kiosk is None or (
                kiosk.state_at_ms is not None and kiosk.state_at_ms > status.at_ms
            ):
                return
            kiosk.state = status.state
            kiosk.state_at_ms = status.at_ms
            kiosk.firmware = status.firmware
            if kiosk.last_seen_at_ms is None or kiosk.last_seen_at_ms < received_at_ms:
                kiosk.last_seen_at_ms = received_at_ms

    # --- kiosks ----------------------------------------------------------------------------------

    def kiosk(self, kiosk_id: str) -> KioskRecord | None:
        with self._lock:
            kiosk = self._kiosks.get(kiosk_id)
            return None if kiosk is None else kiosk.record()

    def kiosks(self) -> list[KioskRecord]:
        with self._lock:
            return [self._kiosks[kiosk_id].record() for kiosk_id in sorted(self._kiosks)]

    def kiosks_named(self, kiosk_ids: Collection[str]) -> list[KioskRecord]:
        with self._lock:
            found = sorted(set(kiosk_ids) & self._kiosks.keys())
            return [self._kiosks[kiosk_id].record() for kiosk_id in found]

    def add_kiosk(
        self, kiosk_id: str, public_key_b64: str, role: str, checkpoint_id: str | None = None
    ) -> KioskRecord:
        """Register (or re-register: new key, role and checkpoint, enabled again) a kiosk;
        ValueError for what Ledger.add_kiosk refuses."""
        problem = _kiosk_problem(kiosk_id, role, checkpoint_id)
        if problem is not None:
            raise ValueError(problem)
        load_public_key_b64(public_key_b64)  # ValueError when it is not a key
        with self._lock:
            kiosk = self._kiosks.get(kiosk_id)
            if kiosk is None:
                kiosk = self._kiosks[kiosk_id] = _Kiosk(
                    kiosk_id, public_key_b64, role, checkpoint_id or kiosk_id
                )
            kiosk.public_key_b64, kiosk.role = public_key_b64, role
            kiosk.checkpoint_id = checkpoint_id or kiosk_id
            kiosk.enabled = True
            return kiosk.record()

    def disable_kiosk(self, kiosk_id: str) -> bool:
        with self._lock:
            kiosk = self._kiosks.get(kiosk_id)
            if kiosk is not None:
                kiosk.enabled = False
            return kiosk is not None

    # --- configs (revision 0010's sp_issue_kiosk_config, in memory) -----------------------------

    def issue_kiosk_config(
        self,
        kiosk_id: str,
        *,
        menu: Menu | Unchanged | None = UNCHANGED,
        offline: OfflinePolicy | Unchanged | None = UNCHANGED,
    ) -> int | None:
        """As Ledger.issue_kiosk_config: change what is assigned and store the next version,
        unsent, issued now (never before the version it supersedes); None for an unknown kiosk."""
        with self._lock:
            kiosk = self._kiosks.get(kiosk_id)
            if kiosk is None:
                return None
            if not isinstance(menu, Unchanged):
                kiosk.menu = menu
            if not isinstance(offline, Unchanged):
                kiosk.offline = offline
            issued_at_ms = self._clock_ms()
            if kiosk.configs:
                issued_at_ms = max(issued_at_ms, kiosk.configs[-1].config.issued_at_ms)
            config = KioskConfig(
                kiosk_id=kiosk_id,
                version=len(kiosk.configs) + 1,
                issued_at_ms=issued_at_ms,
                currency=self.currency,
                menu=kiosk.menu,
                offline=kiosk.offline,
            )
            kiosk.configs.append(_Config(config))
            return config.version

    def latest_config(self, kiosk_id: str) -> IssuedConfig | None:
        with self._lock:
            kiosk = self._kiosks.get(kiosk_id)
            if kiosk is None or not kiosk.configs:
                return None
            return _issued(kiosk.configs[-1])

    def unpublished_configs(self, limit: int = 100) -> list[IssuedConfig]:
        """Of each kiosk, its newest config when it is not yet published (and no newer one
        is), oldest first."""
        with self._lock:
            pending = [
                kiosk.configs[-1]
                for kiosk in self._kiosks.values()
                if kiosk.configs and not kiosk.configs[-1].published
            ]
            pending.sort(key=lambda issued: issued.config.issued_at_ms)
            return [_issued(issued) for issued in pending[:limit]]

    def mark_config_published(self, kiosk_id: str, version: int) -> None:
        with self._lock:
            kiosk = self._kiosks.get(kiosk_id)
            if kiosk is not None and 1 <= version <= len(kiosk.configs):
                kiosk.configs[version - 1].published = True

    def kiosk_overview(self) -> list[dict[str, object]]:
        """Every registered kiosk with its presence and the seq ranges that went missing."""
        with self._lock:
            return [
                {
                    "kiosk_id": kiosk.kiosk_id,
                    "role": kiosk.role,
                    "checkpoint_id": kiosk.checkpoint_id,
                    "enabled": kiosk.enabled,
                    "state": kiosk.state,
                    "last_seen_at": _iso(kiosk.last_seen_at_ms),
                    "last_seq": max(kiosk.seen_seqs) if kiosk.seen_seqs else None,
                    "missing_seq_ranges": kiosk.missing_seq_ranges(),
                }
                for kiosk in (self._kiosks[kiosk_id] for kiosk_id in sorted(self._kiosks))
            ]

    def _saw(self, kiosk_id: str | None, seq: int | None, now_ms: int) -> None:
        kiosk = self._kiosks.get(kiosk_id) if kiosk_id is not None else None
        if kiosk is not None:
            kiosk.saw(seq, now_ms)

    # --- cards -----------------------------------------------------------------------------------

    def card(self, card_uid: str) -> CardRecord | None:
        with self._lock:
            balance = self.balances.get(card_uid)
            if balance is None:
                return None
            status = "blocked" if card_uid in self._blocked else "active"
            return CardRecord(
                card_uid=card_uid,
                balance_cents=balance,
                status=status,
                debt_cents=self.debts.get(card_uid, 0),
            )

    def block_card(self, card_uid: str, reason: str) -> bool:
        with self._lock:
            if card_uid not in self.balances:
                return False
            self._blocked[card_uid] = reason
            return True

    def unblock_card(self, card_uid: str) -> bool:
        with self._lock:
            self._blocked.pop(card_uid, None)
            return card_uid in self.balances

    def deposit_balance_cents(self) -> int:
        """Cup deposits charged and not yet returned (the account 'deposit:cups')."""
        with self._lock:
            return self._deposits_held_cents


def _issued(issued: _Config) -> IssuedConfig:
    config = issued.config
    return IssuedConfig(
        kiosk_id=config.kiosk_id,
        version=config.version,
        document=config_to_dict(config),
        published=issued.published,
    )


def _deposit_lines(order: BarOrder) -> tuple[int | None, int]:
    """What an order moves on the deposit account (None: it has no deposit or return line) and
    what its return lines pay back."""
    lines = [line for line in order.items if line.is_deposit or line.is_return]
    if not lines:
        return None, 0
    deposits = sum(line.quantity * line.unit_price_cents for line in lines if not line.is_return)
    returns = sum(line.quantity * line.unit_price_cents for line in lines if line.is_return)
    return deposits - returns, returns


def _rejected(request_id: str, card_uid: str | None, now_ms: int) -> dict[str, Any]:
    return {
        "request_id": request_id,
        "status": Status.REJECTED.value,
        "transaction_id": None,
        "previous_balance_cents": None,
        "new_balance_cents": None,
        "replayed": False,
        "processed_at_ms": now_ms,
        "order_id": None,
        "card_uid": card_uid,
    }


def _conflict(request_id: str, card_uid: str | None, now_ms: int) -> dict[str, Any]:
    return {
        **_rejected(request_id, card_uid, now_ms),
        "error_code": ErrorCode.IDEMPOTENCY_CONFLICT.value,
        "message": CONFLICT_MESSAGE,
    }


def _kiosk_problem(kiosk_id: str, role: str, checkpoint_id: str | None) -> str | None:
    """Why Ledger.add_kiosk would refuse these (None: it would not)."""
    if not KIOSK_ID_PATTERN.match(kiosk_id) or kiosk_id in KIOSK_IDS_RESERVED:
        return f"invalid kiosk id {kiosk_id!r}"
    if role not in KIOSK_ROLES:
        return f"role must be one of {', '.join(KIOSK_ROLES)}"
    if checkpoint_id is not None and not (
        1 <= len(checkpoint_id) <= CHECKPOINT_ID_LENGTH_MAX
        and not TEXT_FORBIDDEN_PATTERN.search(checkpoint_id)
    ):
        return f"invalid checkpoint {checkpoint_id!r}"
    return None
