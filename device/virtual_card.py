"""A virtual contactless card for the vpcd reader driver (vsmartcard-vpcd).

The driver listens on 127.0.0.1:35963 (0x8C7B, reader "Virtual PCD 00 00"); the card is its TCP
client. Connecting inserts the card, closing removes it. Frames are a 2-byte big-endian length and
a body: a 1-byte body is a control code (0 power off, 1 power on, 2 reset, 4 send ATR), any other
body a command APDU, answered with the response APDU.

The card answers the PC/SC "GET DATA - UID" pseudo-APDU (FF CA 00 00 Le) like a contactless reader
does for MIFARE and NTAG wristbands; anything else gets 6D 00 (instruction not supported).
(1.1) With ``tag=`` a ``device.virtual_ntag424.VirtualNtag424`` answers instead: a genuine
NTAG 424 DNA wristband (GET UID included), factory-fresh or programmed; power off, reset and
removal take it out of the field (its selection and session end, its keys and counter stay).
Used by the kiosk's reader tests, the demo and anyone testing without a physical reader.
"""

from __future__ import annotations

import socket
import struct
import threading
from typing import TYPE_CHECKING

from device.limits import VPCD_CONNECT_TIMEOUT_S

if TYPE_CHECKING:
    from device.virtual_ntag424 import VirtualNtag424

VPCD_HOST = "127.0.0.1"
VPCD_PORT = 35963

# PC/SC Part 3 ATR of a contactless storage card (MIFARE Classic 1K), as ACR122U/ACR1252U report.
ATR_MIFARE_CLASSIC_1K = bytes.fromhex("3B8F8001804F0CA000000306030001000000006A")

CONTROL_POWER_OFF = 0
CONTROL_POWER_ON = 1
CONTROL_RESET = 2
CONTROL_GET_ATR = 4

SW_OK = b"\x90\x00"
SW_INS_NOT_SUPPORTED = b"\x6d\x00"
SW_WRONG_LENGTH = b"\x67\x00"


def answer_apdu(uid: bytes | None, apdu: bytes) -> bytes:
    """The card's pure behaviour: the response to one command APDU."""
    if uid is not None and len(apdu) in (4, 5) and apdu[:4] == b"\xff\xca\x00\x00":
        expected_length = apdu[4] if len(apdu) == 5 else 0
        if expected_length == 0 or expected_length >= len(uid):
            return uid + SW_OK
        return uid[:expected_length] + SW_OK
    if uid is not None and len(apdu) > 5 and apdu[:4] == b"\xff\xca\x00\x00":
        return SW_WRONG_LENGTH
    return SW_INS_NOT_SUPPORTED


class VirtualCard:
    """One wristband on the virtual reader: `insert()` taps it, `remove()` takes it away.

    `uid=None` makes a card that does not answer GET UID (an unsupported card); `tag=` an
    NTAG 424 DNA (its UID is the tag's).
    """

    def __init__(
        self,
        uid: bytes | str | None = None,
        *,
        tag: VirtualNtag424 | None = None,
        host: str = VPCD_HOST,
        port: int = VPCD_PORT,
        atr: bytes = ATR_MIFARE_CLASSIC_1K,
    ) -> None:
        self.tag = tag
        if tag is not None:
            uid = tag.uid
        self.uid = bytes.fromhex(uid) if isinstance(uid, str) else uid
        self.host = host
        self.port = port
        self.atr = atr
        self.apdus_seen: list[bytes] = []
        self._socket: socket.socket | None = None
        self._thread: threading.Thread | None = None

    def insert(self) -> None:
        if self._socket is not None:
            return
        if self.tag is not None:
            self.tag.reset()
        sock = socket.create_connection((self.host, self.port), timeout=VPCD_CONNECT_TIMEOUT_S)
        sock.settimeout(None)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._socket = sock
        self._thread = threading.Thread(target=self._serve, args=(sock,), daemon=True)
        self._thread.start()

    def remove(self) -> None:
        sock, self._socket = self._socket, None
        if sock is None:
            return
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        sock.close()
        if self._thread is not None:
            self._thread.join(timeout=VPCD_CONNECT_TIMEOUT_S)
            self._thread = None

    def __enter__(self) -> VirtualCard:
        self.insert()
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def _serve(self, sock: socket.socket) -> None:
        try:
            while True:
                header = _receive_exactly(sock, 2)
                if header is None:
                    return
                (length,) = struct.unpack(">H", header)
                body = _receive_exactly(sock, length)
                if body is None:
                    return
                reply = self._answer(body)
                if reply is not None:
                    sock.sendall(struct.pack(">H", len(reply)) + reply)
        except OSError:
            return

    def _answer(self, body: bytes) -> bytes | None:
        if len(body) == 1:
            if body[0] == CONTROL_GET_ATR:
                return self.atr
            if self.tag is not None:
                self.tag.reset()
            return None  # power on/off and reset need no answer
        self.apdus_seen.append(body)
        if self.tag is not None:
            return self.tag.answer(body)
        return answer_apdu(self.uid, body)


def _receive_exactly(sock: socket.socket, count: int) -> bytes | None:
    chunks = bytearray()
    while len(chunks) < count:
        chunk = sock.recv(count - len(chunks))
        if not chunk:
            return None
        chunks += chunk
        # Without quick ACKs every APDU waits for the peer's delayed ACK (~40 ms).
        if hasattr(socket, "TCP_QUICKACK"):
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
            except OSError:
                pass
    return bytes(chunks)
