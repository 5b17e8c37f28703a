"""(1.1) `festival-cloud menu set|clear|show` and `offline set|disable` (DESIGN.md "CLI"), and
the config publishing `kiosk add` shares with them.

Each verb checks everything first (the menu file, every kiosk named) and issues nothing when
anything is wrong; then it issues the kiosks' next configs in the database
(`Ledger.issue_kiosk_config`: the version is stored before anything is sent) and tries to publish
them at once over a short MQTT session as the cloud's user (cloud/publisher.py). When that is not
possible (no MQTT_URL or signing key here, the broker away) the configs are stored all the same:
the running consumer's publishing loop sends them within a second of its next flush, so the verb
says so and exits 0.

A bad menu file fails with the line of the file and the field (exit 1); an unknown kiosk id too.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from json.decoder import JSONDecodeError
from pathlib import Path
from typing import Any

from cloud.admin import EXIT_NOT_FOUND, EXIT_OK, _ledger, _unavailable
from cloud.ledger import Ledger
from cloud.ledger_records import UNCHANGED, KioskRecord, Unchanged
from cloud.limits import MENU_FILE_BYTES_MAX, PUBLISH_SESSION_TIMEOUT_S
from cloud.settings import CloudSettings
from protocol.errors import ProtocolError, quote
from protocol.models import Menu, OfflinePolicy, parse_menu

EXIT_INVALID = 1

# --- the menu file: JSON with the position of every value -------------------------------------


class MenuFileError(ValueError):
    """A menu file that cannot be used: ``line`` of the file (1-based) and what is wrong."""

    def __init__(self, line: int, message: str) -> None:
        self.line = line
        self.message = message
        super().__init__(f"line {line}: {message}")


@dataclass(slots=True)
class _Node:
    """Where a JSON value starts in the file, and its members' or elements' nodes."""

    offset: int
    members: dict[str, _Node] | None = None
    elements: list[_Node] | None = None


_WHITESPACE = re.compile(r"[ \t\n\r]*")
_SCALARS = json.JSONDecoder(parse_constant=lambda name: _refuse_constant(name))


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _line_of(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def _skip(text: str, index: int) -> int:
    match = _WHITESPACE.match(text, index)
    assert match is not None
    return match.end()


def _value(text: str, index: int) -> tuple[Any, _Node, int]:
    """Parse one JSON value at ``index`` (whitespace skipped): (value, its node, end)."""
    index = _skip(text, index)
    start = index
    char = text[index : index + 1]
    if char == "{":
        members: dict[str, _Node] = {}
        document: dict[str, Any] = {}
        index = _skip(text, index + 1)
        if text[index : index + 1] == "}":
            return document, _Node(start, members=members), index + 1
        while True:
            index = _skip(text, index)
            if text[index : index + 1] != '"':
                raise MenuFileError(_line_of(text, index), "expected a field name in quotes")
            key_at = index
            key, index = _scalar(text, index)
            if key in document:
                raise MenuFileError(_line_of(text, key_at), f"duplicate field {key!r}")
            index = _skip(text, index)
            if text[index : index + 1] != ":":
                raise MenuFileError(_line_of(text, index), "expected ':' after a field name")
            value, node, index = _value(text, index + 1)
            document[key] = value
            members[key] = _Node(key_at, node.members, node.elements)
            closed, index = _after_item(text, index, "}")
            if closed:
                return document, _Node(start, members=members), index
    if char == "[":
        elements: list[_Node] = []
        array: list[Any] = []
        index = _skip(text, index + 1)
        if text[index : index + 1] == "]":
            return array, _Node(start, elements=elements), index + 1
        while True:
            value, node, index = _value(text, index)
            array.append(value)
            elements.append(node)
            closed, index = _after_item(text, index, "]")
            if closed:
                return array, _Node(start, elements=elements), index
    value, end = _scalar(text, index)
    return value, _Node(start), end


def _after_item(text: str, index: int, close: str) -> tuple[bool, int]:
    """After a member or an element (whitespace skipped): past its ',' with (False, index), or
    past the ``close`` that ends its object or array with (True, index)."""
    index = _skip(text, index)
    char = text[index : index + 1]
    if char != close and char != ",":
        raise MenuFileError(_line_of(text, index), f"expected ',' or '{close}'")
    return char == close, index + 1


def _scalar(text: str, index: int) -> tuple[Any, int]:
    """A string, number, true, false or null at ``index`` (json's own decoder; no NaN)."""
    try:
        return _SCALARS.raw_decode(text, index)
    except JSONDecodeError as error:
        raise MenuFileError(error.lineno, f"not JSON: {error.msg}") from None
    except ValueError as error:
        raise MenuFileError(_line_of(text, index), f"not JSON: {error}") from None


def _parse_with_positions(text: str) -> tuple[Any, _Node]:
    value, node, end = _value(text, 0)
    end = _skip(text, end)
    if end != len(text):
        raise MenuFileError(_line_of(text, end), "unexpected text after the menu object")
    return value, node


# "menu.items[2].unit_price_cents must be …", "unknown field 'x' in menu.items[0]",
# "missing field sku in menu.items[1]".
_FIELD_PATH = re.compile(r"\bmenu((?:\.[A-Za-z_][A-Za-z0-9_]*|\[\d+\])*)")
_PATH_STEP = re.compile(r"\.([A-Za-z_][A-Za-z0-9_]*)|\[(\d+)\]")
_UNKNOWN_FIELD = re.compile(r"unknown field '([^']+)' in ")


def _line_for(text: str, root: _Node, message: str) -> int:
    """The line of the value ``message`` (parse_menu's) names: as deep as the file has it."""
    found = _FIELD_PATH.search(message)
    steps: list[str | int] = []
    if found is not None:
        for name, number in _PATH_STEP.findall(found.group(1)):
            steps.append(int(number) if number else name)
    unknown = _UNKNOWN_FIELD.search(message)
    if unknown is not None:
        steps.append(unknown.group(1))
    node = root
    for step in steps:
        if isinstance(step, int) and node.elements is not None and step < len(node.elements):
            node = node.elements[step]
        elif isinstance(step, str) and node.members is not None and step in node.members:
            node = node.members[step]
        else:
            break
    return _line_of(text, node.offset)


def read_menu_file(path: Path) -> Menu:
    """The config ``menu`` object in ``path``, validated exactly as a config's menu
    (protocol.models.parse_menu); MenuFileError with the line and the field otherwise."""
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise MenuFileError(0, f"cannot read the file: {error.strerror}") from None
    if len(raw) > MENU_FILE_BYTES_MAX:
        raise MenuFileError(0, f"larger than {MENU_FILE_BYTES_MAX} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw.count(b"\n", 0, error.start) + 1
        raise MenuFileError(line, "not UTF-8") from None
    value, root = _parse_with_positions(text)
    try:
        return parse_menu(value)
    except ProtocolError as error:
        raise MenuFileError(_line_for(text, root, error.message), error.message) from None


# --- the kiosks a verb names ----------------------------------------------------------------


class TargetError(ValueError):
    """The targets name no kiosk, or kiosks that are not registered (``unknown``, sorted)."""

    def __init__(self, message: str, unknown: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.unknown = sorted(unknown)


def named_kiosks(
    kiosks: Iterable[KioskRecord],
    *,
    kiosk_ids: Sequence[str] | None = None,
    role: str | None = None,
) -> list[str]:
    """The kiosks a target names, sorted and unique: the one rule of `menu set|clear`,
    `offline set|disable` and PUT /api/admin/menus (DESIGN.md `menu set`).

    ``kiosk_ids`` (``--kiosk ID …``, `"kiosks"`): those, each registered; otherwise ``role``
    (``--role R``, `"role"`): the kiosks registered with role R; neither (``--all``,
    `"all": true`): every registered kiosk. Disabled kiosks are named too, in every form
    (DESIGN.md: "registered", "every kiosk"); their configs are stored and published like any
    other, though a disabled kiosk has no broker credentials to read them with. TargetError
    when an id is not registered or nothing is named; the caller issues nothing then."""
    registered = {kiosk.kiosk_id: kiosk for kiosk in kiosks}
    if kiosk_ids is not None:
        unknown = sorted(set(kiosk_ids) - registered.keys())
        if unknown:
            raise TargetError(f"no kiosk {', '.join(repr(k) for k in unknown)}", unknown)
        return sorted(set(kiosk_ids))
    chosen = sorted(k.kiosk_id for k in registered.values() if role is None or k.role == role)
    if not chosen:
        raise TargetError(
            "no kiosk is registered" + ("" if role is None else f" with role {quote(role)}")
        )
    return chosen


def resolve_targets(args: argparse.Namespace, kiosks: Sequence[KioskRecord]) -> list[str]:
    """The kiosk ids named by ``--kiosk ID …``, ``--role R`` or ``--all`` (named_kiosks)."""
    kiosk_ids = getattr(args, "kiosk", None)
    return named_kiosks(kiosks, kiosk_ids=kiosk_ids or None, role=getattr(args, "role", None))


# --- issuing and publishing -----------------------------------------------------------------


def issue_configs(
    ledger: Ledger,
    kiosk_ids: Iterable[str],
    *,
    menu: Menu | Unchanged | None = UNCHANGED,
    offline: OfflinePolicy | Unchanged | None = UNCHANGED,
) -> dict[str, int]:
    """Issue the next config of each kiosk; kiosk id -> its new version."""
    issued: dict[str, int] = {}
    for kiosk_id in kiosk_ids:
        version = ledger.issue_kiosk_config(kiosk_id, menu=menu, offline=offline)
        if version is None:  # removed between the check and now: say so, go on
            print(f"festival-cloud: kiosk {kiosk_id!r} is no longer registered", file=sys.stderr)
            continue
        issued[kiosk_id] = version
    return issued


def publish_now(
    settings: CloudSettings, ledger: Ledger, issued: dict[str, int], *, out: Any = None
) -> None:
    """Publish what is stored and unsent (cloud/publisher.py) over a short MQTT session; print
    which of ``issued`` reached the broker and, for the rest, that the consumer sends them."""
    stream = sys.stdout if out is None else out
    if not issued:
        return
    reason = None
    published: set[tuple[str, int]] = set()
    if settings.mqtt_url is None or settings.cloud_signing_key_file is None:
        reason = "MQTT_URL and CLOUD_SIGNING_KEY_FILE are needed to publish from here"
    else:
        try:
            published = _flush_over_short_session(settings, ledger)
        except OSError as error:
            reason = f"broker unavailable: {error}"
        except ValueError as error:  # the signing key cannot be loaded (SettingsError)
            reason = str(error)
    waiting = []
    for kiosk_id, version in issued.items():
        if (kiosk_id, version) in published:
            print(f"config v{version} published to {kiosk_id}", file=stream)
        else:
            waiting.append(f"{kiosk_id} v{version}")
    if waiting:
        print(
            f"stored, not published now ({reason or 'the broker did not acknowledge it'}): "
            f"{', '.join(waiting)}; the running consumer publishes them (within a second of "
            "its next flush)",
            file=stream,
        )


def _flush_over_short_session(settings: CloudSettings, ledger: Ledger) -> set[tuple[str, int]]:
    from cloud.consumer.mqtt_link import RetainedPublisherSession, TlsFiles
    from cloud.consumer.signing_key import load_signing_key
    from cloud.database import TransientDatabaseError
    from cloud.publisher import Publisher

    assert settings.cloud_signing_key_file is not None
    key = load_signing_key(settings.cloud_signing_key_file)
    session = RetainedPublisherSession(
        settings.mqtt_endpoint,
        client_id=f"festival-admin-publish-{os.getpid()}-{secrets.token_hex(3)}",
        timeout_s=PUBLISH_SESSION_TIMEOUT_S,
        tls=TlsFiles(settings.mqtt_ca_file, settings.mqtt_cert_file, settings.mqtt_key_file),
    )
    with session:
        report = Publisher(
            ledger,
            session,
            key,
            settings.festival_topic_prefix,
            transient_errors=(TransientDatabaseError,),
            ack_timeout_s=PUBLISH_SESSION_TIMEOUT_S,
        ).flush()
    return set(report.configs_published)


def _fail(verb: str, message: str) -> int:
    print(f"festival-cloud {verb}: {message}", file=sys.stderr)
    return EXIT_INVALID


def _change(
    verb: str,
    args: argparse.Namespace,
    settings: CloudSettings,
    *,
    menu: Menu | Unchanged | None = UNCHANGED,
    offline: OfflinePolicy | Unchanged | None = UNCHANGED,
) -> int:
    with _ledger(settings) as ledger:
        try:
            targets = resolve_targets(args, ledger.kiosks())
        except TargetError as error:
            return _fail(verb, f"{error}; nothing issued")
        issued = issue_configs(ledger, targets, menu=menu, offline=offline)
        publish_now(settings, ledger, issued)
    return EXIT_OK


# --- the verbs ----------------------------------------------------------------------------------


@_unavailable
def menu_set(args: argparse.Namespace, settings: CloudSettings) -> int:
    try:
        menu = read_menu_file(Path(args.file))
    except MenuFileError as error:
        where = f"{args.file}:{error.line}" if error.line else str(args.file)
        return _fail("menu set", f"{where}: {error.message}; nothing issued")
    return _change("menu set", args, settings, menu=menu)


@_unavailable
def menu_clear(args: argparse.Namespace, settings: CloudSettings) -> int:
    return _change("menu clear", args, settings, menu=None)


@_unavailable
def menu_show(args: argparse.Namespace, settings: CloudSettings) -> int:
    with _ledger(settings) as ledger:
        if ledger.kiosk(args.kiosk_id) is None:
            print(f"festival-cloud: no kiosk {args.kiosk_id!r}", file=sys.stderr)
            return EXIT_NOT_FOUND
        latest = ledger.latest_config(args.kiosk_id)
    document = dict(latest.document) if latest is not None else {}
    shown = {
        "kiosk_id": args.kiosk_id,
        "version": latest.version if latest is not None else None,
        "published": latest.published if latest is not None else None,
        "menu": document.get("menu"),
        "offline": document.get("offline"),
    }
    if args.json:
        print(json.dumps(shown, indent=2))
        return EXIT_OK
    if latest is None:
        print(f"kiosk {args.kiosk_id}: no config issued yet (it sells from its local menu file)")
        return EXIT_OK
    state = "published" if latest.published else "not published yet"
    print(f"kiosk {args.kiosk_id}: config v{latest.version} ({state})")
    menu = shown["menu"]
    if not isinstance(menu, dict):
        print("  no menu assigned")
    else:
        print(f"  menu {menu['menu_id']}:")
        currency = str(document.get("currency", ""))
        for item in menu["items"]:
            flags = [flag for flag in ("is_deposit", "is_return") if item.get(flag)]
            cents = int(item["unit_price_cents"])
            print(
                f"    {item['sku']:<32} {item['name']:<32} {cents // 100}.{cents % 100:02d}"
                f" {currency}{'  ' + ', '.join(flags) if flags else ''}"
            )
    offline = shown["offline"]
    if isinstance(offline, dict):
        print(
            f"  offline: sale max {offline['sale_max_cents']}, card max"
            f" {offline['card_max_cents']}, kiosk max {offline['kiosk_max_cents']} (cents)"
        )
    else:
        print("  offline: not allowed")
    return EXIT_OK


@_unavailable
def offline_set(args: argparse.Namespace, settings: CloudSettings) -> int:
    try:
        policy = OfflinePolicy(
            sale_max_cents=args.sale_max_cents,
            card_max_cents=args.card_max_cents,
            kiosk_max_cents=args.kiosk_max_cents,
        )
    except ProtocolError as error:
        return _fail("offline set", f"{error.message}; nothing issued")
    return _change("offline set", args, settings, offline=policy)


@_unavailable
def offline_disable(args: argparse.Namespace, settings: CloudSettings) -> int:
    return _change("offline disable", args, settings, offline=None)
