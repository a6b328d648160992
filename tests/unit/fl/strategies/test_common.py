"""Every registered strategy: a restart from bytes mid-run, its parameters' bounds, and its mode."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from qflare.errors import AggregationError, SchemaError
from qflare.fl import STRATEGIES, JobSpec, RoundSums, Strategy, StrategyState, Update
from qflare.fl.arrays import NDArrays
from tests.unit.fl.strategies.helpers import make
from tests.unit.fl.strategies.robust_helpers import robust

NAMES = ["w", "b"]
SHAPES = [(3, 2), (2,)]
#: Parameters that make each strategy do something a default run might not (FedPer: "b" is personal).
PARAMS: dict[str, dict[str, Any]] = {"fedper": {"personal": "b"}, "scaffold": {"num_devices": 5}}
# The robust rules' bounds must hold for the 3 updates of each round here (Krum and Bulyan: f = 0).
_THREE = {"job": {"min_clients": 3, "quorum": 1.0}}
PARAMS.update({name: dict(_THREE) for name in ("median", "rfa", "centered_clip")})
PARAMS.update({name: {**_THREE, "num_byzantine": 0} for name in ("krum", "multikrum", "bulyan")})


def _strategy(name: str) -> Strategy:
    if name == "fltrust":  # the server's root-set training, replaced by a fixed numpy rule
        return robust("fltrust", 3)
    return make(name, **PARAMS.get(name, {}))


def _updates(strategy: Strategy, rnd: int) -> list[Update]:
    spec = strategy.update_spec(NAMES, SHAPES)
    rng = np.random.default_rng(rnd)
    out = []
    for i in range(3):
        groups = {
            g: [rng.standard_normal(s).astype(np.float32) for s in gs.shapes] for g, gs in spec.groups.items()
        }
        out.append(Update(f"d{i}", groups, 5 + 3 * i + rnd, {"local_steps": float(1 + i + rnd)}))
    return out


def _close(strategy: Strategy, state: StrategyState, rnd: int, glob: NDArrays, *, restart: bool) -> Any:
    """One round; with ``restart``, the state and the half-filled sums go through bytes and a new object."""
    updates = _updates(strategy, rnd)
    sums = strategy.begin_round(state, rnd, NAMES, SHAPES)
    if strategy.mode == "buffered":
        if restart:
            state, strategy = StrategyState.from_bytes(state.to_bytes()), _strategy(strategy.name)
        return strategy.aggregate(state, updates, glob)
    for u in updates[:2]:
        strategy.accumulate(sums, u)
    if restart:
        state, sums = StrategyState.from_bytes(state.to_bytes()), RoundSums.from_bytes(sums.to_bytes())
        strategy = _strategy(strategy.name)
    strategy.accumulate(sums, updates[2])
    return strategy.aggregate(state, sums, glob)


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_a_restart_from_bytes_mid_run_gives_the_identical_next_model(name: str) -> None:
    rng = np.random.default_rng(0)
    glob0 = [rng.standard_normal(s).astype(np.float32) for s in SHAPES]
    runs = []
    for restart in (False, True):
        strategy = _strategy(name)
        glob, state = glob0, strategy.initial_state()
        for rnd in (1, 2, 3):
            glob, state = _close(strategy, state, rnd, glob, restart=restart and rnd > 1)
        runs.append((glob, state.to_bytes(), strategy.server_groups(state)))
    (a, state_a, groups_a), (b, state_b, groups_b) = runs
    assert [x.tobytes() for x in a] == [x.tobytes() for x in b]
    assert state_a == state_b
    assert {g: [x.tobytes() for x in v] for g, v in groups_a.items()} == {
        g: [x.tobytes() for x in v] for g, v in groups_b.items()
    }
    assert not np.array_equal(a[0], glob0[0])  # the rounds did something


@pytest.mark.parametrize(
    ("name", "key", "value"),
    [
        ("fedavgm", "server_lr", 0.0),
        ("fedavgm", "server_momentum", 1.0),
        ("fedadam", "beta1", -0.1),
        ("fedadam", "beta2", 1.0),
        ("fedyogi", "tau", 0.0),
        ("fedyogi", "server_lr", "fast"),
        ("fedadagrad", "beta2", 0.9),  # Adagrad has no β2
        ("scaffold", "num_devices", -1),
        ("scaffold", "num_devices", 2.5),
        ("ditto", "lam", 0.0),
        ("fedper", "personal", "(unclosed"),
        ("fednova", "server_lr", 1.0),
    ],
)
def test_bad_parameters_are_refused_naming_the_field(name: str, key: str, value: object) -> None:
    with pytest.raises(SchemaError) as info:
        JobSpec.parse({"strategy": {"name": name, key: value}}, where="")
    assert info.value.field == f"strategy.{key}"


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_each_strategy_takes_only_its_own_kind_of_round_input(name: str) -> None:
    strategy = _strategy(name)
    glob = [np.zeros(s, np.float32) for s in SHAPES]
    updates = _updates(strategy, 1)
    sums = strategy.begin_round(strategy.initial_state(), 1, NAMES, SHAPES)
    with pytest.raises(AggregationError) as info:
        if strategy.mode == "streaming":
            strategy.aggregate(strategy.initial_state(), updates, glob)
        else:
            strategy.aggregate(strategy.initial_state(), sums, glob)
    assert info.value.field == "mode"


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_every_parameter_has_a_default_and_a_description(name: str) -> None:
    params = STRATEGIES[name].Params
    own = {k: f for k, f in params.model_fields.items() if k != "name"}
    assert params.model_validate({"name": name}).name == name
    for key, field in own.items():
        assert not field.is_required(), key
        assert field.description, key
