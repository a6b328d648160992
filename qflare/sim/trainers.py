"""How the simulator's devices train: one at a time (the reference), batched, or a caller's own.

A ``Trainer`` takes a round's selected devices (indices into the fleet) and their
instructions and returns what each would have sent: its tensor groups, example
count and metrics. ``ReferenceTrainer`` calls ``qflare.ml.solvers.solve`` per
device, exactly as a device of the services' simulated fleet does (FedProx,
SCAFFOLD, Ditto, FedPer); ``BatchedTrainer`` trains them all at once
(``qflare.sim.batched``) and hands a round it cannot batch (Ditto, FedPer) to the
reference. Anything else (a user's ``DeviceApp``,
wired up by ``qflare sim --app``) implements the same protocol.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from qflare.errors import ConfigError
from qflare.fl.arrays import NDArrays
from qflare.fl.job import TrainConfig, builtin_model
from qflare.fl.spec import CONTROL, WEIGHTS
from qflare.ml.arch import ModelName, check_model_name
from qflare.sim.fleet import SimFleet, round_seed


@dataclass(frozen=True, slots=True)
class DeviceResult:
    """What a device sends back: its tensor groups, examples and metrics; or why it failed."""

    groups: Mapping[str, Sequence[NDArray[Any]]]
    num_examples: int
    metrics: dict[str, float] = field(default_factory=dict)
    failure: str | None = None


class Trainer(Protocol):
    """Trains a round's devices; results in the order of ``devices``."""

    def train(
        self,
        round_no: int,
        devices: Sequence[int],
        weights: NDArrays,
        config: TrainConfig,
        server_groups: Mapping[str, NDArrays],
    ) -> list[DeviceResult]: ...


def builtin_arch(config: TrainConfig) -> ModelName:
    name = builtin_model(config.model)
    if name is None:
        raise ConfigError(f"{config.model!r} is not a built-in model; use --app", field="model")
    return check_model_name(name)


def unsupported(config: TrainConfig, *, batched: bool = False) -> str | None:
    """The solver key a trainer cannot run (None when it can run the config).

    The reference trainer runs every solver (it is the device's own ``solve``); the
    batched one has no personal models, so it hands Ditto and FedPer rounds to the reference.
    """
    if not batched:
        return None
    if config.ditto_lambda > 0:
        return "ditto_lambda"
    if config.personal:
        return "personal"
    return None


def personalised(config: TrainConfig) -> bool:
    """Whether devices keep a personal model under ``config`` (Ditto, FedPer)."""
    return config.ditto_lambda > 0 or bool(config.personal)


def _metrics(loss: float, steps: int, config: TrainConfig) -> dict[str, float]:
    # As edge.training.mnist_app reports, plus the step count every device must send.
    return {"loss": float(loss), "proximal_mu": config.proximal_mu, "local_steps": float(steps)}


def local_steps(num_examples: int, config: TrainConfig) -> int:
    step = num_examples if config.batch_size == 0 else min(config.batch_size, num_examples)
    return config.epochs * math.ceil(num_examples / step)


@dataclass
class ReferenceTrainer:
    """One device after another through ``qflare.ml.solvers.solve``: the services' device code.

    Each device's solver state (SCAFFOLD's c_i, Ditto's v, FedPer's own tensors) stays
    in ``states`` between rounds, as a device keeps it in its local state file. A Ditto or
    FedPer device also reports its personal model's metrics on its held-out split, as
    ``edge.builtin.mnist_app`` does.
    """

    fleet: SimFleet
    states: dict[int, Any] = field(default_factory=dict)

    def train(
        self,
        round_no: int,
        devices: Sequence[int],
        weights: NDArrays,
        config: TrainConfig,
        server_groups: Mapping[str, NDArrays],
    ) -> list[DeviceResult]:
        from qflare.ml import layout
        from qflare.ml.solvers import SolverConfig, SolverState, personal_metrics, solve

        arch = builtin_arch(config)
        names = tuple(n for n, _ in layout(arch))
        out = []
        for i in devices:
            state = self.states.get(i) or SolverState()
            solved = solve(
                arch,
                names,
                weights,
                server_groups,
                self.fleet.images(i),
                self.fleet.labels(i),
                SolverConfig.of(config, round_seed(self.fleet.seed, i, round_no)),
                state,
                round_no,
            )
            metrics = dict(solved.metrics)
            if solved.personal_model is not None and self.fleet.has_val(i):
                metrics.update(
                    personal_metrics(
                        arch, solved.personal_model, self.fleet.val_images(i), self.fleet.val_labels(i)
                    )
                )
            if config.scaffold or personalised(config):
                self.states[i] = solved.state  # committed: the update is sent
            out.append(DeviceResult(solved.groups, solved.num_examples, metrics))
        return out

    def personal_accuracies(self, weights: NDArrays, config: TrainConfig) -> list[float]:
        """Every device's personal model's accuracy on its held-out split (devices without one skipped).

        A device's personal model is what it would use now: Ditto's ``v`` (the global model if it
        never trained), or FedPer's global shared tensors with its own personal ones.
        """
        from qflare.ml import layout
        from qflare.ml.solvers import personal_mask
        from qflare.ml.train import evaluate

        arch = builtin_arch(config)
        names = [n for n, _ in layout(arch)]
        mask = personal_mask(names, config.personal)
        out = []
        for i in range(len(self.fleet.ids)):
            if not self.fleet.has_val(i):
                continue
            state = self.states.get(i)
            model = list(weights)
            if state is not None and config.ditto_lambda > 0 and state.ditto is not None:
                model = list(state.ditto)
            elif state is not None and config.personal:
                model = [
                    state.personal.get(n, w) if m else w for n, w, m in zip(names, weights, mask, strict=True)
                ]
            _, accuracy = evaluate(arch, model, self.fleet.val_images(i), self.fleet.val_labels(i))
            out.append(float(accuracy))
        return out


