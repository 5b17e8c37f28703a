"""`festival-kiosk`: the kiosk's command line (keygen, run; (1.1) staff-login, staff-logout for
scripts and the demo driving a running kiosk's local page, device/staff_client.py)."""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

DISTRIBUTION = "festival-cashless"


def installed_version() -> str:
    """The installed distribution's version, from its metadata (device/ never imports cloud/)."""
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="festival-kiosk", description="Festival kiosk firmware.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {installed_version()}")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    keygen = verbs.add_parser("keygen", help="create this kiosk's Ed25519 signing key")
    keygen.add_argument("--out", required=True, help="PEM file to write (mode 0600)")
    verbs.add_parser("run", help="run the kiosk (settings from the environment)")
    login = verbs.add_parser(
        "staff-login",
        help="log a staff member in at a running kiosk (the PIN is read from stdin, never argv)",
    )
    login.add_argument("--port", type=int, required=True, help="the kiosk's KIOSK_HTTP_PORT")
    login.add_argument("--staff-id", required=True)
    login.add_argument("--band", required=True, help="the staff member's own band (UID, hex)")
    logout = verbs.add_parser("staff-logout", help="log a staff member out at a running kiosk")
    logout.add_argument("--port", type=int, required=True)
    logout.add_argument("--staff-id", required=True)
    return parser


def _staff(args: argparse.Namespace) -> int:
    """Exit 0 and the kiosk's staff document (JSON) on stdout; 1 and the reason on stderr."""
    import json

    from device.staff_client import StaffClientError, log_in, log_out

    base_url = f"http://127.0.0.1:{args.port}"
    try:
        if args.verb == "staff-login":
            pin = sys.stdin.readline().strip()
            staff = log_in(base_url, staff_id=args.staff_id, pin=pin, band_uid=args.band.upper())
            print(json.dumps(staff, separators=(",", ":")))
        else:
            log_out(base_url, staff_id=args.staff_id)
    except (StaffClientError, OSError) as error:
        print(f"festival-kiosk {args.verb}: {error}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.verb == "keygen":
        from device.keys import save_private_key
        from protocol.keys import generate_private_key, public_key_b64

        key = generate_private_key()
        save_private_key(key, Path(args.out))
        print(public_key_b64(key))
        return 0
    if args.verb in ("staff-login", "staff-logout"):
        return _staff(args)
    try:
        kiosk = importlib.import_module("device.main")
    except ModuleNotFoundError as error:
        print(f"festival-kiosk run: not available in this build ({error})", file=sys.stderr)
        return 2
    try:
        return int(kiosk.run_from_env())
    except Exception:
        # Not exit 1 (Python's default): 1 means "cannot run here" and is not restarted.
        if not logging.getLogger().handlers:  # crashed before the kiosk configured its logs
            from device.logs import configure_logging

            configure_logging()
        logging.getLogger("device.kiosk").critical("kiosk crashed: restarting", exc_info=True)
        return int(kiosk.EXIT_CRASHED)


if __name__ == "__main__":
    sys.exit(main())
