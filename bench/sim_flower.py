"""The Flower arm of ``bench/sim_speed.py``: the same job on Flower's simulation engine (Ray).

Run by ``sim_speed.py`` with the Python of the benchmark's own environment
(``/var/cache/qflare/bench-flower-venv``: ``flwr[simulation]``, and torch reached
through a ``.pth`` line naming the shared venv's site-packages), never imported by
QFLARE itself. Each Flower client trains exactly as a QFLARE simulated device:
``qflare.ml.train.train_local`` on partition ``i`` of the same split, with the same
round seed; the server is Flower's FedAvg with C = fraction and the same central
evaluation (first 10,000 test examples) after every round.

Prints one JSON line: the seconds at which each round's evaluation ended.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import os
import sys
import time
from typing import Any

import numpy as np

# flwr is installed only in the benchmark's own venv, not in QFLARE's.
from flwr.client import ClientApp, NumPyClient  # type: ignore[import-not-found,unused-ignore]
from flwr.common import Context, ndarrays_to_parameters  # type: ignore[import-not-found,unused-ignore]
from flwr.server import ServerApp, ServerAppComponents, ServerConfig  # type: ignore[import-not-found,unused-ignore]
from flwr.server.strategy import FedAvg  # type: ignore[import-not-found,unused-ignore]
from flwr.simulation import run_simulation  # type: ignore[import-not-found,unused-ignore]

from qflare.sim import SimFleet, make_fleet, round_seed

SETTINGS: dict[str, Any] = json.loads(os.environ.get("QFLARE_BENCH_FLOWER", "{}"))


@functools.cache
def fleet() -> SimFleet:
    """The split, once per Ray worker process (Flower builds a fresh client object every round)."""
    import torch

    torch.set_num_threads(1)
    return make_fleet("mnist", "iid", SETTINGS["devices"], SETTINGS["seed"])


class SpeedClient(NumPyClient):  # type: ignore[misc,unused-ignore]
    def __init__(self, index: int) -> None:
        self.index = index

    def fit(self, parameters: list[Any], config: dict[str, Any]) -> tuple[list[Any], int, dict[str, Any]]:
        from qflare.ml.train import train_local

        data = fleet()
        result = train_local(
            "2nn",
            parameters,
            data.images(self.index),
            data.labels(self.index),
            epochs=SETTINGS["epochs"],
            batch_size=SETTINGS["batch_size"],
            lr=SETTINGS["lr"],
            seed=round_seed(SETTINGS["seed"], self.index, int(config["server_round"])),
        )
        return result.weights, result.num_examples, {"loss": result.loss}


def client_fn(context: Context) -> Any:
    return SpeedClient(int(context.node_config["partition-id"])).to_client()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cpus", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    from qflare.ml import init_weights
    from qflare.ml.data import to_float
    from qflare.ml.train import evaluate

    data = fleet()
    test_x, test_y = to_float(data.test_images[:10_000]), data.test_labels[:10_000]
    ends: list[float] = []
    accuracy: list[float] = []
    began = time.perf_counter()

    def central(
        server_round: int, parameters: list[Any], config: dict[str, Any]
    ) -> tuple[float, dict[str, Any]]:
        loss, acc = evaluate("2nn", [np.asarray(p, dtype=np.float32) for p in parameters], test_x, test_y)
        if server_round > 0:
            ends.append(time.perf_counter() - began)
            accuracy.append(acc)
        return loss, {"accuracy": acc}

    def server_fn(context: Context) -> Any:
        strategy = FedAvg(
            fraction_fit=SETTINGS["fraction"],
            fraction_evaluate=0.0,
            min_fit_clients=2,
            min_evaluate_clients=0,
            min_available_clients=SETTINGS["devices"],
            evaluate_fn=central,
            on_fit_config_fn=lambda rnd: {"server_round": rnd},
            initial_parameters=ndarrays_to_parameters(init_weights("2nn", SETTINGS["seed"])),
        )
        return ServerAppComponents(strategy=strategy, config=ServerConfig(num_rounds=SETTINGS["rounds"]))

    # By its importable name, so Ray's workers import it rather than unpickle this script's __main__.
    importable = importlib.import_module("bench.sim_flower")
    run_simulation(
        server_app=ServerApp(server_fn=server_fn),
        client_app=ClientApp(client_fn=importable.client_fn),
        num_supernodes=SETTINGS["devices"],
        backend_config={
            "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
            "init_args": {"num_cpus": args.cpus, "include_dashboard": False},
        },
    )
    print(json.dumps({"round_end_s": ends, "accuracy": accuracy, "total_s": time.perf_counter() - began}))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
