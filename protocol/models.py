"""Typed messages of protocol v1 and their strict schemas.

Every model checks itself when it is built: a kiosk that builds a request from a menu, or the
cloud a result, gets ``ProtocolError(INVALID_REQUEST)`` (a ValueError) naming the first rule
broken, so a model that exists is valid and is never re-checked by serialising and parsing it.

``parse_*`` take a decoded JSON value (from ``loads_strict``) and either return a frozen model or
raise ``ProtocolError(INVALID_REQUEST)`` naming the first rule broken. They check every field of
the JSON once, in a fixed order documented in docs/protocol.md: object, ``v``, ``type``, unknown
fields, missing fields, then each field in the order of PROTOCOL.md's tables, then cross-field
rules (totals, result consistency); the model is then assembled from the checked values without
its constructor checking them a second time. Both paths call the same rule functions.
``*_to_dict`` turn a model back into the JSON object the wire carries.
"""

from __future__ import annotations

import functools
import operator
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar, Final, Literal, NoReturn, TypeAlias, TypeVar, cast

from protocol.errors import ErrorCode, ProtocolError, Status, json_type_name, quote, status_for
from protocol.limits import (
    BALANCE_CENTS_MIN,
    BALANCE_CENTS_WIRE_MAX,
    CARD_SUN_CMAC_PATTERN,
    CARD_SUN_PICC_DATA_PATTERN,
    CARD_UID_PATTERN,
    CARD_UIDS_JOINED_PATTERN,
    CHECKPOINT_ID_LENGTH_MAX,
    CHECKPOINT_ID_LENGTH_MIN,
    CONFIG_VERSION_MAX,
    CONFIG_VERSION_MIN,
    CURRENCY_PATTERN,
    DENYLIST_CARDS_MAX,
    FIRMWARE_LENGTH_MAX,
    FIRMWARE_LENGTH_MIN,
    ITEM_NAME_LENGTH_MAX,
    ITEM_NAME_LENGTH_MIN,
    ITEM_QUANTITY_MAX,
    ITEM_QUANTITY_MIN,
    ITEMS_MAX,
    ITEMS_MIN,
    KIOSK_ID_PATTERN,
    KIOSK_IDS_RESERVED,
    MENU_CATEGORY_LENGTH_MAX,
    MENU_CATEGORY_LENGTH_MIN,
    MENU_ID_LENGTH_MAX,
    MENU_ID_LENGTH_MIN,
    MENU_ITEMS_MAX,
    MENU_ITEMS_MIN,
    OFFLINE_CENTS_MAX,
    OFFLINE_CENTS_MIN,
    OFFLINE_PENDING_CENTS_MAX,
    OFFLINE_PENDING_CENTS_MIN,
    OFFLINE_PENDING_MAX,
    OFFLINE_PENDING_MIN,
    PROTOCOL_VERSION,
    READER_NAME_LENGTH_MAX,
    READER_NAME_LENGTH_MIN,
    REQUEST_ID_PATTERN,
    RESULT_MESSAGE_LENGTH_MAX,
    RESULT_MESSAGE_LENGTH_MIN,
    SCAN_DURATION_MS_MAX,
    SCAN_DURATION_MS_MIN,
    SEQ_MAX,
    SEQ_MIN,
    SKU_LENGTH_MAX,
    SKU_LENGTH_MIN,
    STAFF_ID_LENGTH_MAX,
    STAFF_ID_LENGTH_MIN,
    STAFF_PIN_PATTERN,
    TEXT_FORBIDDEN_PATTERN,
    TIMESTAMP_MS_MAX,
    TIMESTAMP_MS_MIN,
    TOPUP_CENTS_MAX_DEFAULT,
    TOPUP_CENTS_MIN,
    TRANSACTION_ID_PATTERN,
    UNIT_PRICE_CENTS_MAX,
    UNIT_PRICE_CENTS_MIN,
    VAT_RATE_BP_MAX,
    VAT_RATE_BP_MIN,
)

# Re-exported: the brief of this package placed them here; they live in strict_json.
from protocol.strict_json import dumps_canonical as dumps_canonical
from protocol.strict_json import loads_strict as loads_strict

PaymentMethod: TypeAlias = Literal["cash", "card"]
ScanStatus: TypeAlias = Literal["ok", "read_error", "unsupported_card", "removed_early"]
KioskState: TypeAlias = Literal["online", "offline"]

PAYMENT_METHODS: Final[tuple[PaymentMethod, ...]] = ("cash", "card")
SCAN_STATUSES: Final[tuple[ScanStatus, ...]] = (
    "ok",
    "read_error",
    "unsupported_card",
    "removed_early",
)
KIOSK_STATES: Final[tuple[KioskState, ...]] = ("online", "offline")
# The request fields a result echoes (PROTOCOL.md "Which fields a result carries").
ECHO_FIELDS: Final = ("request_id", "kiosk_id", "seq", "card_uid")

_Model = TypeVar("_Model")


class _Absent:
    """An optional field that is not there (None is a JSON null, which an optional refuses)."""

    __slots__ = ()


_ABSENT: Final = _Absent()


# --- models ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BarItem:
    """One line of a bar order. A return (a cup brought back) counts negative."""

    name: str
    quantity: int
    unit_price_cents: int
    sku: str | None = None
    is_deposit: bool = False
    is_return: bool = False

    def __post_init__(self) -> None:
        _check_item(
            self.name,
            self.quantity,
            self.unit_price_cents,
            _ABSENT if self.sku is None else self.sku,
            self.is_deposit,
            self.is_return,
            "",
        )

    @property
    def signed_cents(self) -> int:
        """quantity x unit price, negative for a return."""
        cents = self.quantity * self.unit_price_cents
        return -cents if self.is_return else cents


@dataclass(frozen=True, slots=True)
class CardSun:
    """(1.1) ``card_sun``: the SUN message the kiosk read from a genuine wristband, as it was
    mirrored (PROTOCOL.md "Genuine wristbands"); checked for form here, verified by the cloud."""

    picc_data: str
    cmac: str

    def __post_init__(self) -> None:
        _check_card_sun_fields(self.picc_data, self.cmac)


@dataclass(frozen=True, slots=True)
class _RequestHeader:
    """The fields every request starts with, in PROTOCOL.md's order, and the two optional ones
    every request may carry (keyword-only, so each request's own fields follow the header
    positionally), checked once for all seven request types.

    ``config_version`` (1.1): the version of the config the kiosk ran when it created the
    request — for a bar order, the config whose menu priced it (PROTOCOL.md "Menus"), and for an
    offline sale the config whose offline policy allowed it. ``card_sun`` (1.1): the
    wristband's SUN message when it is a genuine one (for a card swap, the new band's)."""

    request_id: str
    kiosk_id: str
    seq: int
    created_at_ms: int
    card_uid: str
    currency: str
    config_version: int | None = field(default=None, kw_only=True)
    card_sun: CardSun | None = field(default=None, kw_only=True)

    def __post_init__(self) -> None:
        # Called by name from each request's own __post_init__: a slots dataclass is rebuilt as
        # a new class, so argument-less super() does not reach it (CPython gh-90562).
        _check_card_sun(self.card_sun)
        _check_header(self.request_id, self.kiosk_id, self.seq, self.created_at_ms, self.card_uid)
        _matching(self.currency, "currency", CURRENCY_PATTERN)
        _check_config_version(_ABSENT if self.config_version is None else self.config_version)


@dataclass(frozen=True, slots=True)
class BarOrder(_RequestHeader):
    """A ``bar_order`` request: charge (or, for returns only, credit) a card."""

    type: ClassVar[Literal["bar_order"]] = "bar_order"

    items: tuple[BarItem, ...]
    total_cents: int
    staff_id: str | None = None
    # (1.1) The kiosk approved this sale itself, without a connection ("Offline sales"): no
    # return lines then. Whether its config allowed it is the cloud's to judge
    # (OFFLINE_LIMIT_EXCEEDED), so an offline order citing no config can still be built.
    offline: bool = False

    def __post_init__(self) -> None:
        _RequestHeader.__post_init__(self)
        items = self.items
        if type(items) is not tuple:
            _fail(f"items must be a tuple of BarItem, got {type(items).__name__}")
        _check_item_count(len(items))
        for index, item in enumerate(items):
            if type(item) is not BarItem:
                _fail(f"items[{index}] must be a BarItem, got {type(item).__name__}")
        _check_bar_order_rest(
            items,
            self.total_cents,
            _ABSENT if self.staff_id is None else self.staff_id,
            self.offline,
        )


