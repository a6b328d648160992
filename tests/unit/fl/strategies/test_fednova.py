"""FedNova (Wang et al., 2020): normalised averaging by local steps, buffered, by hand."""

from __future__ import annotations

import numpy as np
import pytest

from qflare.errors import AggregationError, InvalidUpdateError
from qflare.fl.strategies.fednova import nova_average
from tests.unit.fl.strategies.helpers import f32, make, run_round, update


def test_one_round_by_hand() -> None:
    # w = 1. Device a: w_a = 0.5, n = 1, τ = 1 -> d = 0.5. Device b: w_b = -3, n = 3, τ = 4 -> d = 1.
    # p = [0.25, 0.75]; τ_eff = 0.25 + 3 = 3.25; Σ p d = 0.125 + 0.75 = 0.875; w = 1 - 3.25 * 0.875.
    strategy = make("fednova")
    updates = [
        update("a", [f32(0.5)], 1, {"local_steps": 1}),
        update("b", [f32(-3.0)], 3, {"local_steps": 4}),
    ]
    new, state = run_round(strategy, strategy.initial_state(), 1, [f32(1.0)], updates)
    assert new[0].tolist() == [-1.84375]  # FedAvg would give 0.25 * 0.5 - 0.75 * 3 = -2.125
    assert state.round == 1 and state.arrays == {}


def test_equal_steps_is_fedavg() -> None:
    rows = [([np.array([0.5])], 1, 3.0), ([np.array([-3.0])], 3, 3.0)]
    assert nova_average([np.array([1.0])], rows)[0].tolist() == [-2.125]


def test_it_buffers_and_refuses_sums() -> None:
    strategy = make("fednova")
    assert strategy.mode == "buffered"
    sums = strategy.begin_round(strategy.initial_state(), 1, ["t0"], [(1,)])
    assert sums.sums == {}
    with pytest.raises(AggregationError) as info:
        strategy.accumulate(sums, update("a", [f32(1.0)], 1, {"local_steps": 1}))
    assert info.value.field == "mode"
    with pytest.raises(AggregationError) as info:
        strategy.aggregate(strategy.initial_state(), sums, [f32(1.0)])
    assert info.value.field == "mode"


def test_updates_must_come_in_device_order_and_carry_local_steps() -> None:
    strategy = make("fednova")
    a = update("a", [f32(1.0)], 1, {"local_steps": 1})
    b = update("b", [f32(1.0)], 1, {"local_steps": 2})
    with pytest.raises(AggregationError) as info:
        strategy.aggregate(strategy.initial_state(), [b, a], [f32(1.0)])
    assert info.value.field == "updates"
    with pytest.raises(InvalidUpdateError) as bad:
        strategy.aggregate(strategy.initial_state(), [a, update("b", [f32(1.0)], 1)], [f32(1.0)])
    assert bad.value.field == "metrics.local_steps"
    spec = strategy.update_spec(["t0"], [(1,)])
    with pytest.raises(InvalidUpdateError) as bad:
        spec.check({"weights": [f32(1.0)]}, {"local_steps": 1.5})
    assert bad.value.field == "metrics.local_steps"
