"""The kiosk's local HTTP interface: the touchscreen page and a small JSON API, on 127.0.0.1 only.

stdlib ``http.server`` in a thread of its own (no web framework on the Pi). Handlers never touch
the kiosk's state: they read the latest snapshot (an immutable JSON document the main loop
publishes) and send commands to the main loop, waiting a bounded time for its reply.
Prices are computed here from the menu the kiosk sells from now (``sales_menu``: its latest
config's, else the local file's; pure); the page sends only SKUs and quantities, and the tag of
the menu it showed, so that an order is never charged from a menu the page did not show.

Defences for an interface that only the kiosk's own browser should use: bound to loopback; the
Host header must name loopback (DNS rebinding); POST bodies must be ``application/json`` (a
cross-site form cannot send that without a CORS preflight, which we never answer) and at most
16 KiB of strict JSON. The API is documented in docs/kiosk.md.
"""

from __future__ import annotations

import json
import logging
import mimetypes
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Final

from device.kiosk import CommandEvent, StaffActivePressed, StaffLogoutPressed, VoidPressed
from device.limits import (
    COMMAND_REPLY_TIMEOUT_S,
    HTTP_BODY_BYTES_MAX,
    STATIC_FILE_BYTES_MAX,
)
from device.machine import (
    CancelPressed,
    ConfirmPressed,
    DismissPressed,
    Mode,
    OrderEntered,
    Reply,
)
from device.menu import OrderError, SalesMenu, price_order
from device.reader import SimulatedReader
from device.recharge import (
    RechargeError,
    parse_cash_out,
    parse_recharge,
    parse_staff_id,
    parse_staff_login,
    parse_swap,
    parse_void,
)
from protocol.errors import ProtocolError
from protocol.limits import RETURN_CENTS_MAX_DEFAULT
from protocol.models import SCAN_STATUSES, CardSun, ScanStatus
from protocol.strict_json import loads_strict

log = logging.getLogger(__name__)

STATIC_NAME_PATTERN: Final = re.compile(r"\A[a-z0-9][a-z0-9_.-]{0,63}\Z")
LOOPBACK_HOSTS: Final = frozenset({"127.0.0.1", "localhost", "[::1]"})
# (1.1) Routes whose body names a staff member: without one, the one at the till.
_STAFFED_ROUTES: Final = frozenset(
    {"/api/order", "/api/recharge", "/api/void", "/api/swap", "/api/cashout"}
)


@dataclass(frozen=True)
class HttpApi:
    """What the handlers may use; built by the kiosk's composition root."""

    mode: Mode
    sales_menu: Callable[[], SalesMenu]
    topup_cents_max: int
    snapshot_json: Callable[[], bytes]
    command: Callable[[CommandEvent, float], Reply]
    simulated_reader: SimulatedReader | None
    static_dir: Path
    return_cents_max: int = RETURN_CENTS_MAX_DEFAULT
    # (1.1) The staff member at the till, if one is logged in: a request the page sends
    # without a staff id names them (the kiosk names them anyway, device/kiosk.py _staffed).
    active_staff_id: Callable[[], str | None] = lambda: None


class LocalHttpServer:
    """Serves ``api`` on 127.0.0.1:``port`` (0 picks a free port; see ``.port``)."""

    def __init__(self, api: HttpApi, port: int, host: str = "127.0.0.1") -> None:
        handler = type("KioskHandler", (_Handler,), {"api": api})
        self._server = ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="http", kwargs={"poll_interval": 0.2}
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and close the socket (also when ``start`` was never called)."""
        if self._thread.is_alive():
            self._server.shutdown()  # waits for serve_forever: only when it is running
            self._thread.join(timeout=5)
        self._server.server_close()


def _card_sun(value: object) -> CardSun | None:
    """(1.1) A simulated tap's ``card_sun`` (what a genuine band, or a replaying clone, gives)."""
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) != {"picc_data", "cmac"}:
        raise ValueError('card_sun must be {"picc_data": 32 hex, "cmac": 16 hex}')
    return CardSun(picc_data=value["picc_data"], cmac=value["cmac"])


