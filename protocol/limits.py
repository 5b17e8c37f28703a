"""Every limit of wire protocol v1, in one place.

Names follow the project style: ``*_max`` / ``*_min``, units last. Values that a deployment may
configure end in ``_DEFAULT``; the others are fixed by PROTOCOL.md or chosen in docs/protocol.md.

The ``*_PATTERN`` constants are compiled regular expressions anchored with ``\\A`` and ``\\Z`` and
written with explicit ASCII classes (never ``\\d`` or ``\\w``, which match non-ASCII digits and
letters in Python), so ``match``, ``search`` and ``fullmatch`` all accept exactly the same strings.
"""

from __future__ import annotations

import re
from typing import Final

PROTOCOL_VERSION: Final = 1

# Whole MQTT payload (the JWS compact string), in bytes.
MESSAGE_BYTES_MAX: Final = 8192
# (1.1) A config or deny-list message (the whole JWS), below the broker's 262144-byte packet cap,
# which counts the MQTT headers too.
CONFIG_BYTES_MAX: Final = 196_608
# The JWS protected header: its kid and typ members, and how many decoded headers are memoised.
JWS_KID_LENGTH_MAX: Final = 64
JWS_TYP_LENGTH_MAX: Final = 64
JWS_HEADER_CACHE_MAX: Final = 4096
# Nesting of JSON containers: a request is object > items array > item object, i.e. depth 3;
# (1.1) a config is object > menu object > items array > item object, depth 4, the most any
# message needs (a deny-list is 2).
JSON_DEPTH_MAX: Final = 4

REQUEST_ID_LENGTH_MIN: Final = 1
REQUEST_ID_LENGTH_MAX: Final = 64
KIOSK_ID_LENGTH_MIN: Final = 1
KIOSK_ID_LENGTH_MAX: Final = 32
# Kiosk ids that can never be registered: "cloud" is the kid of results.
KIOSK_IDS_RESERVED: Final = frozenset({"cloud"})
CLOUD_KID: Final = "cloud"

SEQ_MIN: Final = 1
# seq and every *_ms timestamp must fit a PostgreSQL bigint.
SEQ_MAX: Final = 2**63 - 1
# Unix milliseconds: 1970-01-01T00:00:00.000Z .. 9999-12-31T23:59:59.999Z, so that every
# timestamp converts to a Python datetime and a PostgreSQL timestamptz.
TIMESTAMP_MS_MIN: Final = 0
TIMESTAMP_MS_MAX: Final = 253_402_300_799_999

ITEMS_MIN: Final = 1
ITEMS_MAX: Final = 50
ITEM_NAME_LENGTH_MIN: Final = 1
ITEM_NAME_LENGTH_MAX: Final = 64
ITEM_QUANTITY_MIN: Final = 1
ITEM_QUANTITY_MAX: Final = 99
UNIT_PRICE_CENTS_MIN: Final = 0
UNIT_PRICE_CENTS_MAX: Final = 100_000
SKU_LENGTH_MIN: Final = 1
SKU_LENGTH_MAX: Final = 32
STAFF_ID_LENGTH_MIN: Final = 1
STAFF_ID_LENGTH_MAX: Final = 64
# (1.1) A staff_login's PIN: a string of 4-12 ASCII digits.
STAFF_PIN_PATTERN: Final = re.compile(r"\A[0-9]{4,12}\Z")
CHECKPOINT_ID_LENGTH_MIN: Final = 1
CHECKPOINT_ID_LENGTH_MAX: Final = 64
# The largest |total_cents| a valid bar order can have (50 x 99 x 1000.00).
ORDER_TOTAL_CENTS_MAX: Final = ITEMS_MAX * ITEM_QUANTITY_MAX * UNIT_PRICE_CENTS_MAX

# (1.1) Config and deny-list messages (PROTOCOL.md "Config and deny-list"). A version, like seq,
# must fit a PostgreSQL bigint.
CONFIG_VERSION_MIN: Final = 1
CONFIG_VERSION_MAX: Final = 2**63 - 1
MENU_ID_LENGTH_MIN: Final = 1
MENU_ID_LENGTH_MAX: Final = 64
MENU_ITEMS_MIN: Final = 1
MENU_ITEMS_MAX: Final = 200
MENU_CATEGORY_LENGTH_MIN: Final = 1
MENU_CATEGORY_LENGTH_MAX: Final = 32
VAT_RATE_BP_MIN: Final = 0
VAT_RATE_BP_MAX: Final = 10_000
# An offline policy's limits: at least one cent; at most what a bigint of cents holds.
OFFLINE_CENTS_MIN: Final = 1
OFFLINE_CENTS_MAX: Final = 2**63 - 1
DENYLIST_CARDS_MAX: Final = 6000
# (1.1) A status message's count and amount of the offline sales a kiosk holds unanswered.
OFFLINE_PENDING_MIN: Final = 0
OFFLINE_PENDING_MAX: Final = 2**63 - 1
OFFLINE_PENDING_CENTS_MIN: Final = 0
OFFLINE_PENDING_CENTS_MAX: Final = 2**63 - 1

