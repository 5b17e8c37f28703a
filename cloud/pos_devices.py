"""Registered point-of-sale devices of the seed-compatible HTTP endpoints (revision 0007).

Each device has an id in the kiosk id format (never a kiosk's id: the ledger books its sales and
cash drawer under that id), a role like a kiosk's (`bar`, `checkpoint`, `all`), an enabled flag,
its own seq, and a bearer token shown once by `festival-cloud pos add` and stored only as its
SHA-256. The token is `<device id>.<43 characters of base64url>`: 32 random bytes, so a fast hash
is the right one (nobody can search 2^256 tokens, and a slow hash would cost every request a
key derivation); the device id in it lets the database find the one row to compare with, and the
comparison reads every byte of the digests (ledger_digests_equal).

`PosDevices(engine)` is the database adapter (the API authenticates and applies its requests with
it, the CLI registers); the `pos_*` functions are the `festival-cloud pos` verbs. The API's role
(festival_api) reaches the ledger's requests only through sp_pos_handle_request (revision 0025),
which takes the bearer token itself, hashes it as token_sha256 does and checks the device, its
role and its drawer: without a device's token that role applies nothing.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import secrets
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final

from cloud.database import (
    Engine,
    IntegrityError,
    TransientDatabaseError,
    text,
    translate_errors,
)
from cloud.limits import POS_TOKEN_LENGTH_MAX
from protocol.limits import KIOSK_ID_PATTERN, KIOSK_IDS_RESERVED

if TYPE_CHECKING:
    from cloud.ledger_records import LedgerRequest, Outcome

POS_ROLES: Final = ("bar", "checkpoint", "all")
# Ids the ledger used before 1.1 for the shared-token point of sale: never a device's.
POS_DEVICE_IDS_RESERVED: Final = KIOSK_IDS_RESERVED | {"pos-http"}
TOKEN_SECRET_BYTES: Final = 32
TOKEN_SEPARATOR: Final = "."  # noqa: S105 - a separator, not a secret
# Which request types each role may send (PROTOCOL.md: a kiosk's role, the same for a device).
ALLOWED_TYPES_BY_ROLE: Final = {
    "bar": frozenset({"bar_order"}),
    "checkpoint": frozenset({"checkpoint_recharge"}),
    "all": frozenset({"bar_order", "checkpoint_recharge"}),
}


@dataclass(frozen=True, slots=True)
class AuthenticatedDevice:
    device_id: str
    role: str
    seq: int

    def may_send(self, request_type: str) -> bool:
        return request_type in ALLOWED_TYPES_BY_ROLE.get(self.role, frozenset())


def valid_device_id(device_id: str) -> bool:
    return bool(KIOSK_ID_PATTERN.match(device_id)) and device_id not in POS_DEVICE_IDS_RESERVED


def new_token(device_id: str) -> str:
    assert valid_device_id(device_id), device_id
    return f"{device_id}{TOKEN_SEPARATOR}{secrets.token_urlsafe(TOKEN_SECRET_BYTES)}"


def token_sha256(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


def claimed_device_id(token: str | None) -> str | None:
    """The device id a presented token names, or None when it cannot be one of ours."""
    if token is None or len(token) > POS_TOKEN_LENGTH_MAX:
        return None
    device_id, separator, secret = token.rpartition(TOKEN_SEPARATOR)
    if not separator or not secret or not valid_device_id(device_id):
        return None
    return device_id


class PosDevices:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def _scalar(self, sql: str, **params: object) -> Any:
        with translate_errors(), self._engine.begin() as connection:
            return connection.execute(text(sql), params).scalar_one()

    def authenticate(self, token: str | None) -> AuthenticatedDevice | None:
        """The enabled device this bearer token belongs to (with its next seq), else None.

        Always asks the database, whatever the token looks like: so a database that is away is
        a TransientDatabaseError (503) for every caller, never a 401 that a device would take
        as final, and answers take the same path for every token.
        """
        device_id = claimed_device_id(token)
        digest = token_sha256(token) if device_id is not None and token is not None else None
        document = self._scalar(
            "SELECT sp_pos_authenticate(:device_id, :digest)", device_id=device_id, digest=digest
        )
        if document is None:
            return None
        return AuthenticatedDevice(
            device_id=str(document["device_id"]),
            role=str(document["role"]),
            seq=int(document["seq"]),
        )

    def apply(
        self,
        token: str | None,
        item: LedgerRequest,
        *,
        balance_cents_max: int,
        topup_cents_max: int,
        return_cents_max: int,
        menu_grace_s: int,
    ) -> Outcome | None:
        """Apply one request of the device this bearer token belongs to (sp_pos_handle_request,
        revision 0025): None when the token is not an enabled device's (any more), else the
        outcome - a stored OPERATION_NOT_ALLOWED or INVALID_REQUEST rejection when the device's
        role or drawer does not allow the request, which the database decides itself. The
        request must be the device's (its id, source http, its seq from authenticate)."""
        from cloud.ledger import Ledger

        ledger = Ledger(
            self._engine,
            max_balance_cents=balance_cents_max,
            max_topup_cents=topup_cents_max,
            return_cents_max=return_cents_max,
            menu_grace_s=menu_grace_s,
        )
        return ledger.apply_pos(token, item)

    def add(self, device_id: str, role: str) -> tuple[dict[str, Any], str]:
        """Register (or re-register with a fresh token) a device; returns its row and token."""
        if not valid_device_id(device_id):
            raise ValueError(
                f"invalid device id {device_id!r}: 1-32 of [a-z0-9-], a letter first "
                f"(not {', '.join(sorted(POS_DEVICE_IDS_RESERVED))})"
            )
        if role not in POS_ROLES:
            raise ValueError(f"role must be one of {', '.join(POS_ROLES)}")
        if self.is_kiosk(device_id):
            raise ValueError(f"{device_id!r} is a kiosk's id; a POS device needs another")
        token = new_token(device_id)
        try:
            row = self._scalar(
                "SELECT sp_add_pos_device(:device_id, :role, :digest)",
                device_id=device_id,
                role=role,
                digest=token_sha256(token),
            )
        except IntegrityError as error:  # a kiosk registered with this id meanwhile (trigger)
            raise ValueError(
                f"{device_id!r} is a kiosk's id; a POS device needs another"
            ) from error
        return dict(row), token

    def disable(self, device_id: str) -> bool:
        return bool(self._scalar("SELECT sp_disable_pos_device(:device_id)", device_id=device_id))

    def is_kiosk(self, device_id: str) -> bool:
        return bool(
            self._scalar("SELECT EXISTS (SELECT 1 FROM kiosks WHERE kiosk_id = :id)", id=device_id)
        )

    def is_device(self, device_id: str) -> bool:
        return bool(
            self._scalar(
                "SELECT EXISTS (SELECT 1 FROM pos_devices WHERE device_id = :id)", id=device_id
            )
        )

    def listing(self) -> list[dict[str, Any]]:
        """Every registered device, disabled ones too (never the token digests)."""
        with translate_errors(), self._engine.connect() as connection:
            rows = connection.execute(
                text(
                    "SELECT device_id, role, enabled, last_seq, last_seen_at, created_at,"
                    " disabled_at FROM pos_devices ORDER BY device_id"
                )
            )
            return [{key: _iso(value) for key, value in row._mapping.items()} for row in rows]