class _HttpProblem(Exception):
    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class _Handler(BaseHTTPRequestHandler):
    api: HttpApi
    server_version = "festival-kiosk"
    sys_version = ""
    protocol_version = "HTTP/1.1"

    # --- plumbing ----------------------------------------------------------------------------

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http " + format % args)

    def _send(
        self,
        status: HTTPStatus,
        body: bytes,
        content_type: str = "application/json",
        extra_headers: dict[str, str] | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("X-Frame-Options", "DENY")
        self.send_header(
            "Content-Security-Policy",
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
            " connect-src 'self'; frame-ancestors 'none'",
        )
        for name, value in (extra_headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: HTTPStatus, document: object) -> None:
        self._send(status, json.dumps(document, separators=(",", ":")).encode())

    def _problem(self, problem: _HttpProblem) -> None:
        self._json(problem.status, {"ok": False, "error": problem.message})

    def _check_host(self) -> None:
        host = (self.headers.get("Host") or "").strip().lower()
        name = host.rsplit(":", 1)[0] if not host.startswith("[") else host.split("]")[0] + "]"
        if name not in LOOPBACK_HOSTS:
            raise _HttpProblem(HTTPStatus.MISDIRECTED_REQUEST, "this interface is local only")

    def _body(self) -> object:
        content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if content_type != "application/json":
            raise _HttpProblem(
                HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "send the body as application/json"
            )
        length_text = self.headers.get("Content-Length")
        if length_text is None or not length_text.isdigit():
            raise _HttpProblem(HTTPStatus.LENGTH_REQUIRED, "Content-Length is required")
        length = int(length_text)
        if length > HTTP_BODY_BYTES_MAX:
            raise _HttpProblem(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"body over {HTTP_BODY_BYTES_MAX} bytes"
            )
        data = self.rfile.read(length)
        if not data:
            return {}
        try:
            return loads_strict(data)
        except ProtocolError as error:
            raise _HttpProblem(HTTPStatus.BAD_REQUEST, error.message) from None

    # --- routes ------------------------------------------------------------------------------

    def do_GET(self) -> None:
        try:
            self._check_host()
            path = self.path.split("?", 1)[0]
            if path == "/api/state":
                self._send(HTTPStatus.OK, self.api.snapshot_json())
            elif path == "/api/menu":
                sales = self.api.sales_menu()
                if self.api.mode is not Mode.BAR or sales.menu is None:
                    raise _HttpProblem(HTTPStatus.NOT_FOUND, "a checkpoint kiosk has no menu")
                menu = {
                    **sales.menu.to_dict(),
                    "tag": sales.tag,
                    "source": sales.source,
                    "config_version": sales.config_version,
                    "return_cents_max": self.api.return_cents_max,
                }
                self._json(HTTPStatus.OK, menu)
            elif path in ("/", "/index.html"):
                self._static("index.html")
            elif path.startswith("/static/"):
                self._static(path.removeprefix("/static/"))
            elif path == "/healthz":
                self._json(HTTPStatus.OK, {"ok": True})
            else:
                raise _HttpProblem(HTTPStatus.NOT_FOUND, "not found")
        except _HttpProblem as problem:
            self._problem(problem)

    do_HEAD = do_GET

    def do_POST(self) -> None:
        try:
            self._check_host()
            path = self.path.split("?", 1)[0]
            routes: dict[str, Callable[[object], None]] = {
                "/api/order": self._order,
                "/api/recharge": self._recharge,
                "/api/cancel": lambda body: self._command(CancelPressed()),
                "/api/dismiss": lambda body: self._command(DismissPressed()),
                "/api/tap": self._tap,
                "/api/void": self._void,
                "/api/swap": self._swap,
                "/api/staff/login": self._staff_login,
                "/api/staff/logout": self._staff_logout,
                "/api/staff/active": self._staff_active,
                "/api/cashout": self._cash_out,
                "/api/confirm": lambda body: self._command(ConfirmPressed()),
            }
            route = routes.get(path)
            if route is None:
                raise _HttpProblem(HTTPStatus.NOT_FOUND, "not found")
            body = self._body()
            if path in _STAFFED_ROUTES:
                body = self._with_active_staff(body)
            try:
                route(body)
            except (OrderError, RechargeError) as error:  # the route's parser refused the body
                raise _HttpProblem(HTTPStatus.BAD_REQUEST, str(error)) from None
        except _HttpProblem as problem:
            self._problem(problem)

    def _with_active_staff(self, body: object) -> object:
        """A body without a staff id names the staff member at the till, if any."""
        active = self.api.active_staff_id()
        if active is None or not isinstance(body, dict) or body.get("staff_id"):
            return body
        return {**body, "staff_id": active}

    def _reject_other_methods(self) -> None:
        self._send(
            HTTPStatus.METHOD_NOT_ALLOWED,
            b'{"ok":false,"error":"method not allowed"}',
            extra_headers={"Allow": "GET, HEAD, POST"},
        )

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _reject_other_methods

    def _static(self, name: str) -> None:
        if not STATIC_NAME_PATTERN.match(name):
            raise _HttpProblem(HTTPStatus.NOT_FOUND, "not found")
        path = self.api.static_dir / name
        if not path.is_file() or path.stat().st_size > STATIC_FILE_BYTES_MAX:
            raise _HttpProblem(HTTPStatus.NOT_FOUND, "not found")
        content_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
        if content_type.startswith("text/") or content_type.endswith("javascript"):
            content_type += "; charset=utf-8"
        self._send(HTTPStatus.OK, path.read_bytes(), content_type)

    def _command(self, event: CommandEvent) -> None:
        reply = self.api.command(event, COMMAND_REPLY_TIMEOUT_S)
        status = HTTPStatus.OK if reply.ok else HTTPStatus.CONFLICT
        state = json.loads(self.api.snapshot_json())
        self._json(status, {"ok": reply.ok, "message": reply.message, "state": state})

    def _order(self, body: object) -> None:
        sales = self.api.sales_menu()
        if self.api.mode is not Mode.BAR or sales.menu is None:
            raise _HttpProblem(HTTPStatus.CONFLICT, "this is a checkpoint kiosk: use /api/recharge")
        if isinstance(body, dict) and "menu_tag" in body:
            # The page priced the cart from the menu it showed: if the kiosk sells from another
            # one now, charging would reprice the order behind the bartender's back.
            shown = body["menu_tag"]
            body = {key: value for key, value in body.items() if key != "menu_tag"}
            if shown != sales.tag:
                raise _HttpProblem(
                    HTTPStatus.CONFLICT, "the menu changed: check the order and charge again"
                )
        draft = price_order(
            sales.menu,
            body,
            return_cents_max=self.api.return_cents_max,
            config_version=sales.config_version,
        )
        self._command(OrderEntered(draft))

    def _recharge(self, body: object) -> None:
        if self.api.mode is not Mode.CHECKPOINT:
            raise _HttpProblem(HTTPStatus.CONFLICT, "this is a bar kiosk: use /api/order")
        draft = parse_recharge(
            body,
            topup_cents_max=self.api.topup_cents_max,
            config_version=self.api.sales_menu().config_version,
        )
        self._command(OrderEntered(draft))

    def _void(self, body: object) -> None:
        """(1.1) "Cancel" on one of the orders the page lists (``state.orders.recent``)."""
        if self.api.mode is not Mode.BAR:
            raise _HttpProblem(HTTPStatus.CONFLICT, "only a bar kiosk cancels its orders")
        request_id, staff_id = parse_void(body)
        self._command(VoidPressed(request_id, staff_id))

    def _swap(self, body: object) -> None:
        """(1.1) "Replace a wristband": the old band's UID typed (or tapped next), then the new
        band's tap."""
        if self.api.mode is not Mode.CHECKPOINT:
            raise _HttpProblem(HTTPStatus.CONFLICT, "wristbands are replaced at a checkpoint")
        draft = parse_swap(body, config_version=self.api.sales_menu().config_version)
        self._command(OrderEntered(draft))

    def _staff_login(self, body: object) -> None:
        """(1.1) "Staff login": id and PIN typed, then the staff band's tap. The PIN goes only
        into the signed request; nothing here logs the body."""
        draft = parse_staff_login(body, config_version=self.api.sales_menu().config_version)
        self._command(OrderEntered(draft))

    def _staff_logout(self, body: object) -> None:
        staff_id = parse_staff_id(body, "logs out")
        self._command(StaffLogoutPressed(staff_id))

    def _staff_active(self, body: object) -> None:
        staff_id = parse_staff_id(body, "is at the till")
        self._command(StaffActivePressed(staff_id))

    def _cash_out(self, body: object) -> None:
        """(ours) "Cash out a wristband": then the band's tap, then Confirm (POST
        /api/confirm). A supervisor's request when roles are enforced: the cloud decides."""
        if self.api.mode is not Mode.CHECKPOINT:
            raise _HttpProblem(HTTPStatus.CONFLICT, "wristbands are cashed out at a checkpoint")
        draft = parse_cash_out(body, config_version=self.api.sales_menu().config_version)
        self._command(OrderEntered(draft))

    def _tap(self, body: object) -> None:
        reader = self.api.simulated_reader
        if reader is None:
            raise _HttpProblem(HTTPStatus.NOT_FOUND, "taps come from the card reader (not sim)")
        if not isinstance(body, dict) or set(body) - {"card_uid", "status", "card_sun"}:
            raise _HttpProblem(HTTPStatus.BAD_REQUEST, 'send {"card_uid": "04A1B2C3D4E5F6"}')
        status = body.get("status", "ok")
        if status not in SCAN_STATUSES:
            raise _HttpProblem(HTTPStatus.BAD_REQUEST, "status must be a scan status")
        scan_status: ScanStatus = status
        card_uid = body.get("card_uid")
        try:
            card_sun = _card_sun(body.get("card_sun"))
            reader.tap(card_uid if isinstance(card_uid, str) else None, scan_status, card_sun)
        except ProtocolError as error:
            raise _HttpProblem(HTTPStatus.BAD_REQUEST, error.message) from None
        except ValueError as error:
            raise _HttpProblem(HTTPStatus.BAD_REQUEST, str(error)) from None
        except RuntimeError as error:
            raise _HttpProblem(HTTPStatus.SERVICE_UNAVAILABLE, str(error)) from None
        self._json(HTTPStatus.ACCEPTED, {"ok": True, "message": "tap queued"})
