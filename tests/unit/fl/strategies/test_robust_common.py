"""Every robust rule: its bound checked at job start and at round close, resilience to huge outliers,
bit-identical repeats, the buffered interface, and spilled input giving the same model."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from qflare.errors import AggregationError, ConfigError, SchemaError
from qflare.fl import JobSpec, Strategy, Update, build_strategy
from qflare.fl.buffer import buffered
from qflare.fl.strategies import _robust
from qflare.fl.strategies._robust import ByzantineParams
from qflare.fl.strategies.fltrust import FLTrust
from tests.unit.fl.strategies.helpers import f32, make, update
from tests.unit.fl.strategies.robust_helpers import one_round, robust, scalars, sized

RULES = [
    "bulyan",
    "centered_clip",
    "fltrust",
    "krum",
    "median",
    "multikrum",
    "norm_bound",
    "rfa",
    "trimmed_mean",
]
#: Settings under which each rule should shrug off 2 huge outliers among 12 updates of scale ~0.1.
RESILIENT: dict[str, dict[str, Any]] = {
    "bulyan": {"num_byzantine": 2},
    "centered_clip": {"num_byzantine": 2, "tau": 0.2, "iterations": 10},
    "krum": {"num_byzantine": 2},
    "multikrum": {"num_byzantine": 2},
    "median": {"num_byzantine": 2},
    "rfa": {"num_byzantine": 2},
    "trimmed_mean": {"beta": 0.2},
    "norm_bound": {"max_norm": 0.6},
    "fltrust": {"server": [np.full((2, 3), 0.1), np.array([0.5])]},
}


def _fleet(seed: int, honest: int = 10, bad: int = 2) -> tuple[list[Update], np.ndarray]:
    rng = np.random.default_rng(seed)
    good = 0.1 + 0.01 * rng.standard_normal((honest, 2, 3))
    evil = 1e5 * rng.standard_normal((bad, 2, 3))
    rows = list(good) + list(evil)
    order = rng.permutation(len(rows))  # attackers anywhere in device-id order
    updates = [update(f"d{k:02d}", [rows[i].astype(np.float32), f32(0.5)], 5) for k, i in enumerate(order)]
    return updates, good


@pytest.mark.parametrize(
    ("name", "params", "n", "field"),
    [
        ("krum", {}, 4, "min_clients"),  # f = 1: n ≥ 5
        ("multikrum", {"num_byzantine": 2}, 6, "min_clients"),  # n ≥ 7
        ("multikrum", {"m": 5}, 5, "strategy.m"),  # m ≤ n - f = 4
        ("bulyan", {}, 6, "min_clients"),  # f = 1: n ≥ 7
        ("median", {}, 2, "min_clients"),  # n ≥ 2f + 1 = 3
        ("rfa", {"num_byzantine": 3}, 6, "min_clients"),
        ("centered_clip", {}, 2, "min_clients"),
    ],
)
def test_the_bound_is_checked_when_the_job_starts(
    name: str, params: dict[str, Any], n: int, field: str
) -> None:
    with pytest.raises(ConfigError) as info:
        robust(name, n, **params)
    assert info.value.field == field
    if field == "min_clients":
        robust(name, n + 1, **params)  # one more update per round is enough


def test_the_guaranteed_round_size_is_the_quorum_of_min_clients() -> None:
    # ceil(0.8 × 6) = 5 updates is Krum's n ≥ 2 × 1 + 3; ceil(0.8 × 5) = 4 is not.
    build_strategy(JobSpec.parse({"min_clients": 6, "quorum": 0.8, "strategy": {"name": "krum"}}))
    with pytest.raises(ConfigError, match="n ≥ 2f \\+ 3") as info:
        build_strategy(JobSpec.parse({"min_clients": 5, "quorum": 0.8, "strategy": {"name": "krum"}}))
    assert info.value.field == "min_clients"
    with pytest.raises(ConfigError) as info:
        make("fltrust", job={"model": "mine@1"})  # the server cannot train a model-store model
    assert info.value.field == "model"


@pytest.mark.parametrize(
    ("name", "key", "value"),
    [
        ("trimmed_mean", "beta", 0.5),
        ("trimmed_mean", "beta", -0.1),
        ("krum", "num_byzantine", -1),
        ("multikrum", "m", -1),
        ("rfa", "iterations", 0),
        ("rfa", "nu", 0.0),
        ("centered_clip", "tau", 0.0),
        ("norm_bound", "max_norm", 0.0),
        ("fltrust", "root_size", 0),
    ],
)
def test_parameters_out_of_bounds_are_refused(name: str, key: str, value: object) -> None:
    with pytest.raises(SchemaError) as info:
        JobSpec.parse({"strategy": {"name": name, key: value}}, where="")
    assert info.value.field == f"strategy.{key}"


@pytest.mark.parametrize(
    ("name", "params", "n"), [("krum", {}, 5), ("bulyan", {}, 7), ("multikrum", {"m": 4}, 5)]
)
def test_a_round_below_the_bound_fails_naming_the_updates(name: str, params: dict[str, Any], n: int) -> None:
    strategy = robust(name, n, **params)
    with pytest.raises(AggregationError) as info:
        strategy.aggregate(strategy.initial_state(), scalars(*range(n - 1)), [f32(0.0)])
    assert info.value.field == "updates"


@pytest.mark.parametrize("name", RULES)
def test_huge_outliers_leave_the_aggregate_in_the_honest_range(name: str) -> None:
    updates, good = _fleet(1)
    params = dict(RESILIENT[name])
    strategy = robust(name, 12, **params)
    new, _ = strategy.aggregate(strategy.initial_state(), updates, [np.zeros((2, 3), np.float32), f32(0.0)])
    if name == "norm_bound":
        # Not a robust statistic, a bounded one: the 2 outliers move the mean by at most 2 M / 12.
        honest = np.append(good.mean(axis=0).ravel(), 0.5) * 10 / 12
        moved = np.append(new[0].ravel(), new[1])
        assert np.linalg.norm(moved - honest) <= 2 * 0.6 / 12 + 1e-6
        return
    slack = 0.05
    assert np.all(new[0] >= good.min(axis=0) - slack) and np.all(new[0] <= good.max(axis=0) + slack), new[0]
    assert abs(float(new[1][0]) - 0.5) <= slack


@pytest.mark.parametrize("name", RULES)
def test_repeats_are_bit_identical_and_spilled_input_gives_the_same_model(name: str) -> None:
    updates, _ = _fleet(2)
    glob = [np.full((2, 3), 0.01, np.float32), f32(0.1)]
    strategy = robust(name, 12, **RESILIENT[name])
    runs = [strategy.aggregate(strategy.initial_state(), updates, glob)[0] for _ in range(2)]
    with buffered(updates, max_bytes=0) as spilled:
        assert spilled.spilled == len(updates)
        runs.append(strategy.aggregate(strategy.initial_state(), spilled, glob)[0])
    assert len({b"".join(a.tobytes() for a in run) for run in runs}) == 1
    first = strategy.scores(strategy.initial_state(), updates, glob)
    assert first == strategy.scores(strategy.initial_state(), updates, glob)
    assert list(first) == sorted(u.device_id for u in updates)
    assert all({"norm", "cosine"} <= set(row) for row in first.values())


@pytest.mark.parametrize("name", RULES)
def test_small_blocks_give_the_same_model(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    updates, _ = _fleet(3)
    glob = [np.zeros((2, 3), np.float32), f32(0.0)]
    strategy = robust(name, 12, **RESILIENT[name])
    whole = strategy.aggregate(strategy.initial_state(), updates, glob)[0]
    monkeypatch.setattr(_robust, "BLOCK_VALUES", 12 * 2)  # two values per update per block
    parts = strategy.aggregate(strategy.initial_state(), updates, glob)[0]
    for a, b in zip(whole, parts, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", RULES)
def test_each_rule_is_buffered_and_refuses_sums_and_disorder(name: str) -> None:
    strategy = robust(name, 7)
    assert strategy.mode == "buffered"
    sums = strategy.begin_round(strategy.initial_state(), 1, ["t0"], [(1,)])
    assert sums.sums == {}
    with pytest.raises(AggregationError) as info:
        strategy.accumulate(sums, update("a", [f32(1.0)], 1))
    assert info.value.field == "mode"
    with pytest.raises(AggregationError) as info:
        strategy.aggregate(strategy.initial_state(), sums, [f32(1.0)])
    assert info.value.field == "mode"
    with pytest.raises(AggregationError) as info:
        strategy.aggregate(strategy.initial_state(), list(reversed(scalars(1, 2, 3, 4, 5))), [f32(0.0)])
    assert info.value.field == "updates"


def test_fltrust_is_importable_without_torch_and_builds_from_a_job() -> None:
    strategy = build_strategy(JobSpec.parse({"strategy": {"name": "fltrust"}}))
    assert isinstance(strategy, FLTrust) and strategy.root_trainer is None


def _f(strategy: Strategy) -> int:
    params = strategy.job.strategy
    assert isinstance(params, ByzantineParams)
    return params.num_byzantine


@pytest.mark.parametrize(("name", "n"), [("median", 5), ("krum", 7), ("multikrum", 7), ("bulyan", 11)])
def test_refused_faulty_devices_spend_the_rules_f(name: str, n: int) -> None:
    # f = 2: one selected device was refused as faulty, so the n − 1 updates left hold at most one
    # faulty update, and the rule runs with f = 1 (its bound and its maths).
    strategy = robust(name, n, num_byzantine=2)
    left = scalars(*range(n - 1))
    with pytest.raises(AggregationError):
        strategy.aggregate(strategy.initial_state(), left, [f32(0.0)])
    fewer = strategy.excluding(1)
    assert type(fewer) is type(strategy) and _f(fewer) == 1 and _f(strategy) == 2  # the rule is unchanged
    expected = robust(name, n - 1, num_byzantine=1)
    assert one_round(fewer, left) == one_round(expected, left)
    # More refusals than f leave f = 0; no refusal, or a rule without f, is the rule itself.
    assert _f(strategy.excluding(5)) == 0
    assert strategy.excluding(0) is strategy
    plain = make("trimmed_mean", job=sized(n))
    assert plain.excluding(3) is plain
