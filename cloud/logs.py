"""JSON-lines logging for the cloud processes (one line per event, to stdout for journald).

`configure_logging()` is called once by a composition root. Context (request_id, kiosk_id,
card_uid, trace id…) travels as `extra={"context": {...}}` or through `bind()` for a block of
code; secrets are never passed in. Records are rendered by a pure function that tests can check.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from types import MappingProxyType
from typing import Any

_EMPTY: Mapping[str, Any] = MappingProxyType({})
_bound: contextvars.ContextVar[Mapping[str, Any]] = contextvars.ContextVar(
    "log_context", default=_EMPTY
)

RESERVED = {"ts", "level", "logger", "event"}


def render(record: logging.LogRecord) -> str:
    entry: dict[str, Any] = {
        "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        + f".{int(record.msecs):03d}Z",
        "level": record.levelname.lower(),
        "logger": record.name,
        "event": record.getMessage(),
    }
    for source in (_bound.get(), getattr(record, "context", None) or {}):
        for key, value in source.items():
            if key not in RESERVED:
                entry[key] = value
    if record.exc_info and record.exc_info[0] is not None:
        entry["error"] = f"{record.exc_info[0].__name__}: {record.exc_info[1]}"
    return json.dumps(entry, default=str, ensure_ascii=False, separators=(",", ":"))


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return render(record)


def configure_logging(level: str = "INFO", stream: Any = None) -> None:
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Library chatter (uvicorn access lines, paho) stays at warning; we write our own lines.
    for noisy in ("uvicorn.access", "paho", "alembic.runtime.migration"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@contextmanager
def bind(**context: Any) -> Iterator[None]:
    """Add fields to every log line written inside the block (this thread/task only)."""
    token = _bound.set({**_bound.get(), **context})
    try:
        yield
    finally:
        _bound.reset(token)
