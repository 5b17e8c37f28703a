"""The dashboard's shift close (issue 17 section 4, admin bearer ADMIN_TOKEN):
POST /api/shifts/close {"checkpoint_id", "counted_cents"} runs the CLI's own function
(cloud/shifts.py ShiftStore.close, sp_shift_close) and answers the close (expected, counted,
variance). A bad body or amount is a 400 naming the field to fix; an unknown checkpoint (no
checkpoint kiosk registered for it, no cash ever taken) a 404 naming `checkpoint_id`."""

from __future__ import annotations

import re
from dataclasses import asdict
from typing import Any

from fastapi import APIRouter, Depends
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse

from cloud.api.bodies import json_body, json_request_body
from cloud.api.errors import INVALID_REQUEST, NOT_FOUND, ApiError
from cloud.api.monitoring import json_response, require_admin
from cloud.limits import SHIFT_COUNTED_CENTS_MAX
from cloud.shifts import ShiftRefused, ShiftStore
from protocol.errors import json_type_name, quote
from protocol.limits import CHECKPOINT_ID_LENGTH_MAX, CHECKPOINT_ID_LENGTH_MIN

SHIFT_CLOSE_PATH = "/api/shifts/close"
SHIFT_CLOSE_FIELDS = ("checkpoint_id", "counted_cents")
# A checkpoint id: 1..64 characters, no control character (shift_closes' own CHECK).
CHECKPOINT_ID_PATTERN = (
    f"^[^\\u0000-\\u001f\\u007f-\\u009f]{{{CHECKPOINT_ID_LENGTH_MIN},{CHECKPOINT_ID_LENGTH_MAX}}}$"
)
CHECKPOINT_ID = re.compile(
    f"\\A[^\\x00-\\x1f\\x7f-\\x9f]{{{CHECKPOINT_ID_LENGTH_MIN},{CHECKPOINT_ID_LENGTH_MAX}}}\\Z"
)


def _invalid(message: str, field: str | None) -> ApiError:
    return ApiError(400, INVALID_REQUEST, message, field=field)


def close_request(document: object) -> tuple[str, int]:
    """(checkpoint_id, counted_cents) of a close's body; ApiError 400 naming the field."""
    if type(document) is not dict:
        raise _invalid(f"body must be a JSON object, got {json_type_name(document)}", None)
    unknown = sorted(set(document) - set(SHIFT_CLOSE_FIELDS))
    if unknown:
        raise _invalid(f"unknown field {quote(unknown[0])}", unknown[0])
    checkpoint_id = document.get("checkpoint_id")
    if type(checkpoint_id) is not str or not CHECKPOINT_ID.match(checkpoint_id):
        raise _invalid(
            f"checkpoint_id must be a checkpoint id of {CHECKPOINT_ID_LENGTH_MIN}.."
            f"{CHECKPOINT_ID_LENGTH_MAX} characters without control characters,"
            f" got {quote(checkpoint_id)}",
            "checkpoint_id",
        )
    counted = document.get("counted_cents")
    if type(counted) is not int or not 0 <= counted <= SHIFT_COUNTED_CENTS_MAX:
        raise _invalid(
            f"counted_cents must be an integer number of cents 0..{SHIFT_COUNTED_CENTS_MAX},"
            f" got {quote(counted)}",
            "counted_cents",
        )
    return checkpoint_id, counted


def close_openapi() -> dict[str, Any]:
    """The body's schema (the handler reads the raw body: strict JSON, its own 400s)."""
    return {
        "requestBody": json_request_body(
            {
                "type": "object",
                "additionalProperties": False,
                "required": list(SHIFT_CLOSE_FIELDS),
                "properties": {
                    "checkpoint_id": {
                        "type": "string",
                        "minLength": CHECKPOINT_ID_LENGTH_MIN,
                        "maxLength": CHECKPOINT_ID_LENGTH_MAX,
                        "pattern": CHECKPOINT_ID_PATTERN,
                    },
                    "counted_cents": {
                        "type": "integer",
                        "minimum": 0,
                        "maximum": SHIFT_COUNTED_CENTS_MAX,
                        "description": "the cash counted in the drawer, in cents",
                    },
                },
            }
        )
    }


def router(store: ShiftStore) -> APIRouter:
    async def close(request: Request) -> JSONResponse:
        document = await json_body(request)
        checkpoint_id, counted_cents = close_request(document)
        try:
            closed = await run_in_threadpool(store.close, checkpoint_id, counted_cents, "dashboard")
        except ShiftRefused as refused:
            # The body was checked above: what sp_shift_close still refuses is the checkpoint.
            raise ApiError(404, NOT_FOUND, str(refused), field="checkpoint_id") from None
        return json_response(asdict(closed))

    responses: dict[int | str, dict[str, Any]] = {
        200: {"description": "the close: expected, counted and variance in cents"},
        400: {"description": "bad body or amount (`field` names it); nothing booked"},
        401: {"description": "missing or wrong admin token"},
        404: {"description": "unknown checkpoint (`field`: checkpoint_id); nothing booked"},
        415: {"description": "not application/json"},
        503: {"description": "database unavailable"},
    }
    routes = APIRouter(tags=["admin"], dependencies=[Depends(require_admin)])
    routes.add_api_route(
        SHIFT_CLOSE_PATH,
        close,
        methods=["POST"],
        summary="Close a checkpoint's shift: count its drawer against the cash expected",
        responses=responses,
        response_class=JSONResponse,
        openapi_extra=close_openapi(),
    )
    return routes
