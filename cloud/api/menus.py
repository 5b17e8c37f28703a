"""(1.1) Central menus over HTTP, behind `Authorization: Bearer $ADMIN_TOKEN`: the admin API the
dashboard's menu editor calls (issue 13 §2), the twin of `festival-cloud menu set|clear|show`.

These routes only *issue* configs (Ledger.issue_kiosk_configs: each kiosk's next version stored,
unsent, in one transaction); the publisher (cloud/publisher.py) sends every issued version, so a
menu saved here reaches the kiosks without this process touching the broker.

A request either issues a config to every kiosk it names or to none: its targets are resolved
first (an unknown kiosk, or a role no kiosk has: 404 UNKNOWN_KIOSK), then the menu is validated
exactly like a config's menu (protocol.models.parse_menu: 400 INVALID_REQUEST naming the field,
also in the error's `field`), and only then is anything written.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from fastapi import APIRouter, Depends, Path
from starlette.requests import Request
from starlette.responses import JSONResponse

from cloud.api.bodies import json_body, json_request_body
from cloud.api.errors import ApiError
from cloud.api.limits import MENU_TARGET_KIOSKS_MAX
from cloud.api.monitoring import json_response, require_admin
from cloud.api.services import Services, services_of
from cloud.ledger_records import KIOSK_ROLES
from cloud.menu_admin import TargetError, named_kiosks
from protocol.errors import ErrorCode, ProtocolError, json_type_name, quote
from protocol.limits import (
    ITEM_NAME_LENGTH_MAX,
    ITEM_NAME_LENGTH_MIN,
    KIOSK_ID_LENGTH_MAX,
    KIOSK_ID_PATTERN,
    MENU_CATEGORY_LENGTH_MAX,
    MENU_CATEGORY_LENGTH_MIN,
    MENU_ID_LENGTH_MAX,
    MENU_ID_LENGTH_MIN,
    MENU_ITEMS_MAX,
    MENU_ITEMS_MIN,
    SKU_LENGTH_MAX,
    SKU_LENGTH_MIN,
    UNIT_PRICE_CENTS_MAX,
    UNIT_PRICE_CENTS_MIN,
    VAT_RATE_BP_MAX,
    VAT_RATE_BP_MIN,
)
from protocol.models import Menu, menu_to_dict, parse_menu

log = logging.getLogger("cloud.api.menus")

MENUS_PATH = "/api/admin/menus"
KIOSK_MENU_PATH = "/api/admin/kiosks/{kiosk_id}/menu"
TARGET_FIELDS = ("kiosks", "role", "all")

KIOSK_ID_REGEX = f"^[a-z][a-z0-9-]{{0,{KIOSK_ID_LENGTH_MAX - 1}}}$"
KIOSK_ID_PATH = Path(
    pattern=KIOSK_ID_REGEX,
    description="kiosk id: a lower-case letter, then lower-case letters, digits and dashes",
    examples=["bar-1"],
)

# Where parse_menu's message names the offending field: "menu.items[2].sku must be ...",
# "unknown field 'x' in menu.items[0]", "missing field items in menu".
_LEADING_PATH = re.compile(r"\A(menu(?:\.[a-z_]+|\[\d+\])*)\b")
_MISSING_FIELD = re.compile(r"\Amissing field ([a-z_]+) in (menu(?:\.[a-z_]+|\[\d+\])*)\Z")
_IN_PATH = re.compile(r" in (menu(?:\.[a-z_]+|\[\d+\])*)\Z")


def field_of(message: str) -> str:
    """The path of the field a parse_menu message is about (the whole menu when it names none)."""
    missing = _MISSING_FIELD.match(message)
    if missing:
        return f"{missing[2]}.{missing[1]}"
    leading = _LEADING_PATH.match(message)
    if leading:
        return leading[1]
    inside = _IN_PATH.search(message)
    return inside[1] if inside else "menu"


def _invalid(message: str, field: str | None) -> ApiError:
    return ApiError(400, ErrorCode.INVALID_REQUEST.value, message, field=field)


def _unknown_kiosk(message: str) -> ApiError:
    return ApiError(404, ErrorCode.UNKNOWN_KIOSK.value, message)


def _targets(document: dict[str, Any], services: Services) -> list[str]:
    """The kiosks a request names (cloud.menu_admin.named_kiosks, the rule `menu set` follows
    too: disabled kiosks included), each registered (else 404), sorted and unique."""
    named = [field for field in TARGET_FIELDS if field in document]
    if len(named) != 1:
        raise _invalid('name the kiosks with exactly one of "kiosks", "role" or "all"', None)
    field = named[0]
    value = document[field]
    kiosk_ids: list[str] | None = None
    role: str | None = None
    if field == "all":
        if value is not True:
            raise _invalid(f"all must be true, got {quote(value)}", "all")
    elif field == "role":
        if type(value) is not str or value not in KIOSK_ROLES:
            raise _invalid(
                f"role must be one of {', '.join(KIOSK_ROLES)}, got {quote(value)}", "role"
            )
        role = value
    else:
        if type(value) is not list or not 1 <= len(value) <= MENU_TARGET_KIOSKS_MAX:
            raise _invalid(
                f"kiosks must be an array of 1..{MENU_TARGET_KIOSKS_MAX} kiosk ids, "
                f"got {json_type_name(value) if type(value) is not list else len(value)}",
                "kiosks",
            )
        for index, kiosk_id in enumerate(value):
            if type(kiosk_id) is not str or not KIOSK_ID_PATTERN.match(kiosk_id):
                raise _invalid(
                    f"kiosks[{index}] is not a kiosk id: {quote(kiosk_id)}", f"kiosks[{index}]"
                )
        if len(set(value)) != len(value):
            raise _invalid("kiosks names a kiosk twice", "kiosks")
        kiosk_ids = value
    try:
        return named_kiosks(services.ledger.kiosks(), kiosk_ids=kiosk_ids, role=role)
    except TargetError as error:
        if error.unknown:
            raise _unknown_kiosk(
                f"unknown kiosk {quote(error.unknown[0])}: nothing was issued"
            ) from None
        raise _unknown_kiosk(str(error)) from None


def _menu(value: object) -> Menu | None:
    if value is None:
        return None
    try:
        return parse_menu(value)
    except ProtocolError as error:
        raise _invalid(error.message, field_of(error.message)) from None


async def _issue(
    services: Services, kiosks: list[str], menu: Menu | None, how: str
) -> JSONResponse:
    versions = await services.ledger_call(
        "issue_kiosk_configs", services.ledger.issue_kiosk_configs, kiosks, menu=menu
    )
    if versions is None:  # kiosks are never deleted; only a concurrent change of the database
        raise _unknown_kiosk("a kiosk is no longer registered: nothing was issued")
    menu_id = None if menu is None else menu.menu_id
    log.warning(
        f"menu {how}",
        extra={"context": {"menu_id": menu_id, "versions": versions}},
    )
    return json_response({"menu_id": menu_id, "versions": versions})


async def put_menus(request: Request) -> JSONResponse:
    """Assign a menu (or none: `"menu": null`) to the kiosks named; issue a config to each."""
    services = services_of(request)
    document = await json_body(request)
    if type(document) is not dict:
        raise _invalid(f"body must be a JSON object, got {json_type_name(document)}", None)
    unknown = sorted(set(document) - {"menu", *TARGET_FIELDS})
    if unknown:
        raise _invalid(f"unknown field {quote(unknown[0])}", unknown[0])
    if "menu" not in document:
        raise _invalid("missing field menu (an object, or null to clear)", "menu")
    kiosks = await services.ledger_call("menu_targets", _targets, document, services)
    menu = _menu(document["menu"])
    return await _issue(services, kiosks, menu, "assigned" if menu else "cleared")


def _registered(services: Services, kiosk_id: str) -> None:
    if kiosk_id not in services.queries.kiosk_ids():
        raise _unknown_kiosk(f"unknown kiosk {quote(kiosk_id)}")


async def get_kiosk_menu(request: Request, kiosk_id: str = KIOSK_ID_PATH) -> JSONResponse:
    """The menu of the kiosk's latest config (what it runs once that version reached it)."""
    services = services_of(request)
    await services.ledger_call("menu_targets", _registered, services, kiosk_id)
    latest = await services.ledger_call("latest_config", services.ledger.latest_config, kiosk_id)
    if latest is None:
        return json_response(
            {"kiosk_id": kiosk_id, "version": None, "published": False, "menu": None}
        )
    menu = latest.document.get("menu")
    return json_response(
        {
            "kiosk_id": kiosk_id,
            "version": latest.version,
            "published": latest.published,
            # As stored when it was issued; re-parsed so the answer has the protocol's shape.
            "menu": None if menu is None else menu_to_dict(parse_menu(menu)),
        }
    )