@dataclass(frozen=True, slots=True)
class CheckpointRecharge(_RequestHeader):
    """A ``checkpoint_recharge`` request: staff took cash or a card payment and top up a card."""

    type: ClassVar[Literal["checkpoint_recharge"]] = "checkpoint_recharge"

    amount_cents: int
    payment_method: PaymentMethod
    staff_id: str
    checkpoint_id: str | None = None

    def __post_init__(self) -> None:
        _RequestHeader.__post_init__(self)
        # Here only what fits the wire (a bigint of cents, like a balance): the deployment's own
        # limit is checked where it is known, by encode_request and parse_request.
        _int(self.amount_cents, "amount_cents", TOPUP_CENTS_MIN, BALANCE_CENTS_WIRE_MAX)
        _check_recharge_rest(
            self.payment_method,
            self.staff_id,
            _ABSENT if self.checkpoint_id is None else self.checkpoint_id,
        )

    @property
    def effective_checkpoint_id(self) -> str:
        """The checkpoint that took the money: ``checkpoint_id``, defaulting to ``kiosk_id``."""
        return self.kiosk_id if self.checkpoint_id is None else self.checkpoint_id


@dataclass(frozen=True, slots=True)
class CardSwap(_RequestHeader):
    """(1.1) A ``card_swap`` request: move everything a lost or broken wristband holds
    (``old_card_uid``) onto a new one (``card_uid``), at a checkpoint."""

    type: ClassVar[Literal["card_swap"]] = "card_swap"

    old_card_uid: str
    staff_id: str
    # The old band's SUN message, when it was presented and read.
    old_card_sun: CardSun | None = None

    def __post_init__(self) -> None:
        _RequestHeader.__post_init__(self)
        _check_card_sun(self.old_card_sun, "old_card_sun")
        _check_card_swap_rest(self.card_uid, self.old_card_uid, self.staff_id)


@dataclass(frozen=True, slots=True)
class Void(_RequestHeader):
    """(1.1) A ``void`` request: cancel an approved bar order of the same kiosk
    (``original_request_id``) on its card (``card_uid``), within the void window."""

    type: ClassVar[Literal["void"]] = "void"

    original_request_id: str
    staff_id: str

    def __post_init__(self) -> None:
        _RequestHeader.__post_init__(self)
        _check_void_rest(self.request_id, self.original_request_id, self.staff_id)


@dataclass(frozen=True, slots=True)
class StaffLogin(_RequestHeader):
    """(1.1) A ``staff_login`` request: the staff member ``staff_id`` starts working at this
    kiosk, proven by their own band (``card_uid``) and their ``pin``. Moves no money.

    The PIN is a secret: ``repr`` hides it, and the cloud stores only the payload's hash and a
    redacted copy (docs/protocol.md)."""

    type: ClassVar[Literal["staff_login"]] = "staff_login"

    staff_id: str
    pin: str = field(repr=False)

    def __post_init__(self) -> None:
        _RequestHeader.__post_init__(self)
        _check_staff_rest(self.staff_id, self.pin)


@dataclass(frozen=True, slots=True)
class StaffLogout(_RequestHeader):
    """(1.1) A ``staff_logout`` request: ``staff_id`` stops working at this kiosk."""

    type: ClassVar[Literal["staff_logout"]] = "staff_logout"

    staff_id: str

    def __post_init__(self) -> None:
        _RequestHeader.__post_init__(self)
        _check_staff_rest(self.staff_id, _ABSENT)


@dataclass(frozen=True, slots=True)
class CashOut(_RequestHeader):
    """A ``cash_out`` request (our extension of 1.1, docs/protocol.md): at the end of the
    festival a checkpoint pays the card's balance from its drawer and blocks the card
    (``cashed out``); the part refundable to the card's Stripe top-ups is refunded there
    instead of paid in cash. A supervisor's request when staff roles are enforced."""

    type: ClassVar[Literal["cash_out"]] = "cash_out"

    staff_id: str

    def __post_init__(self) -> None:
        _RequestHeader.__post_init__(self)
        _check_staff_rest(self.staff_id, _ABSENT)


Request: TypeAlias = (
    BarOrder | CheckpointRecharge | CardSwap | Void | StaffLogin | StaffLogout | CashOut
)
# Every request type the protocol knows, in PROTOCOL.md's order (cash_out, our extension, last).
REQUEST_TYPES: Final = (
    BarOrder.type,
    CheckpointRecharge.type,
    CardSwap.type,
    Void.type,
    StaffLogin.type,
    StaffLogout.type,
    CashOut.type,
)
# (1.1) The requests that move no money: their approved results carry no transaction_id, no
# balances and no debt (PROTOCOL.md ``staff_login`` / ``staff_logout``).
MONEYLESS_REQUEST_TYPES: Final = frozenset({StaffLogin.type, StaffLogout.type})
# Which request types each kiosk role may send (PROTOCOL.md "Each kiosk is registered with a
# role"; DESIGN.md, 1.1: a card swap only from a checkpoint, a void only from a bar, the
# voided order's own kiosk; staff log in and out at any kiosk; a cash-out pays from a
# checkpoint's drawer). Anything else is OPERATION_NOT_ALLOWED.
_STAFF_TYPES: Final = frozenset({StaffLogin.type, StaffLogout.type})
REQUEST_TYPES_BY_ROLE: Final[Mapping[str, frozenset[str]]] = {
    "bar": frozenset({BarOrder.type, Void.type}) | _STAFF_TYPES,
    "checkpoint": frozenset({CheckpointRecharge.type, CardSwap.type, CashOut.type}) | _STAFF_TYPES,
    "all": frozenset(REQUEST_TYPES),
}


def role_may_send(role: str, request_type: str) -> bool:
    """Whether a kiosk registered with ``role`` may send a request of ``request_type``."""
    return request_type in REQUEST_TYPES_BY_ROLE.get(role, frozenset())


@dataclass(frozen=True, slots=True)
class Result:
    """The cloud's signed answer to a request. See PROTOCOL.md's result table.

    Built, it has passed every rule of that table (``check_result``). A subclass may relax the
    rules for outcomes that are not answers to a kiosk (cloud.ledger.Outcome, whose Stripe
    outcomes have no kiosk): ``encode_result`` checks such an instance before signing it.
    """

    request_id: str | None
    kiosk_id: str | None
    seq: int | None
    card_uid: str | None
    status: Status
    error_code: ErrorCode | None
    message: str
    transaction_id: str | None
    previous_balance_cents: int | None
    new_balance_cents: int | None
    # (1.1) What the card owes after this outcome; None exactly when the balances are None.
    debt_cents: int | None
    replayed: bool
    processed_at_ms: int

    def __post_init__(self) -> None:
        check_result(self)

    @property
    def approved(self) -> bool:
        return self.status is Status.APPROVED


@dataclass(frozen=True, slots=True)
class ScanRecord:
    """One NFC read attempt, for diagnostics; never affects money."""

    type: ClassVar[Literal["scan"]] = "scan"

    kiosk_id: str
    scanned_at_ms: int
    card_uid: str | None
    status: ScanStatus
    reader: str
    duration_ms: int

    def __post_init__(self) -> None:
        _check_scan(
            self.kiosk_id,
            self.scanned_at_ms,
            self.card_uid,
            self.status,
            self.reader,
            self.duration_ms,
        )


@dataclass(frozen=True, slots=True)
class KioskStatus:
    """A kiosk's retained presence message (unsigned)."""

    kiosk_id: str
    state: KioskState
    at_ms: int
    firmware: str
    # (1.1) The offline sales the kiosk holds that the cloud has not answered yet, and their sum.
    offline_pending: int | None = None
    offline_pending_cents: int | None = None

    def __post_init__(self) -> None:
        _check_kiosk_status(
            self.kiosk_id,
            self.state,
            self.at_ms,
            self.firmware,
            _ABSENT if self.offline_pending is None else self.offline_pending,
            _ABSENT if self.offline_pending_cents is None else self.offline_pending_cents,
        )


@dataclass(frozen=True, slots=True)
class MenuItem:
    """(1.1) One line of a config's menu: what a kiosk may sell, at exactly this price."""

    sku: str
    name: str
    unit_price_cents: int
    is_deposit: bool = False
    is_return: bool = False
    vat_rate_bp: int | None = None
    category: str | None = None

    def __post_init__(self) -> None:
        _check_menu_item(
            self.sku,
            self.name,
            self.unit_price_cents,
            self.is_deposit,
            self.is_return,
            _ABSENT if self.vat_rate_bp is None else self.vat_rate_bp,
            _ABSENT if self.category is None else self.category,
            "",
        )


