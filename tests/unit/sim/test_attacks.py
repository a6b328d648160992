"""Attacks in the in-process simulator: poisoned shards, crafted updates, and `qflare sim --attack`."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from qflare.attacks import parse_attack, select_attackers
from qflare.fl import JobSpec
from qflare.fl.arrays import NDArrays
from qflare.fl.job import TrainConfig
from qflare.fl.spec import WEIGHTS
from qflare.sim import CentralEvaluation, ReferenceTrainer, SimFleet, Simulation, make_fleet
from qflare.sim.attacks import AttackingTrainer, backdoor_success, poisoned_fleet
from qflare.sim.trainers import DeviceResult
from qflare_cli.sim import app

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def fleet() -> SimFleet:
    full = make_fleet("mnist", "iid", 6, seed=4)
    return replace(full, train_index=[idx[:40] for idx in full.train_index])


def test_a_data_attack_poisons_only_the_attackers_shards(fleet: SimFleet) -> None:
    bad = poisoned_fleet(fleet, parse_attack("label_flip"), [1, 4])
    for i in range(6):
        if i in (1, 4):
            assert (bad.labels(i) == 9 - fleet.labels(i)).all()
            assert (bad.images(i) == fleet.images(i)).all()
        else:
            assert (bad.train_index[i] == fleet.train_index[i]).all()
    assert (bad.train_labels[: len(fleet.train_labels)] == fleet.train_labels).all()  # honest data intact
    assert poisoned_fleet(fleet, parse_attack("sign_flip"), [1]) is fleet


class _Fixed:
    """Device i 'trains' to the global model + i + 1 everywhere (so updates are known exactly)."""

    def train(
        self,
        round_no: int,
        devices: Sequence[int],
        weights: NDArrays,
        config: TrainConfig,
        server_groups: Mapping[str, NDArrays],
    ) -> list[DeviceResult]:
        return [DeviceResult({WEIGHTS: [w + (i + 1) for w in weights]}, 10 * (i + 1)) for i in devices]


CONFIG = TrainConfig(
    model="builtin:2nn",
    dataset="mnist",
    seed=0,
    epochs=1,
    batch_size=10,
    lr=0.05,
    proximal_mu=0.0,
    evaluate=False,
    evaluate_global=False,
    train=True,
)


def _train(attack: str, params: Mapping[str, float] | None = None) -> list[DeviceResult]:
    trainer = AttackingTrainer(_Fixed(), parse_attack(attack, params), frozenset({1, 3}), seed=0)
    g = [np.zeros(2, np.float32)]
    return trainer.train(1, [0, 1, 2, 3], g, CONFIG, {})


def test_honest_devices_pass_and_attackers_are_rewritten() -> None:
    out = _train("sign_flip")
    assert [float(r.groups[WEIGHTS][0][0]) for r in out] == [1.0, -2.0, 3.0, -4.0]
    assert [r.num_examples for r in out] == [10, 20, 30, 40]
    assert [r.num_examples for r in _train("num_examples_liar")] == [10, 2**27, 30, 2**27]


def test_colluders_see_each_others_honest_updates() -> None:
    # The attackers' honest updates are 2 and 4: mean 3.
    ipm = _train("ipm", {"epsilon": 1})
    assert [float(r.groups[WEIGHTS][0][0]) for r in ipm] == [1.0, -3.0, 3.0, -3.0]
    sybil = _train("sybil")
    assert (sybil[1].groups[WEIGHTS][0] == sybil[3].groups[WEIGHTS][0]).all()
    alie = _train("alie", {"z": 1})
    assert [float(r.groups[WEIGHTS][0][0]) for r in alie] == [1.0, 2.0, 3.0, 2.0]  # 3 - 1 * std 1


def test_a_backdoor_run_reports_its_success_rate(fleet: SimFleet) -> None:
    job = JobSpec.parse(
        {"model": "builtin:2nn", "rounds": 1, "fraction": 1.0, "min_clients": 2, "lr": 0.05, "seed": 4}
    )
    attack = parse_attack("backdoor", {"fraction": 1.0, "target": 3})
    bad = poisoned_fleet(fleet, attack, [0, 2])
    assert (bad.labels(0) == 3).all() and (bad.images(0)[:, -4:, -4:] == 255).all()
    trainer = AttackingTrainer(ReferenceTrainer(bad), attack, frozenset({0, 2}), job.seed)
    sim = Simulation(job, bad.ids, trainer, CentralEvaluation(bad.test_images, bad.test_labels, 500))
    sim.run()
    score = backdoor_success(attack, bad, examples=500)
    assert score is not None and backdoor_success(parse_attack("ipm"), bad) is None
    rate = score("2nn", sim.weights)
    assert 0.0 <= rate <= 1.0


def _rows(args: list[str]) -> list[dict[str, object]]:
    base = ["--devices", "100", "--fraction", "0.1", "--rounds", "1", "--threads", "1", "--seed", "0"]
    result = CliRunner().invoke(app, base + args)
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


def test_sign_flip_attackers_lower_fedavgs_accuracy() -> None:
    # Seed 0 puts 2 of the 20 attackers among round 1's 10 devices.
    assert len(select_attackers(100, 0.2, 0)) == 20
    clean = _rows([])
    attacked = _rows(["--attack", "sign_flip", "--attackers", "0.2"])
    assert attacked[0]["attack"] == "sign_flip" and attacked[0]["attackers"] == 20
    assert isinstance(clean[0]["accuracy"], float) and isinstance(attacked[0]["accuracy"], float)
    assert attacked[0]["accuracy"] < clean[0]["accuracy"] - 0.03


def test_an_unknown_attack_is_refused() -> None:
    result = CliRunner().invoke(app, ["--attack", "nope", "--rounds", "1"])
    assert result.exit_code == 2


def test_a_sweep_under_the_backdoor_reports_its_success_rate(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    out = tmp_path / "sweep.jsonl"
    args = ["sweep", "--grid", "lr=0.05", "--devices", "100", "--fraction", "0.1", "--rounds", "1"]
    args += ["--threads", "1", "--out", str(out), "--plot", str(tmp_path / "p.png")]
    args += ["--attack", "backdoor", "--attackers", "0.2", "--attack-param", "boost=3"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    (row,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert row["attack"] == "backdoor" and row["lr"] == 0.05
    assert isinstance(row["backdoor_success"], float) and 0.0 <= row["backdoor_success"] <= 1.0
