"""Attacker devices of the simulated fleet (``qflare simulate``/``qflare demo --attack``).

An attacker is an ordinary enrolled device with its own key: it signs what it sends,
so nothing in the services can tell it apart. It differs only inside the device:

- a data attack trains the built-in app on the device's poisoned shard
  (``qflare.attacks.poison_data``, drawn as ``qflare sim`` draws it);
- a model attack rewrites the built-in app's trained result before the runtime sends
  it (``Tamper``, the app's ``tamper`` hook).

Colluding attacks (ALIE, IPM, Sybil) need the honest updates of the round's other
attackers, which train in other worker processes. In a simulation an attacker knows
its colluders' shards and seeds, so it recomputes their honest updates itself with
the same local SGD (``train_local``, the seeds of ``edge.builtin``): no channel
between processes, no timing between attackers. Each worker computes a colluder's
update at most once per round (``Colluders``), so the cost is one extra local
training per colluder per worker that holds a selected attacker.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from edge.app import TrainResult, TrainTask
from qflare.attacks import Attack, RoundView, craft, noise_rng
from qflare.errors import ConfigError

#: Device index -> its (training images, labels), the honest shard.
Shards = Callable[[int], tuple[npt.NDArray[Any], npt.NDArray[Any]]]


@dataclass
class Roster:
    """The devices each round selected, as the worker saw them in the round task."""

    rounds: dict[tuple[str, int], tuple[str, ...]] = field(default_factory=dict)

    def note(self, job_id: str, round_no: int, devices: Sequence[str]) -> None:
        self.rounds[(job_id, round_no)] = tuple(devices)

    def selected(self, job_id: str, round_no: int) -> tuple[str, ...]:
        return self.rounds.get((job_id, round_no), ())


@dataclass
class Colluders:
    """Honest updates of other attackers, recomputed from their shards and seeds; cached per round."""

    shards: Shards
    seed: int
    _cache: dict[tuple[str, int, int], list[npt.NDArray[Any]]] = field(default_factory=dict)

    def honest(self, task: TrainTask, index: int) -> list[npt.NDArray[Any]]:
        from edge.builtin import builtin_arch
        from qflare.ml.train import train_local

        key = (task.job_id, task.round, index)
        if key not in self._cache:
            # Only the latest round is kept: an attacker never needs an earlier one.
            self._cache = {k: v for k, v in self._cache.items() if k[:2] == key[:2]}
            cfg = task.config
            images, labels = self.shards(index)
            result = train_local(
                builtin_arch(cfg),
                task.weights,
                images,
                labels,
                epochs=cfg.epochs,
                batch_size=cfg.batch_size,
                lr=cfg.lr,
                seed=(self.seed + index) * 100_003 + task.round,
                proximal_mu=cfg.proximal_mu,
            )
            self._cache[key] = list(result.weights)
        return self._cache[key]


@dataclass
class Tamper:
    """Rewrites attacker ``index``'s trained result as ``attack`` says (the built-in app's hook)."""

    attack: Attack
    index: int
    #: Every attacker of the fleet: device id -> its index in the fleet.
    attackers: Mapping[str, int]
    seed: int
    roster: Roster
    colluders: Colluders

    def __call__(self, task: TrainTask, result: TrainResult) -> TrainResult:
        honest = _as_list(result.weights, task.names)
        if len(honest) != len(task.weights):
            raise ConfigError("attacks need the full model (not FedPer's shared part)", field="attack")
        selected = self.roster.selected(task.job_id, task.round)
        together: list[list[npt.NDArray[Any]]] = []
        if self.attack.colluding:
            for device in sorted(selected):
                other = self.attackers.get(device)
                if other is None:
                    continue
                together.append(honest if other == self.index else self.colluders.honest(task, other))
        sent, claimed = craft(
            self.attack,
            RoundView(
                task.weights,
                honest,
                result.num_examples,
                together,
                selected=len(selected),
                rng=noise_rng(self.seed, self.index, task.round),
            ),
        )
        return TrainResult(sent, claimed, result.metrics, result.groups, result.commit)


def _as_list(weights: Any, names: Sequence[str]) -> list[npt.NDArray[Any]]:
    if isinstance(weights, Mapping):
        return [np.asarray(weights[n]) for n in names if n in weights]
    return [np.asarray(w) for w in weights]
