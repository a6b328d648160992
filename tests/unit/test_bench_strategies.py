"""``bench/strategies.py --quick``: the benchmark table's smoke test (2NN, 2 rounds, 2 devices a round)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.strategies import CONFIGS, Run, best_lrs, main


def test_quick_run_writes_the_table_jsonl_and_plot(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    table = main(["--config", "2nn-iid", "--quick", "--out", str(tmp_path)])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(last) == table
    [run] = table["runs"]
    assert run["strategy"] == "fedavg" and run["rounds_run"] == 2
    assert 0.0 < run["final_accuracy"] <= 1.0 and run["rounds_to_target"] is None
    assert table["best"]["2nn-iid"]["fedavg"]["lr"] == CONFIGS["2nn-iid"].lrs[0]
    lines = (tmp_path / "2nn-iid-fedavg-lr0.05.jsonl").read_text().splitlines()
    assert [json.loads(line)["round"] for line in lines] == [1, 2]
    assert (tmp_path / "2nn-iid.png").read_bytes()[:4] == b"\x89PNG"


def test_best_lr_is_the_fewest_rounds_then_the_best_accuracy() -> None:
    runs = [
        Run("L1", "fedavg", 0.05, 0.99, rounds_to_target=None, best_accuracy=0.995),
        Run("L1", "fedavg", 0.1, 0.99, rounds_to_target=15, best_accuracy=0.99),
        Run("L1", "fedavg", 0.2, 0.99, rounds_to_target=12, best_accuracy=0.991),
        Run("L1", "fedprox", 0.05, 0.99, rounds_to_target=None, best_accuracy=0.97),
        Run("L1", "fedprox", 0.1, 0.99, rounds_to_target=None, best_accuracy=0.98),
    ]
    best = best_lrs(runs)
    assert best["L1"]["fedavg"]["lr"] == 0.2 and best["L1"]["fedavg"]["rounds_to_target"] == 12
    assert best["L1"]["fedprox"]["lr"] == 0.1
