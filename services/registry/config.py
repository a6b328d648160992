"""The registry's settings, from ``QFLARE_REGISTRY_*`` environment variables."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from qflare.config import BatchServiceSettings, Port, local_redis_url


class RegistrySettings(BatchServiceSettings):
    model_config = SettingsConfigDict(env_prefix="QFLARE_REGISTRY_", extra="ignore")

    identity: str = "registry"
    metrics_port: Port = 9101
    redis_url: str = Field(default_factory=local_redis_url)
    group_id: str = "qflare-registry"
    #: A device that has not sent a heartbeat for this long is ``stale``...
    stale_after_s: float = Field(default=15.0, gt=0)
    #: ... and ``offline`` after this long (also the TTL of its liveness key).
    offline_after_s: float = Field(default=30.0, gt=0)
    sweep_interval_s: float = Field(default=1.0, gt=0)
    batch_max_records: int = Field(default=1000, ge=1)
    #: The largest dataset size a device may declare at enrolment (label ``qflare.num_examples``),
    #: whatever its token approves: the aggregator weights updates by the declared size.
    max_declared_examples: int = Field(default=1_000_000, ge=1, le=2**40)
