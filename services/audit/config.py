"""The audit service's settings, from ``QFLARE_AUDIT_*`` environment variables."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class AuditSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="QFLARE_AUDIT_", extra="ignore")

    postgres_dsn: str = "postgresql://qflare@127.0.0.1:15432/qflare"
    keys_dir: Path = Path(".qflare/keys")
    #: The audit service's own signing identity, for checkpoints (``<keys_dir>/<identity>.key``).
    identity: str = "audit"
    #: Principals whose device records (keys) are believed.
    device_senders: frozenset[str] = frozenset({"registry"})
    #: A signed checkpoint entry after every this many entries.
    checkpoint_every: int = Field(default=100, ge=1)
    #: Records per consumer fetch; each fetch is appended in one PostgreSQL transaction.
    batch_max_records: int = Field(default=500, ge=1)
    elasticsearch_url: str = "http://127.0.0.1:19200"
    #: Empty disables indexing (the chain in PostgreSQL is still written).
    index_prefix: str = "qflare-audit"
    #: How often the indexer looks for entries not yet in Elasticsearch.
    index_interval_s: float = Field(default=1.0, gt=0)
    index_batch: int = Field(default=500, ge=1)
    metrics_port: int = Field(default=9104, ge=0, le=65535)
    #: How often the service re-verifies its whole chain (exported as metrics; 0 disables).
    verify_interval_s: float = Field(default=300.0, ge=0)