async def delete_kiosk_menu(request: Request, kiosk_id: str = KIOSK_ID_PATH) -> JSONResponse:
    """Clear one kiosk's menu (it sells from no central menu any more): a config without one."""
    services = services_of(request)
    await services.ledger_call("menu_targets", _registered, services, kiosk_id)
    return await _issue(services, [kiosk_id], None, "cleared")


def _menu_schema() -> dict[str, Any]:
    def text(length_min: int, length_max: int) -> dict[str, Any]:
        return {"type": "string", "minLength": length_min, "maxLength": length_max}

    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["menu_id", "items"],
        "properties": {
            "menu_id": text(MENU_ID_LENGTH_MIN, MENU_ID_LENGTH_MAX),
            "items": {
                "type": "array",
                "minItems": MENU_ITEMS_MIN,
                "maxItems": MENU_ITEMS_MAX,
                "items": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["sku", "name", "unit_price_cents"],
                    "properties": {
                        "sku": text(SKU_LENGTH_MIN, SKU_LENGTH_MAX),
                        "name": text(ITEM_NAME_LENGTH_MIN, ITEM_NAME_LENGTH_MAX),
                        "unit_price_cents": {
                            "type": "integer",
                            "minimum": UNIT_PRICE_CENTS_MIN,
                            "maximum": UNIT_PRICE_CENTS_MAX,
                        },
                        "is_deposit": {"type": "boolean"},
                        "is_return": {"type": "boolean"},
                        "vat_rate_bp": {
                            "type": "integer",
                            "minimum": VAT_RATE_BP_MIN,
                            "maximum": VAT_RATE_BP_MAX,
                        },
                        "category": text(MENU_CATEGORY_LENGTH_MIN, MENU_CATEGORY_LENGTH_MAX),
                    },
                },
            },
        },
    }


