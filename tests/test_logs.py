"""The JSON log formatters of kiosk and cloud: tracebacks, journald priorities, no secrets.

Each side has its own module (device/logs.py, cloud/logs.py: the sides never import each other,
tests/test_architecture.py); every test here runs against both, so the two write the same lines."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

import cloud.limits
import cloud.logs
import device.limits
import device.logs
from protocol.log_lines import journal_priority


@pytest.fixture(params=[device.logs, cloud.logs], ids=["device", "cloud"])
def logs_module(request: pytest.FixtureRequest) -> ModuleType:
    module: ModuleType = request.param
    return module


@pytest.fixture
def logger(logs_module: ModuleType) -> Iterator[tuple[logging.Logger, io.StringIO]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs_module.JsonFormatter())
    log = logging.getLogger("tests.logs")
    log.addHandler(handler)
    log.setLevel(logging.DEBUG)
    log.propagate = False
    yield log, stream
    log.removeHandler(handler)
    log.propagate = True


def _lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def _settle_the_bill() -> None:
    raise KeyError("card 04A1B2C3")


def _apply_batch() -> None:
    try:
        _settle_the_bill()
    except KeyError as error:
        raise RuntimeError("batch failed") from error


def test_log_exception_keeps_the_whole_traceback(
    logger: tuple[logging.Logger, io.StringIO],
) -> None:
    log, stream = logger
    try:
        _apply_batch()
    except RuntimeError:
        log.exception("committer failed", extra={"context": {"batch": 3}})
    [line] = _lines(stream)
    assert (line["level"], line["logger"], line["event"], line["batch"]) == (
        "error",
        "tests.logs",
        "committer failed",
        3,
    )
    assert line["error"] == "RuntimeError: batch failed"
    exc = str(line["exc"])
    # Every frame, the chained cause and both messages: what `Type: message` used to lose.
    assert exc.startswith("Traceback (most recent call last):")
    for expected in (
        "in _settle_the_bill",
        "in _apply_batch",
        "KeyError: 'card 04A1B2C3'",
        "The above exception was the direct cause of the following exception:",
        "RuntimeError: batch failed",
        "test_logs.py",
    ):
        assert expected in exc


def test_lines_carry_context_and_bound_fields(
    logger: tuple[logging.Logger, io.StringIO], logs_module: ModuleType
) -> None:
    log, stream = logger
    with logs_module.bind(request_id="r-1", kiosk_id="bar-1"):
        log.info("payment %s", "approved", extra={"context": {"amount_cents": 550}})
    log.info("after")
    first, second = _lines(stream)
    assert list(first)[:4] == ["ts", "level", "logger", "event"]
    assert first["event"] == "payment approved"
    assert (first["request_id"], first["kiosk_id"], first["amount_cents"]) == ("r-1", "bar-1", 550)
    assert "request_id" not in second and "exc" not in second
    assert str(first["ts"]).endswith("Z")


def test_passwords_in_messages_and_tracebacks_are_redacted(
    logger: tuple[logging.Logger, io.StringIO],
) -> None:
    log, stream = logger
    try:
        raise ValueError("cannot parse postgresql://festival:s3cret-password@db:12x/festival")
    except ValueError:
        log.exception("start failed: mqtt://cloud:s3cret-password@broker", extra={"context": {}})
    text = stream.getvalue()
    assert "s3cret" not in text
    [line] = _lines(stream)
    assert line["event"] == "start failed: mqtt://cloud:***@broker"
    assert "postgresql://festival:***@db:12x/festival" in str(line["exc"])


@pytest.mark.parametrize(
    ("level", "prefix"),
    [
        (logging.CRITICAL, "<3>"),
        (logging.ERROR, "<3>"),
        (logging.WARNING, "<4>"),
        (logging.INFO, "<6>"),
        (logging.DEBUG, "<7>"),
    ],
)
def test_journal_lines_start_with_their_syslog_priority(
    level: int, prefix: str, logs_module: ModuleType
) -> None:
    record = logging.LogRecord("tests.logs", level, __file__, 1, "event", None, None)
    line = logs_module.JsonFormatter(journal=True).format(record)
    assert line.startswith(prefix)
    assert json.loads(line.removeprefix(prefix))["event"] == "event"
    assert journal_priority(level) == int(prefix[1])
    assert not logs_module.JsonFormatter().format(record).startswith("<")


def test_the_journal_is_recognised_by_journal_stream(
    tmp_path: Path, logs_module: ModuleType
) -> None:
    stream_is_journal = logs_module.stream_is_journal
    with (tmp_path / "out").open("w") as stream:
        status = os.fstat(stream.fileno())
        assert stream_is_journal(stream, {"JOURNAL_STREAM": f"{status.st_dev}:{status.st_ino}"})
        assert not stream_is_journal(stream, {"JOURNAL_STREAM": f"{status.st_dev}:1"})
        assert not stream_is_journal(stream, {})
    assert not stream_is_journal(io.StringIO(), {"JOURNAL_STREAM": "1:2"})


PROGRAM = """
import logging, sys
from {module} import configure_logging
configure_logging("DEBUG")
log = logging.getLogger("{module}")
log.debug("debug line")
log.info("info line")
log.warning("warning line")
try:
    {{}}["missing"]
