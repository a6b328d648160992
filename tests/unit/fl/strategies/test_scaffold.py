"""SCAFFOLD (Karimireddy et al., 2020): server step and control variate, by hand; the control group."""

from __future__ import annotations

import numpy as np
import pytest

from qflare.errors import InvalidUpdateError
from qflare.fl import CONTROL, WEIGHTS, StrategyState
from qflare.fl.strategies.scaffold import ScaffoldParams
from tests.unit.fl.strategies.helpers import f32, make, run_round, update

NAMES = ["w", "b"]
SHAPES = [(1,), (2,)]
# Device a: y = [3], [1, 1], Δc = [0.5], [1, 0] with 10 examples; device b: y = [0], [1, 3],
# Δc = [-1.5], [0, 2] with 30. Both means are unweighted: mean y = [1.5], [1, 2], mean Δc = [-0.5], [0.5, 1].
UPDATES = [
    update("a", [f32(3.0), f32(1.0, 1.0)], 10, control=[f32(0.5), f32(1.0, 0.0)]),
    update("b", [f32(0.0), f32(1.0, 3.0)], 30, control=[f32(-1.5), f32(0.0, 2.0)]),
]
X = [f32(1.0), f32(0.0, 0.0)]


def test_one_round_by_hand() -> None:
    strategy = make("scaffold", server_lr=0.5, num_devices=4)
    assert strategy.train_config(1).scaffold
    new, state = run_round(strategy, strategy.initial_state(), 1, X, UPDATES, NAMES, SHAPES)
    # x + η_g (mean y - x) = [1 + 0.5 * 0.5], [0.5, 1]
    assert [a.tolist() for a in new] == [[1.25], [0.5, 1.0]]
    # c = 0 + (|S| / N) mean Δc = 0.5 * [-0.5], 0.5 * [0.5, 1]
    assert state.arrays["control.w"].tolist() == [-0.25] and state.arrays["control.b"].tolist() == [0.25, 0.5]
    sent = strategy.server_groups(state)
    assert list(sent) == [CONTROL] and [a.tolist() for a in sent[CONTROL]] == [[-0.25], [0.25, 0.5]]
    assert all(a.dtype == np.float32 for a in sent[CONTROL])


def test_the_control_step_defaults_to_the_client_fraction() -> None:
    strategy = make("scaffold", job={"fraction": 0.25})
    _, state = run_round(strategy, strategy.initial_state(), 1, X, UPDATES, NAMES, SHAPES)
    assert state.arrays["control.w"].tolist() == [-0.125]  # 0.25 * -0.5
    # The next round adds to c: 0.25 * -0.5 again.
    _, state = run_round(strategy, state, 2, X, UPDATES, NAMES, SHAPES)
    assert state.arrays["control.w"].tolist() == [-0.25]
    assert ScaffoldParams().server_lr == 1.0 and ScaffoldParams().num_devices == 0


def test_server_groups_before_the_first_round_and_after_a_restart() -> None:
    strategy = make("scaffold", num_devices=2)
    assert strategy.server_groups(strategy.initial_state()) == {}  # c = 0: devices use zeros
    _, state = run_round(strategy, strategy.initial_state(), 1, X, UPDATES, NAMES, SHAPES)
    restored = StrategyState.from_bytes(state.to_bytes())
    before = strategy.server_groups(state)[CONTROL]
    after = make("scaffold", num_devices=2).server_groups(restored)[CONTROL]
    assert [a.tobytes() for a in after] == [a.tobytes() for a in before]  # same tensors, model order


def test_both_groups_are_required_and_uniform() -> None:
    strategy = make("scaffold")
    spec = strategy.update_spec(NAMES, SHAPES)
    assert set(spec.groups) == {WEIGHTS, CONTROL}
    assert {g.weighting for g in spec.groups.values()} == {"uniform"}
    assert spec.groups[CONTROL].names == tuple(NAMES)
    with pytest.raises(InvalidUpdateError) as info:
        spec.check({WEIGHTS: [f32(1.0), f32(1.0, 1.0)]}, {})
    assert info.value.field == "groups.control"
