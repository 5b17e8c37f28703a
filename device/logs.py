"""JSON-lines logging for the kiosk (one line per event, to stdout for journald).

The same line format as the cloud's processes (ts, level, logger, event, then context fields),
kept here so that the kiosk install does not import the cloud package. Context travels as
``extra={"context": {...}}``; secrets and key material are never passed in.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, TextIO

RESERVED = frozenset({"ts", "level", "logger", "event"})


def render(record: logging.LogRecord) -> str:
    entry: dict[str, Any] = {
        "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        + f".{int(record.msecs):03d}Z",
        "level": record.levelname.lower(),
        "logger": record.name,
        "event": record.getMessage(),
    }
    for key, value in (getattr(record, "context", None) or {}).items():
        if key not in RESERVED:
            entry[key] = value
    if record.exc_info and record.exc_info[0] is not None:
        entry["error"] = f"{record.exc_info[0].__name__}: {record.exc_info[1]}"
    return json.dumps(entry, default=str, ensure_ascii=False, separators=(",", ":"))


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return render(record)


def configure_logging(level: str = "INFO", stream: TextIO | None = None) -> None:
    """Called once by the kiosk's composition root."""
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("paho").setLevel(logging.WARNING)