_ISSUED_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["menu_id", "versions"],
    "properties": {
        "menu_id": {"type": ["string", "null"]},
        "versions": {"type": "object", "additionalProperties": {"type": "integer"}},
    },
}


def put_menus_openapi() -> dict[str, Any]:
    return {
        "requestBody": json_request_body(
            {
                "type": "object",
                "additionalProperties": False,
                "required": ["menu"],
                "minProperties": 2,
                "maxProperties": 2,
                "properties": {
                    "menu": {"oneOf": [{"type": "null"}, _menu_schema()]},
                    "kiosks": {
                        "type": "array",
                        "minItems": 1,
                        "maxItems": MENU_TARGET_KIOSKS_MAX,
                        "uniqueItems": True,
                        "items": {"type": "string", "pattern": KIOSK_ID_REGEX},
                    },
                    "role": {"type": "string", "enum": list(KIOSK_ROLES)},
                    "all": {"type": "boolean", "enum": [True]},
                },
            }
        ),
        "responses": {
            "200": {
                "description": "a config issued to every kiosk named, with its version",
                "content": {"application/json": {"schema": _ISSUED_SCHEMA}},
            },
            "400": {"description": "invalid body or menu (`field` names what to fix)"},
            "401": {"description": "missing or wrong admin token"},
            "404": {"description": "a kiosk named is not registered: nothing was issued"},
            "413": {"description": "body too large"},
            "415": {"description": "not application/json"},
            "503": {"description": "database unavailable"},
        },
    }


def router() -> APIRouter:
    admin = APIRouter(tags=["admin"], dependencies=[Depends(require_admin)])
    admin.add_api_route(
        MENUS_PATH,
        put_menus,
        methods=["PUT"],
        summary='Assign a menu to kiosks ("kiosks" | "role" | "all"); "menu": null clears it',
        openapi_extra=put_menus_openapi(),
        response_class=JSONResponse,
    )
    kiosk_responses: dict[int | str, dict[str, Any]] = {
        401: {"description": "missing or wrong admin token"},
        404: {"description": "unknown kiosk"},
    }
    admin.add_api_route(
        KIOSK_MENU_PATH,
        get_kiosk_menu,
        methods=["GET"],
        summary="The menu of the kiosk's latest config, with that config's version",
        responses=kiosk_responses,
    )
    admin.add_api_route(
        KIOSK_MENU_PATH,
        delete_kiosk_menu,
        methods=["DELETE"],
        summary="Clear the kiosk's menu (issues a config without one)",
        responses={
            **kiosk_responses,
            200: {
                "description": "the config issued",
                "content": {"application/json": {"schema": _ISSUED_SCHEMA}},
            },
        },
    )
    return admin
