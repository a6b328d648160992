"""FedAvgM: server momentum on the pseudo-gradient, checked on numbers worked out by hand."""

from __future__ import annotations

import numpy as np

from qflare.fl.strategies.fedavgm import FedAvgMParams, momentum_step
from tests.unit.fl.strategies.helpers import f32, make, run_round, update


def test_defaults_are_the_papers() -> None:
    params = FedAvgMParams()
    assert (params.server_lr, params.server_momentum) == (1.0, 0.9)


def test_two_rounds_by_hand() -> None:
    # Devices: [3, 2] with 1 example and [1, 1] with 3: mean = [(3+3)/4, (2+3)/4] = [1.5, 1.25].
    updates = [update("a", [f32(3.0, 2.0)], 1), update("b", [f32(1.0, 1.0)], 3)]
    strategy = make("fedavgm", server_lr=0.5, server_momentum=0.5)
    # Round 1 from w = [1, 2]: Δ = w - mean = [-0.5, 0.75]; v = Δ; w = w - 0.5 v = [1.25, 1.625].
    w1, state = run_round(strategy, strategy.initial_state(), 1, [f32(1.0, 2.0)], updates)
    assert w1[0].tolist() == [1.25, 1.625] and w1[0].dtype == np.float32
    assert state.arrays["momentum.t0"].tolist() == [-0.5, 0.75] and state.round == 1
    # Round 2 from w1: Δ = [-0.25, 0.375]; v = 0.5 [-0.5, 0.75] + Δ = [-0.5, 0.75]; w = w1 - 0.5 v.
    w2, state = run_round(strategy, state, 2, w1, updates)
    assert w2[0].tolist() == [1.5, 1.25]
    assert state.arrays["momentum.t0"].tolist() == [-0.5, 0.75] and state.round == 2


def test_zero_momentum_unit_rate_is_fedavg() -> None:
    w, v = momentum_step(np.array([4.0]), np.array([1.0]), np.array([7.0]), 1.0, 0.0)
    assert (w.tolist(), v.tolist()) == ([1.0], [3.0])
