"""A JSON request body: read (415 unless application/json, strict JSON or a 400) and described.

The handlers that take JSON read the raw body themselves (strict JSON: no duplicate keys, no
NaN, bounded depth) and check its fields with their own 400s; `json_request_body` is the
OpenAPI `requestBody` they declare for it in `openapi_extra`.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request

from cloud.api.errors import INVALID_REQUEST, UNSUPPORTED_MEDIA_TYPE, ApiError
from protocol.errors import ProtocolError
from protocol.strict_json import loads_strict


def is_json(content_type: str | None) -> bool:
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    return media_type == "application/json"


def require_json(request: Request) -> None:
    """415 unless the request says its body is application/json."""
    if not is_json(request.headers.get("content-type")):
        raise ApiError(415, UNSUPPORTED_MEDIA_TYPE, "send application/json")


async def parsed_body(request: Request) -> object:
    """The body as strict JSON; a 400 (INVALID_REQUEST, the parser's message) when it is not."""
    try:
        return loads_strict(await request.body())
    except ProtocolError as error:
        raise ApiError(400, INVALID_REQUEST, error.message) from None


async def json_body(request: Request) -> object:
    """`require_json`, then `parsed_body`: the document, its fields not checked yet."""
    require_json(request)
    return await parsed_body(request)


def json_request_body(schema: dict[str, Any]) -> dict[str, Any]:
    """The OpenAPI `requestBody` of a required JSON body of this schema."""
    return {"required": True, "content": {"application/json": {"schema": schema}}}
