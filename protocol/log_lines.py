"""The JSON log line both sides write: its fields, its text and journald's priority prefix.

device/logs.py and cloud/logs.py (each side's own: the two never import each other) read the
standard library's records — their time, traceback and structlog's context variables — and hand
the fields here, so that what a line looks like is decided once. Pure: fields in, text out.

A line is compact JSON (non-ASCII as it is, anything JSON has no type for as its ``str``),
passed through ``protocol.redaction.redact``; for the journal it starts with the syslog priority
— ``<3>`` error and above, ``<4>`` warning, ``<6>`` info, ``<7>`` debug — which journald strips
and stores as the entry's priority.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, MutableMapping
from typing import Any, Final

from protocol.redaction import redact

# What a record's context (``extra={"context": {...}}``) may not replace.
RESERVED: Final = frozenset({"ts", "level", "logger", "event", "exc"})

# The standard library's levels (logging.ERROR, WARNING, INFO): protocol/ does not import logging.
_ERROR: Final = 40
_WARNING: Final = 30
_INFO: Final = 20


def journal_priority(levelno: int) -> int:
    """The syslog priority journald stores for a record of this level."""
    if levelno >= _ERROR:
        return 3
    if levelno >= _WARNING:
        return 4
    if levelno >= _INFO:
        return 6
    return 7


def add_context(fields: MutableMapping[str, Any], context: Mapping[str, Any] | None) -> None:
    """Add a record's context to its fields, all but the ``RESERVED`` ones."""
    for key, value in (context or {}).items():
        if key not in RESERVED:
            fields[key] = value


def add_exception(
    fields: MutableMapping[str, Any], error: str, traceback: str, characters_max: int
) -> None:
    """Add ``error`` (``Type: message``) and ``exc``, the traceback: its last
    ``characters_max`` characters when it is longer."""
    fields["error"] = error
    text = traceback.rstrip("\n")
    if len(text) > characters_max:
        text = "...(cut)...\n" + text[-characters_max:]
    fields["exc"] = text


def render(fields: Mapping[str, Any]) -> str:
    """The fields as one line of JSON, in their order, passwords of URLs redacted."""
    return redact(json.dumps(fields, ensure_ascii=False, separators=(",", ":"), default=str))


def journal_line(line: str, levelno: int) -> str:
    """``line`` as journald reads it: prefixed by the priority of its record's level."""
    return f"<{journal_priority(levelno)}>{line}"
