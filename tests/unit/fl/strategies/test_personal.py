"""Personalised FL on the server: Ditto is FedAvg plus λ; FedPer averages only the shared tensors."""

from __future__ import annotations

import numpy as np
import pytest

from qflare.errors import AggregationError, ConfigError, InvalidUpdateError, SchemaError
from qflare.fl import WEIGHTS, JobSpec
from qflare.fl.strategies.fedper import FedPer, shared_positions
from qflare.ml.arch import init_weights, layout
from tests.unit.fl.strategies.helpers import f32, make, run_round, update


def test_ditto_sends_lambda_and_averages_like_fedavg() -> None:
    strategy = make("ditto", lam=0.5)
    config = strategy.train_config(3)
    assert config.ditto_lambda == 0.5 and config.proximal_mu == 0.0
    assert make("ditto").train_config(1).ditto_lambda == 0.1
    updates = [update("a", [f32(3.0, 2.0)], 1), update("b", [f32(1.0, 1.0)], 3)]
    new, state = run_round(strategy, strategy.initial_state(), 1, [f32(9.0, 9.0)], updates)
    assert new[0].tolist() == [1.5, 1.25] and state.round == 1


NAMES = ["base.w", "base.b", "head.w"]
SHAPES = [(2,), (1,), (2,)]


def test_fedper_averages_shared_tensors_and_keeps_personal_ones() -> None:
    strategy = make("fedper", personal=r"head\..*")
    assert strategy.train_config(1).personal == r"head\..*"
    spec = strategy.update_spec(NAMES, SHAPES)
    assert spec.groups[WEIGHTS].names == ("base.w", "base.b")  # the head never travels
    glob = [f32(9.0, 9.0), f32(9.0), f32(7.0, -7.0)]
    updates = [update("a", [f32(3.0, 2.0), f32(1.0)], 1), update("b", [f32(1.0, 1.0), f32(0.0)], 3)]
    new, _ = run_round(strategy, strategy.initial_state(), 1, glob, updates, NAMES, SHAPES)
    assert [a.tolist() for a in new] == [[1.5, 1.25], [0.25], [7.0, -7.0]]
    with pytest.raises(InvalidUpdateError) as info:  # a device that sends its head is refused
        spec.check({WEIGHTS: [f32(1.0, 1.0), f32(1.0), f32(1.0, 1.0)]}, {})
    assert info.value.field == "groups.weights"


def test_fedper_default_is_the_builtin_models_output_layer() -> None:
    for model, regex in (("2nn", r"fc3\.weight|fc3\.bias"), ("cnn", r"fc2\.weight|fc2\.bias")):
        strategy = make("fedper", job={"model": f"builtin:{model}"})
        assert strategy.train_config(1).personal == regex
    strategy = make("fedper")
    names, shapes = zip(*layout("2nn"), strict=True)
    glob = init_weights("2nn", 0)
    shared = [np.full(s, 0.5, np.float32) for s in shapes[:4]]
    new, _ = run_round(strategy, strategy.initial_state(), 1, glob, [update("a", shared, 5)], names, shapes)
    assert all(np.all(a == 0.5) for a in new[:4])
    assert all(a.tobytes() == b.tobytes() for a, b in zip(new[4:], glob[4:], strict=True))


def test_fedper_needs_a_regex_for_a_stored_model_and_a_valid_one() -> None:
    with pytest.raises(ConfigError) as info:
        FedPer(JobSpec.parse({"model": "mine@1", "strategy": {"name": "fedper"}}))
    assert info.value.field == "strategy.personal"
    with pytest.raises(SchemaError) as bad:
        JobSpec.parse({"strategy": {"name": "fedper", "personal": "("}}, where="")
    assert bad.value.field == "strategy.personal"
    with pytest.raises(ConfigError) as none_left:
        make("fedper", personal=".*").update_spec(NAMES, SHAPES)
    assert none_left.value.field == "strategy.personal"
    stored = FedPer(JobSpec.parse({"model": "mine@1", "strategy": {"name": "fedper", "personal": "head.*"}}))
    assert stored.update_spec(NAMES, SHAPES).groups[WEIGHTS].names == ("base.w", "base.b")
    with pytest.raises(ConfigError) as ambiguous:  # a and b have one shape: which one is shared?
        job = JobSpec.parse({"model": "mine@1", "strategy": {"name": "fedper", "personal": "a"}})
        FedPer(job).update_spec(["a", "b"], [(2,), (2,)])
    assert ambiguous.value.field == "strategy.personal"


def test_shared_tensors_are_placed_by_shape_only_when_unambiguous() -> None:
    assert shared_positions([(2,), (1,)], [(2,), (1,), (2,)]) == [0, 1]
    assert shared_positions([(1,), (2,)], [(2,), (1,), (2,)]) == [1, 2]
    with pytest.raises(AggregationError):
        shared_positions([(2,)], [(2,), (2,)])
    with pytest.raises(AggregationError):
        shared_positions([(3,)], [(2,), (2,)])
