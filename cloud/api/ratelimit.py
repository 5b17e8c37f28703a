"""A bounded, in-memory token bucket per client (pure: the caller passes the clock).

Each client key (the client's IP address) has a bucket of `burst` tokens refilled at
`refill_per_s`; a request takes one token or is refused with the seconds until the next one.
At most `clients_max` buckets are kept: the least recently seen client is forgotten first, so a
flood of distinct addresses costs bounded memory (a forgotten client simply starts full again).
The limit is per API process; several processes behind a balancer each apply it.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    retry_after_s: float = 0.0


class TokenBucketLimiter:
    def __init__(self, *, burst: int, refill_per_s: float, clients_max: int) -> None:
        assert burst >= 1 and refill_per_s > 0 and clients_max >= 1
        self._burst = float(burst)
        self._refill_per_s = refill_per_s
        self._clients_max = clients_max
        # key -> (tokens, last refill time in monotonic seconds)
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: str, now_s: float) -> Decision:
        with self._lock:
            tokens, last_s = self._buckets.pop(key, (self._burst, now_s))
            # A clock that went backwards refills nothing rather than a negative amount.
            elapsed_s = max(0.0, now_s - last_s)
            tokens = min(self._burst, tokens + elapsed_s * self._refill_per_s)
            if tokens >= 1.0:
                decision = Decision(True)
                tokens -= 1.0
            else:
                decision = Decision(False, (1.0 - tokens) / self._refill_per_s)
            self._buckets[key] = (tokens, now_s)
            while len(self._buckets) > self._clients_max:
                self._buckets.popitem(last=False)
            return decision


def retry_after_header(decision: Decision) -> str:
    """Retry-After wants whole seconds; round up so a client that obeys it is let through."""
    return str(max(1, math.ceil(decision.retry_after_s)))
