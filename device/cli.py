"""`festival-kiosk`: the kiosk's command line (keygen, run)."""

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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.verb == "keygen":
        from device.keys import save_private_key
        from protocol.keys import generate_private_key, public_key_b64

        key = generate_private_key()
        save_private_key(key, Path(args.out))
        print(public_key_b64(key))
        return 0
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