# Not slots: ``by_sku`` is computed once per menu (functools.cached_property needs a __dict__).
@dataclass(frozen=True)
class Menu:
    """(1.1) A config's menu: 1-200 items, SKUs unique."""

    menu_id: str
    items: tuple[MenuItem, ...]

    def __post_init__(self) -> None:
        _text(self.menu_id, "menu.menu_id", MENU_ID_LENGTH_MIN, MENU_ID_LENGTH_MAX)
        items = self.items
        if type(items) is not tuple:
            _fail(f"menu.items must be a tuple of MenuItem, got {type(items).__name__}")
        _check_menu_item_count(len(items))
        for index, item in enumerate(items):
            if type(item) is not MenuItem:
                _fail(f"menu.items[{index}] must be a MenuItem, got {type(item).__name__}")
        _check_menu_skus_unique(items)

    @functools.cached_property
    def by_sku(self) -> Mapping[str, MenuItem]:
        """Each item by its SKU (the price check looks lines up here)."""
        return {item.sku: item for item in self.items}

    def item(self, sku: str) -> MenuItem | None:
        return self.by_sku.get(sku)


@dataclass(frozen=True, slots=True)
class OfflinePolicy:
    """(1.1) What a kiosk may approve by itself while it has no connection ("Offline sales")."""

    sale_max_cents: int
    card_max_cents: int
    kiosk_max_cents: int

    def __post_init__(self) -> None:
        _check_offline_policy(self.sale_max_cents, self.card_max_cents, self.kiosk_max_cents)


@dataclass(frozen=True, slots=True)
class KioskConfig:
    """(1.1) A ``config`` message: one kiosk's menu (None: none assigned) and offline policy
    (None: it must not sell offline), signed by the cloud, published retained."""

    type: ClassVar[Literal["config"]] = "config"

    kiosk_id: str
    version: int
    issued_at_ms: int
    currency: str
    menu: Menu | None
    offline: OfflinePolicy | None

    def __post_init__(self) -> None:
        _kiosk_id(self.kiosk_id)
        _check_message_version(self.version, self.issued_at_ms)
        _matching(self.currency, "currency", CURRENCY_PATTERN)
        if self.menu is not None and type(self.menu) is not Menu:
            _fail(f"menu must be a Menu or None, got {type(self.menu).__name__}")
        if self.offline is not None and type(self.offline) is not OfflinePolicy:
            _fail(f"offline must be an OfflinePolicy or None, got {type(self.offline).__name__}")


@dataclass(frozen=True, slots=True)
class DenyList:
    """(1.1) A ``denylist`` message: every blocked card and every card with a debt, sorted,
    unique, at most 6000, signed by the cloud, published retained to every kiosk."""

    type: ClassVar[Literal["denylist"]] = "denylist"

    version: int
    issued_at_ms: int
    card_uids: tuple[str, ...]

    def __post_init__(self) -> None:
        _check_message_version(self.version, self.issued_at_ms)
        if type(self.card_uids) is not tuple:
            _fail(f"card_uids must be a tuple of str, got {type(self.card_uids).__name__}")
        _check_card_uids(self.card_uids)


def _assemble(cls: type[_Model], /, **values: object) -> _Model:
    """An instance of ``cls`` from values a parser has already checked, each once, by the same
    rules as the constructor (which would check them all a second time). Every field is given."""
    instance = object.__new__(cls)
    for name, value in values.items():
        object.__setattr__(instance, name, value)
    return instance


# --- field rules -----------------------------------------------------------------------------


def _fail(message: str) -> NoReturn:
    raise ProtocolError(ErrorCode.INVALID_REQUEST, message)


def _int(value: object, name: str, low: int, high: int) -> int:
    # type() and not isinstance(): a JSON true is a Python bool, which is an int subclass.
    if type(value) is not int:
        _fail(f"{name} must be an integer, got {json_type_name(value)}")
    if not low <= value <= high:
        _fail(f"{name} must be {low}..{high}, got {quote(value)}")
    return value


def _bool(value: object, name: str) -> bool:
    if type(value) is not bool:
        _fail(f"{name} must be a boolean, got {json_type_name(value)}")
    return value


def _matching(value: object, name: str, pattern: re.Pattern[str]) -> str:
    if type(value) is not str:
        _fail(f"{name} must be a string, got {json_type_name(value)}")
    if not pattern.match(value):
        _fail(f"invalid {name} {quote(value)}")
    return value


def _text(value: object, name: str, length_min: int, length_max: int) -> str:
    if type(value) is not str:
        _fail(f"{name} must be a string, got {json_type_name(value)}")
    if not length_min <= len(value) <= length_max:
        _fail(f"{name} must be {length_min}..{length_max} characters, got {len(value)}")
    if TEXT_FORBIDDEN_PATTERN.search(value):
        _fail(f"{name} contains a control, bidi or surrogate character")
    return value


def _kiosk_id(value: object, name: str = "kiosk_id") -> str:
    kiosk_id = _matching(value, name, KIOSK_ID_PATTERN)
    if kiosk_id in KIOSK_IDS_RESERVED:
        _fail(f"{name} {quote(kiosk_id)} is reserved")
    return kiosk_id


def _check_fields(
    document: Mapping[str, object],
    required: frozenset[str],
    optional: frozenset[str],
    where: str,
) -> None:
    keys = document.keys()
    unknown = keys - required - optional
    if unknown:
        _fail(f"unknown field {quote(min(unknown, key=str))} in {where}")
    missing = required - keys
    if missing:
        _fail(f"missing field {min(missing)} in {where}")


def _object(value: object, where: str) -> dict[str, object]:
    if type(value) is not dict:
        _fail(f"{where} must be a JSON object, got {json_type_name(value)}")
    return value


def _version(document: Mapping[str, object], where: str) -> None:
    if "v" not in document:
        _fail(f"missing field v in {where}")
    version = document["v"]
    if type(version) is not int or version != PROTOCOL_VERSION:
        _fail(f"unsupported protocol version {quote(version)}, expected {PROTOCOL_VERSION}")


def is_valid_request_id(value: object) -> bool:
    """Whether ``value`` is a valid ``request_id``."""
    return type(value) is str and REQUEST_ID_PATTERN.match(value) is not None


def is_valid_card_uid(value: object) -> bool:
    """Whether ``value`` is a card UID: 8, 14 or 20 upper-case hex digits."""
    return type(value) is str and CARD_UID_PATTERN.match(value) is not None


def is_valid_seq(value: object) -> bool:
    """Whether ``value`` is a valid ``seq``."""
    return type(value) is int and SEQ_MIN <= value <= SEQ_MAX


def _is_valid_kiosk_id(value: object) -> bool:
    return (
        type(value) is str
        and KIOSK_ID_PATTERN.match(value) is not None
        and value not in KIOSK_IDS_RESERVED
    )


def validate_currency(currency: str) -> str:
    """Return ``currency`` if it is an ISO 4217 code, else raise ValueError (configuration)."""
    if not CURRENCY_PATTERN.match(currency):
        raise ValueError(f"invalid currency {quote(currency)}: need an ISO 4217 code")
    return currency


def echo_fields(document: object) -> dict[str, object]:
    """The request fields a result may echo: each one's value when valid, else None."""
    echo: dict[str, object] = dict.fromkeys(ECHO_FIELDS)
    if type(document) is dict:
        request_id = document.get("request_id")
        kiosk_id = document.get("kiosk_id")
        seq = document.get("seq")
        card_uid = document.get("card_uid")
        if is_valid_request_id(request_id):
            echo["request_id"] = request_id
        if _is_valid_kiosk_id(kiosk_id):
            echo["kiosk_id"] = kiosk_id
        if is_valid_seq(seq):
            echo["seq"] = seq
        if is_valid_card_uid(card_uid):
            echo["card_uid"] = card_uid
    return echo


def request_echo(request: Request) -> dict[str, object]:
    """The echo fields of a valid request: all four of its own (``echo_fields`` of its JSON)."""
    return {
        "request_id": request.request_id,
        "kiosk_id": request.kiosk_id,
        "seq": request.seq,
        "card_uid": request.card_uid,
    }


# --- the rules of each model, shared by its constructor and its parser -------------------------
# Optional fields are passed as _ABSENT when they are not there, so that a JSON null is refused.


