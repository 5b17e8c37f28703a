"""Capped exponential backoff with jitter (pure: the caller does the waiting)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class Backoff:
    """Delays ``delay_min_s``, 2x, 4x, ... up to ``delay_max_s``, each jittered by +-20 %.

    Jitter keeps two consumers that lost the same database from retrying in lockstep.
    """

    delay_min_s: float
    delay_max_s: float
    attempts: int = 0
    _random: random.Random = field(default_factory=random.Random, repr=False)

    def __post_init__(self) -> None:
        assert 0 < self.delay_min_s <= self.delay_max_s

    def next_delay_s(self) -> float:
        base = min(self.delay_max_s, self.delay_min_s * (2 ** min(self.attempts, 32)))
        self.attempts += 1
        jittered: float = base * self._random.uniform(0.8, 1.2)
        return min(self.delay_max_s, jittered)

    def reset(self) -> None:
        self.attempts = 0
