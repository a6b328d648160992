"""The publication gate: a new version whose central accuracy fell too far is not promoted.

With ``gate_max_drop`` set (central evaluation only), the candidate version's
``test_accuracy`` is compared with its parent's, the round's base version. A drop
of more than ``gate_max_drop`` holds the round: no new version is stored or
published, the strategy state is not carried, and the round closes ``held`` on its
base version (``Closer``). The base's accuracy is the one stored with it; a version
stored without one (version 0, made when the job started) is evaluated here on its
first use, by the same evaluator, and the result is stored with it, so a retried
close compares against the same figure.

``judge`` is the pure rule; ``Gate.check`` finds the base accuracy.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import structlog

from qflare.errors import AggregationError
from services.aggregator.evaluation import Evaluator
from services.aggregator.jobs import Job
from services.aggregator.models import decode, weights_of
from services.aggregator.rounds import OpenRound
from services.aggregator.store import AggregatorStore

log = structlog.get_logger("qflare.aggregator")

HELD = "held"
_ACCURACY, _LOSS = "test_accuracy", "test_loss"


@dataclass(frozen=True, slots=True)
class Verdict:
    """The gate's decision on one candidate, and the round metrics to report with it."""

    held: bool
    metrics: dict[str, float]


def judge(
    max_drop: float, metrics: Mapping[str, float], base: Mapping[str, float], base_version: int
) -> Verdict:
    """The gate's verdict on a candidate with round ``metrics`` (its central evaluation), against the
    base version's stored ``base`` metrics.

    Promoted: the metrics gain ``base_accuracy`` and ``gate_drop``. Held: they describe the version
    that stays (its accuracy as ``test_accuracy``), the candidate's as ``candidate_accuracy`` and
    ``candidate_loss``. Either accuracy unknown (evaluation off or failed): promoted, marked
    ``gate_unchecked``, as a gate that cannot measure must not stop training for good.
    """
    out = dict(metrics)
    candidate, before = metrics.get(_ACCURACY), base.get(_ACCURACY)
    if candidate is None or before is None:
        out["gate_unchecked"] = 1.0
        return Verdict(False, out)
    drop = before - candidate
    out.update(base_accuracy=before, gate_drop=drop)
    if drop <= max_drop:
        return Verdict(False, out)
    out.update(candidate_accuracy=candidate, test_accuracy=before, evaluated_version=float(base_version))
    if _LOSS in metrics:
        out["candidate_loss"] = metrics[_LOSS]
    out.pop(_LOSS, None)
    if _LOSS in base:
        out[_LOSS] = base[_LOSS]
    return Verdict(True, out)


class Gate:
    def __init__(self, store: AggregatorStore, evaluator: Evaluator) -> None:
        self.store, self.evaluator = store, evaluator

    async def check(self, job: Job, rnd: OpenRound, metrics: Mapping[str, float]) -> Verdict | None:
        """The verdict on the round's candidate (None: the job has no gate)."""
        max_drop = job.config.gate_max_drop
        if max_drop is None or job.config.evaluation != "central":
            return None
        base = await self.base_metrics(job, rnd.model_version)
        verdict = judge(max_drop, metrics, base, rnd.model_version)
        if "gate_unchecked" in verdict.metrics:
            log.warning("publication gate could not compare accuracies", job_id=job.job_id, round=rnd.round)
        return verdict

    async def base_metrics(self, job: Job, version: int) -> dict[str, float]:
        """The stored metrics of ``version``, with its central evaluation (run and stored if missing)."""
        stored = await self.store.model_metrics(job.job_id, version)
        if _ACCURACY in stored:
            return stored
        row = await self.store.model(job.job_id, version)
        if row is None:
            raise AggregationError(f"model {version} of {job.job_id!r} is missing", field="model")
        evaluation = await self.evaluator.evaluate_job_async(job, weights_of(decode(row.weights), job.layout))
        found = {k: evaluation[k] for k in (_ACCURACY, _LOSS) if k in evaluation}
        if found:
            await self.store.add_model_metrics(job.job_id, version, found)
            log.info(
                "base version evaluated for the publication gate", job_id=job.job_id, version=version, **found
            )
        return {**stored, **found}
