"""Rounds per second of ``qflare sim`` against Flower's simulation engine, on the same job.

Run from the repository root: ``python bench/sim_speed.py [--rounds 5] [--flower-python PATH]``.

The job: the FedAvg paper's 2NN on MNIST, 100 devices (IID, 540 training examples
each after the 10% validation share), C = 0.1, E = 1, B = 10, lr 0.05, central
evaluation on 10,000 test examples after every round, in both engines.

- qflare: ``qflare.sim.Simulation`` with the batched trainer (the selected devices
  trained at once by ``torch.func.vmap``; CUDA when present), torch on ``--threads``
  threads (default 1: on this busy 2-core machine, 2 intra-op threads made the run
  2 to 8 times slower than 1, as the threads wait on each other).
  ``--reference`` adds the one-device-at-a-time trainer as a third arm.
- flower: ``bench/sim_flower.py`` in its own environment (``flwr[simulation]``, Ray),
  each client training with ``qflare.ml.train.train_local`` on the same partition
  with the same seeds, one CPU per client actor, as many actors as cores
  (``--flower-cpus`` to set). By default Flower thus gets every core and qflare one.

The rate is the steady state: (rounds - 1) / (end of the last round - end of the
first), so neither engine's start-up (Ray, loading data) counts; the rate over the
whole run, start-up included, is printed too. The last line is one JSON object.

The Flower environment (made once, outside QFLARE's venv)::

    python3.11 -m venv /var/cache/qflare/bench-flower-venv
    /var/cache/qflare/bench-flower-venv/bin/pip install "flwr[simulation]"
    echo /var/cache/qflare/venv/lib/python3.11/site-packages \\
        > /var/cache/qflare/bench-flower-venv/lib/python3.11/site-packages/zz-shared-venv-torch.pth

The ``.pth`` line puts the shared venv's torch (and QFLARE's other dependencies) at
the end of that venv's path, so both engines run the same torch build and the
multi-gigabyte wheel is not installed twice; Flower's own packages come first.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
FLOWER_PYTHON = "/var/cache/qflare/bench-flower-venv/bin/python"


def _rates(ends: list[float], total: float) -> dict[str, float]:
    steady = (len(ends) - 1) / (ends[-1] - ends[0]) if len(ends) > 1 and ends[-1] > ends[0] else float("nan")
    return {"rounds_per_s": steady, "rounds_per_s_with_startup": len(ends) / total, "total_s": total}


def qflare_arm(settings: dict[str, Any], trainer_kind: str, threads: int) -> dict[str, Any]:
    import torch

    torch.set_num_threads(threads or os.cpu_count() or 1)
    from qflare.fl import JobSpec
    from qflare.sim import BatchedTrainer, CentralEvaluation, ReferenceTrainer, Simulation, make_fleet
    from qflare.sim.trainers import Trainer

    began = time.perf_counter()
    job = JobSpec.parse(
        {
            "model": "builtin:2nn",
            "strategy": {"name": "fedavg"},
            "rounds": settings["rounds"],
            "fraction": settings["fraction"],
            "min_clients": 2,
            "epochs": settings["epochs"],
            "batch_size": settings["batch_size"],
            "lr": settings["lr"],
            "seed": settings["seed"],
        }
    )
    fleet = make_fleet("mnist", "iid", settings["devices"], settings["seed"])
    trainer: Trainer = BatchedTrainer(fleet) if trainer_kind == "batched" else ReferenceTrainer(fleet)
    on_gpu = trainer_kind == "batched" and torch.cuda.is_available()
    evaluation = CentralEvaluation(fleet.test_images, fleet.test_labels, device="cuda" if on_gpu else None)
    sim = Simulation(job, fleet.ids, trainer, evaluation)
    ends: list[float] = []
    accuracy: list[float | None] = []

    def on_round(record: Any) -> None:
        ends.append(time.perf_counter() - began)
        accuracy.append(record.accuracy)
        print(
            f"  qflare {trainer_kind} round {record.round}: accuracy {record.accuracy:.4f}", file=sys.stderr
        )

    sim.run(on_round)
    out = _rates(ends, time.perf_counter() - began)
    device = "cuda" if trainer_kind == "batched" and torch.cuda.is_available() else "cpu"
    return {**out, "accuracy": accuracy, "device": device, "threads": torch.get_num_threads()}


def flower_arm(settings: dict[str, Any], python: str, cpus: int) -> dict[str, Any]:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "QFLARE_BENCH_FLOWER": json.dumps(settings),
        "RAY_DEDUP_LOGS": "1",
    }
    proc = subprocess.run(
        [python, str(ROOT / "bench" / "sim_flower.py"), "--cpus", str(cpus or os.cpu_count() or 1)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"the Flower arm failed (exit {proc.returncode}); its stderr is above")
    found = json.loads(lines[-1])
    version = subprocess.run(
        [python, "-c", "import flwr, ray; print(flwr.__version__, ray.__version__)"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split()
    out = _rates(found["round_end_s"], found["total_s"])
    return {**out, "accuracy": found["accuracy"], "flwr": version[:1], "ray": version[1:2]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--devices", type=int, default=100)
    parser.add_argument("--fraction", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--flower-python", default=FLOWER_PYTHON)
    parser.add_argument("--reference", action="store_true", help="Also time the one-by-one trainer.")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads of the qflare arm (0: every core; default 1)."
    )
    parser.add_argument(
        "--flower-cpus", type=int, default=0, help="Ray CPUs = client actors (0: every core)."
    )
    parser.add_argument("--skip-flower", action="store_true", help="Time the qflare arm only.")
    args = parser.parse_args()
    settings = {
        "devices": args.devices,
        "fraction": args.fraction,
        "rounds": args.rounds,
        "epochs": 1,
        "batch_size": 10,
        "lr": 0.05,
        "seed": args.seed,
    }
    result: dict[str, Any] = {
        "job": settings,
        "cpus": os.cpu_count(),
        "flower_cpus": args.flower_cpus or os.cpu_count(),
    }
    print(f"job: 2NN MNIST, {json.dumps(settings)}", file=sys.stderr)
    result["qflare"] = qflare_arm(settings, "batched", args.threads)
    if args.reference:
        result["qflare_reference"] = qflare_arm(settings, "reference", args.threads)
    if args.skip_flower:
        print(json.dumps(result))
        return
    result["flower"] = flower_arm(settings, args.flower_python, args.flower_cpus)
    q, f = result["qflare"]["rounds_per_s"], result["flower"]["rounds_per_s"]
    result["ratio"] = q / f
    result["ratio_with_startup"] = (
        result["qflare"]["rounds_per_s_with_startup"] / result["flower"]["rounds_per_s_with_startup"]
    )
    for arm in ("qflare", "qflare_reference", "flower"):
        if arm in result:
            r = result[arm]
            print(
                f"{arm:<17} {r['rounds_per_s']:7.3f} rounds/s steady, "
                f"{r['rounds_per_s_with_startup']:7.3f} with start-up ({r['total_s']:.1f} s in all)"
            )
    print(
        f"qflare / flower: {result['ratio']:.2f}x steady, {result['ratio_with_startup']:.2f}x with start-up"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
