"""Strategies: configure, stream, aggregate, and resume from serialised state."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest

from qflare.errors import AggregationError, InvalidUpdateError
from qflare.fl import (
    FedAvg,
    FedProx,
    JobSpec,
    StrategyState,
    Update,
    weighted_average,
)
from qflare.fl.arrays import NDArrays, shapes_of
from qflare.fl.spec import WEIGHTS, GroupSpec, MetricSpec, UpdateSpec
from qflare.fl.state import RoundSums

NAMES = ["w", "b"]
SHAPES = [(8, 4), (4,)]


def _weights(seed: int) -> NDArrays:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(np.float32) for s in SHAPES]


def _updates(count: int) -> list[Update]:
    return [Update(f"d{i}", {WEIGHTS: _weights(10 + i)}, 50 + 7 * i) for i in range(count)]


def test_fedavg_round_is_the_example_weighted_mean() -> None:
    strategy = FedAvg(JobSpec(epochs=5, batch_size=10, lr=0.05))
    glob = _weights(0)
    state = strategy.begin_round(strategy.initial_state(), 1, NAMES, shapes_of(glob))
    configs = strategy.configure_round(1, ["d1", "d2"])
    assert set(configs) == {"d1", "d2"} and configs["d1"] == configs["d2"]
    assert (configs["d1"].epochs, configs["d1"].batch_size, configs["d1"].lr) == (5, 10, 0.05)
    updates = _updates(4)
    for update in updates:
        strategy.accumulate(state, update)
    new, after = strategy.aggregate(strategy.initial_state(), state, glob)
    expected = weighted_average([(u.weights, u.num_examples) for u in updates])
    assert all(a.tobytes() == b.tobytes() for a, b in zip(new, expected, strict=True))
    assert after.round == 1 and after.strategy == "fedavg"
    with pytest.raises(AggregationError):  # FedAvg streams; it does not take buffered updates
        strategy.aggregate(after, updates, glob)


def test_restart_mid_round_from_bytes_gives_the_same_model() -> None:
    strategy = FedAvg()
    glob = _weights(0)
    updates = _updates(6)
    state = strategy.begin_round(strategy.initial_state(), 3, NAMES, shapes_of(glob))
    for update in updates:
        strategy.accumulate(state, update)
    uninterrupted, _ = strategy.aggregate(strategy.initial_state(), state, glob)

    state = strategy.begin_round(strategy.initial_state(), 3, NAMES, shapes_of(glob))
    for update in updates[3:]:
        strategy.accumulate(state, update)
    restored = RoundSums.from_bytes(state.to_bytes())
    fresh = FedAvg()  # a new process: nothing survives but the bytes
    for update in updates[:3]:
        fresh.accumulate(restored, update)
    resumed, _ = fresh.aggregate(fresh.initial_state(), restored, glob)
    assert all(a.tobytes() == b.tobytes() for a, b in zip(resumed, uninterrupted, strict=True))


def test_state_round_trip_with_server_arrays_and_scalars() -> None:
    state = StrategyState(
        strategy="fedavg",
        round=7,
        arrays={"m": np.arange(6, dtype=np.float32).reshape(2, 3), "t": np.array([3], dtype=np.int64)},
        scalars={"beta": 0.9, "tag": "x", "on": True, "none": None},
    )
    back = StrategyState.from_bytes(state.to_bytes())
    assert (back.strategy, back.round, back.scalars) == ("fedavg", 7, state.scalars)
    assert set(back.arrays) == {"m", "t"}
    assert np.array_equal(back.arrays["m"], state.arrays["m"]) and back.arrays["m"].dtype == np.float32
    assert back.arrays["m"].flags.writeable
    assert back.to_bytes() == state.to_bytes()


def test_state_rejects_uncheckpointable_and_corrupt_input() -> None:
    with pytest.raises(AggregationError) as info:
        StrategyState("fedavg", arrays={"c": np.zeros(2, dtype=np.complex64)}).to_bytes()
    assert info.value.field == "arrays.c"
    good: dict[str, object] = msgpack.unpackb(StrategyState("fedavg").to_bytes(), raw=False)
    for key, value in [("v", 9), ("strategy", 1), ("round", -1), ("scalars", [])]:
        with pytest.raises(AggregationError) as info:
            StrategyState.from_bytes(msgpack.packb({**good, key: value}, use_bin_type=True))
        assert info.value.field == key
    bad_array = {"x": {"dtype": "|O", "shape": [1], "data": b"\0" * 8}}
    with pytest.raises(AggregationError) as info:
        StrategyState.from_bytes(msgpack.packb({**good, "arrays": bad_array}, use_bin_type=True))
    assert info.value.field == "arrays.x"
    with pytest.raises(AggregationError):
        StrategyState.from_bytes(b"\x93\x01")  # truncated array


def test_fedprox_only_adds_the_proximal_coefficient() -> None:
    settings = {"epochs": 2, "batch_size": 20, "lr": 0.01}
    prox = FedProx(JobSpec.parse({**settings, "strategy": {"name": "fedprox", "proximal_mu": 0.5}}))
    avg = FedAvg(JobSpec.parse(settings))
    state = prox.initial_state()
    config = prox.configure_round(1, ["d1"])["d1"]
    assert config.to_config() == {**avg.configure_round(1, ["d1"])["d1"].to_config(), "proximal_mu": 0.5}
    assert state.strategy == "fedprox"
    with pytest.raises(AggregationError):  # a FedAvg state is not a FedProx one
        prox.begin_round(avg.initial_state(), 1, NAMES, shapes_of(_weights(0)))


def test_aggregate_checks_the_global_model_and_that_updates_arrived() -> None:
    strategy = FedAvg()
    state = strategy.begin_round(strategy.initial_state(), 1, NAMES, shapes_of(_weights(0)))
    with pytest.raises(AggregationError):
        strategy.aggregate(strategy.initial_state(), state, _weights(0))  # no updates
    strategy.accumulate(state, _updates(1)[0])
    with pytest.raises(InvalidUpdateError):
        strategy.aggregate(
            strategy.initial_state(), state, [np.zeros((3, 3), np.float32), np.zeros(4, np.float32)]
        )


def test_a_version_1_checkpoint_loads_as_sums_and_as_server_state() -> None:
    """A round checkpointed before the split (state and sum in one document) resumes."""
    strategy = FedAvg()
    sums = strategy.begin_round(strategy.initial_state(), 2, NAMES, SHAPES)
    for update in _updates(2):
        strategy.accumulate(sums, update)
    old = msgpack.packb(
        {
            "v": 1,
            "strategy": "fedavg",
            "round": 2,
            "accumulator": sums.sums[WEIGHTS].to_bytes(),
            "arrays": {},
            "scalars": {},
        },
        use_bin_type=True,
    )
    back = RoundSums.from_bytes(old)
    assert back.round == 2 and back.to_bytes() == sums.to_bytes()
    assert StrategyState.from_bytes(old).strategy == "fedavg"


def test_update_spec_names_the_bad_group_tensor_or_metric() -> None:
    spec = UpdateSpec(
        {WEIGHTS: GroupSpec(tuple(NAMES), tuple(SHAPES), 10.0)},
        {"local_steps": MetricSpec(1, 1e6, integer=True)},
    )
    good = {WEIGHTS: _weights(1)}
    w, b = _weights(1)
    spec.check(good, {"local_steps": 3.0})
    cases: list[tuple[dict[str, NDArrays], dict[str, float], str]] = [
        ({}, {"local_steps": 3.0}, "groups.weights"),
        ({**good, "control": _weights(2)}, {"local_steps": 3.0}, "groups.control"),
        ({WEIGHTS: [_weights(1)[0]]}, {"local_steps": 3.0}, "groups.weights"),
        (
            {WEIGHTS: [w.astype(np.float64), b]},
            {"local_steps": 3.0},
            "groups.weights.w",
        ),
        ({WEIGHTS: [w, np.full(4, 11, np.float32)]}, {"local_steps": 3.0}, "groups.weights.b"),
        (
            {WEIGHTS: [w, np.full(4, np.nan, np.float32)]},
            {"local_steps": 3.0},
            "groups.weights.b",
        ),
        (good, {}, "metrics.local_steps"),
        (good, {"local_steps": 2.5}, "metrics.local_steps"),
        (good, {"local_steps": 0.0}, "metrics.local_steps"),
    ]
    for groups, metrics, field in cases:
        with pytest.raises(InvalidUpdateError) as info:
            spec.check(groups, metrics)
        assert info.value.field == field, (field, info.value)
    assert spec.data_bytes() == 4 * (32 + 4)


def test_uniform_group_sums_count_each_update_once() -> None:
    """A group declared ``uniform`` is an unweighted mean whatever the example counts."""

    class Uniform(FedAvg):
        def update_spec(self, names: object, shapes: object) -> UpdateSpec:
            base = super().update_spec(NAMES, SHAPES)
            w = base.groups[WEIGHTS]
            return UpdateSpec({WEIGHTS: w, "control": GroupSpec(w.names, w.shapes, w.max_abs, "uniform")})

    strategy = Uniform()
    sums = strategy.begin_round(strategy.initial_state(), 1, NAMES, SHAPES)
    updates = [
        Update(u.device_id, {**u.groups, "control": _weights(i)}, u.num_examples)
        for i, u in enumerate(_updates(3))
    ]
    for update in updates:
        strategy.accumulate(sums, update)
    control = sums.sums["control"].mean()
    expected = weighted_average([(_weights(i), 1) for i in range(3)])
    assert all(a.tobytes() == b.tobytes() for a, b in zip(control, expected, strict=True))
