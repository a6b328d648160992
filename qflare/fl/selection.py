"""Which devices train in a round: the scheduler's draw, shared with the in-process simulator.

Pure and seeded by (job seed, round), so a restarted scheduler reproduces its choice and
``qflare sim`` picks the devices the services would have picked from the same fleet.
"""

from __future__ import annotations

import math
import random

from qflare.fl.job import JobSpec


def select(available: list[str], cfg: JobSpec, round_no: int) -> list[str] | None:
    """C·K devices (at least ``min_clients``) drawn from the healthy ones; None if too few.

    Seeded by (job seed, round) so a restarted scheduler reproduces its choice.
    """
    if len(available) < cfg.min_clients:
        return None
    want = max(cfg.min_clients, math.ceil(cfg.fraction * len(available)))
    rng = random.Random(cfg.seed * 1_000_003 + round_no)
    return sorted(rng.sample(sorted(available), min(want, len(available))))


def fleet_round_size(devices: int, fraction: float, floor: int = 2) -> int:
    """How many devices ``select`` picks from a fleet of ``devices`` that are all available, with
    ``min_clients = min(floor, devices)``.

    A simulation whose devices never drop out can set ``min_clients`` to this: selection is
    unchanged, and a strategy's bound on the updates of a round (Krum's n >= 2f + 3) is then
    checked against the rounds the job will really have, not against the floor of 2.
    """
    return min(devices, max(min(floor, devices), math.ceil(fraction * devices)))
