"""The protocol's small exception vocabulary: outcome statuses, error codes and ProtocolError."""

from __future__ import annotations

from enum import StrEnum
from typing import Final

from protocol.limits import ERROR_MESSAGE_LENGTH_MAX, ERROR_QUOTE_LENGTH_MAX


class Status(StrEnum):
    """The outcome class a result carries."""

    APPROVED = "approved"
    DECLINED = "declined"
    REJECTED = "rejected"


class ErrorCode(StrEnum):
    """Exactly the error codes of PROTOCOL.md's table."""

    INVALID_REQUEST = "INVALID_REQUEST"
    INVALID_SIGNATURE = "INVALID_SIGNATURE"
    UNKNOWN_KIOSK = "UNKNOWN_KIOSK"
    KIOSK_DISABLED = "KIOSK_DISABLED"
    OPERATION_NOT_ALLOWED = "OPERATION_NOT_ALLOWED"
    STALE_REQUEST = "STALE_REQUEST"
    IDEMPOTENCY_CONFLICT = "IDEMPOTENCY_CONFLICT"
    CARD_NOT_FOUND = "CARD_NOT_FOUND"
    CARD_BLOCKED = "CARD_BLOCKED"
    INSUFFICIENT_FUNDS = "INSUFFICIENT_FUNDS"
    BALANCE_LIMIT_EXCEEDED = "BALANCE_LIMIT_EXCEEDED"
    RETURN_LIMIT_EXCEEDED = "RETURN_LIMIT_EXCEEDED"
    # (1.1) A bar order whose lines do not match the menu the cloud sent this kiosk ("Menus").
    PRICE_MISMATCH = "PRICE_MISMATCH"
    OFFLINE_LIMIT_EXCEEDED = "OFFLINE_LIMIT_EXCEEDED"
    # (1.1) sun mode: no SUN message, or one that does not verify, names another UID, or reuses
    # a counter ("Genuine wristbands").
    CARD_NOT_GENUINE = "CARD_NOT_GENUINE"
    # (1.1) A void the rules of PROTOCOL.md's ``void`` refuse (unknown original, another kiosk's
    # or card's, already voided, too old, returns only, deposits that are no longer there).
    VOID_NOT_ALLOWED = "VOID_NOT_ALLOWED"
    # (1.1) FESTIVAL_STAFF_REQUIRED=true: no staff_id, not logged in at this kiosk, disabled, a
    # role that does not allow the request; a refused staff_login.
    STAFF_NOT_ALLOWED = "STAFF_NOT_ALLOWED"

    @property
    def status(self) -> Status:
        """The status a result with this error code has (never ``approved``)."""
        return _STATUS_BY_CODE[self]


_STATUS_BY_CODE: Final[dict[ErrorCode, Status]] = {
    ErrorCode.INVALID_REQUEST: Status.REJECTED,
    ErrorCode.INVALID_SIGNATURE: Status.REJECTED,
    ErrorCode.UNKNOWN_KIOSK: Status.REJECTED,
    ErrorCode.KIOSK_DISABLED: Status.REJECTED,
    ErrorCode.OPERATION_NOT_ALLOWED: Status.REJECTED,
    ErrorCode.STALE_REQUEST: Status.REJECTED,
    ErrorCode.IDEMPOTENCY_CONFLICT: Status.REJECTED,
    ErrorCode.CARD_NOT_FOUND: Status.DECLINED,
    ErrorCode.CARD_BLOCKED: Status.DECLINED,
    ErrorCode.INSUFFICIENT_FUNDS: Status.DECLINED,
    ErrorCode.BALANCE_LIMIT_EXCEEDED: Status.DECLINED,
    ErrorCode.RETURN_LIMIT_EXCEEDED: Status.DECLINED,
    ErrorCode.PRICE_MISMATCH: Status.REJECTED,
    ErrorCode.OFFLINE_LIMIT_EXCEEDED: Status.REJECTED,
    ErrorCode.CARD_NOT_GENUINE: Status.DECLINED,
    ErrorCode.VOID_NOT_ALLOWED: Status.DECLINED,
    ErrorCode.STAFF_NOT_ALLOWED: Status.REJECTED,
}
assert set(_STATUS_BY_CODE) == set(ErrorCode)


