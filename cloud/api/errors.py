"""The API's error vocabulary and its one JSON error shape.

Every refusal answers `{"error": <short text>, "error_code": <CODE>, "request_id": <X-Request-ID>}`
(the seed-compatible endpoints add `"success": false` and their own fields; a refused menu adds
`"field"`, the path of the offending field, e.g. `menu.items[2].unit_price_cents`, so the
dashboard's editor can show the error next to it). Codes are the
protocol's (INVALID_REQUEST, CARD_BLOCKED, ...) where one fits, else the HTTP-level ones below.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from starlette.requests import Request
from starlette.responses import Response

UNAUTHORIZED = "UNAUTHORIZED"
NOT_FOUND = "NOT_FOUND"
METHOD_NOT_ALLOWED = "METHOD_NOT_ALLOWED"
PAYLOAD_TOO_LARGE = "PAYLOAD_TOO_LARGE"
UNSUPPORTED_MEDIA_TYPE = "UNSUPPORTED_MEDIA_TYPE"
RATE_LIMITED = "RATE_LIMITED"
SERVICE_UNAVAILABLE = "SERVICE_UNAVAILABLE"
NOT_CONFIGURED = "NOT_CONFIGURED"
PAYMENT_PROVIDER_ERROR = "PAYMENT_PROVIDER_ERROR"
INVALID_SIGNATURE = "INVALID_SIGNATURE"
INVALID_REQUEST = "INVALID_REQUEST"
INTERNAL_ERROR = "INTERNAL_ERROR"

CODE_BY_STATUS = {
    400: INVALID_REQUEST,
    401: UNAUTHORIZED,
    404: NOT_FOUND,
    405: METHOD_NOT_ALLOWED,
    413: PAYLOAD_TOO_LARGE,
    415: UNSUPPORTED_MEDIA_TYPE,
    422: INVALID_REQUEST,
    429: RATE_LIMITED,
    503: SERVICE_UNAVAILABLE,
}


class ApiError(Exception):
    """Raised anywhere in a request; the app answers it with the JSON error shape."""

    def __init__(
        self,
        status_code: int,
        error_code: str,
        message: str,
        *,
        headers: Mapping[str, str] | None = None,
        field: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.error_code = error_code
        self.message = message
        self.headers = dict(headers or {})
        self.field = field


def request_id_of(request: Request) -> str | None:
    value = request.scope.get("state", {}).get("request_id")
    return value if isinstance(value, str) else None


def error_body(
    error_code: str, message: str, request_id: str | None, field: str | None = None
) -> bytes:
    document: dict[str, str | None] = {
        "error": message,
        "error_code": error_code,
        "request_id": request_id,
    }
    if field is not None:
        document["field"] = field
    return json.dumps(document, separators=(",", ":")).encode("utf-8")


def error_response(
    request: Request,
    status_code: int,
    error_code: str,
    message: str,
    headers: Mapping[str, str] | None = None,
    field: str | None = None,
) -> Response:
    return Response(
        error_body(error_code, message, request_id_of(request), field),
        status_code=status_code,
        media_type="application/json",
        headers=dict(headers or {}),
    )
