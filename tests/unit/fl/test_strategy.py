"""Strategies: configure, stream, aggregate, and resume from serialised state."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest

from qflare.errors import AggregationError, ConfigError, InvalidUpdateError, SchemaError
from qflare.fl import (
    STRATEGIES,
    FedAvg,
    FedProx,
    StrategyState,
    TrainConfig,
    Update,
    build_strategy,
    weighted_average,
)
from qflare.fl.arrays import NDArrays, shapes_of
from qflare.types import Scalar

NAMES = ["w", "b"]
SHAPES = [(8, 4), (4,)]


def _weights(seed: int) -> NDArrays:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(np.float32) for s in SHAPES]


def _updates(count: int) -> list[Update]:
    return [Update(_weights(10 + i), 50 + 7 * i) for i in range(count)]


def test_fedavg_round_is_the_example_weighted_mean() -> None:
    strategy = FedAvg(epochs=5, batch_size=10, lr=0.05)
    glob = _weights(0)
    state = strategy.begin_round(strategy.initial_state(), 1, shapes_of(glob), NAMES)
    assert strategy.configure_round(state, 1) == TrainConfig(epochs=5, batch_size=10, lr=0.05)
    updates = _updates(4)
    for update in updates:
        strategy.accumulate(state, update)
    new, after = strategy.aggregate(state, glob)
    expected = weighted_average([(u.weights, u.num_examples) for u in updates])
    assert all(a.tobytes() == b.tobytes() for a, b in zip(new, expected, strict=True))
    assert after.accumulator is None and after.round == 1
    with pytest.raises(AggregationError):  # the round is closed
        strategy.accumulate(after, updates[0])


def test_restart_mid_round_from_bytes_gives_the_same_model() -> None:
    strategy = FedAvg()
    glob = _weights(0)
    updates = _updates(6)
    state = strategy.begin_round(strategy.initial_state(), 3, shapes_of(glob), NAMES)
    for update in updates:
        strategy.accumulate(state, update)
    uninterrupted, _ = strategy.aggregate(state, glob)

    state = strategy.begin_round(strategy.initial_state(), 3, shapes_of(glob), NAMES)
    for update in updates[3:]:
        strategy.accumulate(state, update)
    restored = StrategyState.from_bytes(state.to_bytes())
    fresh = FedAvg()  # a new process: nothing survives but the bytes
    for update in updates[:3]:
        fresh.accumulate(restored, update)
    resumed, _ = fresh.aggregate(restored, glob)
    assert all(a.tobytes() == b.tobytes() for a, b in zip(resumed, uninterrupted, strict=True))


def test_state_round_trip_with_server_arrays_and_scalars() -> None:
    state = StrategyState(
        strategy="fedavg",
        round=7,
        arrays={"m": np.arange(6, dtype=np.float32).reshape(2, 3), "t": np.array([3], dtype=np.int64)},
        scalars={"beta": 0.9, "tag": "x", "on": True, "none": None},
    )
    back = StrategyState.from_bytes(state.to_bytes())
    assert (back.strategy, back.round, back.scalars, back.accumulator) == ("fedavg", 7, state.scalars, None)
    assert set(back.arrays) == {"m", "t"}
    assert np.array_equal(back.arrays["m"], state.arrays["m"]) and back.arrays["m"].dtype == np.float32
    assert back.arrays["m"].flags.writeable
    assert back.to_bytes() == state.to_bytes()


def test_state_rejects_uncheckpointable_and_corrupt_input() -> None:
    with pytest.raises(AggregationError) as info:
        StrategyState("fedavg", arrays={"c": np.zeros(2, dtype=np.complex64)}).to_bytes()
    assert info.value.field == "arrays.c"
    good: dict[str, object] = msgpack.unpackb(StrategyState("fedavg").to_bytes(), raw=False)
    for key, value in [("v", 9), ("strategy", 1), ("round", -1), ("accumulator", "x"), ("scalars", [])]:
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
    prox = FedProx(prox_mu=0.5, epochs=2, batch_size=20, lr=0.01)
    avg = FedAvg(epochs=2, batch_size=20, lr=0.01)
    state = prox.initial_state()
    config = prox.configure_round(state, 1)
    assert config.to_config() == {**avg.configure_round(avg.initial_state(), 1).to_config(), "prox_mu": 0.5}
    assert TrainConfig.from_config(config.to_config()).get_float("prox_mu", 0.0) == 0.5
    assert state.strategy == "fedprox"
    with pytest.raises(AggregationError):  # a FedAvg state is not a FedProx one
        prox.begin_round(avg.initial_state(), 1, shapes_of(_weights(0)), NAMES)


def test_train_config_parsing_names_the_bad_key() -> None:
    config = TrainConfig(1, 0, 0.1, {"note": "x"}).to_config()
    assert TrainConfig.from_config(config) == TrainConfig(1, 0, 0.1, {"note": "x"})
    cases: list[tuple[str, Scalar]] = [
        ("epochs", 0),
        ("epochs", 1.5),
        ("batch_size", True),
        ("lr", 0),
        ("lr", "fast"),
    ]
    for key, value in cases:
        with pytest.raises(SchemaError) as info:
            TrainConfig.from_config({**config, key: value})
        assert info.value.field == f"config.{key}"
    with pytest.raises(SchemaError) as info:
        TrainConfig.from_config({"epochs": 1, "batch_size": 1})
    assert info.value.field == "config.lr"


def test_build_strategy_and_config_errors() -> None:
    assert set(STRATEGIES) == {"fedavg", "fedprox"}
    built = build_strategy("fedprox", prox_mu=0.1, lr=0.2)
    assert isinstance(built, FedProx) and built.lr == 0.2
    with pytest.raises(ConfigError) as info:
        build_strategy("fedsgd")
    assert info.value.field == "strategy"
    with pytest.raises(ConfigError):
        build_strategy("fedavg", momentum=0.9)
    for kwargs, field in [({"epochs": 0}, "epochs"), ({"batch_size": -1}, "batch_size"), ({"lr": 0.0}, "lr")]:
        with pytest.raises(ConfigError) as info:
            FedAvg(**kwargs)  # type: ignore[arg-type]
        assert info.value.field == field
    with pytest.raises(ConfigError):
        FedProx(prox_mu=-1.0)


def test_aggregate_checks_the_global_model_and_that_updates_arrived() -> None:
    strategy = FedAvg()
    state = strategy.begin_round(strategy.initial_state(), 1, shapes_of(_weights(0)), NAMES)
    with pytest.raises(AggregationError):
        strategy.aggregate(state, _weights(0))  # no updates
    strategy.accumulate(state, _updates(1)[0])
    with pytest.raises(InvalidUpdateError):
        strategy.aggregate(state, [np.zeros((3, 3), np.float32), np.zeros(4, np.float32)])
