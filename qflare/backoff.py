"""Exponential backoff with full jitter, for reconnecting to Kafka.

Full jitter (a uniform draw below the capped exponential) spreads a thousand
devices that lost the broker at the same instant, so they do not all reconnect
in lock-step when it returns.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class Backoff:
    initial_s: float = 0.25
    max_s: float = 30.0
    factor: float = 2.0
    rng: random.Random = field(default_factory=random.Random)
    attempts: int = 0

    def ceiling_s(self) -> float:
        """The upper bound of the next delay, before jitter."""
        return float(min(self.max_s, self.initial_s * self.factor**self.attempts))

    def next_delay_s(self) -> float:
        ceiling = self.ceiling_s()
        self.attempts += 1
        return self.rng.uniform(0.0, ceiling)

    def reset(self) -> None:
        self.attempts = 0
