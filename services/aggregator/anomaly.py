"""Anomaly scores of a buffered round's updates, published with the round's close.

When a round of a buffered strategy completes, every included update gets
scores: its delta's ``norm``, its ``cosine`` to the round's aggregate delta, and
(for a robust rule) the rule's own (``RobustStrategy.scores``). A streaming
strategy keeps only running sums, so it has nothing to score. The fixed rule of
``qflare.fl.anomaly.flag_updates`` flags an update, the same rule ``qflare sim``
applies, so a simulation and the real services flag alike.

Two calls around the close transaction (``closing.py``):

- ``Detector.assess``, before it: computes the scores and flags, and adds the
  round's ``flagged_updates``, ``anomaly_norm_median`` and ``anomaly_cosine_min``
  to the metrics the round-complete record carries; the record's ``scores`` map
  carries each update's own (``Assessment.record_scores``);
- ``Detector.record``, inside it (only when this close is the one that flipped
  the round): one ``update.scored`` audit event per update through the outbox,
  the flag history and any quarantine request (``quarantine.py``), so they go out
  exactly once, with the round's result.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import structlog
from numpy.typing import NDArray

from qflare import metrics
from qflare.errors import AggregationError
from qflare.fl import Strategy, StrategyState, Update
from qflare.fl.anomaly import flag_updates
from qflare.fl.arrays import NDArrays
from qflare.fl.strategies._robust import Deltas, RobustStrategy, Scores, delta_scores
from qflare.protocol.limits import DEFAULT_LIMITS
from qflare.types import Scalar
from services.aggregator import quarantine
from services.aggregator.jobs import Job
from services.aggregator.models import EncodedModel, decode, weights_of
from services.aggregator.publisher import Publisher
from services.aggregator.rounds import OpenRound, known_faulty
from services.aggregator.store import AggregatorStore

log = structlog.get_logger("qflare.aggregator")
#: Keys of an ``update.scored`` detail that are not scores.
_RESERVED = frozenset({"job_id", "round", "weight", "flagged", "flags"})


def score_round(
    strategy: Strategy,
    state: StrategyState,
    updates: Sequence[Update],
    global_weights: Sequence[NDArray[Any]],
    new_weights: Sequence[NDArray[Any]],
) -> Scores:
    """Each update's scores, by device id: a robust rule's own (``RobustStrategy.scores``), else the
    delta's norm and cosine to the aggregate delta ``new − global`` (the same ``delta_scores``)."""
    if isinstance(strategy, RobustStrategy):
        return strategy.scores(state, updates, global_weights)
    deltas = Deltas(updates, global_weights)
    step: NDArrays = [
        np.asarray(n, np.float64).reshape(-1) - g
        for n, g in zip(new_weights, deltas.global_flat, strict=True)
    ]
    return delta_scores(deltas, step, {})


@dataclass(frozen=True, slots=True)
class Scored:
    """One included update's scores and what the flag rule made of them."""

    device_id: str
    #: The update's message id (the round's ``included`` row), for the audit event's ``ref``.
    message_id: bytes | None
    scores: Mapping[str, float]
    #: What the round weighed it by (its ``included`` row's ``num_examples``).
    weight: int
    flags: tuple[str, ...]

    def detail(self, job_id: str, round_: int) -> dict[str, Scalar]:
        """The ``update.scored`` event's detail. A rule's own score whose name the event uses for
        something else (RFA's ``weight``) is published as ``rule_<name>``."""
        out: dict[str, Scalar] = {"job_id": job_id, "round": round_}
        for name, value in self.scores.items():
            out[f"rule_{name}" if name in _RESERVED else name] = _finite(value)
        out.update({"weight": self.weight, "flagged": bool(self.flags), "flags": ",".join(self.flags)})
        return out


