"""Bearer tokens for the admin and point-of-sale endpoints, compared in constant time."""

from __future__ import annotations

import hmac

from pydantic import SecretStr
from starlette.requests import Request

from cloud.api.errors import UNAUTHORIZED, ApiError

AUTHORIZATION_HEADER_LENGTH_MAX = 1024


def presented_token(request: Request) -> str | None:
    """The token of an `Authorization: Bearer <token>` header (scheme case-insensitive)."""
    header = request.headers.get("authorization")
    if not header or len(header) > AUTHORIZATION_HEADER_LENGTH_MAX:
        return None
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


def token_matches(presented: str | None, expected: SecretStr | None) -> bool:
    """True only for a configured, non-empty token equal to the presented one."""
    if presented is None or expected is None:
        return False
    secret = expected.get_secret_value()
    if not secret:
        return False
    # compare_digest on bytes: constant time for equal lengths, and never raises on non-ASCII.
    return hmac.compare_digest(presented.encode("utf-8"), secret.encode("utf-8"))


def require_token(request: Request, expected: SecretStr | None, realm: str) -> None:
    if not token_matches(presented_token(request), expected):
        raise ApiError(
            401,
            UNAUTHORIZED,
            "missing or wrong bearer token",
            headers={"WWW-Authenticate": f'Bearer realm="{realm}"'},
        )
