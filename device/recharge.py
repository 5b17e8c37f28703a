"""A checkpoint's top-up as the page sends it, checked before it becomes a RechargeDraft. Pure."""

from __future__ import annotations

from device.machine import CashOutDraft, RechargeDraft, StaffLoginDraft, SwapDraft
from protocol.limits import (
    CARD_UID_PATTERN,
    CHECKPOINT_ID_LENGTH_MAX,
    REQUEST_ID_PATTERN,
    STAFF_ID_LENGTH_MAX,
    STAFF_PIN_PATTERN,
    TEXT_FORBIDDEN_PATTERN,
    TOPUP_CENTS_MIN,
)
from protocol.models import PAYMENT_METHODS, PaymentMethod


class RechargeError(ValueError):
    """The top-up from the page is not acceptable (amount, payment method, staff id)."""


def parse_recharge(
    document: object, *, topup_cents_max: int, config_version: int | None = None
) -> RechargeDraft:
    """``{"amount_cents", "payment_method", "staff_id", "checkpoint_id"?}`` -> RechargeDraft;
    ``config_version``: the config the kiosk runs (the request cites it)."""
    if not isinstance(document, dict):
        raise RechargeError("recharge must be a JSON object")
    allowed = {"amount_cents", "payment_method", "staff_id", "checkpoint_id"}
    unknown = sorted(set(document) - allowed)
    if unknown:
        raise RechargeError(f"unknown field {unknown[0]!r} in recharge")
    amount_cents = document.get("amount_cents")
    if type(amount_cents) is not int or not TOPUP_CENTS_MIN <= amount_cents <= topup_cents_max:
        raise RechargeError(
            f"amount_cents must be an integer {TOPUP_CENTS_MIN}..{topup_cents_max} (cents)"
        )
    payment_method = document.get("payment_method")
    if payment_method == "cash":
        method: PaymentMethod = "cash"
    elif payment_method == "card":
        method = "card"
    else:
        raise RechargeError("payment_method must be " + " or ".join(PAYMENT_METHODS))
    staff_id = _text(document.get("staff_id"), "staff_id", STAFF_ID_LENGTH_MAX)
    if staff_id is None:
        raise RechargeError("staff_id is required: who took the money?")
    checkpoint_id = _text(document.get("checkpoint_id"), "checkpoint_id", CHECKPOINT_ID_LENGTH_MAX)
    return RechargeDraft(
        amount_cents=amount_cents,
        payment_method=method,
        staff_id=staff_id,
        checkpoint_id=checkpoint_id,
        config_version=config_version,
    )


def parse_void(document: object) -> tuple[str, str]:
    """(1.1) ``{"request_id", "staff_id"}`` ("cancel" on a listed order) -> (request_id,
    staff_id)."""
    if not isinstance(document, dict) or set(document) - {"request_id", "staff_id"}:
        raise RechargeError('send {"request_id": "...", "staff_id": "..."}')
    request_id = document.get("request_id")
    if not isinstance(request_id, str) or not REQUEST_ID_PATTERN.match(request_id):
        raise RechargeError("request_id must be the request_id of one of the listed orders")
    staff_id = _text(document.get("staff_id"), "staff_id", STAFF_ID_LENGTH_MAX)
    if staff_id is None:
        raise RechargeError("staff_id is required: who cancels the order?")
    return request_id, staff_id


def parse_swap(document: object, *, config_version: int | None = None) -> SwapDraft:
    """(1.1) ``{"staff_id", "old_card_uid"?}`` ("replace a wristband") -> SwapDraft; without
    ``old_card_uid`` the next tap is the old band (upper-cased hex, as a reader gives it)."""
    if not isinstance(document, dict) or set(document) - {"old_card_uid", "staff_id"}:
        raise RechargeError('send {"staff_id": "...", "old_card_uid": "04A1B2C3D4E5F6"}')
    staff_id = _text(document.get("staff_id"), "staff_id", STAFF_ID_LENGTH_MAX)
    if staff_id is None:
        raise RechargeError("staff_id is required: who replaces the wristband?")
    old_card_uid = document.get("old_card_uid")
    if old_card_uid is not None:
        if not isinstance(old_card_uid, str):
            raise RechargeError("old_card_uid must be the old band's UID in hex")
        old_card_uid = old_card_uid.strip().replace(" ", "").replace(":", "").upper()
        if not CARD_UID_PATTERN.match(old_card_uid):
            raise RechargeError("old_card_uid must be the old band's UID in hex (4, 7 or 10 bytes)")
    return SwapDraft(staff_id=staff_id, old_card_uid=old_card_uid, config_version=config_version)


def parse_staff_login(document: object, *, config_version: int | None = None) -> StaffLoginDraft:
    """(1.1) ``{"staff_id", "pin"}`` ("staff login"; the staff band's tap follows) ->
    StaffLoginDraft. The error never repeats the PIN."""
    if not isinstance(document, dict) or set(document) != {"staff_id", "pin"}:
        raise RechargeError('send {"staff_id": "...", "pin": "4 to 12 digits"}')
    staff_id = _text(document.get("staff_id"), "staff_id", STAFF_ID_LENGTH_MAX)
    if staff_id is None:
        raise RechargeError("staff_id is required: who logs in?")
    pin = document.get("pin")
    if not isinstance(pin, str) or not STAFF_PIN_PATTERN.match(pin):
        raise RechargeError("the PIN is 4 to 12 digits")
    return StaffLoginDraft(staff_id=staff_id, pin=pin, config_version=config_version)


def parse_staff_id(document: object, action: str) -> str:
    """(1.1) ``{"staff_id"}`` (log out, be the one at the till) -> staff_id."""
    if not isinstance(document, dict) or set(document) != {"staff_id"}:
        raise RechargeError('send {"staff_id": "..."}')
    staff_id = _text(document.get("staff_id"), "staff_id", STAFF_ID_LENGTH_MAX)
    if staff_id is None:
        raise RechargeError(f"staff_id is required: who {action}?")
    return staff_id


def parse_cash_out(document: object, *, config_version: int | None = None) -> CashOutDraft:
    """(ours) ``{"staff_id"}`` ("cash out a wristband"; the band's tap and Confirm follow) ->
    CashOutDraft."""
    if not isinstance(document, dict) or set(document) - {"staff_id"}:
        raise RechargeError('send {"staff_id": "..."}')
    staff_id = _text(document.get("staff_id"), "staff_id", STAFF_ID_LENGTH_MAX)
    if staff_id is None:
        raise RechargeError("staff_id is required: who pays out the cash?")
    return CashOutDraft(staff_id=staff_id, config_version=config_version)


def _text(value: object, name: str, length_max: int) -> str | None:
    if value is None:
        return None
    if (
        not isinstance(value, str)
        or not 1 <= len(value) <= length_max
        or TEXT_FORBIDDEN_PATTERN.search(value)
    ):
        raise RechargeError(f"{name} must be 1..{length_max} printable characters")
    return value
