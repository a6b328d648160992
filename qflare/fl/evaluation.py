"""Federated evaluation as pure functions: what a device reports, and how the aggregator combines it.

A device evaluates the global model version it was given with its app's
``@app.evaluate`` handler and puts the result in its reply's metrics under
``eval_``: ``eval_examples`` (how many held-out examples), ``eval_loss`` and
``eval_<metric>`` for each metric of the handler. A reply without them is a
device whose evaluation failed or that has no held-out data: it is left out.

The aggregator combines the devices' results weighted by examples and reports
them under the keys central evaluation uses (``test_loss``, ``test_accuracy``,
``test_<metric>``), with ``evaluated_examples``, ``evaluated_devices`` and
``evaluated_version``. A metric only some devices report is averaged over
those devices' examples.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from qflare.errors import ConfigError
from qflare.fl.job import JobSpec, TrainConfig

#: Prefix of a device's evaluation of the global model in its reply's metrics.
PREFIX = "eval_"
EXAMPLES = PREFIX + "examples"
LOSS = PREFIX + "loss"
#: Prefix of the combined metrics in ``RoundComplete.metrics`` (the same as central evaluation's).
TEST = "test_"


#: A device's evaluation counts at most this many examples, names at most this many metrics, and
#: reports values of at most this magnitude: past them the reply is left out of the combination,
#: so no device can overflow the weighted sums or swell the round-complete event past its limits.
MAX_EXAMPLES = 1 << 40
MAX_METRICS = 32
MAX_MAGNITUDE = 1e15


@dataclass(frozen=True, slots=True)
class DeviceEvaluation:
    """One device's evaluation of one model version on its own held-out data."""

    num_examples: int
    loss: float
    metrics: dict[str, float] = field(default_factory=dict)

    def to_metrics(self) -> dict[str, float]:
        """The reply's ``eval_*`` metrics."""
        out = {EXAMPLES: float(self.num_examples), LOSS: self.loss}
        out.update({PREFIX + k: v for k, v in self.metrics.items()})
        return out

    @classmethod
    def from_metrics(cls, metrics: Mapping[str, float]) -> DeviceEvaluation | None:
        """The evaluation a reply's metrics carry, or None (none, no examples, not finite, or past
        the bounds above)."""
        examples, loss = metrics.get(EXAMPLES), metrics.get(LOSS)
        if examples is None or loss is None or not 1 <= examples <= MAX_EXAMPLES or examples != int(examples):
            return None
        own = {
            k.removeprefix(PREFIX): v
            for k, v in metrics.items()
            if k.startswith(PREFIX) and k not in (EXAMPLES, LOSS)
        }
        if len(own) > MAX_METRICS:
            return None
        if not all(math.isfinite(v) and abs(v) <= MAX_MAGNITUDE for v in (loss, *own.values())):
            return None
        return cls(int(examples), loss, own)


def combine(evaluations: Mapping[str, DeviceEvaluation], version: int) -> dict[str, float]:
    """The devices' evaluations of model ``version`` (by device id), weighted by examples.

    Summed in device-id order, so a replay after a crash reports the same floats.
    Empty when no device evaluated.
    """
    ordered = [evaluations[d] for d in sorted(evaluations)]
    total = sum(e.num_examples for e in ordered)
    if not total:
        return {}
    out = {
        TEST + "loss": _weighted([(e.loss, e.num_examples) for e in ordered]),
        "evaluated_examples": float(total),
        "evaluated_devices": float(len(ordered)),
        "evaluated_version": float(version),
    }
    for name in sorted({k for e in ordered for k in e.metrics}):
        out[TEST + name] = _weighted(
            [(e.metrics[name], e.num_examples) for e in ordered if name in e.metrics]
        )
    return out


def _weighted(pairs: Sequence[tuple[float, int]]) -> float:
    return sum(v * n for v, n in pairs) / sum(n for _, n in pairs)


def evaluation_round(spec: JobSpec, train: TrainConfig) -> TrainConfig:
    """The instructions of the evaluation-only round that follows a federated job's last round."""
    if spec.evaluation != "federated":
        raise ConfigError("only a federated job has an evaluation round", field="config.evaluation")
    return train.model_copy(update={"evaluate_global": True, "train": False, "evaluate": False})


def is_evaluation_round(config: Mapping[str, object]) -> bool:
    """Whether a round task's config asks for evaluation only (``train`` is false)."""
    return config.get("train") is False


#: A device's accuracy of its own personal model (Ditto, FedPer) on its own held-out data.
PERSONAL_ACCURACY = "personal_accuracy"


def personal_accuracy(metrics: Mapping[str, float]) -> float | None:
    """The reply's personal accuracy, or None when absent or not a fraction."""
    value = metrics.get(PERSONAL_ACCURACY)
    return value if value is not None and 0.0 <= value <= 1.0 else None


def personal_summary(accuracies: Mapping[str, float]) -> dict[str, float]:
    """Personalised models across devices: their mean accuracy and the worst decile's.

    ``personal_accuracy_p10`` is the mean over the worst-scoring tenth of the devices
    (at least one device), which says how the least-served devices fare; a mean alone
    hides them. Ordered by (accuracy, device id), so a replay reports the same floats.
    Empty when no device reported one.
    """
    if not accuracies:
        return {}
    ordered = sorted((a, d) for d, a in accuracies.items())
    worst = ordered[: max(1, len(ordered) // 10)]
    values = [a for a, _ in sorted(ordered, key=lambda p: p[1])]
    return {
        "personal_accuracy_mean": math.fsum(values) / len(values),
        "personal_accuracy_p10": math.fsum(a for a, _ in worst) / len(worst),
        "personal_devices": float(len(ordered)),
    }
