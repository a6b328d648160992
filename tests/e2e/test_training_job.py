"""A whole federated job: stack, three services, a training fleet, and rounds that improve the model."""

from __future__ import annotations

from qflare.protocol.training import RoundComplete
from qflare_cli.demo import Run
from tests.jobs import small_fedavg_job


def test_two_rounds_of_fedavg_on_mnist_improve_the_global_model() -> None:
    seen: list[RoundComplete] = []
    job = small_fedavg_job(rounds=2, seed=3)
    run = Run(devices=4, processes=2, seed=3, job=job, as_json=False, on_round=seen.append)
    run.execute()
    completed = [rc for rc in seen if rc.status == "completed"]
    assert [rc.round for rc in completed] == [1, 2]
    assert [rc.model_version for rc in completed] == [1, 2]
    for rc in completed:
        # Every device the scheduler selected (those it already saw online) took part.
        assert 2 <= rc.num_updates == rc.metrics["selected"] == len(rc.included) <= 4
        assert rc.metrics["participants"] == rc.num_updates
        assert rc.metrics["bytes_in"] > rc.num_updates * 199_210 * 4
        assert rc.model_digest is not None and len(rc.model_digest) == 32
    # Each device trains one epoch on 15,000 examples: already far above chance, and round 2 helps.
    assert completed[0].metrics["test_accuracy"] > 0.85
    assert completed[1].metrics["test_accuracy"] >= completed[0].metrics["test_accuracy"] - 0.01
    assert completed[1].metrics["train_loss"] < completed[0].metrics["train_loss"]
