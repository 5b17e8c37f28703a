"""What the routes share: built once by create_app (the composition root), read from app.state.

Nothing here is created at import time; tests build their own with fakes where the outside
world cannot run (Stripe's servers) and the real ledger on a real PostgreSQL.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from cloud.api.limits import ApiLimits
from cloud.api.metrics import ApiMetrics
from cloud.api.ratelimit import TokenBucketLimiter
from cloud.api.stripe_gateway import CheckoutGateway
from cloud.settings import CloudSettings

T = TypeVar("T")


@dataclass
class SeqCounter:
    """seq values for the requests of the HTTP point of sale (kiosk_id "pos-http").

    The protocol model needs a seq >= 1; the ledger tracks seq gaps for MQTT kiosks only (an
    HTTP client has no persisted counter to detect losses with), so a per-process counter is
    enough: it only shows up in the audit details.
    """

    _counter: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def next(self) -> int:
        with self._lock:
            return next(self._counter)


@dataclass
class Services:
    settings: CloudSettings
    ledger: Any  # cloud.ledger.Ledger (duck-typed so tests may wrap it to inject faults)
    checkout: CheckoutGateway | None
    metrics: ApiMetrics
    limits: ApiLimits
    checkout_limiter: TokenBucketLimiter
    queries: Any  # cloud.api.queries.DashboardQueries
    seq: SeqCounter
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
