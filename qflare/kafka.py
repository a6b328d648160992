"""aiokafka producer, consumer and admin factories with the protocol's sizes and safety settings.

Kafka's defaults (1 MB records, acks=1, no idempotence) would silently reject
a 6.6 MB model or duplicate an update on retry. Every process builds its
clients here so those settings cannot drift between services.

Topic creation (``prepare_topics``) and replaying topics from their first
record (``replay``, ``assign_from_start``, ``read_to_end``) live here too, so
every service, tool and test does them the same way.

Trace context travels in record headers: ``qflare.tracing.send_span(topic)``
yields the headers to pass as ``producer.send(..., headers=headers)``, and
``qflare.tracing.process_span(record)`` (or ``extract_context(record.headers)``)
continues the trace on the consumer side.
"""

from __future__ import annotations

import asyncio
import os
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal, TypeAlias

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import for_code
from aiokafka.helpers import create_ssl_context
from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from qflare import localstack
from qflare.errors import TopicSetupError
from qflare.protocol.body import ID_PATTERN
from qflare.protocol.channel import DEFAULT_DEPLOYMENT
from qflare.protocol.limits import Limits
from qflare.protocol.topics import Topics, TopicSpec, topics

_TOPIC_ALREADY_EXISTS = 36
#: A record as a consumer returns it: key and value are bytes (or None, a tombstone).
Record: TypeAlias = ConsumerRecord[Any, Any]


class KafkaSettings(BaseSettings):
    """Connection and size settings, read from ``QFLARE_KAFKA_*`` environment variables."""

    model_config = SettingsConfigDict(env_prefix="QFLARE_KAFKA_", extra="ignore")

    #: Defaults to the local stack's broker, following ``QFLARE_KAFKA_PORT`` when that is set.
    bootstrap: str = Field(
        default_factory=lambda: f"127.0.0.1:{os.environ.get('QFLARE_KAFKA_PORT', '19092')}",
        description="host:port[,host:port...]",
    )
    client_id: str = "qflare"
    #: Largest single record (envelope); bigger bodies are chunked by the protocol.
    max_record_bytes: int = Field(default=Limits().max_record_bytes, ge=64 * 1024)
    replication_factor: int = Field(default=1, ge=1)
    request_timeout_ms: int = Field(default=40_000, ge=1000)
    #: Prepended to every topic name (see ``qflare.protocol.topics.topics``).
    topic_prefix: str = ""
    #: Bound into every signature with the topic name, so a record signed for one
    #: deployment never verifies in another that shares topic names.
    deployment_id: str = DEFAULT_DEPLOYMENT

    #: None: SASL_SSL as ``admin`` when the local stack has generated secrets (see
    #: ``qflare.localstack``), PLAINTEXT otherwise.
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] | None = None
    sasl_mechanism: Literal["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"] = "SCRAM-SHA-512"
    #: The Kafka principal; with no password set, the local stack's password of that principal.
    username: str | None = None
    password: SecretStr | None = None
    #: PEM bundle of the CA that signed the broker's certificate (default: the local stack's).
    ca_file: Path | None = None

    @field_validator("deployment_id")
    @classmethod
    def _deployment_id(cls, value: str) -> str:
        if not ID_PATTERN.fullmatch(value):
            raise ValueError(f"must match {ID_PATTERN.pattern}")
        return value

    @model_validator(mode="after")
    def _local_stack_credentials(self) -> KafkaSettings:
        if self.security_protocol is not None and self.username is None:
            return self
        found = localstack.secrets()
        if found is None or "kafka" not in found:
            if self.security_protocol is None:
                # A stack from before authentication: a principal's name alone logs nobody in.
                self.security_protocol = "SASL_SSL" if self.password is not None else "PLAINTEXT"
            return self
        if self.security_protocol is None:
            self.security_protocol = "SASL_SSL"
        if self.username is None:
            self.username = "admin"
        if self.password is None and self.username in found["kafka"]:
            self.password = SecretStr(found["kafka"][self.username])
        if self.ca_file is None and self.security_protocol in ("SSL", "SASL_SSL"):
            self.ca_file = localstack.ca_file()
        return self

    @property
    def limits(self) -> Limits:
        return Limits(max_record_bytes=self.max_record_bytes)

    @property
    def topics(self) -> Topics:
        """This deployment's topics: the prefix applied and every spec bound to ``deployment_id``."""
        return topics(self.topic_prefix, deployment=self.deployment_id)

    def ssl_context(self) -> ssl.SSLContext | None:
        if self.security_protocol not in ("SSL", "SASL_SSL"):
            return None
        context: ssl.SSLContext = create_ssl_context(
            cafile=None if self.ca_file is None else str(self.ca_file)
        )
        return context

    def connection(self) -> dict[str, Any]:
        """aiokafka's connection and authentication options."""
        options: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap,
            "client_id": self.client_id,
            "request_timeout_ms": self.request_timeout_ms,
            "security_protocol": self.security_protocol,
            "ssl_context": self.ssl_context(),
        }
        if self.security_protocol in ("SASL_PLAINTEXT", "SASL_SSL"):
            options["sasl_mechanism"] = self.sasl_mechanism
            options["sasl_plain_username"] = self.username
            options["sasl_plain_password"] = (
                None if self.password is None else self.password.get_secret_value()
            )
        return options