@dataclass
class BatchedTrainer:
    """All of a round's devices at once on ``device`` (CUDA when present); the reference otherwise."""

    fleet: SimFleet
    device: str | None = None
    #: SCAFFOLD: each device's control variate c_i (zero until it first trains), its local state.
    controls: dict[int, NDArrays] = field(default_factory=dict)
    _data: Any = None
    #: Rounds it cannot batch (Ditto, FedPer) go to this reference trainer, which keeps their state.
    reference: ReferenceTrainer | None = None

    def _tensors(self) -> Any:
        if self._data is None:
            import torch

            from qflare.ml.data import to_float
            from qflare.sim.batched import pick_device

            dev = torch.device(self.device) if self.device else pick_device()
            images = torch.from_numpy(to_float(self.fleet.train_images)).to(dev)
            labels = torch.from_numpy(np.asarray(self.fleet.train_labels, dtype=np.int64)).to(dev)
            self._data = (images, labels)
        return self._data

    def train(
        self,
        round_no: int,
        devices: Sequence[int],
        weights: NDArrays,
        config: TrainConfig,
        server_groups: Mapping[str, NDArrays],
    ) -> list[DeviceResult]:
        from qflare.sim.batched import train_batched

        if unsupported(config, batched=True) is not None:
            return self.fallback().train(round_no, devices, weights, config, server_groups)
        images, labels = self._tensors()
        correction = None
        if config.scaffold:
            c = self._server_control(weights, server_groups)
            mine = [self.controls.get(i) or [np.zeros_like(w) for w in weights] for i in devices]
            correction = [[a - b for a, b in zip(c, ci, strict=True)] for ci in mine]
        results = train_batched(
            builtin_arch(config),
            weights,
            images,
            labels,
            [self.fleet.train_index[i] for i in devices],
            epochs=config.epochs,
            batch_size=config.batch_size,
            lr=config.lr,
            seeds=[round_seed(self.fleet.seed, i, round_no) for i in devices],
            proximal_mu=config.proximal_mu,
            correction=correction,
        )
        out = []
        for i, r in zip(devices, results, strict=True):
            groups: dict[str, Sequence[NDArray[Any]]] = {WEIGHTS: r.weights}
            if config.scaffold:
                groups[CONTROL] = self._new_control(i, weights, r, config, server_groups)
            out.append(DeviceResult(groups, r.num_examples, _metrics(r.loss, r.local_steps, config)))
        return out

    def fallback(self) -> ReferenceTrainer:
        """The reference trainer that trains (and keeps the state of) what this one cannot batch."""
        if self.reference is None:
            self.reference = ReferenceTrainer(self.fleet)
        return self.reference

    def personal_accuracies(self, weights: NDArrays, config: TrainConfig) -> list[float]:
        return self.fallback().personal_accuracies(weights, config)

    @staticmethod
    def _server_control(weights: NDArrays, server_groups: Mapping[str, NDArrays]) -> NDArrays:
        c = server_groups.get(CONTROL)
        return [np.zeros_like(w) for w in weights] if c is None else [np.asarray(a, np.float32) for a in c]

    def _new_control(
        self,
        index: int,
        x: NDArrays,
        trained: Any,
        config: TrainConfig,
        server_groups: Mapping[str, NDArrays],
    ) -> NDArrays:
        """SCAFFOLD option II: c_i+ = c_i - c + (x - y_i) / (K lr); keeps c_i+ and returns c_i+ - c_i."""
        c = self._server_control(x, server_groups)
        k_lr = trained.local_steps * config.lr
        delta = [
            ((xw.astype(np.float64) - yw) / k_lr - cw).astype(np.float32)
            for xw, yw, cw in zip(x, trained.weights, c, strict=True)
        ]
        old = self.controls.get(index) or [np.zeros_like(w) for w in x]
        self.controls[index] = [o + d for o, d in zip(old, delta, strict=True)]
        return delta