def _check_header(
    request_id: object, kiosk_id: object, seq: object, created_at_ms: object, card_uid: object
) -> None:
    """The fields every request starts with, in PROTOCOL.md's order."""
    _matching(request_id, "request_id", REQUEST_ID_PATTERN)
    _kiosk_id(kiosk_id)
    _int(seq, "seq", SEQ_MIN, SEQ_MAX)
    _int(created_at_ms, "created_at_ms", TIMESTAMP_MS_MIN, TIMESTAMP_MS_MAX)
    _matching(card_uid, "card_uid", CARD_UID_PATTERN)


def _check_item_count(count: int) -> None:
    if not ITEMS_MIN <= count <= ITEMS_MAX:
        _fail(f"items must hold {ITEMS_MIN}..{ITEMS_MAX} entries, got {count}")


def _check_item(
    name: object,
    quantity: object,
    unit_price_cents: object,
    sku: object,
    is_deposit: object,
    is_return: object,
    where: str,
) -> None:
    """One bar item's fields; ``where`` prefixes the field names (``items[3].``)."""
    _text(name, f"{where}name", ITEM_NAME_LENGTH_MIN, ITEM_NAME_LENGTH_MAX)
    _int(quantity, f"{where}quantity", ITEM_QUANTITY_MIN, ITEM_QUANTITY_MAX)
    _int(unit_price_cents, f"{where}unit_price_cents", UNIT_PRICE_CENTS_MIN, UNIT_PRICE_CENTS_MAX)
    if sku is not _ABSENT:
        _text(sku, f"{where}sku", SKU_LENGTH_MIN, SKU_LENGTH_MAX)
    _bool(is_deposit, f"{where}is_deposit")
    _bool(is_return, f"{where}is_return")


def _check_bar_order_rest(
    items: tuple[BarItem, ...], total_cents: object, staff_id: object, offline: object
) -> None:
    """A bar order's fields after its items, then its total, then (1.1) the offline rule: an
    offline sale has no return lines (so its total is never negative; PROTOCOL.md
    "Offline sales": INVALID_REQUEST)."""
    if type(total_cents) is not int:
        _fail(f"total_cents must be an integer, got {json_type_name(total_cents)}")
    if staff_id is not _ABSENT:
        _text(staff_id, "staff_id", STAFF_ID_LENGTH_MIN, STAFF_ID_LENGTH_MAX)
    if offline is not _ABSENT:
        _bool(offline, "offline")
    computed_cents = sum(item.signed_cents for item in items)
    if total_cents != computed_cents:
        _fail(f"total_cents {quote(total_cents)} does not equal the items' sum {computed_cents}")
    if offline is True:
        returns = [index for index, item in enumerate(items) if item.is_return]
        if returns:
            _fail(f"an offline sale has no return lines: items[{returns[0]}] is a return")


def _check_recharge_rest(payment_method: object, staff_id: object, checkpoint_id: object) -> None:
    """A top-up's fields after its amount."""
    if type(payment_method) is not str or payment_method not in PAYMENT_METHODS:
        _fail(f"payment_method must be cash or card, got {quote(payment_method)}")
    _text(staff_id, "staff_id", STAFF_ID_LENGTH_MIN, STAFF_ID_LENGTH_MAX)
    if checkpoint_id is not _ABSENT:
        _text(checkpoint_id, "checkpoint_id", CHECKPOINT_ID_LENGTH_MIN, CHECKPOINT_ID_LENGTH_MAX)


def _check_config_version(config_version: object) -> None:
    """(1.1) A request's optional ``config_version`` (``_ABSENT`` when it has none)."""
    if config_version is not _ABSENT:
        _int(config_version, "config_version", CONFIG_VERSION_MIN, CONFIG_VERSION_MAX)


def _check_card_sun_fields(picc_data: object, cmac: object, name: str = "card_sun") -> None:
    if type(picc_data) is not str or CARD_SUN_PICC_DATA_PATTERN.match(picc_data) is None:
        _fail(f"{name}.picc_data must be 32 upper-case hex digits, got {quote(picc_data)}")
    if type(cmac) is not str or CARD_SUN_CMAC_PATTERN.match(cmac) is None:
        _fail(f"{name}.cmac must be 16 upper-case hex digits, got {quote(cmac)}")


def _check_card_sun(card_sun: object, name: str = "card_sun") -> None:
    if card_sun is not None and type(card_sun) is not CardSun:
        _fail(f"{name} must be a CardSun, got {type(card_sun).__name__}")


def _check_card_swap_rest(card_uid: object, old_card_uid: object, staff_id: object) -> None:
    """(1.1) A card swap's fields after the common ones: the old band differs from the new."""
    _matching(old_card_uid, "old_card_uid", CARD_UID_PATTERN)
    if old_card_uid == card_uid:
        _fail("old_card_uid must differ from card_uid")
    _text(staff_id, "staff_id", STAFF_ID_LENGTH_MIN, STAFF_ID_LENGTH_MAX)


def _check_void_rest(request_id: object, original_request_id: object, staff_id: object) -> None:
    """(1.1) A void's fields after the common ones: it names another request than itself."""
    _matching(original_request_id, "original_request_id", REQUEST_ID_PATTERN)
    if original_request_id == request_id:
        _fail("original_request_id must differ from request_id")
    _text(staff_id, "staff_id", STAFF_ID_LENGTH_MIN, STAFF_ID_LENGTH_MAX)


def _check_staff_rest(staff_id: object, pin: object) -> None:
    """(1.1) A staff login's, logout's or cash-out's fields after the common ones (``pin``:
    ``_ABSENT`` for all but a login). A PIN that breaks the rule is never quoted back."""
    _text(staff_id, "staff_id", STAFF_ID_LENGTH_MIN, STAFF_ID_LENGTH_MAX)
    if pin is not _ABSENT and (type(pin) is not str or STAFF_PIN_PATTERN.match(pin) is None):
        _fail("pin must be a string of 4..12 digits")


_CARD_SUN_FIELDS: Final = frozenset({"picc_data", "cmac"})


def _card_sun(value: object, name: str = "card_sun") -> CardSun | None:
    """(1.1) A request's optional ``card_sun`` (``_ABSENT`` when it has none; null is invalid);
    ``name`` is the field's (``old_card_sun`` of a card swap)."""
    if value is _ABSENT:
        return None
    document = _object(value, name)
    _check_fields(document, _CARD_SUN_FIELDS, frozenset(), name)
    _check_card_sun_fields(document["picc_data"], document["cmac"], name)
    return _assemble(CardSun, picc_data=document["picc_data"], cmac=document["cmac"])


def _check_menu_item(
    sku: object,
    name: object,
    unit_price_cents: object,
    is_deposit: object,
    is_return: object,
    vat_rate_bp: object,
    category: object,
    where: str,
) -> None:
    """One menu item's fields, in PROTOCOL.md's order; ``where`` prefixes the names."""
    _text(sku, f"{where}sku", SKU_LENGTH_MIN, SKU_LENGTH_MAX)
    _text(name, f"{where}name", ITEM_NAME_LENGTH_MIN, ITEM_NAME_LENGTH_MAX)
    _int(unit_price_cents, f"{where}unit_price_cents", UNIT_PRICE_CENTS_MIN, UNIT_PRICE_CENTS_MAX)
    _bool(is_deposit, f"{where}is_deposit")
    _bool(is_return, f"{where}is_return")
    if vat_rate_bp is not _ABSENT:
        _int(vat_rate_bp, f"{where}vat_rate_bp", VAT_RATE_BP_MIN, VAT_RATE_BP_MAX)
    if category is not _ABSENT:
        _text(category, f"{where}category", MENU_CATEGORY_LENGTH_MIN, MENU_CATEGORY_LENGTH_MAX)


def _check_menu_item_count(count: int) -> None:
    if not MENU_ITEMS_MIN <= count <= MENU_ITEMS_MAX:
        _fail(f"menu.items must hold {MENU_ITEMS_MIN}..{MENU_ITEMS_MAX} items, got {count}")


def _check_menu_skus_unique(items: tuple[MenuItem, ...]) -> None:
    seen: set[str] = set()
    for index, item in enumerate(items):
        if item.sku in seen:
            _fail(f"menu.items[{index}].sku {quote(item.sku)} is not unique in the menu")
        seen.add(item.sku)


def _check_offline_policy(
    sale_max_cents: object, card_max_cents: object, kiosk_max_cents: object
) -> None:
    _int(sale_max_cents, "offline.sale_max_cents", OFFLINE_CENTS_MIN, OFFLINE_CENTS_MAX)
    _int(card_max_cents, "offline.card_max_cents", OFFLINE_CENTS_MIN, OFFLINE_CENTS_MAX)
    _int(kiosk_max_cents, "offline.kiosk_max_cents", OFFLINE_CENTS_MIN, OFFLINE_CENTS_MAX)


