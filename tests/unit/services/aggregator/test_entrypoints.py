"""Who evaluates a job's model: refusals at start, and the owners' central entry points for stored models."""

from __future__ import annotations

import numpy as np
import pytest

from qflare.errors import ConfigError, Rejected
from qflare.fl import JobSpec
from qflare.reasons import Reason
from services.aggregator.config import AggregatorSettings
from services.aggregator.entrypoints import SETTING
from services.aggregator.evaluation import Evaluator

OWNER = "tests.unit.services.aggregator.owner_evaluation"


def _refusal(evaluator: Evaluator, spec: JobSpec) -> Rejected:
    with pytest.raises(Rejected) as info:
        evaluator.check(spec)
    return info.value


def test_central_evaluation_of_a_stored_model_is_refused_naming_the_key() -> None:
    plain = Evaluator(0)
    plain.check(JobSpec.parse({"model": "builtin:cnn"}))
    plain.check(JobSpec.parse({"model": "my-net@1"}))  # federated by default
    refused = _refusal(plain, JobSpec.parse({"model": "my-net@1", "evaluation": "central"}))
    assert refused.reason == Reason.NO_EVALUATOR and refused.field == "body.config.evaluation"
    assert "my-net@1" in str(refused) and SETTING in str(refused)


def test_a_registered_entry_point_evaluates_a_stored_model_centrally() -> None:
    evaluator = Evaluator(0, {"my-net@1": f"{OWNER}:mean_weight"})
    evaluator.check(JobSpec.parse({"model": "my-net@1", "evaluation": "central"}))
    weights = [np.full((2, 2), 0.25, np.float32), np.zeros(3, np.float32)]
    got = evaluator.evaluate_stored("my-net@1", ("w", "b"), weights)
    assert got == {"test_loss": 0.25, "test_examples": 10.0, "test_accuracy": 0.2, "test_tensors": 2.0}


@pytest.mark.parametrize(
    ("target", "problem"),
    [
        ("no_such_package.mod:f", "cannot import"),
        (f"{OWNER}:missing", "is not a function"),
        (f"{OWNER}:NOT_A_FUNCTION", "is not a function"),
    ],
)
def test_an_entry_point_that_does_not_load_is_refused_at_start(target: str, problem: str) -> None:
    evaluator = Evaluator(0, {"my-net@1": target})
    refused = _refusal(evaluator, JobSpec.parse({"model": "my-net@1", "evaluation": "central"}))
    assert refused.reason == Reason.NO_EVALUATOR and problem in str(refused)


def test_an_entry_point_that_fails_leaves_the_round_without_test_metrics() -> None:
    weights = [np.zeros(2, np.float32)]
    # Whatever the owner's code raises (here FileNotFoundError too): the aggregator goes on.
    for name in ("broken", "no_examples", "missing_file"):
        evaluator = Evaluator(0, {"m@1": f"{OWNER}:{name}"})
        assert evaluator.evaluate_stored("m@1", ("w",), weights) == {}
    assert Evaluator(0).evaluate_stored("m@1", ("w",), weights) == {}


def test_the_setting_is_json_and_each_target_is_module_colon_function(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(SETTING, '{"my-net@1": "pkg.mod:evaluate"}')
    assert AggregatorSettings().evaluators == {"my-net@1": "pkg.mod:evaluate"}
    monkeypatch.setenv(SETTING, '{"my-net@1": "pkg.mod"}')
    with pytest.raises(ConfigError) as info:
        AggregatorSettings()
    assert info.value.field == SETTING