def status_for(error_code: ErrorCode | None) -> Status:
    """The status of an outcome: ``approved`` when there is no error code."""
    return Status.APPROVED if error_code is None else error_code.status


def safe_text(text: str, length_max: int = ERROR_MESSAGE_LENGTH_MAX) -> str:
    """``text`` as printable ASCII (other characters backslash-escaped), at most ``length_max``."""
    if not (text.isascii() and text.isprintable()):
        text = "".join(
            char if (char.isascii() and char.isprintable()) else _escape(char) for char in text
        )
    if len(text) > length_max:
        text = text[: length_max - 3] + "..."
    return text


def quote(value: object) -> str:
    """A short, ASCII-safe rendering of an untrusted value for an error message."""
    if isinstance(value, str):
        rendered = "'" + safe_text(value[:ERROR_QUOTE_LENGTH_MAX], length_max=10**6) + "'"
    elif isinstance(value, bool) or value is None or isinstance(value, float):
        rendered = repr(value)
    elif isinstance(value, int):
        # Never format a huge integer in full: str() of a 4000-digit int is slow and unreadable.
        rendered = str(value) if value.bit_length() <= 64 else "a huge integer"
    else:
        rendered = "a JSON " + _json_type_name(value)
    if len(rendered) > ERROR_QUOTE_LENGTH_MAX:
        rendered = rendered[: ERROR_QUOTE_LENGTH_MAX - 3] + "..."
    return rendered


def json_type_name(value: object) -> str:
    """The JSON name of a decoded value's type, for error messages."""
    return _json_type_name(value)


# A decoded JSON value's type and its JSON name, the first that matches: a bool is an int too.
_JSON_TYPE_NAMES: Final[tuple[tuple[type[object], str], ...]] = (
    (type(None), "null"),
    (bool, "boolean"),
    (int, "integer"),
    (float, "non-integer number"),
    (str, "string"),
    (list, "array"),
    (dict, "object"),
)


def _json_type_name(value: object) -> str:
    for kind, name in _JSON_TYPE_NAMES:
        if isinstance(value, kind):
            return name
    return type(value).__name__


def _escape(char: str) -> str:
    code_point = ord(char)
    if code_point <= 0xFF:
        return f"\\x{code_point:02x}"
    if code_point <= 0xFFFF:
        return f"\\u{code_point:04x}"
    return f"\\U{code_point:08x}"


class ProtocolError(ValueError):
    """A message broke the protocol; ``code`` says how, ``message`` is short human text.

    It is a ValueError so that validators built on this package (pydantic, argparse types)
    report it as invalid input.

    ``message`` is printable ASCII of at most 200 characters and never repeats attacker input at
    length. ``echo`` holds the request fields a result may echo (see codec.parse_authenticated);
    it is empty when nothing may be echoed.
    """

    code: ErrorCode
    message: str
    echo: dict[str, object]

    def __init__(
        self, code: ErrorCode, message: str, *, echo: dict[str, object] | None = None
    ) -> None:
        self.code = ErrorCode(code)
        self.message = safe_text(message)
        self.echo = {} if echo is None else dict(echo)
        super().__init__(self.code, self.message)

    def __str__(self) -> str:
        return f"{self.code.value}: {self.message}"

    def __repr__(self) -> str:
        return f"ProtocolError({self.code.value!r}, {self.message!r})"

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_protocol_error, (self.code, self.message, self.echo))

    @property
    def status(self) -> Status:
        """The result status this error leads to."""
        return self.code.status

    def with_echo(self, echo: dict[str, object]) -> ProtocolError:
        """A copy of this error carrying ``echo``."""
        return ProtocolError(self.code, self.message, echo=echo)


def _rebuild_protocol_error(
    code: ErrorCode, message: str, echo: dict[str, object]
) -> ProtocolError:
    return ProtocolError(code, message, echo=echo)
