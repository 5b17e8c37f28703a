"""`festival-cloud`: the operator's command line (DESIGN.md, "CLI").

Parsing lives here; each verb's work lives in the module that owns it, imported only when that
verb runs so `festival-cloud keygen` needs no database driver and `--help` is instant. This module
imports nothing but the standard library at the top: on a kiosk-only install (`.[kiosk]`, no
pydantic, SQLAlchemy, FastAPI…) `--help` works and a verb says which extra to install
(tests/test_kiosk_only_install.py keeps it so).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias

from protocol.redaction import redact

if TYPE_CHECKING:  # cloud.settings needs pydantic-settings: imported when a verb runs
    from cloud.settings import CloudSettings

Handler = Callable[[argparse.Namespace, "CloudSettings"], int]
DISTRIBUTION = "festival-cashless"
CLOUD_EXTRA_HINT = "install the cloud extra: pip install 'festival-cashless[cloud]'"

# Options whose value may legitimately begin with "-" (a base64url public key can).
OPTIONS_TAKING_DASH_VALUES = ("--public-key",)


def _join_dash_values(argv: Sequence[str]) -> list[str]:
    """Turn `--public-key -abc` into `--public-key=-abc`, which argparse accepts."""
    joined: list[str] = []
    index = 0
    while index < len(argv):
        arg = argv[index]
        if arg in OPTIONS_TAKING_DASH_VALUES and index + 1 < len(argv):
            joined.append(f"{arg}={argv[index + 1]}")
            index += 2
            continue
        joined.append(arg)
        index += 1
    return joined


def _handler(module: str, function: str) -> Handler:
    def run(args: argparse.Namespace, settings: CloudSettings) -> int:
        target: Handler = getattr(importlib.import_module(module), function)
        return target(args, settings)

    return run


def _keygen(args: argparse.Namespace, settings: CloudSettings) -> int:
    from cloud.keys import save_private_key
    from protocol.keys import generate_private_key, public_key_b64

    key = generate_private_key()
    save_private_key(key, Path(args.out))
    print(public_key_b64(key))
    return 0


def installed_version() -> str:
    """The installed distribution's version (its metadata, not a constant kept in the code)."""
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"


Verbs: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def _group(verbs: Verbs, name: str, help: str) -> Verbs:
    """A verb with verbs of its own (``festival-cloud db upgrade``)."""
    return verbs.add_parser(name, help=help).add_subparsers(dest=f"{name}_verb", required=True)


def _verb(verbs: Verbs, name: str, help: str, handler: str) -> argparse.ArgumentParser:
    """A verb run by ``handler`` ("module:function"), imported only when the verb runs."""
    parser = verbs.add_parser(name, help=help)
    parser.set_defaults(handler=_handler(*handler.split(":")))
    return parser


