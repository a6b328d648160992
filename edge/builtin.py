"""The built-in device app: the FedAvg paper's models on a built-in dataset, with every local solver.

``mnist_app`` is what ``qflare simulate`` and ``qflare-edge run --dataset`` give each
device: its own shard to train on and a held-out split of it (its local validation
split, which is also its own test split for personalised metrics).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy.typing as npt

from edge.app import AlreadyAnswered, DeviceApp, EvaluateResult, EvaluateTask, TrainResult, TrainTask
from edge.solver_state import load_state, save_state, state_path
from qflare.errors import ConfigError
from qflare.fl import TrainConfig
from qflare.fl.job import builtin_model
from qflare.fl.spec import WEIGHTS
from qflare.ml.arch import ModelName, check_model_name


def builtin_arch(config: TrainConfig) -> ModelName:
    """The built-in architecture the round asks for; this device has no model store."""
    name = builtin_model(config.model)
    if name is None:
        raise ConfigError(f"{config.model!r} is not a built-in model", field="config.model")
    return check_model_name(name)


def mnist_app(
    images: npt.NDArray[Any],
    labels: npt.NDArray[Any],
    *,
    seed: int,
    val_images: npt.NDArray[Any] | None = None,
    val_labels: npt.NDArray[Any] | None = None,
    tamper: Callable[[TrainTask, TrainResult], TrainResult] | None = None,
) -> DeviceApp:
    """A device app that trains the task's model on this device's own examples (torch, CPU),
    and evaluates on its held-out local validation split when it has one.

    The local solver is ``qflare.ml.solvers.solve``: FedProx, SCAFFOLD, Ditto and FedPer as the
    round's config asks. Its state (c_i, Ditto's v, FedPer's own tensors) lives in
    ``<state_dir>/solver/<job>.npz`` and is committed as the update is sent. Ditto and FedPer
    devices also report their personal model's ``personal_accuracy``, ``personal_loss`` and
    ``personal_examples`` on the held-out split, the device's own test split.

    ``tamper`` (an attacker of the simulated fleet, ``edge.attacker.Tamper``) rewrites the
    trained result before it is sent.
    """
    from qflare.ml.solvers import SolverConfig, personal_metrics, solve  # torch: training devices only
    from qflare.ml.train import evaluate

    app = DeviceApp()
    has_val = val_images is not None and val_labels is not None and len(val_labels) > 0

    @app.train
    def train(task: TrainTask) -> TrainResult:
        cfg = task.config
        arch = builtin_arch(cfg)
        path = state_path(task.context.state_dir, task.job_id or "job")
        state = load_state(path)
        if state.round >= task.round:
            raise AlreadyAnswered(f"the local state is of round {state.round}", field="round")
        solved = solve(
            arch,
            task.names,
            task.weights,
            task.groups,
            images,
            labels,
            SolverConfig.of(cfg, seed * 100_003 + task.round),
            state,
            task.round,
        )
        metrics = dict(solved.metrics)
        if solved.personal_model is not None and has_val:
            assert val_images is not None and val_labels is not None
            metrics.update(personal_metrics(arch, solved.personal_model, val_images, val_labels))
        stateful = cfg.scaffold or cfg.ditto_lambda > 0 or bool(cfg.personal)
        trained = TrainResult(
            solved.weights,
            solved.num_examples,
            metrics,
            groups={g: a for g, a in solved.groups.items() if g != WEIGHTS},
            commit=(lambda: save_state(path, solved.state, task.names)) if stateful else None,
        )
        return trained if tamper is None else tamper(task, trained)

    if has_val:
        assert val_images is not None and val_labels is not None

        @app.evaluate
        def validate(task: EvaluateTask) -> EvaluateResult:
            model = builtin_arch(task.config)
            loss, accuracy = evaluate(model, task.weights, val_images, val_labels)
            return EvaluateResult(len(val_labels), float(loss), {"accuracy": float(accuracy)})

    return app
