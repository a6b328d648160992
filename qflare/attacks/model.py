"""Model attacks: what an attacker device sends instead of its honest trained weights.

Every attack works on updates Δ = trained − global (float64) and sends global + Δ' as
float32 weights. The colluding attacks (ALIE, IPM, Sybil) see the honest updates of the
round's selected attackers, their own included, as in the papers' threat model where
the adversary controls those devices and estimates the honest statistics from them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np
from numpy.typing import NDArray

from qflare.attacks.registry import Attack
from qflare.errors import ConfigError
from qflare.fl.arrays import NDArrays


@dataclass(frozen=True)
class RoundView:
    """What one attacker knows in a round."""

    #: The global model the round started from.
    global_weights: Sequence[NDArray[Any]]
    #: This attacker's honestly trained weights and example count.
    honest: Sequence[NDArray[Any]]
    num_examples: int
    #: Honest trained weights of the round's selected attackers (this one included), in device order.
    colluders: Sequence[Sequence[NDArray[Any]]] = ()
    #: Devices selected in the round, n (ALIE's z depends on it).
    selected: int = 0
    #: Randomness of the Gaussian attack (seeded by the caller per device and round).
    rng: np.random.Generator | None = None


def _delta(weights: Sequence[NDArray[Any]], base: Sequence[NDArray[Any]]) -> list[NDArray[np.float64]]:
    if len(weights) != len(base):
        raise ConfigError(f"{len(weights)} tensors, the global model has {len(base)}", field="weights")
    return [np.asarray(w, np.float64) - np.asarray(g, np.float64) for w, g in zip(weights, base, strict=True)]


def _send(base: Sequence[NDArray[Any]], delta: Sequence[NDArray[np.float64]]) -> NDArrays:
    return [(np.asarray(g, np.float64) + d).astype(np.float32) for g, d in zip(base, delta, strict=True)]


def _colluder_deltas(view: RoundView) -> list[list[NDArray[np.float64]]]:
    # An attacker alone in its round still knows its own honest update.
    group = view.colluders if view.colluders else [view.honest]
    return [_delta(c, view.global_weights) for c in group]


def _mean(deltas: list[list[NDArray[np.float64]]]) -> list[NDArray[np.float64]]:
    return [np.mean(np.stack(ts), axis=0) for ts in zip(*deltas, strict=True)]


def alie_z(n: int, f: int) -> float:
    """Baruch et al. 2019: s = floor(n/2 + 1) − f supporters needed; z_max = Φ⁻¹((n − s) / n)."""
    if n < 1 or f < 0:
        raise ConfigError(f"ALIE needs n >= 1 and f >= 0, got n={n}, f={f}", field="attackers")
    s = math.floor(n / 2 + 1) - f
    p = (n - s) / n
    # p >= 1 (attackers are a majority) has no finite z; p <= 1/2 gives z <= 0: no shift at all.
    p = min(max(p, 0.5), 1 - 1e-6)
    return NormalDist().inv_cdf(p)


def craft(attack: Attack, view: RoundView) -> tuple[NDArrays, int]:
    """The weights and example count the attacker sends in place of its honest ones."""
    g = view.global_weights
    name = attack.name
    n_examples = view.num_examples
    if name == "sign_flip":
        delta = [-d for d in _delta(view.honest, g)]
    elif name == "scaling":
        delta = [attack["factor"] * d for d in _delta(view.honest, g)]
    elif name == "gaussian":
        rng = view.rng if view.rng is not None else np.random.default_rng(0)
        delta = [rng.normal(0.0, attack["sigma"], size=np.shape(w)) for w in g]
    elif name == "alie":
        deltas = _colluder_deltas(view)
        f = len(deltas)
        z = attack["z"] or alie_z(max(view.selected, f), f)
        stacked = [np.stack(ts) for ts in zip(*deltas, strict=True)]
        delta = [s.mean(axis=0) - z * s.std(axis=0) for s in stacked]
    elif name == "ipm":
        delta = [-attack["epsilon"] * m for m in _mean(_colluder_deltas(view))]
    elif name == "sybil":
        delta = [-attack["scale"] * m for m in _mean(_colluder_deltas(view))]
    elif name == "free_rider":
        delta = [np.zeros(np.shape(w)) for w in g]
    elif name == "num_examples_liar":
        delta = _delta(view.honest, g)
        n_examples = int(attack["claim"])
    elif name == "backdoor":
        delta = [attack["boost"] * d for d in _delta(view.honest, g)]
    elif name == "label_flip":
        delta = _delta(view.honest, g)
    else:
        raise ConfigError(f"unknown attack {name!r}", field="attack")
    return _send(g, delta), n_examples