def _check_message_version(version: object, issued_at_ms: object) -> None:
    """A config's or deny-list's ``version`` and ``issued_at_ms``."""
    _int(version, "version", CONFIG_VERSION_MIN, CONFIG_VERSION_MAX)
    _int(issued_at_ms, "issued_at_ms", TIMESTAMP_MS_MIN, TIMESTAMP_MS_MAX)


def _check_card_uids(card_uids: tuple[object, ...] | list[object]) -> None:
    """A deny-list's cards: at most 6000 card UIDs, sorted, unique (each strictly greater).

    A valid list is recognised in a few passes in C (a kiosk applies 6000 cards in well under
    its 50 ms budget); only a list that fails is walked card by card to name the first culprit.
    """
    if len(card_uids) > DENYLIST_CARDS_MAX:
        _fail(f"card_uids may hold at most {DENYLIST_CARDS_MAX} cards, got {len(card_uids)}")
    strings = cast("tuple[str, ...] | list[str]", card_uids)
    try:
        joined = ",".join(strings)  # TypeError unless every card is a string
    except TypeError:
        joined = None
    # As many commas as separators: no card holds a comma of its own, so the pattern saw exactly
    # these cards, each one whole.
    if not strings or (
        joined is not None
        and joined.count(",") == len(strings) - 1
        and CARD_UIDS_JOINED_PATTERN.match(joined) is not None
        and all(map(operator.lt, strings, strings[1:]))
    ):
        return
    previous = ""
    for index, card_uid in enumerate(card_uids):
        if type(card_uid) is not str or not CARD_UID_PATTERN.match(card_uid):
            _fail(f"invalid card_uids[{index}] {quote(card_uid)}")
        if card_uid <= previous:
            what = "duplicate" if card_uid == previous else "unsorted"
            _fail(f"card_uids must be sorted and unique: {what} card_uids[{index}]")
        previous = card_uid


def _check_result_echo(request_id: object, kiosk_id: object, seq: object, card_uid: object) -> None:
    if request_id is not None:
        _matching(request_id, "request_id", REQUEST_ID_PATTERN)
    if kiosk_id is not None:
        _kiosk_id(kiosk_id)
    if seq is not None:
        _int(seq, "seq", SEQ_MIN, SEQ_MAX)
    if card_uid is not None:
        _matching(card_uid, "card_uid", CARD_UID_PATTERN)


def _check_result_rest(
    message: object,
    transaction_id: object,
    previous_balance_cents: object,
    new_balance_cents: object,
    debt_cents: object,
    replayed: object,
    processed_at_ms: object,
) -> None:
    """A result's fields after its error code."""
    _text(message, "message", RESULT_MESSAGE_LENGTH_MIN, RESULT_MESSAGE_LENGTH_MAX)
    if transaction_id is not None:
        _matching(transaction_id, "transaction_id", TRANSACTION_ID_PATTERN)
    if previous_balance_cents is not None:
        _int(
            previous_balance_cents,
            "previous_balance_cents",
            BALANCE_CENTS_MIN,
            BALANCE_CENTS_WIRE_MAX,
        )
    if new_balance_cents is not None:
        _int(new_balance_cents, "new_balance_cents", BALANCE_CENTS_MIN, BALANCE_CENTS_WIRE_MAX)
    if debt_cents is not None:
        _int(debt_cents, "debt_cents", BALANCE_CENTS_MIN, BALANCE_CENTS_WIRE_MAX)
    _bool(replayed, "replayed")
    _int(processed_at_ms, "processed_at_ms", TIMESTAMP_MS_MIN, TIMESTAMP_MS_MAX)


def check_result(result: Result) -> None:
    """Raise ProtocolError(INVALID_REQUEST) unless ``result`` passes every rule of PROTOCOL.md's
    result table: each field, then consistency (``result_inconsistency``). A Result runs this
    when it is built; ``encode_result`` runs it for a subclass that does not."""
    _check_result_echo(result.request_id, result.kiosk_id, result.seq, result.card_uid)
    if type(result.status) is not Status:
        _fail(f"unknown status {quote(result.status)}")
    if result.error_code is not None and type(result.error_code) is not ErrorCode:
        _fail(f"unknown error_code {quote(result.error_code)}")
    _check_result_rest(
        result.message,
        result.transaction_id,
        result.previous_balance_cents,
        result.new_balance_cents,
        result.debt_cents,
        result.replayed,
        result.processed_at_ms,
    )
    problem = result_inconsistency(result)
    if problem is not None:
        _fail(problem)


def _check_scan(
    kiosk_id: object,
    scanned_at_ms: object,
    card_uid: object,
    status: object,
    reader: object,
    duration_ms: object,
) -> None:
    _kiosk_id(kiosk_id)
    _int(scanned_at_ms, "scanned_at_ms", TIMESTAMP_MS_MIN, TIMESTAMP_MS_MAX)
    if card_uid is not None:
        _matching(card_uid, "card_uid", CARD_UID_PATTERN)
    if type(status) is not str or status not in SCAN_STATUSES:
        _fail(f"unknown scan status {quote(status)}")
    if status == "ok" and card_uid is None:
        _fail("a scan with status ok must carry a card_uid")
    _text(reader, "reader", READER_NAME_LENGTH_MIN, READER_NAME_LENGTH_MAX)
    _int(duration_ms, "duration_ms", SCAN_DURATION_MS_MIN, SCAN_DURATION_MS_MAX)


def _check_kiosk_status(
    kiosk_id: object,
    state: object,
    at_ms: object,
    firmware: object,
    offline_pending: object,
    offline_pending_cents: object,
) -> None:
    _kiosk_id(kiosk_id)
    if type(state) is not str or state not in KIOSK_STATES:
        _fail(f"state must be online or offline, got {quote(state)}")
    _int(at_ms, "at_ms", TIMESTAMP_MS_MIN, TIMESTAMP_MS_MAX)
    _text(firmware, "firmware", FIRMWARE_LENGTH_MIN, FIRMWARE_LENGTH_MAX)
    if offline_pending is not _ABSENT:
        _int(offline_pending, "offline_pending", OFFLINE_PENDING_MIN, OFFLINE_PENDING_MAX)
    if offline_pending_cents is not _ABSENT:
        _int(
            offline_pending_cents,
            "offline_pending_cents",
            OFFLINE_PENDING_CENTS_MIN,
            OFFLINE_PENDING_CENTS_MAX,
        )


# --- requests --------------------------------------------------------------------------------

_COMMON_REQUIRED: Final = frozenset(
    {"v", "type", "request_id", "kiosk_id", "seq", "created_at_ms", "card_uid", "currency"}
)
_BAR_ORDER_REQUIRED: Final = _COMMON_REQUIRED | {"items", "total_cents"}
_COMMON_OPTIONAL: Final = frozenset({"config_version", "card_sun"})
_BAR_ORDER_OPTIONAL: Final = _COMMON_OPTIONAL | {"staff_id", "offline"}
_RECHARGE_REQUIRED: Final = _COMMON_REQUIRED | {"amount_cents", "payment_method", "staff_id"}
_RECHARGE_OPTIONAL: Final = _COMMON_OPTIONAL | {"checkpoint_id"}
_CARD_SWAP_REQUIRED: Final = _COMMON_REQUIRED | {"old_card_uid", "staff_id"}
_CARD_SWAP_OPTIONAL: Final = _COMMON_OPTIONAL | {"old_card_sun"}
_VOID_REQUIRED: Final = _COMMON_REQUIRED | {"original_request_id", "staff_id"}
_VOID_OPTIONAL: Final = _COMMON_OPTIONAL
_STAFF_LOGIN_REQUIRED: Final = _COMMON_REQUIRED | {"staff_id", "pin"}
_STAFF_ONLY_REQUIRED: Final = _COMMON_REQUIRED | {"staff_id"}
_ITEM_REQUIRED: Final = frozenset({"name", "quantity", "unit_price_cents"})
_ITEM_OPTIONAL: Final = frozenset({"sku", "is_deposit", "is_return"})