def _iso(value: object) -> object:
    return value.isoformat() if isinstance(value, datetime) else value


def refuse_pos_device_id(engine: Engine, kiosk_id: str) -> None:
    """For `kiosk add`: a POS device's id is no kiosk's (ValueError with the reason)."""
    if PosDevices(engine).is_device(kiosk_id):
        raise ValueError(f"{kiosk_id!r} is a POS device's id; a kiosk needs another")


# --- `festival-cloud pos` ------------------------------------------------------------------------


Handler = Callable[[argparse.Namespace, Any], int]


def _unavailable(handler: Handler) -> Handler:
    """A database that cannot be reached is one clear line and exit code 2."""

    def run(args: argparse.Namespace, settings: Any) -> int:
        try:
            return handler(args, settings)
        except TransientDatabaseError as error:
            print(f"festival-cloud: database unavailable: {error}", file=sys.stderr)
            return 2

    run.__name__ = handler.__name__
    return run


def _devices(settings: Any) -> tuple[PosDevices, Engine]:
    from cloud.database import make_engine

    settings.require("database_url")
    engine = make_engine(settings.database_url, pool_size=1, application_name="festival-cloud")
    return PosDevices(engine), engine


@_unavailable
def pos_add(args: argparse.Namespace, settings: Any) -> int:
    devices, engine = _devices(settings)
    try:
        try:
            row, token = devices.add(args.device_id, args.role)
        except ValueError as error:
            print(f"festival-cloud pos add: {error}", file=sys.stderr)
            return 2
    finally:
        engine.dispose()
    if args.json:
        print(json.dumps({"device_id": row["device_id"], "token": token}))
        return 0
    print(f"POS device {row['device_id']} registered: role {row['role']}, enabled")
    print(f"bearer token (shown once, only its hash is stored): {token}")
    print(
        "  the device sends it as 'Authorization: Bearer <token>' to "
        "/functions/v1/process-bar-order and /functions/v1/process-checkpoint-recharge"
    )
    return 0


@_unavailable
def pos_disable(args: argparse.Namespace, settings: Any) -> int:
    devices, engine = _devices(settings)
    try:
        disabled = devices.disable(args.device_id)
    finally:
        engine.dispose()
    if not disabled:
        print(f"festival-cloud: no POS device {args.device_id!r}", file=sys.stderr)
        return 1
    print(f"POS device {args.device_id} disabled: its next request is answered 401")
    return 0


@_unavailable
def pos_list(args: argparse.Namespace, settings: Any) -> int:
    devices, engine = _devices(settings)
    try:
        rows = devices.listing()
    finally:
        engine.dispose()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no POS devices registered")
        return 0
    print(f"{'DEVICE':<34} {'ROLE':<10} {'ENABLED':<7} {'LAST SEQ':>9}  LAST SEEN")
    for row in rows:
        print(
            f"{row['device_id']!s:<34} {row['role']!s:<10} "
            f"{'yes' if row['enabled'] else 'no':<7} {row['last_seq']!s:>9}  "
            f"{row['last_seen_at'] or '-'}"
        )
    return 0
