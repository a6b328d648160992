"""Rounds to a target accuracy per strategy and learning rate, through the in-process engine.

Run from the repository root::

    python bench/strategies.py --config 2nn-iid --lrs 0.1 --out /tmp/strategies
    python bench/strategies.py --config L2 --strategies fedavg,scaffold --max-rounds 300
    python bench/strategies.py --quick          # a smoke test: a few seconds

The configurations are the issue's benchmarks (McMahan et al. 2017 for the paper's numbers):

- ``L1``: the CNN, IID, E = 5, B = 10, C = 0.1, 100 devices of 600; target 99% in at most
  20 rounds (the paper: 20 with a tuned learning rate), a learning-rate sweep.
- ``L2``: the same CNN on the pathological non-IID split (2 shards per device); FedAvg
  (the paper: 229 rounds), FedProx, SCAFFOLD, FedNova, FedAdam, FedYogi; target 99%.
- ``2nn-iid`` / ``2nn-noniid``: the 2NN, E = 1, B = 10, C = 0.1; target 97% (the paper:
  87 and 664 rounds).

Each run is a ``qflare.sim.Simulation`` (the services' selection, data split, seeds,
strategy code and device solver) with the batched trainer (CUDA when present),
stopped as soon as the central test accuracy reaches the target. ``--out DIR`` writes
one JSON-lines file per run (a line per round) and a PNG per configuration of accuracy
against rounds. The last line on stdout is the whole table as one JSON object: per run
the rounds to target (null: not reached), the final and best accuracy and seconds per
round (after the first, which pays for warm-up); per configuration and strategy the best learning rate.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))


@dataclass(frozen=True)
class Config:
    """One benchmark: the job's settings, its target and its default grid."""

    model: str
    partition: str
    epochs: int
    target: float
    max_rounds: int
    lrs: tuple[float, ...]
    strategies: tuple[str, ...] = ("fedavg",)
    devices: int = 100
    fraction: float = 0.1
    batch_size: int = 10
    paper_rounds: int | None = None


L2_STRATEGIES = ("fedavg", "fedprox", "scaffold", "fednova", "fedadam", "fedyogi")

CONFIGS: dict[str, Config] = {
    "L1": Config("cnn", "iid", 5, 0.99, 20, (0.02, 0.05, 0.1, 0.15), paper_rounds=20),
    "L2": Config("cnn", "pathological", 5, 0.99, 300, (0.05, 0.1), L2_STRATEGIES, paper_rounds=229),
    "2nn-iid": Config("2nn", "iid", 1, 0.97, 200, (0.05, 0.1, 0.2), paper_rounds=87),
    "2nn-noniid": Config("2nn", "pathological", 1, 0.97, 1000, (0.05, 0.1, 0.2), paper_rounds=664),
}


@dataclass
class Run:
    """One (configuration, strategy, lr) run's outcome."""

    config: str
    strategy: str
    lr: float
    target: float
    rounds_to_target: int | None = None
    rounds_run: int = 0
    final_accuracy: float | None = None
    best_accuracy: float | None = None
    seconds_per_round: float | None = None
    seconds_total: float | None = None
    curve: list[tuple[int, float]] = field(default_factory=list)

    def row(self) -> dict[str, Any]:
        return {
            "config": self.config,
            "strategy": self.strategy,
            "lr": self.lr,
            "target": self.target,
            "rounds_to_target": self.rounds_to_target,
            "rounds_run": self.rounds_run,
            "final_accuracy": self.final_accuracy,
            "best_accuracy": self.best_accuracy,
            "seconds_per_round": self.seconds_per_round,
            "seconds_total": self.seconds_total,
        }


def job_map(cfg: Config, strategy: str, lr: float, rounds: int, seed: int, params: dict[str, Any]) -> Any:
    """The run's ``JobSpec``: ``params`` go to every strategy that declares them."""
    from qflare.fl.job import BUILTIN
    from qflare.fl.selection import fleet_round_size
    from qflare.sim.sweep import apply

    base = {
        "model": f"{BUILTIN}{cfg.model}",
        "dataset": "mnist",
        "partition": cfg.partition,
        "strategy": {"name": strategy, **params},
        "rounds": rounds,
        "fraction": cfg.fraction,
        "min_clients": fleet_round_size(cfg.devices, cfg.fraction),
        "epochs": cfg.epochs,
        "batch_size": cfg.batch_size,
        "lr": lr,
        "seed": seed,
        "evaluation": "central",
    }
    return apply(base, {"strategy": strategy})


