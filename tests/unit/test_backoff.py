"""Backoff grows exponentially to a cap, with full jitter below it."""

from __future__ import annotations

import random

from qflare.backoff import Backoff


def test_ceiling_doubles_to_the_cap_and_delays_stay_below_it() -> None:
    backoff = Backoff(initial_s=0.5, max_s=4.0, rng=random.Random(1))
    ceilings = []
    for _ in range(6):
        ceiling = backoff.ceiling_s()
        delay = backoff.next_delay_s()
        assert 0 <= delay <= ceiling
        ceilings.append(ceiling)
    assert ceilings == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    backoff.reset()
    assert backoff.ceiling_s() == 0.5
