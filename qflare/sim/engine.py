"""The round loop of ``qflare sim``: the services' rounds, in one process, with no Kafka.

Each round does what the scheduler and the aggregator do, in the same order and
with the same code where it is pure:

1. select devices (``qflare.fl.selection.select``, the scheduler's seeded draw);
2. ask the strategy for their instructions (``configure_round``) and the tensor
   groups it sends with the model (``server_groups``);
3. train them (a ``Trainer``: batched, one by one, or a user's app);
4. check each update against the strategy's update spec, then fold the updates in
   device-id order: ``begin_round``/``accumulate`` for a streaming strategy, the
   sorted list for a buffered one; ``aggregate`` gives the new global model;
5. evaluate it centrally on the first 10,000 test examples, as the aggregator does.

Between steps 3 and 5 the aggregator's server rules apply (``qflare.sim.rules``): each
update's weight comes from the size its device declared (a larger claim is refused),
a robust rule's anomaly scores flag updates (and may quarantine devices), and the
publication gate can hold a candidate whose accuracy drops too far.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from qflare.errors import AggregationError, ConfigError, InvalidUpdateError, Rejected
from qflare.fl.arrays import NDArrays
from qflare.fl.job import JobSpec, TrainConfig
from qflare.fl.registry import build_strategy
from qflare.fl.selection import select
from qflare.fl.state import StrategyState
from qflare.fl.strategy import KNOWN_FAULTY_REASONS, RoundInput, Update
from qflare.fl.weighting import RoundWeights, round_weights
from qflare.ml import init_weights, layout
from qflare.sim.rules import Flags, Watch
from qflare.sim.trainers import DeviceResult, Trainer

#: The aggregator's default number of test examples (``services.aggregator.config``).
EVAL_EXAMPLES = 10_000


@dataclass(frozen=True, slots=True)
class RoundRecord:
    """One round's outcome: the numbers ``qflare sim`` prints as a JSON line."""

    round: int
    accuracy: float | None
    loss: float | None
    train_loss: float | None
    seconds: float
    participants: int
    failed: int
    #: Ditto/FedPer: the round's devices' personal accuracy on their own held-out splits.
    personal_accuracy_mean: float | None = None
    personal_accuracy_p10: float | None = None
    #: Updates the weighting rule refused (a claim above the declared size, or none declared).
    rejected: int = 0
    #: A robust rule's round: the updates flagged (None when the rule gives no scores).
    flags: Flags | None = None
    #: The publication gate held the candidate (``accuracy`` is then the published model's).
    held: bool = False
    candidate_accuracy: float | None = None
    #: Devices no longer selected because they were quarantined (cumulative).
    suspended: int = 0
    #: Why the round closed without a new model (too few updates for the rule's bound).
    unclosed: str | None = None

    def to_json(self) -> dict[str, Any]:
        personal: dict[str, Any] = {}
        if self.personal_accuracy_mean is not None:
            personal = {
                "personal_accuracy_mean": self.personal_accuracy_mean,
                "personal_accuracy_p10": self.personal_accuracy_p10,
            }
        if self.flags is not None:
            personal["flagged"] = self.flags.flagged
            personal["flagged_attackers"] = self.flags.attackers
        if self.held or self.candidate_accuracy is not None:
            personal["held"] = self.held
            personal["candidate_accuracy"] = self.candidate_accuracy
        if self.suspended:
            personal["suspended"] = self.suspended
        if self.unclosed is not None:
            personal["unclosed"] = self.unclosed
        return {
            "round": self.round,
            "accuracy": self.accuracy,
            "loss": self.loss,
            "train_loss": self.train_loss,
            "seconds": round(self.seconds, 4),
            "participants": self.participants,
            "failed": self.failed,
            "rejected": self.rejected,
            **personal,
        }


