"""The three worked examples through the real services: import the model, run a job, reach the bar.

Each example runs as a user runs it: the initial model file its ``make_model`` writes is imported
into the store, a fleet of simulated devices (worker processes that inherit this process's
environment, so the ``QFLARE_<EXAMPLE>_*`` settings below reach the apps) runs ``--app``, a FedAvg
job with federated evaluation trains it (the devices evaluate each version on their own held-out
data; an evaluation-only round evaluates the final one), and the result is exported from the store.
Run with ``-s`` to see each example's federated metrics, round by round.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from examples.personal import make_model as personal_model
from examples.personal.model import PERSONAL
from examples.tabular import make_model as tabular_model
from examples.vision import make_model as vision_model
from qflare.fl import JobSpec
from qflare.identity import init_identities
from qflare.ml.formats import read_model
from qflare.protocol.training import RoundComplete
from qflare_cli.demo import KEYS_DIR, Run
from qflare_cli.models import export_model, import_model
from tests.integration.services.aggregator_harness import global_model

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class Example:
    name: str
    make: Callable[[list[str] | None], Path]
    file: str
    #: Federated test accuracy the final model must reach (as in each example's README).
    bar: float
    lr: float
    batch_size: int = 10
    epochs: int = 1
    rounds: int = 3
    env: dict[str, str] = field(default_factory=dict)

    @property
    def app(self) -> str:
        return f"examples.{self.name}.device:app"


EXAMPLES = [
    Example(
        "vision",
        vision_model.main,
        "vision.pt",
        bar=0.70,
        lr=0.1,
        env={"QFLARE_VISION_EXAMPLES_PER_DEVICE": "1500", "QFLARE_VISION_ALPHA": "1.0"},
    ),
    Example("tabular", tabular_model.main, "tabular.safetensors", bar=0.90, lr=0.5, epochs=2),
    Example(
        "personal",
        personal_model.main,
        "personal.safetensors",
        bar=0.80,
        lr=0.1,
        epochs=2,
        env={"QFLARE_PERSONAL_EXAMPLES_PER_DEVICE": "1000"},
    ),
]


def _table(name: str, rounds: list[RoundComplete]) -> str:
    """The federated metrics of each completed round, one row a round."""
    lines = [f"\n{name}: round  evaluated_version  test_accuracy  test_loss  evaluated_examples"]
    for rc in rounds:
        m = rc.metrics
        lines.append(
            f"{name}: {rc.round:5d}  {int(m['evaluated_version']):17d}  {m['test_accuracy']:13.4f}"
            f"  {m['test_loss']:9.4f}  {int(m['evaluated_examples']):18d}"
        )
    return "\n".join(lines)


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.name for e in EXAMPLES])
def test_an_example_trains_through_the_services_and_reaches_its_bar(
    example: Example, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in example.env.items():
        monkeypatch.setenv(key, value)
    path = example.make(["-o", str(tmp_path / example.file), "--seed", "1"])
    ref = f"{example.name}@1"
    job = JobSpec.parse(
        {
            "model": ref,
            "strategy": {"name": "fedavg"},
            "rounds": example.rounds,
            "fraction": 1.0,
            "min_clients": 2,
            "deadline_s": 300.0,
            "epochs": example.epochs,
            "batch_size": example.batch_size,
            "lr": example.lr,
            "seed": 4,
            "evaluation": "federated",
            # An app reports its size only in its updates: nothing is declared at enrolment.
            "weighting": "equal",
        }
    )
    seen: list[RoundComplete] = []
    run = Run(devices=3, processes=1, seed=4, job=job, as_json=False, on_round=seen.append, app=example.app)
    # The run's own topics: the aggregator it starts reads the store from this import, signed by
    # the operator key the run would otherwise create only when it starts.
    init_identities(KEYS_DIR)
    assert asyncio.run(import_model(run.kafka, KEYS_DIR, path, example.name, version="1")) == ref
    run.execute()

    completed = [rc for rc in seen if rc.status == "completed"]
    # The training rounds, then the evaluation-only round of the final model.
    assert len(completed) == example.rounds + 1, seen
    for rc in completed:
        assert rc.evaluation == "federated", rc
        assert rc.metrics["evaluated_devices"] == 3, rc.metrics
        assert rc.metrics["evaluated_examples"] > 0
    accuracy = [rc.metrics["test_accuracy"] for rc in completed]
    print(_table(example.name, completed))
    assert [rc.metrics["evaluated_version"] for rc in completed] == list(range(example.rounds + 1))
    # Version 0 guesses; the final version reaches the example's bar.
    assert accuracy[0] < 0.3 and accuracy[-1] >= example.bar, accuracy

    # The trained model comes back out of the store bit for bit as the aggregator published it.
    final = asyncio.run(global_model(run.kafka, KEYS_DIR, run.job_id, example.rounds))
    out = tmp_path / "trained.safetensors"
    asyncio.run(export_model(run.kafka, KEYS_DIR, f"job:{run.job_id}", out))
    exported = read_model(out).tensors
    # A safetensors file keeps its tensors in name order, whatever the model's layout order.
    assert sorted(t.name for t in final.tensors) == sorted(exported)
    for t in final.tensors:
        assert np.asarray(t.array).tobytes() == np.asarray(exported[t.name]).tobytes(), t.name
    if example.name == "personal":
        # The devices never sent their heads: the federation's head is still the imported one.
        imported = read_model(path).tensors
        for name in PERSONAL:
            assert np.asarray(exported[name]).tobytes() == np.asarray(imported[name]).tobytes(), name
