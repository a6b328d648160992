"""FedAdam, FedYogi, FedAdagrad (Reddi et al., 2021): one base, three second-moment rules, by hand.

The case: global w = [0.5, 1.0]; devices [3, 2] (1 example) and [1, 1] (3 examples),
so mean = [1.5, 1.25] and Δ = mean - w = [1.0, 0.25], Δ² = [1.0, 0.0625].
Parameters η = 0.1, β1 = 0.5, β2 = 0.75, τ = 0.5: m = 0.5 Δ = [0.5, 0.125], v starts at τ² = 0.25.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from qflare.fl import Strategy
from qflare.fl.strategies.fedadagrad import FedAdagrad, FedAdagradParams
from qflare.fl.strategies.fedadam import FedAdam, FedAdamParams
from qflare.fl.strategies.fedopt import FedOpt
from qflare.fl.strategies.fedyogi import FedYogi, FedYogiParams
from tests.unit.fl.strategies.helpers import f32, make, run_round, update

PARAMS = {"server_lr": 0.1, "beta1": 0.5, "tau": 0.5}
UPDATES = [update("a", [f32(3.0, 2.0)], 1), update("b", [f32(1.0, 1.0)], 3)]
M = [0.5, 0.125]

#: v after round 1, per variant, written out.
V = {
    # β2 v + (1 - β2) Δ² = 0.1875 + 0.25 Δ²
    "fedadam": [0.1875 + 0.25, 0.1875 + 0.015625],
    # v - (1 - β2) Δ² sign(v - Δ²): Δ² > v grows v (first), Δ² < v shrinks it (second)
    "fedyogi": [0.25 + 0.25, 0.25 - 0.015625],
    # v + Δ²
    "fedadagrad": [1.25, 0.3125],
}


def _strategy(name: str) -> Strategy:
    extra = {} if name == "fedadagrad" else {"beta2": 0.75}
    return make(name, **PARAMS, **extra)


@pytest.mark.parametrize("name", sorted(V))
def test_one_round_by_hand(name: str) -> None:
    strategy = _strategy(name)
    assert isinstance(strategy, FedOpt)
    new, state = run_round(strategy, strategy.initial_state(), 1, [f32(0.5, 1.0)], UPDATES)
    assert state.arrays["m.t0"].tolist() == M
    assert state.arrays["v.t0"].tolist() == V[name]
    expected = [w + 0.1 * m / (math.sqrt(v) + 0.5) for w, m, v in zip([0.5, 1.0], M, V[name], strict=True)]
    np.testing.assert_allclose(new[0], np.array(expected, np.float32), rtol=1e-7)
    assert new[0].dtype == np.float32


def test_the_moments_carry_into_the_next_round() -> None:
    strategy = _strategy("fedadam")
    w1, state = run_round(strategy, strategy.initial_state(), 1, [f32(0.5, 1.0)], UPDATES)
    _, state = run_round(strategy, state, 2, w1, UPDATES)
    delta = np.array([1.5, 1.25]) - w1[0].astype(np.float64)
    assert np.array_equal(state.arrays["m.t0"], 0.5 * np.array(M) + 0.5 * delta)
    assert np.array_equal(state.arrays["v.t0"], 0.75 * np.array(V["fedadam"]) + 0.25 * delta**2)


def test_defaults_are_the_papers() -> None:
    for params in (FedAdamParams(), FedYogiParams()):
        assert (params.server_lr, params.beta1, params.beta2, params.tau) == (1e-2, 0.9, 0.99, 1e-3)
    adagrad = FedAdagradParams()
    assert (adagrad.server_lr, adagrad.beta1, adagrad.tau) == (1e-2, 0.9, 1e-3)
    assert "beta2" not in FedAdagradParams.model_fields  # Adagrad's v is a plain running total


def test_each_variant_overrides_only_the_second_moment() -> None:
    for cls in (FedAdam, FedYogi, FedAdagrad):
        own = {k for k, v in vars(cls).items() if callable(v) and not k.startswith("_") and k != "Params"}
        assert own == {"second_moment"}, cls
        assert issubclass(cls, FedOpt) and cls.aggregate is FedOpt.aggregate