def personal_summary(accuracies: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and worst decile (the 10th percentile, linear interpolation) of devices' accuracies."""
    if not accuracies:
        return None, None
    values = np.asarray(accuracies, dtype=np.float64)
    return float(values.mean()), float(np.percentile(values, 10))


class CentralEvaluation:
    """Test loss and accuracy of a built-in model on the first ``examples`` of the test split.

    On the CPU (the default) this is the aggregator's own computation,
    ``qflare.ml.train.evaluate``. With ``device`` (e.g. ``"cuda"``) the test split
    stays on that device and the model is evaluated there: the same numbers up to
    float rounding, without a CPU pass over 10,000 examples every round.
    """

    def __init__(
        self,
        images: NDArray[np.uint8],
        labels: NDArray[np.int64],
        examples: int = EVAL_EXAMPLES,
        device: str | None = None,
    ) -> None:
        from qflare.ml.data import to_float

        self.images = to_float(images[:examples])
        self.labels = labels[:examples]
        self.device = device
        self._on_device: Any = None

    def __call__(self, model: str, weights: NDArrays) -> tuple[float, float]:
        if self.device is None:
            from qflare.ml.train import evaluate

            return evaluate(model, weights, self.images, self.labels)  # type: ignore[arg-type]
        return self._evaluate_on_device(model, weights)

    def _evaluate_on_device(self, model: str, weights: NDArrays, batch: int = 1000) -> tuple[float, float]:
        import torch
        import torch.nn.functional as F

        from qflare.ml.models import build_model

        dev = torch.device(self.device or "cpu")
        if self._on_device is None:
            self._on_device = (torch.from_numpy(self.images).to(dev), torch.from_numpy(self.labels).to(dev))
        x, y = self._on_device
        net = build_model(model, weights=weights).to(dev).eval()  # type: ignore[arg-type]
        loss = torch.zeros((), dtype=torch.float64, device=dev)
        correct = torch.zeros((), dtype=torch.int64, device=dev)
        with torch.inference_mode():
            for start in range(0, len(y), batch):
                logits = net(x[start : start + batch])
                yb = y[start : start + batch]
                loss += F.cross_entropy(logits, yb, reduction="sum").double()
                correct += (logits.argmax(dim=1) == yb).sum()
        return float(loss) / len(y), int(correct) / len(y)


@dataclass
class Simulation:
    """A job's rounds over ``ids`` (device ``i`` is ``ids[i]``), trained by ``trainer``."""

    job: JobSpec
    ids: list[str]
    trainer: Trainer
    evaluation: CentralEvaluation | None = None
    #: Round -> the devices to train instead of the seeded draw (to replay a services run).
    selection: Callable[[int], Sequence[str]] | None = None
    weights: NDArrays = field(default_factory=list)
    names: tuple[str, ...] = ()
    state: StrategyState | None = None
    #: Device -> the dataset size it declared at enrolment. None: nobody declared, and each
    #: update weighs its own claim (a ``--app`` fleet, whose sizes are not known beforehand).
    declared: Mapping[str, int | None] | None = None
    #: The attacker devices, only to report how many flagged updates were theirs.
    attackers: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        self.strategy = build_strategy(self.job)
        self.watch = Watch(self.job, self.attackers)
        #: The published model's accuracy, for the publication gate (evaluated when first needed).
        self._published: float | None = None
        if not self.weights:
            arch = self.job.builtin
            if arch is None:
                raise ConfigError("the simulator starts only built-in models from their seed", field="model")
            self.weights = list(init_weights(arch, self.job.seed))
            self.names = tuple(name for name, _ in layout(arch))
        if self.state is None:
            self.state = self.strategy.initial_state()
        if sorted(self.ids) != self.ids or len(set(self.ids)) != len(self.ids):
            raise ConfigError("device ids must be unique and in index order", field="ids")
        self._index = {d: i for i, d in enumerate(self.ids)}

    def run(self, on_round: Callable[[RoundRecord], None] | None = None) -> list[RoundRecord]:
        records = []
        for round_no in range(1, self.job.rounds + 1):
            record = self.round(round_no)
            records.append(record)
            if on_round is not None:
                on_round(record)
        return records

    def selected(self, round_no: int) -> list[str]:
        if self.selection is not None:
            return sorted(self.selection(round_no))
        # Quarantined devices are suspended: the scheduler selects only active ones.
        available = [d for d in self.ids if d not in self.watch.suspended]
        chosen = select(available, self.job, round_no)
        if chosen is None:
            raise ConfigError(
                f"{len(available)} devices available, the job needs at least {self.job.min_clients}",
                field="devices",
            )
        return chosen

    def round(self, round_no: int) -> RoundRecord:
        began = time.perf_counter()
        assert self.state is not None
        chosen = self.selected(round_no)
        configs = self.strategy.configure_round(round_no, chosen)
        extra = self.strategy.server_groups(self.state)
        # Devices with the same instructions train together (all of them, for most strategies).
        by_config: dict[TrainConfig, list[str]] = {}
        for device in chosen:
            by_config.setdefault(configs[device], []).append(device)
        results: dict[str, DeviceResult] = {}
        for config, devices in by_config.items():
            trained = self.trainer.train(
                round_no, [self._index[d] for d in devices], self.weights, config, extra
            )
            results.update(zip(devices, trained, strict=True))
        rule = None
        if self.declared is not None:
            rule = round_weights(self.job.weighting, self.job.weight_cap, chosen, self.declared)
        updates, failed, rejected, faulty = self._accepted(results, rule)
        if not updates:
            raise ConfigError(f"round {round_no}: no device sent a usable update", field="updates")
        round_input: RoundInput
        if self.strategy.mode == "streaming":
            shapes = [tuple(w.shape) for w in self.weights]
            sums = self.strategy.begin_round(self.state, round_no, self.names, shapes)
            for update in updates:
                self.strategy.accumulate(sums, update)
            round_input = sums
        else:
            round_input = updates
        # Each refused over-claim spends one of the rule's f, as in the aggregator (closing.py).
        strategy = self.strategy.excluding(faulty)
        try:
            flags = self.watch.scored(strategy, self.state, updates, self.weights)
            new, state = strategy.aggregate(self.state, round_input, self.weights)
        except AggregationError as exc:
            # Too few updates left for the rule's bound (e.g. refused over-claims): the round
            # closes without a new model, as the aggregator's failed round does.
            return self._unclosed(round_no, began, updates, failed, rejected, str(exc))
        candidate = [np.ascontiguousarray(w, dtype=np.float32) for w in new]
        accuracy = loss = candidate_accuracy = None
        held = False
        if self.evaluation is not None and self.job.builtin is not None:
            loss, accuracy = self.evaluation(self.job.builtin, candidate)
            held = self._gate_holds(accuracy)
        if held:
            # Not promoted: the round's base model (and the strategy's state) stay published.
            candidate_accuracy = accuracy
            accuracy = self._published
        else:
            self.weights, self.state = candidate, state
            self._published = accuracy
            if self.job.gate_max_drop is not None:
                candidate_accuracy = accuracy
        mean, p10 = personal_summary(
            [u.metrics["personal_accuracy"] for u in updates if "personal_accuracy" in u.metrics]
        )
        return self._record(
            round_no,
            began,
            updates,
            failed,
            rejected,
            accuracy=accuracy,
            loss=loss,
            personal_accuracy_mean=mean,
            personal_accuracy_p10=p10,
            flags=flags,
            held=held,
            candidate_accuracy=candidate_accuracy,
        )

    def _unclosed(
        self, round_no: int, began: float, updates: Sequence[Update], failed: int, rejected: int, why: str
    ) -> RoundRecord:
        accuracy = loss = None
        if self.evaluation is not None and self.job.builtin is not None:
            loss, accuracy = self.evaluation(self.job.builtin, self.weights)
        return self._record(
            round_no, began, updates, failed, rejected, accuracy=accuracy, loss=loss, unclosed=why
        )

    def _record(
        self,
        round_no: int,
        began: float,
        updates: Sequence[Update],
        failed: int,
        rejected: int,
        **outcome: Any,
    ) -> RoundRecord:
        """The round's record: what every round reports, plus ``outcome`` (accuracy, flags, …)."""
        return RoundRecord(
            round=round_no,
            train_loss=_train_loss(updates),
            seconds=time.perf_counter() - began,
            participants=len(updates),
            failed=failed,
            rejected=rejected,
            suspended=len(self.watch.suspended),
            **outcome,
        )

    def _gate_holds(self, accuracy: float) -> bool:
        """Whether the publication gate refuses a candidate of ``accuracy`` (False with no gate)."""
        drop = self.job.gate_max_drop
        if drop is None or self.evaluation is None or self.job.builtin is None:
            return False
        if self._published is None:
            self._published = self.evaluation(self.job.builtin, self.weights)[1]
        return accuracy < self._published - drop

    def final_personal(self) -> dict[str, Any] | None:
        """Ditto/FedPer: every device's personal accuracy now (not only the last round's), summarised.

        None when the job keeps no personal models or the trainer cannot evaluate them.
        """
        config = self.strategy.train_config(max(1, self.job.rounds))
        evaluate = getattr(self.trainer, "personal_accuracies", None)
        if not (config.ditto_lambda > 0 or config.personal) or evaluate is None:
            return None
        accuracies = evaluate(self.weights, config)
        mean, p10 = personal_summary(accuracies)
        return {
            "final": True,
            "personal_devices": len(accuracies),
            "personal_accuracy_mean": mean,
            "personal_accuracy_p10": p10,
        }

    def _accepted(
        self, results: dict[str, DeviceResult], rule: RoundWeights | None
    ) -> tuple[list[Update], int, int, int]:
        """The updates the aggregator's checks would accept, in device-id order, each weighted by
        ``rule``; the count of failed or malformed ones, of those the weighting refused, and of
        those refused as proof of a faulty device (``KNOWN_FAULTY_REASONS``)."""
        shapes = [tuple(w.shape) for w in self.weights]
        spec = self.strategy.update_spec(self.names, shapes)
        updates, failed, rejected, faulty = [], 0, 0, 0
        for device in sorted(results):
            result = results[device]
            if result.failure is not None or result.num_examples < 1:
                failed += 1
                continue
            try:
                spec.check(result.groups, result.metrics)
            except InvalidUpdateError:
                failed += 1
                continue
            weight = result.num_examples
            if rule is not None and self.declared is not None:
                try:
                    weight = rule.weight(device, result.num_examples, self.declared.get(device))
                except Rejected as exc:
                    rejected += 1
                    faulty += exc.reason in KNOWN_FAULTY_REASONS
                    continue
            groups = {
                g: [np.asarray(a, dtype=np.float32) for a in arrays] for g, arrays in result.groups.items()
            }
            updates.append(Update(device, groups, weight, result.metrics))
        return updates, failed, rejected, faulty


def _train_loss(updates: Sequence[Update]) -> float | None:
    """Example-weighted mean of the devices' ``loss``, summed in device-id order as the aggregator does."""
    weighted = [(u.metrics["loss"], u.num_examples) for u in updates if "loss" in u.metrics]
    total = sum(n for _, n in weighted)
    return sum(loss * n for loss, n in weighted) / total if total else None
