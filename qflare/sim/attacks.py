"""Attacks in ``qflare sim``: attacker devices poison their shards or rewrite their trained updates.

Two hooks leave the trainers untouched:

- ``poisoned_fleet``: a data attack's poisoned copies of each attacker's examples are appended
  to the fleet's training arrays and the attacker's shard points at them, so the batched and
  the reference trainers both train the attackers on poisoned data;
- ``AttackingTrainer`` wraps any ``Trainer``: every selected device trains honestly, then each
  attacker's result is replaced by ``qflare.attacks.craft``; the attackers trained in the same
  call (a round's devices with the same instructions) are the colluders and see each other's
  honest updates.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from qflare.attacks import Attack, RoundView, craft, data_rng, noise_rng, poison_data
from qflare.fl.arrays import NDArrays
from qflare.fl.job import TrainConfig
from qflare.fl.spec import WEIGHTS
from qflare.sim.fleet import SimFleet
from qflare.sim.trainers import DeviceResult, Trainer


def poisoned_fleet(fleet: SimFleet, attack: Attack, attackers: Sequence[int]) -> SimFleet:
    """``fleet`` with each attacker's shard replaced by its poisoned copy (unchanged for a model attack)."""
    if attack.kind != "data" or not attackers:
        return fleet
    images, labels, index = [fleet.train_images], [fleet.train_labels], list(fleet.train_index)
    end = len(fleet.train_labels)
    for i in attackers:
        x, y = poison_data(attack, fleet.images(i), fleet.labels(i), data_rng(fleet.seed, i))
        images.append(x)
        labels.append(y)
        index[i] = np.arange(end, end + len(y), dtype=np.int64)
        end += len(y)
    return replace(
        fleet,
        train_images=np.concatenate(images),
        train_labels=np.concatenate(labels).astype(np.int64),
        train_index=index,
    )


@dataclass
class AttackingTrainer:
    """``inner`` for honest devices; ``attack`` applied to the results of the ``attackers``."""

    inner: Trainer
    attack: Attack
    attackers: frozenset[int]
    seed: int

    def train(
        self,
        round_no: int,
        devices: Sequence[int],
        weights: NDArrays,
        config: TrainConfig,
        server_groups: Mapping[str, NDArrays],
    ) -> list[DeviceResult]:
        results = self.inner.train(round_no, devices, weights, config, server_groups)
        bad = [k for k, i in enumerate(devices) if i in self.attackers and results[k].failure is None]
        if not bad:
            return results
        colluders = [list(results[k].groups[WEIGHTS]) for k in bad] if self.attack.colluding else []
        out = list(results)
        for k in bad:
            honest = results[k]
            sent, claimed = craft(
                self.attack,
                RoundView(
                    weights,
                    list(honest.groups[WEIGHTS]),
                    honest.num_examples,
                    colluders,
                    selected=len(devices),
                    rng=noise_rng(self.seed, devices[k], round_no),
                ),
            )
            out[k] = replace(honest, groups={**honest.groups, WEIGHTS: sent}, num_examples=claimed)
        return out


def backdoor_success(attack: Attack, fleet: SimFleet, examples: int = 10_000) -> BackdoorScore | None:
    """The backdoor's per-round score on the first ``examples`` test images; None for other attacks."""
    if attack.name != "backdoor":
        return None
    return BackdoorScore(attack, fleet.test_images[:examples], fleet.test_labels[:examples])


@dataclass
class BackdoorScore:
    """Attack success rate of a global model on the triggered test images (true label ≠ target)."""

    attack: Attack
    images: np.ndarray
    labels: np.ndarray

    def __call__(self, model: str, weights: NDArrays) -> float:
        from qflare.attacks import attack_success_rate

        return attack_success_rate(
            model,
            weights,
            self.images,
            self.labels,
            target=int(self.attack["target"]),
            size=int(self.attack["size"]),
        )
