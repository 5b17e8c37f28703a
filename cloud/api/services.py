"""What the routes share: built once by create_app (the composition root), read from app.state.

Nothing here is created at import time; tests build their own with fakes where the outside
world cannot run (Stripe's servers) and the real ledger on a real PostgreSQL.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from cloud.api.limits import ApiLimits
from cloud.api.metrics import ApiMetrics
from cloud.api.ratelimit import Decision
from cloud.api.stripe_gateway import CheckoutGateway
from cloud.ports import Ledger
from cloud.settings import CloudSettings

T = TypeVar("T")


class RateLimiter(Protocol):
    def take(self, key: str, now_s: float) -> Decision: ...


@dataclass
class Services:
    settings: CloudSettings
    ledger: Ledger  # the port (cloud/ports.py): cloud.ledger.Ledger, or a test's wrapper of it
    checkout: CheckoutGateway | None
    metrics: ApiMetrics
    limits: ApiLimits
    checkout_limiter: RateLimiter
    queries: Any  # cloud.api.queries.DashboardQueries
    pos_devices: Any  # cloud.pos_devices.PosDevices (duck-typed like the ledger)
    clock_s: Callable[[], float] = time.time
    monotonic_s: Callable[[], float] = time.monotonic

    async def ledger_call(
        self, operation: str, function: Callable[..., T], *args: Any, **kwargs: Any
    ) -> T:
        """Run a blocking ledger call in the thread pool, timed into the metrics.

        The log context (request_id) travels with it: run_in_threadpool copies contextvars.
        """
        started = time.perf_counter()
        try:
            return await run_in_threadpool(function, *args, **kwargs)
        finally:
            self.metrics.ledger_seconds.labels(operation).observe(time.perf_counter() - started)


def services_of(request: Request) -> Services:
    services = request.app.state.services
    assert isinstance(services, Services)
    return services