@dataclass(frozen=True, slots=True)
class Assessment:
    """A completed round's scored updates (device-id order) and the settings they were judged by."""

    job_id: str
    round: int
    updates: tuple[Scored, ...]
    quarantine_k: int
    quarantine_m: int

    @property
    def flagged(self) -> tuple[Scored, ...]:
        return tuple(s for s in self.updates if s.flags)

    def record_scores(self, cap: int = DEFAULT_LIMITS.max_map_len) -> dict[str, dict[str, float]]:
        """``round_complete.scores``: each scored update's finite scores and ``flagged`` (1 or 0).

        A map on the wire holds at most ``cap`` entries; a larger round lists its flagged updates
        first, then the rest in device-id order, and every update still has its audit event."""
        ordered = sorted(self.updates, key=lambda s: (not s.flags, s.device_id))[:cap]
        out: dict[str, dict[str, float]] = {}
        for s in ordered:
            # The wire refuses non-finite numbers; such a score stays in the audit event (as nil).
            row = {k: float(v) for k, v in s.scores.items() if math.isfinite(v)}
            row["flagged"] = 1.0 if s.flags else 0.0
            out[s.device_id] = row
        return out

    def metrics(self) -> dict[str, float]:
        """What the round-complete record's metrics gain (median and minimum over the scored updates)."""
        norms = [s.scores["norm"] for s in self.updates if "norm" in s.scores]
        cosines = [s.scores["cosine"] for s in self.updates if "cosine" in s.scores]
        out = {"flagged_updates": float(len(self.flagged))}
        if norms:
            out["anomaly_norm_median"] = float(statistics.median(norms))
        if cosines:
            out["anomaly_cosine_min"] = float(min(cosines))
        return out


def _finite(value: float) -> float | None:
    # A score is a float64 of the rule's; a non-finite one (a rule's own, say) is reported as nil
    # rather than refused by the record's encoder.
    value = float(value)
    return value if math.isfinite(value) else None


class Detector:
    """Scores a buffered round at its close and publishes what it found (see the module doc)."""

    def __init__(self, store: AggregatorStore, out: Publisher) -> None:
        self.store, self.out = store, out

    async def assess(
        self, job: Job, rnd: OpenRound, model: EncodedModel, round_metrics: dict[str, float]
    ) -> Assessment | None:
        """Score the round's included updates against its new version ``model``, and add the
        round's anomaly figures to ``round_metrics``. None for a round with nothing to score."""
        if job.strategy.mode != "buffered" or not rnd.buffer:
            return None
        base = await self.store.model(rnd.job_id, rnd.model_version)
        if base is None:  # _aggregate read it a moment ago; only a damaged store lacks it
            raise AggregationError(f"model {rnd.model_version} of {rnd.job_id!r} is missing", field="model")
        scores = score_round(
            job.strategy.excluding(known_faulty(rnd)),  # the rule as the round was aggregated
            StrategyState.from_bytes(job.strategy_state),  # the state the round was aggregated with
            rnd.buffer,
            weights_of(decode(base.weights), job.layout),
            weights_of(model.body, job.layout),
        )
        flags = flag_updates(scores, norm_k=job.config.flag_norm_k, min_cosine=job.config.flag_cosine)
        scored = []
        for device in sorted(scores):
            included = rnd.included.get(device)
            scored.append(
                Scored(
                    device_id=device,
                    message_id=None if included is None else included.message_id,
                    scores=scores[device],
                    weight=0 if included is None else included.num_examples,
                    flags=flags.get(device, ()),
                )
            )
        found = Assessment(
            rnd.job_id, rnd.round, tuple(scored), job.config.quarantine_k, job.config.quarantine_m
        )
        round_metrics.update(found.metrics())
        return found

    async def record(self, found: Assessment | None) -> None:
        """Queue the round's ``update.scored`` events, its flag history and any quarantine request
        (in the close transaction, after the round flipped), then log and count them."""
        if found is None:
            return
        for s in found.updates:
            await self.out.queue_audit(
                "update.scored",
                "warning" if s.flags else "info",
                subject=s.device_id,
                ref_id=s.message_id,
                detail=s.detail(found.job_id, found.round),
            )
        requested = await quarantine.note_round(
            self.store.conn,
            self.out,
            found.job_id,
            found.round,
            {s.device_id: s.flags for s in found.updates},
            k=found.quarantine_k,
            m=found.quarantine_m,
        )
        for s in found.updates:
            metrics.SCORED_UPDATES.labels(found.job_id).inc()
            if "norm" in s.scores:
                metrics.UPDATE_DELTA_NORM.observe(s.scores["norm"])
            for reason in s.flags:
                metrics.FLAGGED_UPDATES.labels(found.job_id, reason).inc()
            if s.flags:
                log.warning(
                    "update flagged",
                    job_id=found.job_id,
                    round=found.round,
                    device_id=s.device_id,
                    flags=",".join(s.flags),
                    **{k: v for k, v in s.scores.items() if k in ("norm", "cosine")},
                )
        for device in requested:
            metrics.QUARANTINE_REQUESTS.labels(found.job_id).inc()
            log.warning("quarantine requested", job_id=found.job_id, round=found.round, device_id=device)
