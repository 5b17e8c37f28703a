"""Serve an app with uvicorn in a thread on a free loopback port, for tests that need real HTTP
(Chromium, schemathesis, Stripe's fake posting webhooks, raw sockets)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn

from cloud.sandbox import free_port, wait_for_port

START_TIMEOUT_S = 10.0


@contextmanager
def serve(app: object, *, lifespan: str = "off") -> Iterator[str]:
    """Yield the base URL while uvicorn serves `app`; stop it (and join the thread) after.
    `lifespan="on"` runs the app's lifespan (its background tasks) as production does."""
    port = free_port()
    config = uvicorn.Config(
        app,  # type: ignore[arg-type]
        host="127.0.0.1",
        port=port,
        log_config=None,
        access_log=False,
        lifespan=lifespan,  # type: ignore[arg-type]
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    try:
        wait_for_port(port, START_TIMEOUT_S, None)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        assert not thread.is_alive(), "uvicorn did not stop"
