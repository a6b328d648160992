"""The round lifecycle as pure functions: job config, device selection, and what to do next.

The scheduler's faust agent feeds events in (a job command, a round-complete
event, a clock tick) and executes the decision that comes out. Keeping the
decisions pure makes them testable without Kafka, and keeps the state a plain
JSON-able dict that lives in a changelog-backed table.
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass, field
from typing import Any

from qflare.errors import ConfigError
from qflare.types import Scalar


@dataclass(frozen=True)
class JobConfig:
    model: str = "2nn"
    strategy: str = "fedavg"
    rounds: int = 10
    fraction: float = 0.1
    min_clients: int = 2
    #: Share of the selected devices whose updates make a quorum.
    quorum: float = 0.8
    deadline_s: float = 120.0
    epochs: int = 1
    batch_size: int = 10
    lr: float = 0.05
    seed: int = 0
    dataset: str = "mnist"
    partition: str = "iid"
    prox_mu: float = 0.0
    #: Ask devices to evaluate the trained model on their local validation split.
    evaluate_local: bool = True

    @classmethod
    def parse(cls, raw: dict[str, Scalar]) -> JobConfig:
        """Validate a job's config map; errors name the offending key."""
        known = {f: type(v) for f, v in asdict(cls()).items()}
        values: dict[str, Any] = {}
        for key, value in raw.items():
            if key not in known:
                raise ConfigError(
                    f"unknown job setting (known: {', '.join(sorted(known))})", field=f"config.{key}"
                )
            want = known[key]
            if want is float and isinstance(value, int | float) and not isinstance(value, bool):
                values[key] = float(value)
            elif isinstance(value, want) and not (want is int and isinstance(value, bool)):
                values[key] = value
            else:
                raise ConfigError(f"expected {want.__name__}, got {value!r}", field=f"config.{key}")
        cfg = cls(**values)
        cfg.check()
        return cfg

    def check(self) -> None:
        rules = [
            ("model", self.model in ("cnn", "2nn"), "must be cnn or 2nn"),
            ("strategy", self.strategy in ("fedavg", "fedprox"), "must be fedavg or fedprox"),
            ("rounds", self.rounds >= 1, "must be at least 1"),
            ("fraction", 0 < self.fraction <= 1, "must be in (0, 1]"),
            ("min_clients", self.min_clients >= 1, "must be at least 1"),
            ("quorum", 0 < self.quorum <= 1, "must be in (0, 1]"),
            ("deadline_s", self.deadline_s > 0, "must be positive"),
            ("epochs", self.epochs >= 1, "must be at least 1"),
            ("batch_size", self.batch_size >= 0, "must be >= 0 (0 = full batch)"),
            ("lr", self.lr > 0, "must be positive"),
            ("dataset", self.dataset in ("mnist", "fashion-mnist"), "must be mnist or fashion-mnist"),
            ("partition", self.partition in ("iid", "pathological", "dirichlet"), "unknown partition"),
        ]
        for name, ok, why in rules:
            if not ok:
                raise ConfigError(why, field=f"config.{name}")

    def train_config(self) -> dict[str, Scalar]:
        """What devices need to train: sent in every round task."""
        out: dict[str, Scalar] = {
            "model": self.model,
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "lr": self.lr,
            "dataset": self.dataset,
            "seed": self.seed,
            "evaluate": self.evaluate_local,
        }
        if self.strategy == "fedprox":
            out["prox_mu"] = self.prox_mu
        return out


def select(available: list[str], cfg: JobConfig, round_no: int) -> list[str] | None:
    """C·K devices (at least ``min_clients``) drawn from the healthy ones; None if too few.

    Seeded by (job seed, round) so a restarted scheduler reproduces its choice.
    """
    if len(available) < cfg.min_clients:
        return None
    want = max(cfg.min_clients, math.ceil(cfg.fraction * len(available)))
    rng = random.Random(cfg.seed * 1_000_003 + round_no)
    return sorted(rng.sample(sorted(available), min(want, len(available))))


def quorum(cfg: JobConfig, selected: int) -> int:
    return max(1, min(selected, math.ceil(cfg.quorum * selected)))


@dataclass
class Progress:
    """One job's round progress; stored as a dict in the changelog-backed table."""

    job_id: str
    config: dict[str, Scalar]
    status: str = "running"  # running | waiting_devices | done | stopped
    round: int = 0
    model_version: int = 0
    completed_rounds: int = 0
    open: bool = False
    selected: list[str] = field(default_factory=list)
    deadline_ms: int = 0
    attempts: int = 0
    history: list[dict[str, Scalar]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Progress:
        return cls(**data)


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
            **{k: v for k, v in metrics.items() if k in ("test_accuracy", "train_loss")},
        }
    )
    if status == "completed":
        p.model_version = model_version
        p.completed_rounds += 1
        p.attempts = 0
        cfg = JobConfig.parse(p.config)
        if p.completed_rounds >= cfg.rounds:
            p.status = "done"
            return False
        return True
    p.attempts += 1  # quorum not met or failed: retry with a fresh selection
    return True


def overdue(p: Progress, now_ms: int, grace_ms: int) -> bool:
    """No round-complete long after the deadline: the aggregator missed it; retry."""
    return p.status == "running" and p.open and now_ms > p.deadline_ms + grace_ms
