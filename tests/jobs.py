"""The small FedAvg job the end-to-end tests run: 2NN on MNIST, every device, one epoch."""

from __future__ import annotations

from qflare.fl import JobSpec


def small_fedavg_job(
    *, rounds: int, seed: int, deadline_s: float = 300.0, quorum: float = 0.8, weighting: str = "declared"
) -> JobSpec:
    """``weighting="equal"`` for devices that declare no dataset size (a user's app)."""
    return JobSpec.parse(
        {
            "model": "builtin:2nn",
            "strategy": {"name": "fedavg"},
            "rounds": rounds,
            "fraction": 1.0,
            "min_clients": 2,
            "deadline_s": deadline_s,
            "quorum": quorum,
            "epochs": 1,
            "batch_size": 10,
            "lr": 0.05,
            "seed": seed,
            "dataset": "mnist",
            "partition": "iid",
            "weighting": weighting,
        }
    )
