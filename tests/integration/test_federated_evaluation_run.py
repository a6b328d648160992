"""Acceptance: a federated job through the real scheduler, aggregator and simulated devices.

Every round-complete carries the devices' evaluation, weighted by examples, of
the version that round started from, and the job ends with an evaluation-only
round of the final model.
"""

from __future__ import annotations

import pytest

from qflare.fl import JobSpec
from qflare.protocol.training import RoundComplete
from qflare_cli.demo import Run
from tests.jobs import small_fedavg_job

pytestmark = pytest.mark.integration


def test_a_federated_job_reports_device_evaluations_and_evaluates_its_final_model() -> None:
    base = small_fedavg_job(rounds=2, seed=5)
    job = JobSpec.parse({**base.to_wire(), "evaluation": "federated"})
    seen: list[RoundComplete] = []
    run = Run(devices=3, processes=1, seed=5, job=job, as_json=False, on_round=seen.append)
    run.execute()

    completed = [rc for rc in seen if rc.status == "completed"]
    assert len(completed) == 3  # two training rounds, then the final model's evaluation
    for rc in seen:
        assert rc.evaluation == "federated", rc
        m = rc.metrics
        assert 0 <= m["test_accuracy"] <= 1 and m["test_loss"] > 0
        # 3 devices hold 20,000 MNIST training examples each and keep 10 % back.
        assert m["evaluated_examples"] == 3 * 2000 and m["evaluated_devices"] == 3
        assert "test_examples" not in m  # the aggregator evaluated nothing itself
    first, second, final = completed
    assert [rc.metrics["evaluated_version"] for rc in completed] == [0, 1, 2]
    assert (first.model_version, second.model_version) == (1, 2)
    # The last round made no version: it evaluated the final one.
    assert final.model_version == 2 and final.num_examples == 0 and final.model_digest is None
    assert final.round > second.round
    # Two rounds of 2NN on MNIST learn something; version 0 is a random guess.
    assert first.metrics["test_accuracy"] < 0.3 < 0.85 < final.metrics["test_accuracy"]
