"""(1.1) Log a staff member in or out at a running kiosk through its local HTTP interface, as the
page does: the demo's simulated kiosks (cloud/demo.py) and tests call this; a kiosk itself never
does. ``log_in`` types the id and PIN (POST /api/staff/login), taps the staff band on the
simulated reader (POST /api/tap) and waits for the cloud's verified result.

The PIN goes only into the POST body to the kiosk on loopback; it is never logged here and never
part of an exception's text.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any

from device.limits import (
    STAFF_CLIENT_HTTP_TIMEOUT_S,
    STAFF_CLIENT_POLL_S,
    STAFF_CLIENT_RESULT_TIMEOUT_S,
)
from protocol.models import CardSun


class StaffClientError(RuntimeError):
    """The kiosk refused the login or logout, or did not answer in time."""


def _http(method: str, url: str, body: object = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)  # noqa: S310 (loopback)
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=STAFF_CLIENT_HTTP_TIMEOUT_S) as response:  # noqa: S310
            payload = response.read()
            status = int(response.status)
    except urllib.error.HTTPError as error:
        payload = error.read()
        status = int(error.code)
    return status, json.loads(payload) if payload else None


def _error_text(reply: Any) -> str:
    if isinstance(reply, dict):
        return str(reply.get("error") or reply.get("message") or reply)
    return str(reply)


def log_in(
    base_url: str,
    *,
    staff_id: str,
    pin: str,
    band_uid: str,
    band_sun: CardSun | None = None,
    timeout_s: float = STAFF_CLIENT_RESULT_TIMEOUT_S,
) -> dict[str, Any]:
    """Log ``staff_id`` in at the kiosk at ``base_url`` with ``pin`` and their staff band; the
    kiosk's ``staff`` view once the cloud approved (they are then the one at the till).
    StaffClientError when the kiosk or the cloud refuses it (the screen's text) or no result
    came within ``timeout_s``."""
    _http("POST", f"{base_url}/api/dismiss", {})
    status, reply = _http("POST", f"{base_url}/api/staff/login", {"staff_id": staff_id, "pin": pin})
    if status != 200:
        raise StaffClientError(f"login of {staff_id} refused: {_error_text(reply)}")
    tap: dict[str, Any] = {"card_uid": band_uid}
    if band_sun is not None:
        tap["card_sun"] = {"picc_data": band_sun.picc_data, "cmac": band_sun.cmac}
    status, reply = _http("POST", f"{base_url}/api/tap", tap)
    if status != 202:
        _http("POST", f"{base_url}/api/cancel", {})
        raise StaffClientError(f"the staff band's tap was refused: {_error_text(reply)}")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status, state = _http("GET", f"{base_url}/api/state")
        order = state.get("order") if isinstance(state, dict) else None
        if isinstance(order, dict) and order.get("type") == "staff_login":
            screen = state.get("screen")
            if screen == "approved":
                _http("POST", f"{base_url}/api/dismiss", {})
                return dict(state["staff"])
            if screen == "declined":
                _http("POST", f"{base_url}/api/dismiss", {})
                raise StaffClientError(str(state.get("message")))
            if screen == "order_pending" and state.get("notice"):
                _http("POST", f"{base_url}/api/cancel", {})  # e.g. offline: cannot be verified
                raise StaffClientError(str(state.get("notice")))
        time.sleep(STAFF_CLIENT_POLL_S)
    raise StaffClientError(f"no result for the login of {staff_id} within {timeout_s} s")


def log_out(base_url: str, *, staff_id: str) -> None:
    """End ``staff_id``'s login at the kiosk at ``base_url`` (the kiosk sends staff_logout)."""
    _http("POST", f"{base_url}/api/dismiss", {})
    status, reply = _http("POST", f"{base_url}/api/staff/logout", {"staff_id": staff_id})
    if status != 200:
        raise StaffClientError(f"logout of {staff_id} refused: {_error_text(reply)}")
    _http("POST", f"{base_url}/api/dismiss", {})


__all__ = ["StaffClientError", "log_in", "log_out"]