def _time_window(verb: argparse.ArgumentParser, after: str, before: str) -> None:
    """`--from TIME` and `--to TIME` (args.start, args.end): "only <after> this RFC 3339 time",
    "only <before> this RFC 3339 time"."""
    for option, destination, meaning in (("--from", "start", after), ("--to", "end", before)):
        verb.add_argument(
            option,
            dest=destination,
            metavar="TIME",
            help=f"only {meaning} this RFC 3339 time, e.g. 2026-07-04T18:00:00Z",
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="festival-cloud", description="Festival cashless payments: cloud side."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {installed_version()}")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    db = _group(verbs, "db", "database migrations")
    upgrade = _verb(db, "upgrade", "migrate up to REV (default: head)", "cloud.admin:db_upgrade")
    upgrade.add_argument("revision", nargs="?", default="head")
    downgrade = _verb(
        db, "downgrade", "migrate down to REV ('base' removes all)", "cloud.admin:db_downgrade"
    )
    downgrade.add_argument("revision")
    _verb(db, "current", "print the current revision", "cloud.admin:db_current")

    keygen = verbs.add_parser("keygen", help="create the cloud's Ed25519 signing key")
    keygen.add_argument("--out", required=True, help="PEM file to write (mode 0600)")
    keygen.set_defaults(handler=_keygen)

    kiosk = _group(verbs, "kiosk", "register and manage kiosks")
    add = _verb(kiosk, "add", "register a kiosk's public key", "cloud.admin:kiosk_add")
    add.add_argument("kiosk_id")
    add.add_argument("--public-key", required=True, help="base64url of the raw 32-byte key")
    add.add_argument("--role", required=True, choices=["bar", "checkpoint", "all"])
    add.add_argument(
        "--checkpoint",
        metavar="NAME",
        help="the checkpoint whose drawer its top-ups go to (default: the kiosk id)",
    )
    add.add_argument(
        "--json", action="store_true", help="print {kiosk_id, mqtt_username, mqtt_password}"
    )
    password = _verb(
        kiosk,
        "password",
        "issue a kiosk a fresh MQTT password on the broker (rotation)",
        "cloud.admin:kiosk_password",
    )
    password.add_argument("kiosk_id")
    password.add_argument("--json", action="store_true")
    disable = _verb(
        kiosk, "disable", "refuse every further request of a kiosk", "cloud.admin:kiosk_disable"
    )
    disable.add_argument("kiosk_id")
    _verb(kiosk, "list", "list registered kiosks", "cloud.admin:kiosk_list").add_argument(
        "--json", action="store_true"
    )

    pos = _group(
        verbs, "pos", "register and manage point-of-sale devices (seed-compatible HTTP endpoints)"
    )
    pos_add = _verb(
        pos,
        "add",
        "register a POS device; prints its bearer token once",
        "cloud.pos_devices:pos_add",
    )
    pos_add.add_argument("device_id")
    pos_add.add_argument("--role", required=True, choices=["bar", "checkpoint", "all"])
    pos_add.add_argument("--json", action="store_true")
    _verb(
        pos,
        "disable",
        "refuse every further request of a POS device",
        "cloud.pos_devices:pos_disable",
    ).add_argument("device_id")
    _verb(pos, "list", "list registered POS devices", "cloud.pos_devices:pos_list").add_argument(
        "--json", action="store_true"
    )

    broker = _group(verbs, "broker", "the MQTT broker's configuration")
    config = _verb(
        broker,
        "config",
        "write a complete Mosquitto 2 configuration (dynamic security plugin) for the "
        "registered kiosks and MQTT_URL's service user",
        "cloud.broker:broker_config_command",
    )
    config.add_argument("--out", required=True, help="folder for mosquitto.conf and its files")
    config.add_argument("--port", type=int, help="listener port (default 1883, 8883 with TLS)")
    config.add_argument("--bind", default="0.0.0.0", help="listener address (default 0.0.0.0)")
    config.add_argument("--user", default="mosquitto", help="system user the broker runs as")
    config.add_argument("--certfile", help="TLS: the broker's certificate (PEM)")
    config.add_argument("--keyfile", help="TLS: the broker's private key (PEM)")
    config.add_argument("--cafile", help="TLS: CA that signs client certificates")
    config.add_argument(
        "--require-certificate", action="store_true", help="TLS: demand a client certificate"
    )
    config.add_argument("--local-port", type=int, help="an extra plain listener on 127.0.0.1")
    config.add_argument("--log-file", help="broker log file (default: stderr, i.e. journald)")
    config.add_argument("--plugin", help="path of mosquitto_dynamic_security.so (default: found)")

    card = _group(verbs, "card", "inspect, block and unblock cards")
    show = _verb(card, "show", "balance and status of a card", "cloud.admin:card_show")
    show.add_argument("uid")
    show.add_argument("--json", action="store_true")
    _verb(card, "block", "block a lost or stolen card", "cloud.admin:card_block").add_argument(
        "uid"
    )
    _verb(card, "unblock", "unblock a card", "cloud.admin:card_unblock").add_argument("uid")
    swap = _verb(
        card, "swap", "move a lost or broken band's money onto a new one", "cloud.admin:card_swap"
    )
    swap.add_argument("old_uid", metavar="OLD_UID")
    swap.add_argument("new_uid", metavar="NEW_UID")
    swap.add_argument("--json", action="store_true")
    cash_out = _verb(
        card,
        "cash-out",
        "pay a card's balance from a checkpoint's drawer (Stripe part refunded) and block it",
        "cloud.admin:card_cash_out",
    )
    cash_out.add_argument("uid", metavar="UID")
    cash_out.add_argument("--checkpoint", required=True, help="the checkpoint whose drawer pays")
    cash_out.add_argument("--staff", required=True, help="the staff member paying (STAFF_ID)")
    cash_out.add_argument("--json", action="store_true")
    _add_wristband_verbs(card)
    _add_portal_card_verbs(card)

    _add_report_verbs(verbs)
    _add_shift_verbs(verbs)
    _add_staff_verbs(verbs)
    _add_payout_verbs(verbs)
    _add_config_verbs(verbs)

    _verb(verbs, "consumer", "run the MQTT consumer", "cloud.consumer:run_from_cli")
    api = _verb(
        verbs, "api", "run the HTTP API (Stripe webhooks, monitoring)", "cloud.api:run_from_cli"
    )
    api.add_argument("--host", default="127.0.0.1")
    api.add_argument("--port", type=int, default=8000)
    _verb(
        verbs, "check", "verify the ledger's invariants (exit 1 on violation)", "cloud.admin:check"
    )
    _verb(
        verbs,
        "cleanup",
        "delete expired idempotency cache rows and dead letters over 30 days old",
        "cloud.admin:cleanup",
    )
    return parser


def _add_wristband_verbs(card: Verbs) -> None:
    """(1.1) Genuine wristbands: `card master-keygen --out PATH`, `card program --reader NAME`."""
    keygen = _verb(
        card,
        "master-keygen",
        "create the card master key file (32 hex digits, mode 0600) of genuine wristbands",
        "cloud.wristbands:card_master_keygen",
    )
    keygen.add_argument("--out", required=True, help="file to write (never replaced)")
    program = _verb(
        card,
        "program",
        "program blank NTAG 424 DNA wristbands on a PC/SC reader, one after another "
        "(CARD_MASTER_KEY_FILE, FESTIVAL_PORTAL_URL); prints each UID",
        "cloud.wristbands:card_program",
    )
    program.add_argument("--reader", required=True, help="part of the PC/SC reader's name")
    program.add_argument(
        "--count", type=int, help="stop after this many tags (default: until Ctrl-C)"
    )
    program.add_argument(
        "--register",
        action="store_true",
        help="also register each card with the cloud (DATABASE_URL): created with balance 0 "
        "if unknown, with a fresh portal PIN printed after its UID (only its hash is stored)",
    )


def _targets(parser: argparse.ArgumentParser, *, roles: bool = True) -> None:
    """``--kiosk ID …`` | ``--role R`` | ``--all``: exactly one (cloud/menu_admin.py)."""
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument(
        "--kiosk", action="extend", nargs="+", metavar="ID", help="these kiosks (repeatable)"
    )
    if roles:
        group.add_argument(
            "--role",
            choices=["bar", "checkpoint", "all"],
            help="every kiosk registered with this role (disabled ones too)",
        )
    group.add_argument(
        "--all", action="store_true", help="every registered kiosk (disabled ones too)"
    )


def _add_config_verbs(verbs: Verbs) -> None:
    """(1.1) `menu set|clear|show` and `offline set|disable`: each issues the kiosks' next
    configs and publishes them (cloud/menu_admin.py, cloud/publisher.py)."""
    menu = _group(verbs, "menu", "central menus: what each kiosk sells, at which price")
    menu_set = _verb(
        menu,
        "set",
        "assign the menu in FILE.json (a config's menu object) and publish the new configs",
        "cloud.menu_admin:menu_set",
    )
    menu_set.add_argument("file", metavar="FILE.json")
    _targets(menu_set)
    _targets(
        _verb(
            menu,
            "clear",
            "remove the menu (the kiosks sell from their local file again)",
            "cloud.menu_admin:menu_clear",
        )
    )
    show = _verb(
        menu,
        "show",
        "the menu of a kiosk's latest config, its version, published or not",
        "cloud.menu_admin:menu_show",
    )
    show.add_argument("kiosk_id")
    show.add_argument("--json", action="store_true")

    offline = _group(verbs, "offline", "what kiosks may approve by themselves without network")
    offline_set = _verb(
        offline,
        "set",
        'set the offline policy (PROTOCOL.md "Offline sales") and publish the new configs',
        "cloud.menu_admin:offline_set",
    )
    _targets(offline_set, roles=False)
    for option in ("--sale-max-cents", "--card-max-cents", "--kiosk-max-cents"):
        offline_set.add_argument(option, type=int, required=True, metavar="N")
    _targets(
        _verb(
            offline,
            "disable",
            "no offline sales for these kiosks; publish the new configs",
            "cloud.menu_admin:offline_disable",
        ),
        roles=False,
    )


def _add_portal_card_verbs(card: Verbs) -> None:
    """`card import FILE.csv` and `card pin UID`: the attendee portal's PINs (issue 16)."""
    card_import = _verb(
        card,
        "import",
        "store the portal PINs of a wristband supplier's CSV (header card_uid,pin); "
        "creates missing cards with balance 0; all lines or none",
        "cloud.portal_admin:card_import",
    )
    card_import.add_argument("file", metavar="FILE.csv")
    _verb(
        card,
        "pin",
        "set a fresh portal PIN for a card (created when missing) and print it",
        "cloud.portal_admin:card_pin",
    ).add_argument("uid")


def _add_payout_verbs(verbs: Verbs) -> None:
    """`payout list [--state S] [--json]`, `payout fail ID --reason TEXT`, `payout export --out
    FILE.xml`, `payout mark-paid --file FILE.xml` (issue 16 §2)."""
    payout = _group(verbs, "payout", "payouts after the festival")
    listing = _verb(payout, "list", "the payout parts", "cloud.payouts:payout_list")
    listing.add_argument("--state", choices=["pending", "exported", "paid", "failed"])
    listing.add_argument("--json", action="store_true")
    fail = _verb(
        payout,
        "fail",
        "a bank transfer (or Stripe refund) failed: its money goes back to the card",
        "cloud.payouts:payout_fail",
    )
    fail.add_argument("payout_id")
    fail.add_argument("--reason", required=True)
    export = _verb(
        payout,
        "export",
        "write a SEPA credit-transfer file (pain.001.001.03) of every pending bank transfer, "
        "which become 'exported'; prints count and total",
        "cloud.payout_export:payout_export",
    )
    export.add_argument("--out", required=True, metavar="FILE.xml", help="a new file")
    export.add_argument(
        "--no-validate",
        action="store_true",
        help="skip the check of the file against the pain.001.001.03 schema (slow for big files)",
    )
    _verb(
        payout,
        "mark-paid",
        "the bank executed this SEPA file: its exported transfers become 'paid'",
        "cloud.payout_export:payout_mark_paid",
    ).add_argument("--file", required=True, metavar="FILE.xml")
    _add_payout_refund_verb(payout)


def _add_payout_refund_verb(payout: Verbs) -> None:
    """`payout refund [--limit N]`: one pass of the Stripe refund runner (every API process runs
    it every few seconds; this is for a deployment without one, or to retry at once)."""
    refund = _verb(
        payout,
        "refund",
        "refund the due pending Stripe payout parts through Stripe's API now (one pass)",
        "cloud.api.payout_refunds:payout_refund",
    )
    refund.add_argument("--limit", type=int, default=100, help="parts at most (default 100)")


def _add_staff_verbs(verbs: Verbs) -> None:
    """`staff add STAFF_ID --name --role --card UID [--json]`, `staff pin STAFF_ID [--json]`,
    `staff disable STAFF_ID`, `staff list [--json]` (DESIGN.md 1.1; issue 17 section 3)."""
    staff = _group(verbs, "staff", "staff members, their PINs and roles")
    add = _verb(
        staff,
        "add",
        "register a staff member with their own band; prints a fresh 6-digit PIN once",
        "cloud.staff_admin:staff_add",
    )
    add.add_argument("staff_id", metavar="STAFF_ID")
    add.add_argument("--name", required=True)
    add.add_argument("--role", required=True, choices=["bartender", "cashier", "supervisor"])
    add.add_argument("--card", required=True, metavar="UID", help="the staff member's own band")
    add.add_argument("--json", action="store_true")
    pin = _verb(
        staff,
        "pin",
        "a new PIN (printed once; the old one stops working, open logins end)",
        "cloud.staff_admin:staff_pin",
    )
    pin.add_argument("staff_id", metavar="STAFF_ID")
    pin.add_argument("--json", action="store_true")
    _verb(
        staff, "disable", "no more logins; open logins end", "cloud.staff_admin:staff_disable"
    ).add_argument("staff_id", metavar="STAFF_ID")
    _verb(
        staff,
        "list",
        "every staff member, their role and band, and where they are logged in",
        "cloud.staff_admin:staff_list",
    ).add_argument("--json", action="store_true")


def _add_shift_verbs(verbs: Verbs) -> None:
    """`shift close CHECKPOINT_ID --counted-cents N [--json]` and `shift report [--checkpoint
    ID] [--from T --to T]` (issue 17 §4)."""
    shift = _group(verbs, "shift", "the cash drawer at the end of a shift")
    close = _verb(
        shift,
        "close",
        "count a checkpoint's cash drawer against the cash it took since the last close, book "
        "the variance and start the next shift",
        "cloud.shifts:shift_close",
    )
    close.add_argument("checkpoint_id")
    close.add_argument(
        "--counted-cents", type=int, required=True, help="the cash counted in the drawer, in cents"
    )
    close.add_argument("--by", help="who counted (a staff id), recorded with the close")
    close.add_argument("--json", action="store_true")
    report = _verb(
        shift,
        "report",
        "the shift report as CSV: per checkpoint and shift, a row per staff member's top-ups "
        "and the shift's total (cash paid out, expected, counted, variance)",
        "cloud.reports:report_shifts",
    )
    report.add_argument("--checkpoint", metavar="ID", help="only this checkpoint's shifts")
    _time_window(report, "shifts closed at or after", "shifts closed before (and no open shift)")


def _add_report_verbs(verbs: Verbs) -> None:
    """`report sales --group … [--from T --to T]` (CSV), `report day --date D [--json]` (the
    Z-report), `report liability [--json]` and `report staff [--date D | --from T --to T]
    [--json]` (issue 17 §3)."""
    report = _group(verbs, "report", "sales and liability reports (docs/operations.md)")
    sales = _verb(
        report,
        "sales",
        "sales per product, kiosk or hour as CSV (sales lines only, net of voids)",
        "cloud.reports:report_sales",
    )
    sales.add_argument("--group", required=True, choices=["product", "kiosk", "hour", "vat"])
    _time_window(sales, "sales at or after", "sales before")
    day = _verb(
        report,
        "day",
        "the Z-report of a day (UTC): sales per bar, top-ups and shift closes per checkpoint",
        "cloud.reports:report_day",
    )
    day.add_argument("--date", required=True, metavar="YYYY-MM-DD", help="the day, in UTC")
    day.add_argument("--json", action="store_true")
    liability = _verb(
        report,
        "liability",
        "what the festival owes: card balances + payouts pending + deposits - debts "
        "(exit 1 when the card balances do not equal their postings)",
        "cloud.reports:report_liability",
    )
    liability.add_argument("--json", action="store_true")
    staff = _verb(
        report,
        "staff",
        "sales and top-ups per staff member as CSV (today in UTC unless --date or --from/--to)",
        "cloud.reports:report_staff",
    )
    staff.add_argument("--date", metavar="YYYY-MM-DD", help="that day, in UTC")
    _time_window(staff, "what happened at or after", "what happened before")
    staff.add_argument("--json", action="store_true", help="the JSON of GET /api/reports/staff")


def _missing_extra(verb: str, error: ModuleNotFoundError) -> int:
    print(f"festival-cloud {verb}: needs {error.name}; {CLOUD_EXTRA_HINT}", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(_join_dash_values(sys.argv[1:] if argv is None else argv))
    try:
        from cloud.settings import SettingsError, load_settings
    except ModuleNotFoundError as error:
        return _missing_extra(args.verb, error)
    try:
        settings = load_settings()
        return int(args.handler(args, settings))
    except SettingsError as error:
        print(f"festival-cloud: configuration error: {redact(str(error))}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as error:
        return _missing_extra(args.verb, error)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