def parse_request(
    obj: object, *, currency: str, topup_cents_max: int = TOPUP_CENTS_MAX_DEFAULT
) -> Request:
    """Validate a decoded request payload against every rule of PROTOCOL.md.

    ``currency`` is the deployment's currency; ``topup_cents_max`` its single top-up limit.
    Raises ProtocolError(INVALID_REQUEST) describing the first rule broken.
    """
    validate_currency(currency)
    if type(topup_cents_max) is not int or topup_cents_max < TOPUP_CENTS_MIN:
        raise ValueError(f"topup_cents_max must be an integer >= {TOPUP_CENTS_MIN}")
    document = _object(obj, "request")
    _version(document, "request")
    request_type = document.get("type")
    if request_type == BarOrder.type:
        _check_fields(document, _BAR_ORDER_REQUIRED, _BAR_ORDER_OPTIONAL, "bar_order")
    elif request_type == CheckpointRecharge.type:
        _check_fields(document, _RECHARGE_REQUIRED, _RECHARGE_OPTIONAL, "checkpoint_recharge")
    elif request_type == CardSwap.type:
        _check_fields(document, _CARD_SWAP_REQUIRED, _CARD_SWAP_OPTIONAL, "card_swap")
    elif request_type == Void.type:
        _check_fields(document, _VOID_REQUIRED, _VOID_OPTIONAL, "void")
    elif request_type == StaffLogin.type:
        _check_fields(document, _STAFF_LOGIN_REQUIRED, _COMMON_OPTIONAL, "staff_login")
    elif request_type in (StaffLogout.type, CashOut.type):
        _check_fields(document, _STAFF_ONLY_REQUIRED, _COMMON_OPTIONAL, str(request_type))
    elif "type" not in document:
        _fail("missing field type in request")
    else:
        _fail(f"unknown request type {quote(request_type)}")

    request_id = document["request_id"]
    kiosk_id = document["kiosk_id"]
    seq = document["seq"]
    created_at_ms = document["created_at_ms"]
    card_uid = document["card_uid"]
    _check_header(request_id, kiosk_id, seq, created_at_ms, card_uid)
    request_currency = document["currency"]
    if request_currency != currency:
        if type(request_currency) is not str:
            _fail(f"currency must be a string, got {json_type_name(request_currency)}")
        _fail(f"currency must be {currency}, got {quote(request_currency)}")
    config_version = document.get("config_version", _ABSENT)
    _check_config_version(config_version)
    config_version_value = None if config_version is _ABSENT else config_version
    card_sun = _card_sun(document.get("card_sun", _ABSENT))

    if request_type == BarOrder.type:
        items = _items(document["items"])
        total_cents = document["total_cents"]
        staff_id = document.get("staff_id", _ABSENT)
        offline = document.get("offline", _ABSENT)
        _check_bar_order_rest(items, total_cents, staff_id, offline)
        return _assemble(
            BarOrder,
            request_id=request_id,
            kiosk_id=kiosk_id,
            seq=seq,
            created_at_ms=created_at_ms,
            card_uid=card_uid,
            currency=currency,
            items=items,
            total_cents=total_cents,
            staff_id=None if staff_id is _ABSENT else staff_id,
            config_version=config_version_value,
            card_sun=card_sun,
            offline=offline is True,
        )

    if request_type == CardSwap.type:
        old_card_uid = document["old_card_uid"]
        staff_id = document["staff_id"]
        _check_card_swap_rest(card_uid, old_card_uid, staff_id)
        return _assemble(
            CardSwap,
            request_id=request_id,
            kiosk_id=kiosk_id,
            seq=seq,
            created_at_ms=created_at_ms,
            card_uid=card_uid,
            currency=currency,
            old_card_uid=old_card_uid,
            staff_id=staff_id,
            old_card_sun=_card_sun(document.get("old_card_sun", _ABSENT), "old_card_sun"),
            config_version=config_version_value,
            card_sun=card_sun,
        )

    if request_type == Void.type:
        original_request_id = document["original_request_id"]
        staff_id = document["staff_id"]
        _check_void_rest(request_id, original_request_id, staff_id)
        return _assemble(
            Void,
            request_id=request_id,
            kiosk_id=kiosk_id,
            seq=seq,
            created_at_ms=created_at_ms,
            card_uid=card_uid,
            currency=currency,
            original_request_id=original_request_id,
            staff_id=staff_id,
            config_version=config_version_value,
            card_sun=card_sun,
        )

    if request_type in (StaffLogin.type, StaffLogout.type, CashOut.type):
        staff_id = document["staff_id"]
        pin = document.get("pin", _ABSENT)
        _check_staff_rest(staff_id, pin)
        common = {
            "request_id": request_id,
            "kiosk_id": kiosk_id,
            "seq": seq,
            "created_at_ms": created_at_ms,
            "card_uid": card_uid,
            "currency": currency,
            "staff_id": staff_id,
            "config_version": config_version_value,
            "card_sun": card_sun,
        }
        if request_type == StaffLogin.type:
            return _assemble(StaffLogin, pin=pin, **common)
        if request_type == StaffLogout.type:
            return _assemble(StaffLogout, **common)
        return _assemble(CashOut, **common)

    amount_cents = _int(document["amount_cents"], "amount_cents", TOPUP_CENTS_MIN, topup_cents_max)
    payment_method = document["payment_method"]
    staff_id = document["staff_id"]
    checkpoint_id = document.get("checkpoint_id", _ABSENT)
    _check_recharge_rest(payment_method, staff_id, checkpoint_id)
    return _assemble(
        CheckpointRecharge,
        request_id=request_id,
        kiosk_id=kiosk_id,
        seq=seq,
        created_at_ms=created_at_ms,
        card_uid=card_uid,
        currency=currency,
        amount_cents=amount_cents,
        payment_method=payment_method,
        staff_id=staff_id,
        checkpoint_id=None if checkpoint_id is _ABSENT else checkpoint_id,
        config_version=config_version_value,
        card_sun=card_sun,
    )


def _items(value: object) -> tuple[BarItem, ...]:
    if type(value) is not list:
        _fail(f"items must be an array, got {json_type_name(value)}")
    _check_item_count(len(value))
    return tuple(_item(entry, f"items[{index}]") for index, entry in enumerate(value))


def _item(value: object, where: str) -> BarItem:
    item = _object(value, where)
    _check_fields(item, _ITEM_REQUIRED, _ITEM_OPTIONAL, where)
    name = item["name"]
    quantity = item["quantity"]
    unit_price_cents = item["unit_price_cents"]
    sku = item.get("sku", _ABSENT)
    is_deposit = item.get("is_deposit", False)
    is_return = item.get("is_return", False)
    _check_item(name, quantity, unit_price_cents, sku, is_deposit, is_return, f"{where}.")
    return _assemble(
        BarItem,
        name=name,
        quantity=quantity,
        unit_price_cents=unit_price_cents,
        sku=None if sku is _ABSENT else sku,
        is_deposit=is_deposit,
        is_return=is_return,
    )


def request_to_dict(request: Request) -> dict[str, object]:
    """The JSON object of ``request``, with ``v`` and ``type``; absent optionals are omitted."""
    document: dict[str, object] = {
        "v": PROTOCOL_VERSION,
        "type": request.type,
        "request_id": request.request_id,
        "kiosk_id": request.kiosk_id,
        "seq": request.seq,
        "created_at_ms": request.created_at_ms,
        "card_uid": request.card_uid,
        "currency": request.currency,
    }
    if request.config_version is not None:
        document["config_version"] = request.config_version
    if request.card_sun is not None:
        document["card_sun"] = {
            "picc_data": request.card_sun.picc_data,
            "cmac": request.card_sun.cmac,
        }
    if isinstance(request, BarOrder):
        document["items"] = [_item_to_dict(item) for item in request.items]
        document["total_cents"] = request.total_cents
        if request.staff_id is not None:
            document["staff_id"] = request.staff_id
        if request.offline:  # PROTOCOL.md: absent means false; false is not written
            document["offline"] = True
    elif isinstance(request, CheckpointRecharge):
        document["amount_cents"] = request.amount_cents
        document["payment_method"] = request.payment_method
        document["staff_id"] = request.staff_id
        if request.checkpoint_id is not None:
            document["checkpoint_id"] = request.checkpoint_id
    elif isinstance(request, CardSwap):
        document["old_card_uid"] = request.old_card_uid
        document["staff_id"] = request.staff_id
        if request.old_card_sun is not None:
            document["old_card_sun"] = {
                "picc_data": request.old_card_sun.picc_data,
                "cmac": request.old_card_sun.cmac,
            }
    elif isinstance(request, Void):
        document["original_request_id"] = request.original_request_id
        document["staff_id"] = request.staff_id
    else:
        document["staff_id"] = request.staff_id
        if isinstance(request, StaffLogin):
            document["pin"] = request.pin
    return document


