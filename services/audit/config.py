"""The audit service's settings, from ``QFLARE_AUDIT_*`` environment variables."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from qflare.config import BatchServiceSettings, Port


class AuditSettings(BatchServiceSettings):
    model_config = SettingsConfigDict(env_prefix="QFLARE_AUDIT_", extra="ignore")

    #: Also signs the chain's checkpoints.
    identity: str = "audit"
    metrics_port: Port = 9104
    #: A signed checkpoint entry after every this many entries.
    checkpoint_every: int = Field(default=100, ge=1)
    elasticsearch_url: str = "http://127.0.0.1:19200"
    #: Empty disables indexing (the chain in PostgreSQL is still written).
    index_prefix: str = "qflare-audit"
    #: How often the indexer looks for entries not yet in Elasticsearch.
    index_interval_s: float = Field(default=1.0, gt=0)
    index_batch: int = Field(default=500, ge=1)
    #: How often the service re-verifies its whole chain (exported as metrics; 0 disables).
    verify_interval_s: float = Field(default=300.0, ge=0)
