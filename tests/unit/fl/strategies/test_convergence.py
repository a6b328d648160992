"""Whole runs on a federated quadratic with a known optimum: each algorithm fixes what its paper says.

Device k holds ``f_k(w) = h_k/2 (w - a_k)^2`` and runs plain gradient descent (step
``LR``) from the global model, as a device's local SGD does; the device side of
SCAFFOLD (option II) and FedNova's step count follow the contracts. The global
objective's optimum is known in closed form, so each test states where FedAvg ends
and that the algorithm under test ends at the optimum instead.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from qflare.fl import CONTROL, Strategy, StrategyState, Update
from tests.unit.fl.strategies.helpers import f32, make, run_round

LR = 0.05


def _local(x: float, a: float, h: float, steps: int, lr: float, correction: float = 0.0) -> float:
    """``steps`` of ``w <- w - lr (h (w - a) + correction)`` from ``x``."""
    w = x
    for _ in range(steps):
        w -= lr * (h * (w - a) + correction)
    return w


def _run(
    strategy: Strategy, devices: Sequence[tuple[float, float, int, int]], rounds: int, lr: float = LR
) -> float:
    """``devices`` as ``(a, h, local steps, examples)``; returns the final global model."""
    x, state = 0.0, strategy.initial_state()
    controls = [0.0] * len(devices)  # each device's c_i, kept across rounds as its local state would
    for rnd in range(1, rounds + 1):
        sent = strategy.server_groups(state).get(CONTROL)
        c = float(sent[0][0]) if sent else 0.0
        updates = []
        for i, (a, h, steps, n) in enumerate(devices):
            if strategy.name == "scaffold":
                y = _local(x, a, h, steps, lr, correction=c - controls[i])
                new_ci = controls[i] - c + (x - y) / (steps * lr)
                groups = {"control": [f32(new_ci - controls[i])]}
                controls[i] = new_ci
            else:
                y, groups = _local(x, a, h, steps, lr), {}
            updates.append(Update(f"d{i}", {"weights": [f32(y)], **groups}, n, {"local_steps": float(steps)}))
        new, state = run_round(strategy, state, rnd, [f32(x)], updates)
        x = float(new[0][0])
    assert isinstance(state, StrategyState) and state.round == rounds
    return x


def test_fednova_removes_the_pull_of_devices_that_take_more_steps() -> None:
    # Equal data, optimum 0.5; device b takes 20 local steps to a's 1, with step 0.005.
    devices = [(0.0, 1.0, 1, 100), (1.0, 1.0, 20, 100)]
    fedavg = _run(make("fedavg"), devices, 150, lr=0.005)
    nova = _run(make("fednova"), devices, 150, lr=0.005)
    # FedAvg's fixed point weighs each device by 1 - (1 - lr)^τ: 0.005 vs 0.095, so about 0.95.
    # FedNova divides those by τ (0.005 vs 0.0048): about 0.49, exact as the step goes to 0.
    assert abs(fedavg - 0.950) < 0.01
    assert abs(nova - 0.5) < 0.02


def test_scaffold_reaches_the_optimum_that_client_drift_keeps_fedavg_from() -> None:
    # Curvatures 1 and 10: optimum of the mean objective is 10/11; drift holds FedAvg near 0.71.
    devices = [(0.0, 1.0, 10, 100), (1.0, 10.0, 10, 100)]
    fedavg = _run(make("fedavg"), devices, 200)
    scaffold = _run(make("scaffold", num_devices=2), devices, 200)
    assert abs(fedavg - 0.714) < 0.01
    assert abs(scaffold - 10 / 11) < 1e-3


def test_server_optimisers_reach_the_optimum() -> None:
    devices = [(0.0, 1.0, 5, 100), (2.0, 1.0, 5, 300)]  # optimum: the example-weighted 1.5
    runs = {
        "fedavgm": make("fedavgm", server_lr=1.0, server_momentum=0.5),
        "fedadam": make("fedadam", server_lr=0.05),
        "fedyogi": make("fedyogi", server_lr=0.05),
        "fedadagrad": make("fedadagrad", server_lr=0.3),
    }
    finals = {name: _run(strategy, devices, 300) for name, strategy in runs.items()}
    assert all(abs(x - 1.5) < 0.02 for x in finals.values()), finals
    assert np.isfinite(list(finals.values())).all()
