"""The round lifecycle as pure functions: device selection, round instructions, and what to do next.

The scheduler's faust agent feeds events in (a job command, a round-complete
event, a clock tick) and executes the decision that comes out. Keeping the
decisions pure makes them testable without Kafka, and keeps the state a plain
JSON-able dict that lives in a changelog-backed table.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from qflare.errors import ConfigError, SchemaError
from qflare.fl import JobSpec, build_strategy
from qflare.fl.evaluation import evaluation_round
from qflare.fl.selection import select
from qflare.types import Scalar

__all__ = ["Progress", "after_complete", "overdue", "quorum", "select", "task_config"]


def task_config(
    spec: JobSpec, round_no: int, devices: list[str], *, evaluate_only: bool = False
) -> dict[str, Scalar]:
    """``RoundTask.config``: the instructions the job's strategy gives the selected devices.

    A round task carries one config for all its devices, so a strategy that gives
    devices different instructions cannot be sent yet; the job is refused then.
    ``evaluate_only``: the instructions of a federated job's final evaluation round.
    """
    configs = set(build_strategy(spec).configure_round(round_no, devices).values())
    if len(configs) != 1:
        raise ConfigError(
            f"strategy {spec.strategy.name!r} gives devices different instructions, "
            "which a round task cannot carry yet",
            field="config.strategy",
        )
    config = configs.pop()
    return (evaluation_round(spec, config) if evaluate_only else config).to_config()


def quorum(cfg: JobSpec, selected: int) -> int:
    return max(1, min(selected, math.ceil(cfg.quorum * selected)))


@dataclass
class Progress:
    """One job's round progress; stored as a dict in the changelog-backed table."""

    job_id: str
    #: The job's spec as the start command carried it (``JobSpec.to_wire()`` form).
    config: dict[str, Any]
    status: str = "running"  # running | waiting_devices | done | stopped
    round: int = 0
    model_version: int = 0
    completed_rounds: int = 0
    open: bool = False
    selected: list[str] = field(default_factory=list)
    deadline_ms: int = 0
    attempts: int = 0
    history: list[dict[str, Scalar]] = field(default_factory=list)
    #: The training rounds are done and the open (or next) round evaluates the final model.
    evaluating: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Progress:
        names = {f.name for f in fields(cls)}
        if set(data) - names or {"job_id", "config"} - set(data):
            raise SchemaError(f"a job state has the fields {sorted(names)}", field="state.value")
        p = cls(**data)
        kinds = (
            (p.job_id, str),
            (p.config, dict),
            (p.status, str),
            (p.round, int),
            (p.selected, list),
            (p.evaluating, bool),
        )
        if not all(isinstance(v, t) for v, t in kinds) or not isinstance(p.history, list):
            raise SchemaError("a job state field has the wrong type", field="state.value")
        return p


def after_complete(
    p: Progress, round_no: int, status: str, model_version: int, metrics: dict[str, float]
) -> bool:
    """Apply a round-complete event; True if a new round should open now."""
    if not p.open or round_no != p.round or p.status != "running":
        return False  # stale or duplicate event for a round we no longer wait on
    p.open = False
    p.history.append(
        {
            "round": round_no,
            "status": status,
            "model_version": model_version,
            **{k: v for k, v in metrics.items() if k in ("test_accuracy", "train_loss", "evaluated_version")},
        }
    )
    if status in ("completed", "held"):
        # ``held``: the publication gate refused the round's new version. The round counts as
        # done, with no new version: the next one trains from the same model.
        if status == "completed":
            p.model_version = model_version
        p.attempts = 0
        if p.evaluating:  # the final model is evaluated: the job is done
            p.status = "done"
            return False
        p.completed_rounds += 1
        spec = JobSpec.parse(p.config)
        if p.completed_rounds >= spec.rounds:
            # A federated job's devices evaluated each version they trained from; one more
            # round, evaluation only, evaluates the final one (docs/protocol.md).
            p.evaluating = spec.evaluation == "federated"
            if not p.evaluating:
                p.status = "done"
            return p.evaluating
        return True
    p.attempts += 1  # quorum not met or failed: retry with a fresh selection
    return True


def overdue(p: Progress, now_ms: int, grace_ms: int) -> bool:
    """No round-complete long after the deadline: the aggregator missed it; retry."""
    return p.status == "running" and p.open and now_ms > p.deadline_ms + grace_ms
