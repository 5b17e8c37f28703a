"""UUIDv7 request ids (RFC 9562 §5.7): time-ordered, so the ledger's index grows at its end.

Python 3.11 has no ``uuid.uuid7``. The 48-bit millisecond timestamp comes first; within one
millisecond the next id is the previous one plus one (RFC 9562 §6.2 method 2, a monotonic random
counter), so ids made by one kiosk sort in creation order even when the clock stands still or
steps back a little.
"""

from __future__ import annotations

import os
import threading
import uuid

_UNIX_MS_48_BIT_MASK = (1 << 48) - 1
_RANDOM_BITS = 74  # 12 bits rand_a + 62 bits rand_b


class UuidV7Generator:
    """Makes monotonic UUIDv7 strings; one per process (the kiosk's composition root owns it)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last_ms = -1
        self._last_random = 0

    def new(self, now_ms: int) -> str:
        with self._lock:
            timestamp_ms = max(now_ms, self._last_ms) & _UNIX_MS_48_BIT_MASK
            if timestamp_ms == self._last_ms:
                random = self._last_random + 1
                if random >> _RANDOM_BITS:  # counter overflow: borrow the next millisecond
                    timestamp_ms += 1
                    random = _fresh_random()
            else:
                random = _fresh_random()
            self._last_ms, self._last_random = timestamp_ms, random
        rand_a = random >> 62
        rand_b = random & ((1 << 62) - 1)
        value = (timestamp_ms << 80) | (0x7 << 76) | (rand_a << 64) | (0b10 << 62) | rand_b
        return str(uuid.UUID(int=value))


def _fresh_random() -> int:
    # Leave the top bit clear so that many increments fit before an overflow.
    return int.from_bytes(os.urandom(10), "big") >> (80 - _RANDOM_BITS + 1)
