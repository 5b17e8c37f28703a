"""JSON-lines logging for the cloud processes (one line per event, to stdout for journald).

The formatter is the kiosk's (`device/logs.py`, one formatter for both sides: traceback in
`exc`, journald priority prefix under systemd, URL passwords redacted). `configure_logging()` is
called once by a composition root. Context (request_id, kiosk_id, card_uid, trace id…) travels
as `extra={"context": {...}}` or through `bind()` for a block of code; secrets are never passed in.
"""

from __future__ import annotations

from device.logs import RESERVED, JsonFormatter, bind, configure_logging, render

__all__ = ["RESERVED", "JsonFormatter", "bind", "configure_logging", "render"]