except KeyError:
    log.exception("error line")
"""


@pytest.mark.parametrize("module", ["device.logs", "cloud.logs"])
def test_a_process_under_systemd_writes_priorities_journalctl_filters_on(
    tmp_path: Path, module: str
) -> None:
    """stdout connected to the journal (as systemd does it: JOURNAL_STREAM = its device:inode)."""
    out = tmp_path / "stdout"
    with out.open("w") as stdout:
        status = os.fstat(stdout.fileno())
        env = dict(os.environ, JOURNAL_STREAM=f"{status.st_dev}:{status.st_ino}")
        subprocess.run(
            [sys.executable, "-c", PROGRAM.format(module=module)],
            stdout=stdout,
            env=env,
            timeout=60,
            check=True,
        )
    lines = out.read_text().splitlines()
    assert [line[:3] for line in lines] == ["<7>", "<6>", "<4>", "<3>"]
    error = json.loads(lines[3][3:])
    assert error["event"] == "error line" and "KeyError: 'missing'" in error["exc"]
    # Not the journal (a file, a pipe): plain JSON lines.
    plain = subprocess.run(
        [sys.executable, "-c", PROGRAM.format(module=module)],
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"},
        timeout=60,
        check=True,
    )
    assert [json.loads(line)["level"] for line in plain.stdout.splitlines()] == [
        "debug",
        "info",
        "warning",
        "error",
    ]


def test_cloud_and_kiosk_write_the_same_line() -> None:
    """The two formatters are separate code around protocol/log_lines.py; the same record gives
    the same line on both."""
    record = logging.LogRecord("tests.logs", logging.WARNING, __file__, 1, "x %s", ("y",), None)
    record.context = {"request_id": "r-1", "ts": "not a field"}
    lines = {logs.JsonFormatter(journal=True).format(record) for logs in (device.logs, cloud.logs)}
    assert len(lines) == 1
    [line] = lines
    assert line.startswith("<4>") and json.loads(line[3:])["request_id"] == "r-1"
    assert device.limits.LOG_TRACEBACK_CHARACTERS_MAX == cloud.limits.LOG_TRACEBACK_CHARACTERS_MAX


UNCAUGHT = """
import sys, threading
from {module} import configure_logging
configure_logging()
def work():
    raise ValueError("thread failed")
thread = threading.Thread(target=work, name="committer")
thread.start()
thread.join()
raise RuntimeError("cannot reach postgresql://festival:s3cret-password@db/festival")
"""


@pytest.mark.parametrize("module", ["device.logs", "cloud.logs"])
def test_uncaught_exceptions_become_error_lines_too(tmp_path: Path, module: str) -> None:
    """Python prints an uncaught traceback as bare stderr text, which journald stores at info
    priority: `journalctl -p err` would not show the crash. It is a JSON error line instead."""
    out = tmp_path / "stdout"
    with out.open("w") as stdout:
        status = os.fstat(stdout.fileno())
        env = dict(os.environ, JOURNAL_STREAM=f"{status.st_dev}:{status.st_ino}")
        result = subprocess.run(
            [sys.executable, "-c", UNCAUGHT.format(module=module)],
            stdout=stdout,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )
    assert result.returncode == 1
    assert result.stderr == ""
    thread_line, main_line = out.read_text().splitlines()
    assert thread_line.startswith("<3>") and main_line.startswith("<3>")
    in_thread = json.loads(thread_line[3:])
    assert in_thread["event"] == "uncaught exception in thread committer"
    assert "ValueError: thread failed" in in_thread["exc"] and "in work" in in_thread["exc"]
    crash = json.loads(main_line[3:])
    assert (crash["level"], crash["event"]) == ("critical", "uncaught exception: the process stops")
    assert "RuntimeError: cannot reach postgresql://festival:***@db/festival" in crash["exc"]
    assert "s3cret" not in main_line
