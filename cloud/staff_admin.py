"""`festival-cloud staff add|pin|disable|list` (DESIGN.md 1.1 `staff`; issue 17 section 3).

`staff add STAFF_ID --name NAME --role bartender|cashier|supervisor --card UID [--json]` registers
a staff member with their own staff band and prints a fresh 6-digit PIN once (`--json`:
`{"staff_id", "pin"}`); only its scrypt hash is stored (cloud/staff.py). `staff pin STAFF_ID` makes
a new PIN (the old one stops working, a lock is lifted, open logins end), `staff disable STAFF_ID`
refuses further logins and ends the open ones, `staff list [--json]` shows every staff member and
where they are logged in. The PIN is printed to stdout only, never logged.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime

from cloud.admin import (
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_USAGE,
    _ledger,
    _listing_said_all,
    _unavailable,
    _usable_text,
)
from cloud.limits import STAFF_NAME_LENGTH_MAX
from cloud.settings import CloudSettings
from cloud.staff import hash_pin, new_pin
from protocol.limits import STAFF_ID_LENGTH_MAX
from protocol.models import is_valid_card_uid

EXIT_EXISTS = 1


def _bad_staff_id(staff_id: str) -> bool:
    if _usable_text(staff_id, STAFF_ID_LENGTH_MAX):
        return False
    print(f"festival-cloud: invalid STAFF_ID {staff_id!r}", file=sys.stderr)
    return True


def _print_pin(staff_id: str, pin: str, as_json: bool, what: str) -> None:
    if as_json:
        print(json.dumps({"staff_id": staff_id, "pin": pin}))
    else:
        print(f"{what} {staff_id}; PIN (shown once, give it to them in person): {pin}")


@_unavailable
def staff_add(args: argparse.Namespace, settings: CloudSettings) -> int:
    if _bad_staff_id(args.staff_id):
        return EXIT_USAGE
    if not _usable_text(args.name, STAFF_NAME_LENGTH_MAX):
        print(f"festival-cloud: invalid --name {args.name!r}", file=sys.stderr)
        return EXIT_USAGE
    if not is_valid_card_uid(args.card):
        print(
            f"festival-cloud: invalid card UID {args.card!r} (8, 14 or 20 upper-case hex)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    pin = new_pin()
    with _ledger(settings) as ledger:
        added = ledger.add_staff(
            staff_id=args.staff_id,
            name=args.name,
            role=args.role,
            card_uid=args.card,
            pin_hash=hash_pin(pin),
        )
    if added == "exists":
        print(f"festival-cloud: staff member {args.staff_id!r} exists already", file=sys.stderr)
        return EXIT_EXISTS
    if added == "card in use":
        print(f"festival-cloud: band {args.card} is another staff member's", file=sys.stderr)
        return EXIT_EXISTS
    _print_pin(args.staff_id, pin, args.json, f"added {args.role}")
    return EXIT_OK


@_unavailable
def staff_pin(args: argparse.Namespace, settings: CloudSettings) -> int:
    if _bad_staff_id(args.staff_id):
        return EXIT_USAGE
    pin = new_pin()
    with _ledger(settings) as ledger:
        changed = ledger.set_staff_pin(args.staff_id, hash_pin(pin))
    if not changed:
        print(f"festival-cloud: no staff member {args.staff_id!r}", file=sys.stderr)
        return EXIT_NOT_FOUND
    _print_pin(args.staff_id, pin, args.json, "new PIN for")
    return EXIT_OK


@_unavailable
def staff_disable(args: argparse.Namespace, settings: CloudSettings) -> int:
    if _bad_staff_id(args.staff_id):
        return EXIT_USAGE
    with _ledger(settings) as ledger:
        disabled = ledger.disable_staff(args.staff_id)
    if not disabled:
        print(f"festival-cloud: no staff member {args.staff_id!r}", file=sys.stderr)
        return EXIT_NOT_FOUND
    print(f"disabled {args.staff_id}: no more logins, open logins ended")
    return EXIT_OK


def _time(ms: int | None) -> str:
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M UTC")


@_unavailable
def staff_list(args: argparse.Namespace, settings: CloudSettings) -> int:
    with _ledger(settings) as ledger:
        members = ledger.staff_members()
    if _listing_said_all(members, args.json, "no staff members registered"):
        return EXIT_OK
    print(f"{'STAFF':<20} {'ROLE':<10} {'BAND':<20} {'ENABLED':<7}  NAME / LOGGED IN AT")
    for member in members:
        where = ", ".join(
            f"{login['kiosk_id']} until {_time(login['until_ms'])}"
            for login in member["logged_in_at"]
        )
        locked = member["locked_until_ms"]
        print(
            f"{member['staff_id']!s:<20} {member['role']!s:<10} {member['card_uid']!s:<20} "
            f"{'yes' if member['enabled'] else 'no':<7}  {member['name']}"
            + (f" / {where}" if where else "")
            + (f" (locked until {_time(locked)})" if locked else "")
        )
    return EXIT_OK