def _item_to_dict(item: BarItem) -> dict[str, object]:
    document: dict[str, object] = {
        "name": item.name,
        "quantity": item.quantity,
        "unit_price_cents": item.unit_price_cents,
    }
    if item.sku is not None:
        document["sku"] = item.sku
    if item.is_deposit:
        document["is_deposit"] = True
    if item.is_return:
        document["is_return"] = True
    return document


# --- results ---------------------------------------------------------------------------------

_RESULT_FIELDS: Final = frozenset(
    {
        "v",
        "request_id",
        "kiosk_id",
        "seq",
        "card_uid",
        "status",
        "error_code",
        "message",
        "transaction_id",
        "previous_balance_cents",
        "new_balance_cents",
        "debt_cents",
        "replayed",
        "processed_at_ms",
    }
)


_STATUS_VALUES: Final = frozenset(status.value for status in Status)
_ERROR_CODE_VALUES: Final = frozenset(code.value for code in ErrorCode)


def parse_result(obj: object) -> Result:
    """Validate a decoded result payload; raise ProtocolError(INVALID_REQUEST)."""
    document = _object(obj, "result")
    _version(document, "result")
    _check_fields(document, _RESULT_FIELDS, frozenset(), "result")
    request_id = document["request_id"]
    kiosk_id = document["kiosk_id"]
    seq = document["seq"]
    card_uid = document["card_uid"]
    _check_result_echo(request_id, kiosk_id, seq, card_uid)
    status_text = document["status"]
    if type(status_text) is not str or status_text not in _STATUS_VALUES:
        _fail(f"unknown status {quote(status_text)}")
    error_code_text = document["error_code"]
    error_code = None
    if error_code_text is not None:
        if type(error_code_text) is not str or error_code_text not in _ERROR_CODE_VALUES:
            _fail(f"unknown error_code {quote(error_code_text)}")
        error_code = ErrorCode(error_code_text)
    message = document["message"]
    transaction_id = document["transaction_id"]
    previous_balance_cents = document["previous_balance_cents"]
    new_balance_cents = document["new_balance_cents"]
    debt_cents = document["debt_cents"]
    replayed = document["replayed"]
    processed_at_ms = document["processed_at_ms"]
    _check_result_rest(
        message,
        transaction_id,
        previous_balance_cents,
        new_balance_cents,
        debt_cents,
        replayed,
        processed_at_ms,
    )
    result = _assemble(
        Result,
        request_id=request_id,
        kiosk_id=kiosk_id,
        seq=seq,
        card_uid=card_uid,
        status=Status(status_text),
        error_code=error_code,
        message=message,
        transaction_id=transaction_id,
        previous_balance_cents=previous_balance_cents,
        new_balance_cents=new_balance_cents,
        debt_cents=debt_cents,
        replayed=replayed,
        processed_at_ms=processed_at_ms,
    )
    problem = result_inconsistency(result)
    if problem is not None:
        _fail(problem)
    return result


def result_inconsistency(result: Result) -> str | None:
    """What makes ``result`` self-contradictory per PROTOCOL.md, or None when it is consistent.

    - ``status`` is the error code's status (``approved`` exactly when there is no code);
    - ``transaction_id`` is present only when approved, and when approved unless the request
      moved no money (1.1 ``staff_login``/``staff_logout``: no transaction, no balances);
    - approved and declined outcomes echo all of request_id, kiosk_id, seq and card_uid
      (only a valid, authenticated request gets that far);
    - balances are both null (rejected, CARD_NOT_FOUND; 1.1: CARD_NOT_GENUINE or
      VOID_NOT_ALLOWED on an unknown card) or both integers (every other outcome), and a
      decline leaves the balance unchanged;
    - (1.1) ``debt_cents`` is null exactly when the balances are.
    """
    if result.status is not status_for(result.error_code):
        return f"status {result.status} contradicts error_code {result.error_code}"
    approved = result.status is Status.APPROVED
    # (1.1) An approved staff_login/staff_logout moves no money: no transaction_id, no
    # balances, no debt. The result does not say what it answers, so that shape is allowed
    # for any approved result; the kiosk knows what it sent.
    moneyless = approved and result.transaction_id is None
    if not approved and result.transaction_id is not None:
        return "transaction_id must be present exactly when approved"
    if result.status is not Status.REJECTED and None in (
        result.request_id,
        result.kiosk_id,
        result.seq,
        result.card_uid,
    ):
        return f"a {result.status} result must echo request_id, kiosk_id, seq and card_uid"
    balances_expected = (
        result.status is not Status.REJECTED
        and result.error_code is not ErrorCode.CARD_NOT_FOUND
        and not moneyless
    )
    balances = (result.previous_balance_cents, result.new_balance_cents)
    if result.error_code in (
        ErrorCode.CARD_NOT_GENUINE,
        ErrorCode.VOID_NOT_ALLOWED,
    ) and balances == (None, None):
        # (1.1) CARD_NOT_GENUINE or VOID_NOT_ALLOWED on an unknown card: no balances
        balances_expected = False
    if balances_expected and None in balances:
        return f"a {result.error_code or result.status} result must carry both balances"
    if moneyless and (balances != (None, None) or result.debt_cents is not None):
        return (
            "an approved result without a transaction_id moves no money: "
            "it must carry no balances and no debt"
        )
    if not balances_expected and balances != (None, None):
        return f"a {result.error_code or result.status} result must carry no balances"
    if result.status is Status.DECLINED and balances[0] != balances[1]:
        return "a declined result must leave the balance unchanged"
    if (result.debt_cents is None) != (balances == (None, None)):
        return "debt_cents must be null exactly when the balances are null"
    return None


def result_to_dict(result: Result) -> dict[str, object]:
    """The JSON object of ``result``: every field, always present, nulls as None."""
    return {
        "v": PROTOCOL_VERSION,
        "request_id": result.request_id,
        "kiosk_id": result.kiosk_id,
        "seq": result.seq,
        "card_uid": result.card_uid,
        "status": str(result.status),
        "error_code": None if result.error_code is None else str(result.error_code),
        "message": result.message,
        "transaction_id": result.transaction_id,
        "previous_balance_cents": result.previous_balance_cents,
        "new_balance_cents": result.new_balance_cents,
        "debt_cents": result.debt_cents,
        "replayed": result.replayed,
        "processed_at_ms": result.processed_at_ms,
    }


# --- scan records and status -----------------------------------------------------------------

_SCAN_FIELDS: Final = frozenset(
    {"v", "type", "kiosk_id", "scanned_at_ms", "card_uid", "status", "reader", "duration_ms"}
)
_STATUS_FIELDS: Final = frozenset({"v", "kiosk_id", "state", "at_ms", "firmware"})
_STATUS_OPTIONAL: Final = frozenset({"offline_pending", "offline_pending_cents"})


def parse_scan(obj: object) -> ScanRecord:
    """Validate a decoded scan record; raise ProtocolError(INVALID_REQUEST)."""
    document = _object(obj, "scan record")
    _version(document, "scan record")
    if document.get("type") != ScanRecord.type:
        _fail(f"scan record type must be scan, got {quote(document.get('type'))}")
    _check_fields(document, _SCAN_FIELDS, frozenset(), "scan record")
    kiosk_id = document["kiosk_id"]
    scanned_at_ms = document["scanned_at_ms"]
    card_uid = document["card_uid"]
    status = document["status"]
    reader = document["reader"]
    duration_ms = document["duration_ms"]
    _check_scan(kiosk_id, scanned_at_ms, card_uid, status, reader, duration_ms)
    return _assemble(
        ScanRecord,
        kiosk_id=kiosk_id,
        scanned_at_ms=scanned_at_ms,
        card_uid=card_uid,
        status=status,
        reader=reader,
        duration_ms=duration_ms,
    )


def scan_to_dict(record: ScanRecord) -> dict[str, object]:
    """The JSON object of ``record``; ``card_uid`` is always present (null when unread)."""
    return {
        "v": PROTOCOL_VERSION,
        "type": ScanRecord.type,
        "kiosk_id": record.kiosk_id,
        "scanned_at_ms": record.scanned_at_ms,
        "card_uid": record.card_uid,
        "status": record.status,
        "reader": record.reader,
        "duration_ms": record.duration_ms,
    }


def parse_status(obj: object) -> KioskStatus:
    """Validate a decoded status message; raise ProtocolError(INVALID_REQUEST)."""
    document = _object(obj, "status")
    _version(document, "status")
    _check_fields(document, _STATUS_FIELDS, _STATUS_OPTIONAL, "status")
    kiosk_id = document["kiosk_id"]
    state = document["state"]
    at_ms = document["at_ms"]
    firmware = document["firmware"]
    offline_pending = document.get("offline_pending", _ABSENT)
    offline_pending_cents = document.get("offline_pending_cents", _ABSENT)
    _check_kiosk_status(kiosk_id, state, at_ms, firmware, offline_pending, offline_pending_cents)
    return _assemble(
        KioskStatus,
        kiosk_id=kiosk_id,
        state=state,
        at_ms=at_ms,
        firmware=firmware,
        offline_pending=None if offline_pending is _ABSENT else offline_pending,
        offline_pending_cents=None if offline_pending_cents is _ABSENT else offline_pending_cents,
    )


