"""`festival-cloud card import FILE.csv` and `card pin UID`: the portal PINs (DESIGN.md 1.1).

`card import` reads a wristband supplier's CSV (header `card_uid,pin`), checks every line first
and hashes every PIN (on all cores: a slow hash per band adds up for tens of thousands of them),
then stores the whole file in one transaction: a bad line fails the file, with its line number
(the header is line 1), and nothing is imported. A card not known yet is created with balance 0.
`card pin UID` sets a fresh random PIN and prints it once; only its hash is stored.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from cloud.admin import EXIT_OK, _unavailable, _url
from cloud.database import Engine, make_engine
from cloud.limits import (
    PIN_IMPORT_LINE_CHARACTERS_MAX,
    PIN_IMPORT_PARALLEL_MIN,
    PIN_IMPORT_ROWS_MAX,
    PIN_LENGTH_MAX,
    PIN_LENGTH_MIN,
)
from cloud.portal import PortalStore, hash_pin, new_pin, valid_pin
from cloud.settings import CloudSettings
from protocol.limits import CARD_UID_PATTERN

EXIT_BAD_FILE = 1
HEADER = ["card_uid", "pin"]


class ImportFileError(ValueError):
    """A line of the file is wrong: its number (the header is line 1) and what is wrong."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"line {line}: {message}")
        self.line = line


def read_pin_file(lines: Iterable[str]) -> list[tuple[str, str]]:
    """The (card_uid, pin) pairs of a supplier file, every line checked; ImportFileError on the
    first bad one. Line numbers are the file's (csv may read a quoted field over several)."""
    reader = csv.reader(lines, strict=True)
    rows: list[tuple[str, str]] = []
    seen: dict[str, int] = {}
    try:
        header = next(reader, None)
        if header is None or [field.strip() for field in header] != HEADER:
            raise ImportFileError(1, "the header must be card_uid,pin")
        for fields in reader:
            line = reader.line_num
            if len(rows) >= PIN_IMPORT_ROWS_MAX:
                raise ImportFileError(line, f"more than {PIN_IMPORT_ROWS_MAX} cards in one file")
            if not fields or all(not field.strip() for field in fields):
                raise ImportFileError(line, "empty line")
            if sum(len(field) for field in fields) > PIN_IMPORT_LINE_CHARACTERS_MAX:
                raise ImportFileError(line, "line too long")
            if len(fields) != 2:
                raise ImportFileError(line, f"expected 2 fields, got {len(fields)}")
            card_uid, pin = (field.strip() for field in fields)
            if not CARD_UID_PATTERN.match(card_uid):
                raise ImportFileError(line, "card_uid must be 8, 14 or 20 upper-case hex digits")
            if not valid_pin(pin):
                raise ImportFileError(
                    line, f"pin must be {PIN_LENGTH_MIN}-{PIN_LENGTH_MAX} of A-Z and 0-9"
                )
            if card_uid in seen:
                raise ImportFileError(line, f"card {card_uid} is on line {seen[card_uid]} too")
            seen[card_uid] = line
            rows.append((card_uid, pin))
    except csv.Error as error:
        raise ImportFileError(reader.line_num, f"not CSV: {error}") from None
    return rows


def hash_pins(pins: list[str]) -> list[str]:
    if len(pins) < PIN_IMPORT_PARALLEL_MIN:
        return [hash_pin(pin) for pin in pins]
    with ProcessPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        return list(pool.map(hash_pin, pins, chunksize=32))


def _store(settings: CloudSettings) -> tuple[PortalStore, Engine]:
    engine = make_engine(_url(settings), pool_size=1, application_name="festival-cloud")
    return PortalStore(engine), engine


@_unavailable
def card_import(args: argparse.Namespace, settings: CloudSettings) -> int:
    path = Path(args.file)
    try:
        with path.open(encoding="utf-8-sig", newline="") as file:
            rows = read_pin_file(file)
    except OSError as error:
        print(f"festival-cloud: cannot read {path}: {error.strerror}", file=sys.stderr)
        return EXIT_BAD_FILE
    except UnicodeDecodeError:
        print(f"festival-cloud: {path} is not UTF-8 text; nothing imported", file=sys.stderr)
        return EXIT_BAD_FILE
    except ImportFileError as error:
        print(f"festival-cloud: {path}: {error}; nothing imported", file=sys.stderr)
        return EXIT_BAD_FILE
    hashes = hash_pins([pin for _, pin in rows])
    store, engine = _store(settings)
    try:
        result = store.import_pin_hashes(
            [(card_uid, digest) for (card_uid, _), digest in zip(rows, hashes, strict=True)]
        )
    finally:
        engine.dispose()
    print(f"imported {result.imported} PINs ({result.created} new cards with balance 0)")
    return EXIT_OK


@_unavailable
def card_pin(args: argparse.Namespace, settings: CloudSettings) -> int:
    if not CARD_UID_PATTERN.match(args.uid):
        print(
            f"festival-cloud: card uid must be 8, 14 or 20 upper-case hex digits: {args.uid!r}",
            file=sys.stderr,
        )
        return EXIT_BAD_FILE
    pin = new_pin()
    store, engine = _store(settings)
    try:
        created = store.set_pin_hash(args.uid, hash_pin(pin))
    finally:
        engine.dispose()
    if created:
        print(f"card {args.uid} created with balance 0", file=sys.stderr)
    print(pin)
    return EXIT_OK
