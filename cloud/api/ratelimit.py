"""Rate limits every API process shares: token buckets kept in PostgreSQL.

Each client has a bucket of `burst` tokens refilled at `refill_per_s`, and the whole scope (all
clients together, across every API process) has one more, of `global_burst` refilled at
`global_refill_per_s`; a request takes a token from both or is refused with the seconds until
it could pass. A client is its IPv4 address, or the /64 network of its IPv6 address (one
subscriber gets a whole /64: counting its addresses one by one would give it 2^64 budgets).

The counting is one statement of `sp_rate_limit_take` (revision 0007) on the database's clock,
so processes on several hosts agree. The table stays bounded: a client's bucket is created only
while the global bucket has tokens, and each call deletes a few buckets that have been full
again for a while (a missing bucket means a full one).

`take()` is synchronous because its caller is (the checkout routes call it before reading the
body). It runs the query on a small thread pool and waits for at most `timeout_s`, so a slow or
unreachable database can stall the event loop for that long and no longer; every other failure
is a `TransientDatabaseError` (the app answers 503: a checkout needs the database anyway).
"""

from __future__ import annotations

import ipaddress
import math
import threading
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeoutError
from dataclasses import dataclass

from cloud.api.limits import (
    RATE_LIMIT_CLIENT_KEY_LENGTH_MAX,
    RATE_LIMIT_IN_FLIGHT_MAX,
    RATE_LIMIT_STATEMENT_TIMEOUT_MS,
)
from cloud.database import Engine, TransientDatabaseError, text, translate_errors


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    retry_after_s: float = 0.0


def client_bucket(address: str) -> str:
    """The bucket of a client address: the IPv4 address, or the IPv6 /64 it belongs to."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        # A test client or a Unix socket.
        return ("host:" + address)[:RATE_LIMIT_CLIENT_KEY_LENGTH_MAX]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return f"ip:{ip.ipv4_mapped}"
        return f"ip:{ipaddress.ip_network(f'{ip.exploded}/64', strict=False)}"
    return f"ip:{ip}"


class SharedRateLimiter:
    """One scope's limits in the database (see the module's docstring)."""

    def __init__(
        self,
        engine: Engine,
        *,
        scope: str,
        burst: int,
        refill_per_s: float,
        global_burst: int,
        global_refill_per_s: float,
        timeout_s: float = 0.5,
    ) -> None:
        assert 1 <= len(scope) <= 32
        assert burst >= 1 and refill_per_s > 0 and global_burst >= 1 and global_refill_per_s > 0
        assert timeout_s > 0
        self._engine = engine
        self._scope = scope
        self._burst = burst
        self._refill_per_s = refill_per_s
        self._global_burst = global_burst
        self._global_refill_per_s = global_refill_per_s
        self._timeout_s = timeout_s
        self._executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix=f"ratelimit-{scope}")
        self._in_flight = threading.BoundedSemaphore(RATE_LIMIT_IN_FLIGHT_MAX)

    def take(self, key: str, now_s: float = 0.0) -> Decision:
        """Take a token for client address `key`. `now_s` is not used: the database's clock is
        the one every process shares (the argument stays for the callers' sake)."""
        del now_s
        if not self._in_flight.acquire(blocking=False):
            raise TransientDatabaseError("rate limiter: too many database calls in flight")
        try:
            future = self._executor.submit(self._take_in_database, client_bucket(key))
        except RuntimeError as error:  # the executor was shut down
            self._in_flight.release()
            raise TransientDatabaseError(f"rate limiter closed: {error}") from error
        future.add_done_callback(lambda _: self._in_flight.release())
        try:
            return future.result(timeout=self._timeout_s)
        except FutureTimeoutError:
            raise TransientDatabaseError(
                f"rate limiter: no answer from the database within {self._timeout_s} s"
            ) from None

    def _take_in_database(self, bucket: str) -> Decision:
        with translate_errors(), self._engine.begin() as connection:
            connection.execute(
                text(f"SET LOCAL statement_timeout = {RATE_LIMIT_STATEMENT_TIMEOUT_MS}")
            )
            row = connection.execute(
                text(
                    "SELECT allowed, retry_after_ms FROM sp_rate_limit_take("
                    ":scope, :bucket, :burst, :refill, :global_burst, :global_refill)"
                ),
                {
                    "scope": self._scope,
                    "bucket": bucket,
                    "burst": self._burst,
                    "refill": self._refill_per_s,
                    "global_burst": self._global_burst,
                    "global_refill": self._global_refill_per_s,
                },
            ).one()
        return Decision(bool(row.allowed), int(row.retry_after_ms) / 1000)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def retry_after_header(decision: Decision) -> str:
    """Retry-After wants whole seconds; round up so a client that obeys it is let through."""
    return str(max(1, math.ceil(decision.retry_after_s)))
