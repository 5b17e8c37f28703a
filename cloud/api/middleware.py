"""The ASGI layer every request passes: request id, body size limit, metrics, one log line.

A pure ASGI middleware (not Starlette's BaseHTTPMiddleware) so that the log context bound here
(`cloud.logs.bind`) is the same context the endpoint, its thread-pool calls and the ledger run
in: every log line written for a request carries its `request_id`.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cloud.api.errors import INTERNAL_ERROR, PAYLOAD_TOO_LARGE, ApiError, error_body
from cloud.api.limits import REQUEST_ID_HEADER, REQUEST_ID_PATTERN
from cloud.api.metrics import ApiMetrics
from cloud.logs import bind

log = logging.getLogger("cloud.api")

UNMATCHED_ROUTE = "unmatched"


LOG_FIELDS_KEY = "log_fields"


def annotate_request_log(request: Request, **fields: Any) -> None:
    """Add fields to the request's one "request" log line (written when it completes)."""
    request.scope.setdefault("state", {}).setdefault(LOG_FIELDS_KEY, {}).update(fields)


def new_request_id() -> str:
    """A time-ordered id (UUIDv7 layout: 48-bit milliseconds, then random bits)."""
    milliseconds = time.time_ns() // 1_000_000
    random_bits = uuid.uuid4().int & ((1 << 74) - 1)
    value = (milliseconds << 80) | (0x7 << 76) | ((random_bits >> 62) << 64)
    value |= (0b10 << 62) | (random_bits & ((1 << 62) - 1))
    return str(uuid.UUID(int=value))


def request_id_from(headers: list[tuple[bytes, bytes]]) -> str:
    """The caller's X-Request-ID when well-formed, else a fresh one."""
    for name, value in headers:
        if name == REQUEST_ID_HEADER.encode():
            try:
                text = value.decode("ascii")
            except UnicodeDecodeError:
                break
            if REQUEST_ID_PATTERN.match(text):
                return text
            break
    return new_request_id()


def route_label(scope: Scope) -> str:
    """The route template (bounded cardinality), never the raw path."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    if isinstance(path, str):
        return path
    if scope.get("path", "").startswith("/static/"):
        return "/static"
    return UNMATCHED_ROUTE


class BodyTooLarge(ApiError):
    def __init__(self, limit_bytes: int) -> None:
        super().__init__(413, PAYLOAD_TOO_LARGE, f"request body larger than {limit_bytes} bytes")


class RequestContextMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        metrics: ApiMetrics,
        body_limit_for: Callable[[str], int],
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.body_limit_for = body_limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        headers: list[tuple[bytes, bytes]] = scope.get("headers", [])
        request_id = request_id_from(headers)
        scope.setdefault("state", {})["request_id"] = request_id
        limit_bytes = self.body_limit_for(scope.get("path", ""))
        status_holder: dict[str, Any] = {"status": 0, "started": False}

        async def send_with_request_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_holder["status"] = message["status"]
                status_holder["started"] = True
                response_headers = [
                    (name, value)
                    for name, value in message.get("headers", [])
                    if name.lower() != REQUEST_ID_HEADER.encode()
                ]
                response_headers.append((REQUEST_ID_HEADER.encode(), request_id.encode()))
                message = {**message, "headers": response_headers}
            await send(message)

        received_bytes = 0

        async def limited_receive() -> Message:
            nonlocal received_bytes
            message = await receive()
            if message["type"] == "http.request":
                received_bytes += len(message.get("body", b""))
                if received_bytes > limit_bytes:
                    raise BodyTooLarge(limit_bytes)
            return message

        with bind(request_id=request_id):
            try:
                declared = _content_length(headers)
                if declared is not None and declared > limit_bytes:
                    await _send_error(send_with_request_id, BodyTooLarge(limit_bytes), request_id)
                else:
                    await self.app(scope, limited_receive, send_with_request_id)
            except Exception:
                log.exception("unhandled error")
                if not status_holder["started"]:
                    await _send_error(
                        send_with_request_id,
                        ApiError(500, INTERNAL_ERROR, "internal error"),
                        request_id,
                    )
            finally:
                elapsed_s = time.perf_counter() - started
                route = route_label(scope)
                status = status_holder["status"] or 500
                method = scope.get("method", "")
                self.metrics.requests.labels(route, method, str(status)).inc()
                self.metrics.request_seconds.labels(route).observe(elapsed_s)
                log.info(
                    "request",
                    extra={
                        "context": {
                            "method": method,
                            "path": scope.get("path", ""),
                            "route": route,
                            "status": status,
                            "duration_ms": round(elapsed_s * 1000, 3),
                            "client": (scope.get("client") or ("", 0))[0],
                            **scope["state"].get(LOG_FIELDS_KEY, {}),
                        }
                    },
                )


def _content_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    for name, value in headers:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _send_error(send: Send, error: ApiError, request_id: str) -> None:
    body = error_body(error.error_code, error.message, request_id)
    response_headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        # The unread body stays on the socket: do not let the client reuse this connection.
        (b"connection", b"close"),
    ]
    await send(
        {"type": "http.response.start", "status": error.status_code, "headers": response_headers}
    )
    await send({"type": "http.response.body", "body": body})