def run_one(
    name: str,
    cfg: Config,
    strategy: str,
    lr: float,
    *,
    max_rounds: int,
    seed: int,
    params: dict[str, Any],
    trainer: str,
    eval_examples: int,
    sink: Any,
) -> Run:
    """Rounds until the target (or ``max_rounds``); one JSON line per round to ``sink`` and stderr."""
    from qflare.sim import BatchedTrainer, CentralEvaluation, ReferenceTrainer, Simulation, make_fleet
    from qflare.sim.trainers import Trainer

    job = job_map(cfg, strategy, lr, max_rounds, seed, params)
    fleet = make_fleet(job.dataset, job.partition, cfg.devices, job.seed)
    chosen: Trainer = BatchedTrainer(fleet) if trainer == "batched" else ReferenceTrainer(fleet)
    gpu = isinstance(chosen, BatchedTrainer) and _cuda()
    evaluation = CentralEvaluation(
        fleet.test_images, fleet.test_labels, examples=eval_examples, device="cuda" if gpu else None
    )
    sim = Simulation(job, fleet.ids, chosen, evaluation)
    out = Run(name, strategy, lr, cfg.target)
    times: list[float] = []
    for round_no in range(1, max_rounds + 1):
        began = time.perf_counter()
        record = sim.round(round_no)
        times.append(time.perf_counter() - began)
        line = json.dumps({"config": name, "strategy": strategy, "lr": lr, **record.to_json()})
        print(line, file=sys.stderr, flush=True)
        if sink is not None:
            sink.write(line + "\n")
            sink.flush()
        out.rounds_run = round_no
        if record.accuracy is None:
            continue
        out.curve.append((round_no, record.accuracy))
        out.final_accuracy = record.accuracy
        out.best_accuracy = max(out.best_accuracy or 0.0, record.accuracy)
        if record.accuracy >= cfg.target:
            out.rounds_to_target = round_no
            break
    # The first round pays for torch's warm-up (vmap tracing, allocations): left out when there are more.
    steady = times[1:] or times
    out.seconds_per_round = round(sum(steady) / len(steady), 4)
    out.seconds_total = round(sum(times), 2)
    return out


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def best_lrs(runs: Sequence[Run]) -> dict[str, dict[str, dict[str, Any]]]:
    """Per configuration and strategy: the lr with the fewest rounds to target, else the best accuracy."""
    best: dict[str, dict[str, dict[str, Any]]] = {}

    def key(r: Run) -> tuple[int, float]:
        reached = r.rounds_to_target if r.rounds_to_target is not None else 10**9
        return reached, -(r.best_accuracy or 0.0)

    for r in runs:
        current = best.setdefault(r.config, {}).get(r.strategy)
        if current is None or key(r) < key(current["_run"]):
            best[r.config][r.strategy] = {"_run": r}
    return {
        c: {
            s: {
                "lr": v["_run"].lr,
                "rounds_to_target": v["_run"].rounds_to_target,
                "final_accuracy": v["_run"].final_accuracy,
            }
            for s, v in per.items()
        }
        for c, per in best.items()
    }


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(v) for v in text.split(",") if v.strip())


def _names(text: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip())


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--config", default="2nn-iid", choices=[*CONFIGS, "all"])
    parser.add_argument("--max-rounds", type=int, default=0, help="Cap on rounds per run (0: the config's).")
    parser.add_argument("--lrs", default="", help="Comma-separated learning rates (default: the config's).")
    parser.add_argument(
        "--strategies", default="", help="Comma-separated strategies (default: the config's)."
    )
    parser.add_argument("--param", action="append", default=[], help="key=value for strategies declaring it.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--trainer", default="batched", choices=["batched", "reference"])
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1).")
    parser.add_argument("--quick", action="store_true", help="Smoke test: 2NN, 2 rounds, 2 devices a round.")
    parser.add_argument("--out", type=Path, default=None, help="Directory for JSONL per run and PNG plots.")
    args = parser.parse_args(argv)

    import torch

    from qflare.sim.plot import plot_accuracy
    from qflare.sim.sweep import key_value, scalar

    torch.set_num_threads(args.threads)
    params = dict(key_value(p, field="param") for p in args.param)
    names = list(CONFIGS) if args.config == "all" else [args.config]
    runs: list[Run] = []
    plots: list[str] = []
    for name in names:
        cfg = CONFIGS[name]
        eval_examples = 10_000
        if args.quick:
            # Tiny: the 2NN, 2 of 100 devices a round, 2 rounds, 1,000 test examples.
            cfg = Config(
                "2nn", cfg.partition, 1, cfg.target, 2, cfg.lrs[:1], cfg.strategies[:2], fraction=0.02
            )
            eval_examples = 1000
        lrs = _floats(args.lrs) or cfg.lrs
        strategies = _names(args.strategies) or cfg.strategies
        max_rounds = args.max_rounds or cfg.max_rounds
        series: dict[str, list[tuple[int, float]]] = {}
        for strategy in strategies:
            for lr in lrs:
                path = None if args.out is None else args.out / f"{name}-{strategy}-lr{lr}.jsonl"
                if path is not None:
                    path.parent.mkdir(parents=True, exist_ok=True)
                opened: contextlib.AbstractContextManager[Any] = (
                    contextlib.nullcontext() if path is None else path.open("w", encoding="utf-8")
                )
                with opened as sink:
                    run = run_one(
                        name,
                        cfg,
                        strategy,
                        lr,
                        max_rounds=max_rounds,
                        seed=args.seed,
                        params={k: scalar(v) for k, v in params.items()},
                        trainer=args.trainer,
                        eval_examples=eval_examples,
                        sink=sink,
                    )
                runs.append(run)
                series[f"{strategy} lr={lr}"] = run.curve
                print(json.dumps(run.row()), flush=True)
        if args.out is not None:
            title = f"{name}: {cfg.model} {cfg.partition}, E={cfg.epochs}, target {cfg.target}"
            plots.append(str(plot_accuracy(series, args.out / f"{name}.png", title=title)))
    table = {
        "runs": [r.row() for r in runs],
        "best": best_lrs(runs),
        "paper_rounds": {n: CONFIGS[n].paper_rounds for n in names},
        "threads": args.threads,
        "cuda": _cuda(),
        "plots": plots,
    }
    print(json.dumps(table), flush=True)
    return table


if __name__ == "__main__":
    main()
