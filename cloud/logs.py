"""JSON-lines logging for the cloud's processes (consumer, API, CLI), to stdout for journald.

One line per event on stdout (journald): ``ts``, ``level``, ``logger``, ``event``, then the
context fields. Context travels as ``extra={"context": {...}}`` or, for a block of code, through
``bind()`` (structlog's context variables: this thread or task only). A record with ``exc_info``
(``log.exception``) carries ``error`` (``Type: message``) and ``exc``, the full traceback, chained
causes included. Every line passes ``protocol.redaction.redact``: a URL's password never reaches
the journal, not even inside an exception message. What a line looks like (the JSON, the fields
a context may not replace, the cut of a long traceback, the priority prefix) is
``protocol/log_lines.py``'s, pure and the same for both sides.

Under systemd (stdout is the journal: ``JOURNAL_STREAM`` names our stdout) each line starts with
a syslog priority prefix — ``<3>`` error and above, ``<4>`` warning, ``<6>`` info, ``<7>`` debug —
which journald strips and stores as the entry's priority, so ``journalctl -p err`` finds errors.
Anywhere else (a file, a pipe, a test) lines are plain JSON.

The pipeline is structlog's (``ProcessorFormatter`` over the standard library's records: code
keeps calling ``logging``); this is the cloud's only module that imports structlog. The kiosk has
its own, ``device/logs.py`` (the two sides never import each other); one set of tests,
tests/test_logs.py, runs against both so that they write the same lines.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
import traceback
from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from types import TracebackType
from typing import Any, Final, TextIO

import structlog
from structlog.contextvars import bound_contextvars, merge_contextvars

from cloud.limits import LOG_TRACEBACK_CHARACTERS_MAX
from protocol.log_lines import add_context, add_exception, journal_line, render

QUIET_LIBRARIES: Final = ("uvicorn.access", "paho", "alembic.runtime.migration")


def stream_is_journal(stream: TextIO, environ: Mapping[str, str] = os.environ) -> bool:
    """True when ``stream`` is the journal stream systemd connected (``JOURNAL_STREAM`` is
    ``device:inode`` of it; systemd.exec(5))."""
    expected = environ.get("JOURNAL_STREAM")
    if not expected:
        return False
    try:
        status = os.fstat(stream.fileno())
    except (AttributeError, OSError, ValueError):
        return False
    return expected == f"{status.st_dev}:{status.st_ino}"


# --- the pipeline (pure functions of the event dictionary) ------------------------------------

EventDict = MutableMapping[str, Any]


def _base_fields(logger: object, method: str, event: EventDict) -> EventDict:
    record: logging.LogRecord = event["_record"]
    return {
        "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        + f".{int(record.msecs):03d}Z",
        "level": record.levelname.lower(),
        "logger": record.name,
        **event,
    }


def _context_fields(logger: object, method: str, event: EventDict) -> EventDict:
    add_context(event, getattr(event["_record"], "context", None))
    return event


def _exception_fields(logger: object, method: str, event: EventDict) -> EventDict:
    exc_info = event.pop("exc_info", None)
    if exc_info and exc_info[0] is not None:
        kind, error, trace = exc_info
        text = "".join(traceback.format_exception(kind, error, trace))
        add_exception(event, f"{kind.__name__}: {error}", text, LOG_TRACEBACK_CHARACTERS_MAX)
    stack_info = event.pop("stack_info", None)
    if stack_info:
        event["stack"] = stack_info
    return event


def _drop_meta(logger: object, method: str, event: EventDict) -> EventDict:
    for key in ("_record", "_from_structlog", "positional_args"):
        event.pop(key, None)
    return event


def _line(logger: object, method: str, event: EventDict) -> str:
    return render(event)


class JsonFormatter(structlog.stdlib.ProcessorFormatter):
    """One JSON line per record; with ``journal=True`` prefixed by its syslog priority."""

    def __init__(self, *, journal: bool = False) -> None:
        super().__init__(
            foreign_pre_chain=[_base_fields, merge_contextvars, _context_fields],
            processors=[_exception_fields, _drop_meta, _line],
            use_get_message=True,
        )
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        return journal_line(line, record.levelno) if self.journal else line


def configure_logging(
    level: str = "INFO", stream: TextIO | None = None, *, quiet: tuple[str, ...] = QUIET_LIBRARIES
) -> None:
    """Called once by a composition root (consumer main, API)."""
    output = stream or sys.stdout
    handler = logging.StreamHandler(output)
    handler.setFormatter(JsonFormatter(journal=stream_is_journal(output)))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Library chatter (uvicorn access lines, paho) stays at warning; we write our own lines.
    for noisy in quiet:
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # An uncaught exception is a log line too (JSON, priority <3>, redacted), not bare text on
    # stderr that journald would store as info and `journalctl -p err` would not show.
    sys.excepthook = _log_uncaught
    threading.excepthook = _log_uncaught_in_thread


def _log_uncaught(
    kind: type[BaseException], error: BaseException, trace: TracebackType | None
) -> None:
    if issubclass(kind, KeyboardInterrupt):
        sys.__excepthook__(kind, error, trace)
        return
    logging.getLogger("uncaught").critical(
        "uncaught exception: the process stops", exc_info=(kind, error, trace)
    )


def _log_uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else "?"
    logging.getLogger("uncaught").critical(
        "uncaught exception in thread %s",
        name,
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback),  # type: ignore[arg-type]
    )


@contextmanager
def bind(**context: Any) -> Iterator[None]:
    """Add fields to every log line written inside the block (this thread/task only)."""
    with bound_contextvars(**context):
        yield
