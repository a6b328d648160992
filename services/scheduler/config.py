"""The scheduler's settings, from ``QFLARE_SCHEDULER_*`` environment variables."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from qflare.config import Port, ServiceSettings, local_redis_url


class SchedulerSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="QFLARE_SCHEDULER_", extra="ignore")

    identity: str = "scheduler"
    metrics_port: Port = 9103
    redis_url: str = Field(default_factory=local_redis_url)
    #: faust app id: the consumer group and the prefix of its changelog topics.
    app_id: str = "qflare-scheduler"
    #: faust's local state directory.
    data_dir: Path = Path(".qflare/scheduler")
    #: Leadership lease in Redis; a standby takes over this long after the leader dies.
    lease_s: float = Field(default=10.0, gt=1)
    #: How long after a round's deadline to wait for the aggregator before retrying the round.
    grace_s: float = Field(default=30.0, ge=0)
    tick_s: float = Field(default=1.0, gt=0)
