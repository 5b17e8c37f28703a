"""The dashboard's shift close (issue 17 section 4, admin bearer ADMIN_TOKEN):
POST /api/shifts/close {"checkpoint_id", "counted_cents"} runs the CLI's own function
(cloud/shifts.py ShiftStore.close, sp_shift_close) and answers the close (expected, counted,
variance). An unknown checkpoint or a bad amount is a 400 naming the field to fix."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from fastapi import APIRouter, Depends
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse

from cloud.api.errors import INVALID_REQUEST, UNSUPPORTED_MEDIA_TYPE, ApiError
from cloud.api.monitoring import json_response, require_admin
from cloud.api.topups import is_json
from cloud.limits import SHIFT_COUNTED_CENTS_MAX
from cloud.shifts import ShiftRefused, ShiftStore
from protocol.errors import ProtocolError, json_type_name, quote
from protocol.limits import CHECKPOINT_ID_LENGTH_MAX, CHECKPOINT_ID_LENGTH_MIN
from protocol.strict_json import loads_strict

SHIFT_CLOSE_PATH = "/api/shifts/close"
SHIFT_CLOSE_FIELDS = ("checkpoint_id", "counted_cents")


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
    if (
        type(checkpoint_id) is not str
        or not CHECKPOINT_ID_LENGTH_MIN <= len(checkpoint_id) <= CHECKPOINT_ID_LENGTH_MAX
        or not checkpoint_id.isprintable()
    ):
        raise _invalid(
            f"checkpoint_id must be a checkpoint id of {CHECKPOINT_ID_LENGTH_MIN}.."
            f"{CHECKPOINT_ID_LENGTH_MAX} printable characters, got {quote(checkpoint_id)}",
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


def router(store: ShiftStore) -> APIRouter:
    async def close(request: Request) -> JSONResponse:
        if not is_json(request.headers.get("content-type")):
            raise ApiError(415, UNSUPPORTED_MEDIA_TYPE, "send application/json")
        try:
            document = loads_strict(await request.body())
        except ProtocolError as error:
            raise _invalid(error.message, None) from None
        checkpoint_id, counted_cents = close_request(document)
        try:
            closed = await run_in_threadpool(store.close, checkpoint_id, counted_cents, "dashboard")
        except ShiftRefused as refused:
            field = "checkpoint_id" if "checkpoint" in str(refused) else "counted_cents"
            raise _invalid(str(refused), field) from None
        return json_response(asdict(closed))

    responses: dict[int | str, dict[str, Any]] = {
        200: {"description": "the close: expected, counted and variance in cents"},
        400: {"description": "bad body, unknown checkpoint or bad amount (`field` names it)"},
        401: {"description": "missing or wrong admin token"},
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
    )
    return routes
