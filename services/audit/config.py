"""The audit service's settings, from ``QFLARE_AUDIT_*`` environment variables."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from qflare import localstack
from qflare.config import BatchServiceSettings, Port


class AuditSettings(BatchServiceSettings):
    model_config = SettingsConfigDict(env_prefix="QFLARE_AUDIT_", extra="ignore")

    #: Also signs the chain's checkpoints.
    identity: str = "audit"
    metrics_port: Port = 9104
    #: A signed checkpoint entry after every this many entries.
    checkpoint_every: int = Field(default=100, ge=1)
    #: Default: the local stack's, on the port it was started with.
    elasticsearch_url: str = Field(default_factory=localstack.elasticsearch_url)
    #: Empty disables indexing (the chain in PostgreSQL is still written).
    index_prefix: str = "qflare-audit"
    #: How often the indexer looks for entries not yet in Elasticsearch.
    index_interval_s: float = Field(default=1.0, gt=0)
    index_batch: int = Field(default=500, ge=1)
    #: How often the service re-verifies its whole chain (exported as metrics; 0 disables).
    verify_interval_s: float = Field(default=300.0, ge=0)
    #: Signed chain heads are appended here (one JSON line each) as well as published to the heads
    #: topic; point it at storage the database's administrators cannot rewrite. "" disables the file.
    head_file_path: str = ".qflare/audit/heads.jsonl"
    #: A head is published after a committed batch, at most once per this many seconds.
    head_interval_s: float = Field(default=1.0, ge=0)
    #: How many of the heads topic's last records are searched for the latest head.
    head_scan_records: int = Field(default=1000, ge=1)
    #: SHA-256 fingerprint of the audit key (``SHA256:ab:cd…`` as ``qflare keys show`` and the audit
    #: service's start-up log print it): ``qflare audit verify`` refuses any other key; the service
    #: refuses to start with another key of its own.
    key_fingerprint: str = ""

    @property
    def head_file(self) -> Path | None:
        return Path(self.head_file_path) if self.head_file_path else None
