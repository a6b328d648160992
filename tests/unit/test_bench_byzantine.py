"""``bench/byzantine.py``: the matrix code on a 2 × 2 grid of one round, the goals and the resume."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench.byzantine import Settings, goals, main, mean_matrix, render, strategy


def test_a_small_grid_writes_cells_resumes_and_ends_with_the_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cells.jsonl"
    args = ["--splits", "iid", "--defences", "fedavg,median", "--attacks", "none,sign_flip"]
    args += ["--devices", "20", "--fraction", "0.5", "--rounds", "1", "--out", str(out)]
    result = main(args)
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(last) == result
    table = result["matrix"]["iid"]
    assert set(table) == {"fedavg", "median"} and set(table["median"]) == {"none", "sign_flip"}
    assert all(0.0 < cell["accuracy"] <= 1.0 for row in table.values() for cell in row.values())
    # Unattacked models are scored on the backdoor's triggered images too: the floor for its success.
    assert all(0.0 <= row["none"]["trigger_rate"] <= 1.0 for row in table.values())
    assert not any("trigger_rate" in row["sign_flip"] for row in table.values())
    assert len(out.read_text().splitlines()) == 4
    assert main(args) == result  # every cell read back, none run again
    assert len(out.read_text().splitlines()) == 4


def test_each_rule_gets_the_largest_f_its_bound_allows() -> None:
    s = Settings()  # n = 10
    assert strategy("median", s)["num_byzantine"] == 4
    assert strategy("krum", s)["num_byzantine"] == 3
    assert strategy("bulyan", s)["num_byzantine"] == 1
    assert strategy("trimmed_mean", s) == {"name": "trimmed_mean", "beta": 0.2}
    assert strategy("fedavg", s) == {"name": "fedavg"}
    # The server trains its 100 root images as many steps as a device its 600.
    assert strategy("fltrust", s) == {"name": "fltrust", "root_epochs": 6}


def test_goals_are_computed_from_the_numbers() -> None:
    m = {
        "iid": {
            "fedavg": {
                "none": {"accuracy": 0.90},
                "sign_flip": {"accuracy": 0.10},
                "backdoor": {"accuracy": 0.89, "backdoor_success": 0.9},
            },
            "median": {
                "none": {"accuracy": 0.885, "trigger_rate": 0.02},
                "sign_flip": {"accuracy": 0.89},
                "backdoor": {"accuracy": 0.88, "backdoor_success": 0.03},
            },
        }
    }
    g = goals(m)["iid"]
    assert g["untargeted"]["sign_flip"] == {"best": "median", "accuracy": 0.89, "gap": 0.01, "met": True}
    assert g["backdoor"]["lowest"] == "median" and g["backdoor"]["met"]
    assert g["backdoor"]["clean_trigger_rate"] == 0.02
    assert g["no_attack_loss"] == {"fedavg": 0.0, "median": 0.015} and not g["no_attack_met"]
    assert "88.0/3.0" in render(m) and "89.0/90.0" in render(m)


def test_seeds_give_each_cell_its_mean_and_the_goals_per_seed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cells.jsonl"
    args = ["--splits", "iid", "--defences", "fedavg,median", "--attacks", "none"]
    args += ["--devices", "20", "--fraction", "0.5", "--rounds", "1", "--out", str(out), "--seeds", "0,1"]
    result = main(args)
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == result
    assert result["seeds"] == [0, 1] and [g["seed"] for g in result["per_seed"]] == [0, 1]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted((r["settings"]["seed"], r["defence"]) for r in rows) == [
        (0, "fedavg"),
        (0, "median"),
        (1, "fedavg"),
        (1, "median"),
    ]
    for defence in ("fedavg", "median"):
        both = [r["accuracy"] for r in rows if r["defence"] == defence]
        assert result["matrix"]["iid"][defence]["none"]["accuracy"] == pytest.approx(sum(both) / 2)


def test_a_cell_failed_in_any_seed_has_no_mean() -> None:
    one: dict[str, Any] = {
        "iid": {"krum": {"none": {"accuracy": 0.8}, "backdoor": {"accuracy": 0.7, "backdoor_success": 0.1}}}
    }
    two: dict[str, Any] = {
        "iid": {"krum": {"none": {"accuracy": None}, "backdoor": {"accuracy": 0.9, "backdoor_success": 0.3}}}
    }
    m = mean_matrix([one, two])["iid"]["krum"]
    assert m["none"] == {"accuracy": None}
    assert m["backdoor"] == pytest.approx({"accuracy": 0.8, "backdoor_success": 0.2})