def status_to_dict(status: KioskStatus) -> dict[str, object]:
    """The JSON object of ``status``; (1.1) ``offline_pending*`` only when set."""
    document: dict[str, object] = {
        "v": PROTOCOL_VERSION,
        "kiosk_id": status.kiosk_id,
        "state": status.state,
        "at_ms": status.at_ms,
        "firmware": status.firmware,
    }
    if status.offline_pending is not None:
        document["offline_pending"] = status.offline_pending
    if status.offline_pending_cents is not None:
        document["offline_pending_cents"] = status.offline_pending_cents
    return document


# --- config and deny-list (1.1) ----------------------------------------------------------------

_CONFIG_FIELDS: Final = frozenset(
    {"v", "type", "kiosk_id", "version", "issued_at_ms", "currency", "menu", "offline"}
)
_MENU_FIELDS: Final = frozenset({"menu_id", "items"})
_MENU_ITEM_REQUIRED: Final = frozenset({"sku", "name", "unit_price_cents"})
_MENU_ITEM_OPTIONAL: Final = frozenset({"is_deposit", "is_return", "vat_rate_bp", "category"})
_OFFLINE_FIELDS: Final = frozenset({"sale_max_cents", "card_max_cents", "kiosk_max_cents"})
_DENYLIST_FIELDS: Final = frozenset({"v", "type", "version", "issued_at_ms", "card_uids"})


def _message_type(document: Mapping[str, object], expected: str, where: str) -> None:
    if "type" not in document:
        _fail(f"missing field type in {where}")
    if document["type"] != expected:
        _fail(f"{where} type must be {expected}, got {quote(document['type'])}")


def parse_config(obj: object) -> KioskConfig:
    """Validate a decoded config payload; raise ProtocolError(INVALID_REQUEST).

    Every field of PROTOCOL.md's config table is required; ``menu`` and ``offline`` may be null.
    """
    document = _object(obj, "config")
    _version(document, "config")
    _message_type(document, KioskConfig.type, "config")
    _check_fields(document, _CONFIG_FIELDS, frozenset(), "config")
    kiosk_id = document["kiosk_id"]
    _kiosk_id(kiosk_id)
    version = document["version"]
    issued_at_ms = document["issued_at_ms"]
    _check_message_version(version, issued_at_ms)
    currency = _matching(document["currency"], "currency", CURRENCY_PATTERN)
    menu_document = document["menu"]
    menu = None if menu_document is None else _menu(menu_document)
    offline_document = document["offline"]
    offline = None if offline_document is None else _offline(offline_document)
    return _assemble(
        KioskConfig,
        kiosk_id=kiosk_id,
        version=version,
        issued_at_ms=issued_at_ms,
        currency=currency,
        menu=menu,
        offline=offline,
    )


def _menu(value: object) -> Menu:
    document = _object(value, "menu")
    _check_fields(document, _MENU_FIELDS, frozenset(), "menu")
    menu_id = _text(document["menu_id"], "menu.menu_id", MENU_ID_LENGTH_MIN, MENU_ID_LENGTH_MAX)
    entries = document["items"]
    if type(entries) is not list:
        _fail(f"menu.items must be an array, got {json_type_name(entries)}")
    _check_menu_item_count(len(entries))
    items = tuple(_menu_item(entry, f"menu.items[{index}]") for index, entry in enumerate(entries))
    _check_menu_skus_unique(items)
    return _assemble(Menu, menu_id=menu_id, items=items)


def _menu_item(value: object, where: str) -> MenuItem:
    item = _object(value, where)
    _check_fields(item, _MENU_ITEM_REQUIRED, _MENU_ITEM_OPTIONAL, where)
    sku = item["sku"]
    name = item["name"]
    unit_price_cents = item["unit_price_cents"]
    is_deposit = item.get("is_deposit", False)
    is_return = item.get("is_return", False)
    vat_rate_bp = item.get("vat_rate_bp", _ABSENT)
    category = item.get("category", _ABSENT)
    _check_menu_item(
        sku, name, unit_price_cents, is_deposit, is_return, vat_rate_bp, category, f"{where}."
    )
    return _assemble(
        MenuItem,
        sku=sku,
        name=name,
        unit_price_cents=unit_price_cents,
        is_deposit=is_deposit,
        is_return=is_return,
        vat_rate_bp=None if vat_rate_bp is _ABSENT else vat_rate_bp,
        category=None if category is _ABSENT else category,
    )


def _offline(value: object) -> OfflinePolicy:
    document = _object(value, "offline")
    _check_fields(document, _OFFLINE_FIELDS, frozenset(), "offline")
    sale_max_cents = document["sale_max_cents"]
    card_max_cents = document["card_max_cents"]
    kiosk_max_cents = document["kiosk_max_cents"]
    _check_offline_policy(sale_max_cents, card_max_cents, kiosk_max_cents)
    return _assemble(
        OfflinePolicy,
        sale_max_cents=sale_max_cents,
        card_max_cents=card_max_cents,
        kiosk_max_cents=kiosk_max_cents,
    )


def config_to_dict(config: KioskConfig) -> dict[str, object]:
    """The JSON object of ``config``: every field present, ``menu``/``offline`` null when None;
    a menu item's optional fields are omitted when absent (``false`` flags are not written)."""
    menu = config.menu
    offline = config.offline
    return {
        "v": PROTOCOL_VERSION,
        "type": KioskConfig.type,
        "kiosk_id": config.kiosk_id,
        "version": config.version,
        "issued_at_ms": config.issued_at_ms,
        "currency": config.currency,
        "menu": None if menu is None else menu_to_dict(menu),
        "offline": None if offline is None else offline_policy_to_dict(offline),
    }


def offline_policy_to_dict(offline: OfflinePolicy) -> dict[str, object]:
    """The JSON object of a config's ``offline`` policy."""
    return {
        "sale_max_cents": offline.sale_max_cents,
        "card_max_cents": offline.card_max_cents,
        "kiosk_max_cents": offline.kiosk_max_cents,
    }


def menu_to_dict(menu: Menu) -> dict[str, object]:
    """The JSON object of a config's ``menu``."""
    return {"menu_id": menu.menu_id, "items": [_menu_item_to_dict(item) for item in menu.items]}


def _menu_item_to_dict(item: MenuItem) -> dict[str, object]:
    document: dict[str, object] = {
        "sku": item.sku,
        "name": item.name,
        "unit_price_cents": item.unit_price_cents,
    }
    if item.is_deposit:
        document["is_deposit"] = True
    if item.is_return:
        document["is_return"] = True
    if item.vat_rate_bp is not None:
        document["vat_rate_bp"] = item.vat_rate_bp
    if item.category is not None:
        document["category"] = item.category
    return document


def parse_menu(obj: object) -> Menu:
    """Validate a decoded config ``menu`` object on its own (what `festival-cloud menu set`
    reads from a file); raise ProtocolError(INVALID_REQUEST) naming the field."""
    return _menu(obj)


def parse_denylist(obj: object) -> DenyList:
    """Validate a decoded deny-list payload; raise ProtocolError(INVALID_REQUEST)."""
    document = _object(obj, "denylist")
    _version(document, "denylist")
    _message_type(document, DenyList.type, "denylist")
    _check_fields(document, _DENYLIST_FIELDS, frozenset(), "denylist")
    version = document["version"]
    issued_at_ms = document["issued_at_ms"]
    _check_message_version(version, issued_at_ms)
    card_uids = document["card_uids"]
    if type(card_uids) is not list:
        _fail(f"card_uids must be an array, got {json_type_name(card_uids)}")
    _check_card_uids(card_uids)
    return _assemble(
        DenyList, version=version, issued_at_ms=issued_at_ms, card_uids=tuple(card_uids)
    )


def denylist_to_dict(denylist: DenyList) -> dict[str, object]:
    """The JSON object of ``denylist``."""
    return {
        "v": PROTOCOL_VERSION,
        "type": DenyList.type,
        "version": denylist.version,
        "issued_at_ms": denylist.issued_at_ms,
        "card_uids": list(denylist.card_uids),
    }
