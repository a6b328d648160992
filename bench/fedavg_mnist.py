"""The FedAvg paper's MNIST CNN experiment through the real services.

McMahan et al. 2017, Table 2: the CNN reaches 99% test accuracy in 20 rounds,
IID, E=5, B=10, C=0.1, 100 clients of 600 examples. This runs that setup end to
end (stack, registry, scheduler, aggregator, 100 simulated devices training with
torch on their own shards), measures where each round's time goes, samples the
aggregator's resident memory, and ends with one JSON line.

    python bench/fedavg_mnist.py [--rounds 20] [--devices 100] [--model cnn] ...
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from devstack import launcher
from devstack.settings import StackSettings
from qflare.fl import JobSpec
from qflare.protocol.training import RoundComplete
from qflare_cli.demo import Run
from qflare_cli.stack import quiet_clients


class PeakRss:
    """Samples the resident set size of whatever process ``pid()`` names (it may change) every 0.2 s."""

    def __init__(self) -> None:
        self.pid: Callable[[], int | None] = lambda: None
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(0.2):
            pid = self.pid()
            if pid is None:
                continue
            try:
                self.peak_bytes = max(self.peak_bytes, psutil.Process(pid).memory_info().rss)
            except psutil.Error:
                continue

    def stop(self) -> None:
        self._stop.set()


class BenchRun(Run):
    def __init__(self, rss: PeakRss, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        rss.pid = self._aggregator_pid
        # The paper trains on all 600 examples of each client; federated evaluation needs
        # each device's own held-out examples, so only then is a share kept back.
        self.val_fraction = 0.1 if self.job.evaluation == "federated" else 0.0

    def _aggregator_pid(self) -> int | None:
        try:
            return self.services.child("aggregator").pid
        except KeyError:  # not started yet
            return None


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--devices", type=int, default=100)
    parser.add_argument("--fraction", type=float, default=0.1)
    parser.add_argument("--model", default="cnn")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--partition", default="iid")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--deadline-s", type=float, default=900.0)
    parser.add_argument("--evaluation", choices=("central", "federated"), default="central")
    args = parser.parse_args()
    quiet_clients()
    cfg = StackSettings()
    started_stack = not all(r.up for r in asyncio.run(launcher.status(cfg)))
    if started_stack:
        asyncio.run(launcher.up(cfg, say=lambda line: print(line, file=sys.stderr)))
    job = JobSpec.parse(
        {
            "model": f"builtin:{args.model}",
            "strategy": {"name": "fedavg"},
            "rounds": args.rounds,
            "fraction": args.fraction,
            "min_clients": 2,
            "deadline_s": args.deadline_s,
            "epochs": args.epochs,
            "batch_size": args.batch,
            "lr": args.lr,
            "seed": args.seed,
            "dataset": "mnist",
            "partition": args.partition,
            "evaluation": args.evaluation,
        }
    )
    arrivals: list[tuple[float, RoundComplete]] = []
    rss = PeakRss()
    began = time.monotonic()
    run = BenchRun(
        rss,
        devices=args.devices,
        processes=args.processes,
        seed=args.seed,
        job=job,
        as_json=False,
        on_round=lambda rc: arrivals.append((time.monotonic(), rc)),
    )
    try:
        run.execute()
    finally:
        rss.stop()
        if started_stack:
            launcher.down(cfg)
    print(json.dumps(summarise(arrivals, began, rss.peak_bytes, args)))


def summarise(
    arrivals: list[tuple[float, RoundComplete]], began: float, peak: int, args: Any
) -> dict[str, Any]:
    completed = [(t, rc) for t, rc in arrivals if rc.status == "completed"]
    # Accuracy by the model version it describes: central evaluation reports the version a
    # round made, federated the one it started from (and a last round the final version).
    by_version = {
        int(rc.metrics["evaluated_version"]): rc.metrics.get("test_accuracy", 0.0)
        for _, rc in completed
        if "evaluated_version" in rc.metrics
    }
    accuracies = [by_version[v] for v in sorted(by_version)]
    to_99 = next((v for v in sorted(by_version) if by_version[v] >= 0.99), None)
    train, agg, overhead, walls = [], [], [], []
    previous: float | None = None
    for t, rc in completed:
        m = rc.metrics
        wall: float | None = t - previous if previous is not None else None
        previous = t
        aggregation = m.get("aggregate_s", 0.0) + m.get("eval_s", 0.0)
        train.append(m.get("duration_s", 0.0))
        agg.append(aggregation)
        if wall is not None:
            walls.append(wall)
            overhead.append(max(0.0, wall - m.get("duration_s", 0.0) - aggregation))

    def mean(values: list[float]) -> float | None:
        return round(sum(values) / len(values), 2) if values else None

    return {
        "setup": f"{args.model} {args.devices} devices C={args.fraction} E={args.epochs} B={args.batch} "
        f"lr={args.lr} {args.partition}",
        "evaluation": args.evaluation,
        "rounds_run": len(completed),
        "best_accuracy": round(max(accuracies), 4) if accuracies else None,
        "final_accuracy": round(accuracies[-1], 4) if accuracies else None,
        "rounds_to_99": to_99,
        "accuracy_per_version": {v: round(a, 4) for v, a in sorted(by_version.items())},
        "round_wall_s_mean": mean(walls),
        "training_and_upload_s_mean": mean(train),
        "aggregation_and_eval_s_mean": mean(agg),
        "overhead_s_mean": mean(overhead),
        "aggregator_peak_rss_mb": round(peak / 2**20, 1),
        "total_s": round(time.monotonic() - began, 1),
    }


if __name__ == "__main__":
    main()