def _settings(settings: KafkaSettings | None) -> KafkaSettings:
    return settings if settings is not None else KafkaSettings()


def make_producer(settings: KafkaSettings | None = None, **overrides: Any) -> AIOKafkaProducer:
    """An idempotent producer (acks=all) whose request size admits one full record.

    Call ``await producer.start()`` (or use ``async with``) inside a running loop.
    """
    cfg = _settings(settings)
    options: dict[str, Any] = {
        **cfg.connection(),
        "acks": "all",
        "enable_idempotence": True,
        "max_request_size": cfg.limits.kafka_max_bytes,
        # Records are signed msgpack of mostly float data: compression costs CPU for little gain.
        "compression_type": None,
        "linger_ms": 5,
    }
    options.update(overrides)
    return AIOKafkaProducer(**options)


def make_consumer(
    settings: KafkaSettings | None,
    *topics: str,
    group_id: str | None,
    **overrides: Any,
) -> AIOKafkaConsumer:
    """A consumer that can fetch one full record per partition and commits only when told.

    Auto-commit is off because services commit offsets together with their own
    state (e.g. the aggregator's checkpoint), which is what makes them crash-safe.
    Pass no topics to ``assign()`` partitions yourself.
    """
    cfg = _settings(settings)
    fetch = cfg.limits.kafka_max_bytes
    options: dict[str, Any] = {
        **cfg.connection(),
        "group_id": group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "isolation_level": "read_committed",
        "max_partition_fetch_bytes": fetch,
        "fetch_max_bytes": max(4 * fetch, 52_428_800),
    }
    options.update(overrides)
    return AIOKafkaConsumer(*topics, **options)


def make_admin(settings: KafkaSettings | None = None) -> AIOKafkaAdminClient:
    return AIOKafkaAdminClient(**_settings(settings).connection())


async def ensure_topics(
    admin: AIOKafkaAdminClient,
    specs: Iterable[TopicSpec],
    settings: KafkaSettings | None = None,
) -> list[str]:
    """Create the topics that do not exist yet; return the names created.

    Existing topics are left as they are (changing partitions or cleanup policy
    of a live topic is an operator decision, not a startup side effect).
    ``admin`` must already be started.
    """
    cfg = _settings(settings)
    wanted = list(specs)
    if not wanted:
        return []
    new = [
        NewTopic(
            name=spec.name,
            num_partitions=spec.partitions,
            replication_factor=cfg.replication_factor,
            topic_configs=spec.configs(cfg.limits),
        )
        for spec in wanted
    ]
    response = await admin.create_topics(new)
    created: list[str] = []
    for entry in response.topic_errors:
        name, code = entry[0], entry[1]
        message = entry[2] if len(entry) > 2 else None
        if code == 0:
            created.append(name)
        elif code != _TOPIC_ALREADY_EXISTS:
            error = for_code(code)
            # Retriable as the broker's error is: a controller election passes, an invalid name does not.
            raise TopicSetupError(
                f"{error.__name__}: {message or 'no detail'}", field=name, retriable=error.retriable
            )
    return created


async def prepare_topics(
    settings: KafkaSettings | None = None, specs: Iterable[TopicSpec] | None = None
) -> list[str]:
    """``ensure_topics`` with an admin client of its own; by default every topic of the deployment.

    Every process that writes first creates the topics itself, with the partition
    counts and configs of ``qflare.protocol.topics``: a broker that auto-creates a
    topic on first use would give it the broker's defaults instead.
    """
    cfg = _settings(settings)
    admin = make_admin(cfg)
    await admin.start()
    try:
        return await ensure_topics(admin, cfg.topics if specs is None else specs, cfg)
    finally:
        await admin.close()


def partitions(*specs: TopicSpec) -> list[TopicPartition]:
    """Every partition of ``specs``, from the protocol's partition counts."""
    return [TopicPartition(spec.name, p) for spec in specs for p in range(spec.partitions)]


async def assign_from_start(consumer: AIOKafkaConsumer, *specs: TopicSpec) -> list[TopicPartition]:
    """Assign every partition of ``specs`` to a started consumer, at its first offset; returns them.

    For state rebuilt by replaying a topic (compacted device records, round
    history): no consumer group, so no committed position can skip a record.
    """
    parts = partitions(*specs)
    consumer.assign(parts)
    await consumer.seek_to_beginning(*parts)
    return parts


@asynccontextmanager
async def replay(settings: KafkaSettings | None, *specs: TopicSpec) -> AsyncIterator[AIOKafkaConsumer]:
    """A started consumer of every partition of ``specs`` from the beginning, stopped on exit."""
    consumer = make_consumer(settings, group_id=None)
    try:
        await consumer.start()
        await assign_from_start(consumer, *specs)
        yield consumer
    finally:
        await consumer.stop()


#: Fetches records of the given partitions, as ``AIOKafkaConsumer.getmany`` does.
Fetch: TypeAlias = Callable[[list[TopicPartition]], Awaitable[dict[TopicPartition, list[Record]]]]


async def read_to_end(
    consumer: AIOKafkaConsumer,
    parts: Iterable[TopicPartition] | None = None,
    *,
    max_records: int = 1000,
    timeout_ms: int = 200,
    timeout_s: float | None = None,
    fetch: Fetch | None = None,
    end: Mapping[TopicPartition, int] | None = None,
) -> AsyncIterator[Record]:
    """The records of ``parts`` (default: all assigned) up to the end offsets seen when called.

    The read ends once every partition reached those offsets, however fast the
    topic grows (the last fetch may carry a few records past them), or, quietly,
    once ``timeout_s`` passed: a view that is as complete as it could get in time.
    ``fetch`` replaces the plain ``getmany`` of the partitions still behind (for
    example ``qflare.poison.fetch``, which turns positions that left the log into gaps).
    ``end`` gives the end offsets instead (e.g. asked of a client that is not fetching: a
    consumer's own ``end_offsets`` queues behind its long-polling fetch of an idle topic).
    """
    wanted = list(consumer.assignment()) if parts is None else list(parts)
    if end is None:
        end = await consumer.end_offsets(wanted)
    loop = asyncio.get_running_loop()
    deadline = None if timeout_s is None else loop.time() + timeout_s
    while behind := [tp for tp in wanted if await consumer.position(tp) < end[tp]]:
        if deadline is not None and loop.time() > deadline:
            return
        if fetch is None:
            batches = await consumer.getmany(*behind, timeout_ms=timeout_ms, max_records=max_records)
        else:
            batches = await fetch(behind)
        for records in batches.values():
            for record in records:
                yield record
