"""What the CLI and the benchmark show of a round's evaluation: who evaluated which version."""

from __future__ import annotations

import argparse
import time

from bench.fedavg_mnist import summarise
from qflare.protocol.training import RoundComplete
from qflare_cli.jobs import evaluated


def _round(round: int, version: int, accuracy: float, evaluated_version: int, who: str) -> RoundComplete:
    metrics = {"test_accuracy": accuracy, "evaluated_version": float(evaluated_version)}
    return RoundComplete("j", round, "completed", version, 3, 30, metrics=metrics, evaluation=who)


def test_a_round_says_who_evaluated_which_version() -> None:
    assert evaluated(_round(2, 2, 0.9, 1, "federated")) == "federated v1"
    assert evaluated(_round(2, 2, 0.9, 2, "central")) == "central v2"
    assert evaluated(RoundComplete("j", 1, "completed", 1, 3, 30)) == "-"


def test_the_benchmark_reports_accuracy_by_the_version_it_describes() -> None:
    # Federated: each training round evaluates the version it started from, the last round the final one.
    rounds = [_round(1, 1, 0.1, 0, "federated"), _round(2, 2, 0.8, 1, "federated")]
    rounds.append(_round(3, 2, 0.995, 2, "federated"))
    args = argparse.Namespace(
        model="2nn",
        devices=3,
        fraction=1.0,
        epochs=1,
        batch=10,
        lr=0.05,
        partition="iid",
        evaluation="federated",
    )
    now = time.monotonic()
    out = summarise([(now, rc) for rc in rounds], now, 0, args)
    assert out["accuracy_per_version"] == {0: 0.1, 1: 0.8, 2: 0.995}
    assert out["final_accuracy"] == 0.995 and out["rounds_to_99"] == 2 and out["evaluation"] == "federated"
