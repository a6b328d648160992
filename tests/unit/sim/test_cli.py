"""`qflare sim` and `qflare sim sweep` from the command line, and a user's DeviceApp as the devices."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from qflare.fl import JobSpec
from qflare.ml import init_weights, layout
from qflare.sim import Simulation, device_ids
from qflare_cli.sim import app
from qflare_cli.sim_app import AppTrainer
from tests.apps.shift import SHIFT
from tests.apps.shift import app as shift_app


def _lines(output: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


def test_sim_prints_a_json_line_per_round_with_a_users_app() -> None:
    result = CliRunner().invoke(
        app,
        [
            "--devices",
            "4",
            "--fraction",
            "0.5",
            "--rounds",
            "2",
            "--threads",
            "1",
            "--app",
            "tests.apps.shift:app",
        ],
    )
    assert result.exit_code == 0, result.output
    rows = _lines(result.stdout)
    assert [r["round"] for r in rows] == [1, 2]
    assert all(r["participants"] == 2 and r["failed"] == 0 for r in rows)
    assert all(isinstance(r["accuracy"], float) and isinstance(r["seconds"], float) for r in rows)


def test_a_users_app_trains_each_device_with_its_own_partition(tmp_path: Path) -> None:
    job = JobSpec.parse({"model": "builtin:2nn", "rounds": 2, "fraction": 1.0, "min_clients": 2, "seed": 1})
    ids = device_ids(3)
    names = tuple(n for n, _ in layout("2nn"))
    sim = Simulation(job, ids, AppTrainer(shift_app, ids, names, tmp_path))
    records = sim.run()
    assert [r.participants for r in records] == [3, 3]
    for got, start in zip(sim.weights, init_weights("2nn", 1), strict=True):
        np.testing.assert_allclose(got, start + 2 * SHIFT, atol=1e-6)
    seen = json.loads((tmp_path / ids[2] / "round-2.json").read_text())
    assert (seen["device_id"], seen["partition"], seen["num_partitions"]) == (ids[2], 2, 3)


def test_sweep_runs_every_grid_point_and_draws_the_plot(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    out, plot = tmp_path / "sweep.jsonl", tmp_path / "sweep.png"
    args = ["sweep", "--grid", "lr=0.05,0.1", "--grid", "strategy=fedavg,fedprox", "--devices", "60"]
    args += ["--rounds", "1", "--threads", "1", "--out", str(out), "--plot", str(plot)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["lr"], r["strategy"]) for r in rows] == [
        (0.05, "fedavg"),
        (0.05, "fedprox"),
        (0.1, "fedavg"),
        (0.1, "fedprox"),
    ]
    assert all(r["run"] == f"lr={r['lr']},strategy={r['strategy']}" for r in rows)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_bad_grid_is_refused_before_anything_runs() -> None:
    result = CliRunner().invoke(app, ["sweep", "--grid", "lr", "--rounds", "1"])
    assert result.exit_code == 2
    assert "key=value" in result.output


def test_ditto_falls_back_to_the_reference_trainer_and_reports_personal_accuracy() -> None:
    result = CliRunner().invoke(
        app,
        ["--strategy", "ditto", "--devices", "100", "--fraction", "0.02", "--rounds", "1", "--threads", "1"],
    )
    assert result.exit_code == 0, result.output
    assert "no personal models" in result.output  # the note that the batched trainer cannot run it
    round_line, final = _lines(result.stdout)
    assert round_line["round"] == 1 and isinstance(round_line["personal_accuracy_p10"], float)
    assert final["final"] is True and final["personal_devices"] == 100
    assert isinstance(final["personal_accuracy_mean"], float)
