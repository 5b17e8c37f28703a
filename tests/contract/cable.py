"""A TCP cable between a client and a server that a test can pull out and plug back in.

`Cable(port)` listens on 127.0.0.1 and forwards every connection to `port`. `pull()` cuts every
connection at once (both ends see it close) and refuses new ones until `plug()`: a network
outage of one client while the server (the broker) stays up and keeps its sessions.
"""

from __future__ import annotations

import socket
import threading
from typing import Final

CHUNK_BYTES: Final = 65_536
ACCEPT_POLL_S: Final = 0.1  # how often the listening thread looks whether the cable is closed
CONNECT_TIMEOUT_S: Final = 5.0
CONNECTIONS_MAX: Final = 64


class Cable:
    def __init__(self, target_port: int) -> None:
        self._target_port = target_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(ACCEPT_POLL_S)
        self.port: int = self._listener.getsockname()[1]
        self._plugged = threading.Event()
        self._plugged.set()
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._thread = threading.Thread(target=self._accept, name="cable", daemon=True)
        self._thread.start()

    def pull(self) -> None:
        """Cut every open connection; refuse new ones until plug()."""
        self._plugged.clear()
        with self._lock:
            sockets, self._sockets = self._sockets, set()
        for sock in sockets:
            _close(sock)

    def plug(self) -> None:
        self._plugged.set()

    def close(self) -> None:
        self._closed.set()
        self.pull()
        self._thread.join(timeout=5)
        self._listener.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if not self._plugged.is_set() or len(self._sockets) >= CONNECTIONS_MAX:
                _close(client)
                continue
            try:
                server = socket.create_connection(
                    ("127.0.0.1", self._target_port), timeout=CONNECT_TIMEOUT_S
                )
            except OSError:
                _close(client)
                continue
            server.settimeout(None)
            client.settimeout(None)
            with self._lock:
                self._sockets.update((client, server))
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while chunk := source.recv(CHUNK_BYTES):
                sink.sendall(chunk)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with self._lock:
                    self._sockets.discard(sock)
                _close(sock)


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()
