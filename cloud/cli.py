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
from typing import TYPE_CHECKING

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="festival-cloud", description="Festival cashless payments: cloud side."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {installed_version()}")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    db = verbs.add_parser("db", help="database migrations").add_subparsers(
        dest="db_verb", required=True
    )
    upgrade = db.add_parser("upgrade", help="migrate up to REV (default: head)")
    upgrade.add_argument("revision", nargs="?", default="head")
    upgrade.set_defaults(handler=_handler("cloud.admin", "db_upgrade"))
    downgrade = db.add_parser("downgrade", help="migrate down to REV ('base' removes all)")
    downgrade.add_argument("revision")
    downgrade.set_defaults(handler=_handler("cloud.admin", "db_downgrade"))
    current = db.add_parser("current", help="print the current revision")
    current.set_defaults(handler=_handler("cloud.admin", "db_current"))

    keygen = verbs.add_parser("keygen", help="create the cloud's Ed25519 signing key")
    keygen.add_argument("--out", required=True, help="PEM file to write (mode 0600)")
    keygen.set_defaults(handler=_keygen)

    kiosk = verbs.add_parser("kiosk", help="register and manage kiosks").add_subparsers(
        dest="kiosk_verb", required=True
    )
    add = kiosk.add_parser("add", help="register a kiosk's public key")
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
    add.set_defaults(handler=_handler("cloud.admin", "kiosk_add"))
    password = kiosk.add_parser(
        "password", help="issue a kiosk a fresh MQTT password on the broker (rotation)"
    )
    password.add_argument("kiosk_id")
    password.add_argument("--json", action="store_true")
    password.set_defaults(handler=_handler("cloud.admin", "kiosk_password"))
    disable = kiosk.add_parser("disable", help="refuse every further request of a kiosk")
    disable.add_argument("kiosk_id")
    disable.set_defaults(handler=_handler("cloud.admin", "kiosk_disable"))
    listing = kiosk.add_parser("list", help="list registered kiosks")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(handler=_handler("cloud.admin", "kiosk_list"))

    pos = verbs.add_parser(
        "pos", help="register and manage point-of-sale devices (seed-compatible HTTP endpoints)"
    ).add_subparsers(dest="pos_verb", required=True)
    pos_add = pos.add_parser("add", help="register a POS device; prints its bearer token once")
    pos_add.add_argument("device_id")
    pos_add.add_argument("--role", required=True, choices=["bar", "checkpoint", "all"])
    pos_add.add_argument("--json", action="store_true")
    pos_add.set_defaults(handler=_handler("cloud.pos_devices", "pos_add"))
    pos_disable = pos.add_parser("disable", help="refuse every further request of a POS device")
    pos_disable.add_argument("device_id")
    pos_disable.set_defaults(handler=_handler("cloud.pos_devices", "pos_disable"))
    pos_list = pos.add_parser("list", help="list registered POS devices")
    pos_list.add_argument("--json", action="store_true")
    pos_list.set_defaults(handler=_handler("cloud.pos_devices", "pos_list"))
    broker = verbs.add_parser("broker", help="the MQTT broker's configuration").add_subparsers(
        dest="broker_verb", required=True
    )
    config = broker.add_parser(
        "config",
        help="write a complete Mosquitto 2 configuration (dynamic security plugin) for the "
        "registered kiosks and MQTT_URL's service user",
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
    config.set_defaults(handler=_handler("cloud.broker", "broker_config_command"))

    card = verbs.add_parser("card", help="inspect, block and unblock cards").add_subparsers(
        dest="card_verb", required=True
    )
    show = card.add_parser("show", help="balance and status of a card")
    show.add_argument("uid")
    show.add_argument("--json", action="store_true")
    show.set_defaults(handler=_handler("cloud.admin", "card_show"))
    block = card.add_parser("block", help="block a lost or stolen card")
    block.add_argument("uid")
    block.set_defaults(handler=_handler("cloud.admin", "card_block"))
    unblock = card.add_parser("unblock", help="unblock a card")
    unblock.add_argument("uid")
    unblock.set_defaults(handler=_handler("cloud.admin", "card_unblock"))

    _add_report_verbs(verbs)

    consumer = verbs.add_parser("consumer", help="run the MQTT consumer")
    consumer.set_defaults(handler=_handler("cloud.consumer", "run_from_cli"))

    api = verbs.add_parser("api", help="run the HTTP API (Stripe webhooks, monitoring)")
    api.add_argument("--host", default="127.0.0.1")
    api.add_argument("--port", type=int, default=8000)
    api.set_defaults(handler=_handler("cloud.api", "run_from_cli"))

    check = verbs.add_parser("check", help="verify the ledger's invariants (exit 1 on violation)")
    check.set_defaults(handler=_handler("cloud.admin", "check"))
    cleanup = verbs.add_parser(
        "cleanup", help="delete expired idempotency cache rows and dead letters over 30 days old"
    )
    cleanup.set_defaults(handler=_handler("cloud.admin", "cleanup"))
    return parser


def _add_report_verbs(verbs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`report sales --group … [--from T --to T]` (CSV) and `report liability [--json]`."""
    report = verbs.add_parser(
        "report", help="sales and liability reports (docs/operations.md)"
    ).add_subparsers(dest="report_verb", required=True)
    sales = report.add_parser(
        "sales", help="sales per product, kiosk or hour as CSV (sales lines only, net of voids)"
    )
    sales.add_argument("--group", required=True, choices=["product", "kiosk", "hour"])
    for option, destination, meaning in (
        ("--from", "start", "sales at or after"),
        ("--to", "end", "sales before"),
    ):
        sales.add_argument(
            option,
            dest=destination,
            metavar="TIME",
            help=f"only {meaning} this RFC 3339 time, e.g. 2026-07-04T18:00:00Z",
        )
    sales.set_defaults(handler=_handler("cloud.reports", "report_sales"))
    liability = report.add_parser(
        "liability",
        help="what the festival owes: card balances + payouts pending + deposits - debts "
        "(exit 1 when the card balances do not equal their postings)",
    )
    liability.add_argument("--json", action="store_true")
    liability.set_defaults(handler=_handler("cloud.reports", "report_liability"))


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
