"""The cloud's HTTP API (FastAPI under uvicorn): Stripe top-ups and webhooks, monitoring and
metrics, the live dashboard, admin card actions and the seed-compatible point-of-sale endpoints.

`create_app(settings, *, ledger=None, stripe_client=None)` is the composition root;
`run_from_cli(args, settings)` serves it for `festival-cloud api [--host H] [--port P]`.
See docs/api.md.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from cloud.api.limits import CONCURRENCY_MAX
from cloud.settings import CloudSettings

if TYPE_CHECKING:
    from fastapi import FastAPI

    from cloud.api.limits import ApiLimits
    from cloud.api.stripe_gateway import StripeClient
    from cloud.ports import Ledger

# Seconds uvicorn waits for open requests on shutdown (systemd's TimeoutStopSec is longer).
GRACEFUL_SHUTDOWN_S = 10
KEEP_ALIVE_S = 5


def create_app(
    settings: CloudSettings,
    *,
    ledger: Ledger | None = None,
    stripe_client: StripeClient | None = None,
    limits: ApiLimits | None = None,
) -> FastAPI:
    """The app; `ledger` and `stripe_client` default to ones built from `settings`."""
    # Imported here so `festival-cloud --help` and the kiosk never load FastAPI.
    from cloud.api.app import create_app as build

    return build(settings, ledger=ledger, stripe_client=stripe_client, limits=limits)


def run_from_cli(args: argparse.Namespace, settings: CloudSettings) -> int:
    import uvicorn

    from cloud.api.serve import NotifyingServer
    from cloud.logs import configure_logging

    configure_logging()
    settings.require("database_url")
    app = create_app(settings)
    from cloud.api.app import warn_about_database_privileges

    warn_about_database_privileges(app.state.services.ledger.engine)
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        log_config=None,  # our JSON lines (configure_logging), not uvicorn's format
        access_log=False,  # the middleware writes one line per request, with its request id
        proxy_headers=True,
        server_header=False,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        timeout_keep_alive=KEEP_ALIVE_S,
        limit_concurrency=CONCURRENCY_MAX,
    )
    NotifyingServer(config).run()
    return 0


__all__ = ["create_app", "run_from_cli"]