TOPUP_CENTS_MIN: Final = 1
TOPUP_CENTS_MAX_DEFAULT: Final = 100_000
BALANCE_CENTS_MAX_DEFAULT: Final = 150_000
# (1.1) The most the return lines of one bar order may add up to (FESTIVAL_RETURN_MAX_CENTS).
RETURN_CENTS_MAX_DEFAULT: Final = 2000
# (1.1) How long after a config is superseded an order priced from it is still accepted
# (FESTIVAL_MENU_GRACE_S, PROTOCOL.md "Menus").
MENU_GRACE_S_DEFAULT: Final = 600
# (1.1) How long after an order's created_at_ms its kiosk may void it (FESTIVAL_VOID_WINDOW_S,
# PROTOCOL.md `void`).
VOID_WINDOW_S_DEFAULT: Final = 900
# Balances in results are never negative and must fit a PostgreSQL bigint.
BALANCE_CENTS_MIN: Final = 0
BALANCE_CENTS_WIRE_MAX: Final = 2**63 - 1

STALE_AFTER_S_DEFAULT: Final = 7 * 24 * 3600
FUTURE_SKEW_S_DEFAULT: Final = 5 * 60
SESSION_EXPIRY_S_DEFAULT: Final = 24 * 3600

RESULT_MESSAGE_LENGTH_MIN: Final = 0
RESULT_MESSAGE_LENGTH_MAX: Final = 200
TRANSACTION_ID_LENGTH_MIN: Final = 1
TRANSACTION_ID_LENGTH_MAX: Final = 64

READER_NAME_LENGTH_MIN: Final = 0
READER_NAME_LENGTH_MAX: Final = 64
SCAN_DURATION_MS_MIN: Final = 0
SCAN_DURATION_MS_MAX: Final = 3_600_000
FIRMWARE_LENGTH_MIN: Final = 1
FIRMWARE_LENGTH_MAX: Final = 64

TOPIC_PREFIX_LENGTH_MAX: Final = 64
SHARE_GROUP_LENGTH_MAX: Final = 32
# How much of an offending value an error message may quote.
ERROR_QUOTE_LENGTH_MAX: Final = 32
ERROR_MESSAGE_LENGTH_MAX: Final = 200

# The id patterns carry the length limits above (a kiosk id's first character is a letter).
KIOSK_ID_PATTERN: Final = re.compile(
    rf"\A[a-z][a-z0-9-]{{{KIOSK_ID_LENGTH_MIN - 1},{KIOSK_ID_LENGTH_MAX - 1}}}\Z"
)
REQUEST_ID_PATTERN: Final = re.compile(
    rf"\A[A-Za-z0-9._:-]{{{REQUEST_ID_LENGTH_MIN},{REQUEST_ID_LENGTH_MAX}}}\Z"
)
TRANSACTION_ID_PATTERN: Final = re.compile(
    rf"\A[A-Za-z0-9._:-]{{{TRANSACTION_ID_LENGTH_MIN},{TRANSACTION_ID_LENGTH_MAX}}}\Z"
)
# 4, 7 or 10 bytes as upper-case hex.
_CARD_UID: Final = r"(?:[0-9A-F]{20}|[0-9A-F]{14}|[0-9A-F]{8})"
CARD_UID_PATTERN: Final = re.compile(rf"\A{_CARD_UID}\Z")
# (1.1) Card UIDs joined by commas: a deny-list's 6000 cards checked in one pass.
CARD_UIDS_JOINED_PATTERN: Final = re.compile(rf"\A{_CARD_UID}(?:,{_CARD_UID})*\Z")
# (1.1) Genuine wristbands: SDMReadCtr is 3 bytes; the NDEF URI a 256-byte NDEF file holds after
# NLEN (2), the short record's header (4) and its URI prefix code (1).
SUN_COUNTER_MAX: Final = 0xFFFFFF
NDEF_URI_LENGTH_MAX: Final = 256 - 2 - 4 - 1
# (1.1) A request's card_sun: the SUN message of a genuine wristband (PROTOCOL.md).
CARD_SUN_PICC_DATA_PATTERN: Final = re.compile(r"\A[0-9A-F]{32}\Z")
CARD_SUN_CMAC_PATTERN: Final = re.compile(r"\A[0-9A-F]{16}\Z")
# ISO 4217 alphabetic code.
CURRENCY_PATTERN: Final = re.compile(r"\A[A-Z]{3}\Z")
# One or more topic levels of [A-Za-z0-9_-]; never a wildcard, "$" or an empty level.
TOPIC_PREFIX_PATTERN: Final = re.compile(r"\A[A-Za-z0-9_-]+(?:/[A-Za-z0-9_-]+)*\Z")
SHARE_GROUP_PATTERN: Final = re.compile(rf"\A[A-Za-z0-9_-]{{1,{SHARE_GROUP_LENGTH_MAX}}}\Z")
# Characters refused in every free-text field (item names, staff ids, messages, ...):
# C0/C1 controls and DEL (PostgreSQL refuses NUL; newlines break one-line logs and receipts),
# line/paragraph separators, bidirectional overrides and isolates (they can make a receipt
# read differently from what was charged) and lone surrogates (not encodable as UTF-8).
TEXT_FORBIDDEN_PATTERN: Final = re.compile(
    "[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]"
)
