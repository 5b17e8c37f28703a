"""(1.1) What the kiosk's screen says for a result: its own text for CARD_NOT_GENUINE (the
bartender's instruction, whatever check the cloud names), the cloud's message otherwise."""

from __future__ import annotations

from device.kiosk import kiosk_message
from protocol.errors import ErrorCode, Status
from protocol.models import Result


def result(error_code: ErrorCode | None, message: str) -> Result:
    status = Status.APPROVED if error_code is None else error_code.status
    return Result(
        request_id="r-1",
        kiosk_id="bar-1",
        seq=1,
        card_uid="04A1B2C3D4E5F6",
        status=status,
        error_code=error_code,
        message=message,
        transaction_id="tx-1" if error_code is None else None,
        previous_balance_cents=1_000,
        new_balance_cents=550 if error_code is None else 1_000,
        debt_cents=0,
        replayed=False,
        processed_at_ms=1,
    )


def test_a_wristband_that_is_not_genuine_sends_the_attendee_to_the_info_desk() -> None:
    declined = result(
        ErrorCode.CARD_NOT_GENUINE, "Wristband not genuine: see the info desk (no SUN message)"
    )
    assert kiosk_message(declined) == "wristband not genuine \u2014 see the info desk"


def test_other_results_show_the_cloud_s_message() -> None:
    assert kiosk_message(result(None, "Paid")) == "Paid"
    assert kiosk_message(result(ErrorCode.INSUFFICIENT_FUNDS, "Insufficient funds")) == (
        "Insufficient funds"
    )
