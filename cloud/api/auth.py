"""Bearer tokens for the admin and metrics endpoints (compared in constant time), and which
requests come from this host itself. The point-of-sale devices' tokens are checked by the
database (cloud/pos_devices.py)."""

from __future__ import annotations

import hmac
import ipaddress

from pydantic import SecretStr
from starlette.requests import Request

from cloud.api.errors import UNAUTHORIZED, ApiError
from cloud.api.limits import AUTHORIZATION_HEADER_LENGTH_MAX


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


# Headers a reverse proxy adds. A request carrying one came through a proxy, whatever its peer
# address: the proxy on this host is loopback to us, the client behind it is not.
FORWARDING_HEADERS = ("forwarded", "x-forwarded-for", "x-real-ip")


def is_loopback_request(request: Request) -> bool:
    """True for a client on this host that did not come through a proxy.

    uvicorn (with proxy headers) replaces the peer address by the X-Forwarded-For client when
    the peer is a trusted proxy; a proxy that forwards no such header still cannot make its
    clients local, because any forwarding header makes the request non-local here.
    """
    if any(name in request.headers for name in FORWARDING_HEADERS):
        return False
    host = request.client.host if request.client else ""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback
