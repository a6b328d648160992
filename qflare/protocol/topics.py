"""Every Kafka topic, its key, partitions, retention, compaction and allowed message types.

This is the single list: services, ``ensure_topics`` and docs/asyncapi.yaml all
follow it. ``topics(prefix, deployment=...)`` renames every topic at once so
tests and parallel stacks can run against one broker without sharing topics,
and gives each spec the ``Channel`` its records are signed for.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, fields, replace

from qflare.errors import ConfigError
from qflare.protocol.channel import DEFAULT_DEPLOYMENT, Channel, check_deployment
from qflare.protocol.limits import DEFAULT_LIMITS, Limits

_MINUTE = 60_000
_HOUR = 60 * _MINUTE
_DAY = 24 * _HOUR


@dataclass(frozen=True, slots=True)
class TopicSpec:
    name: str
    #: What the Kafka record key is (UTF-8 string).
    key: str
    partitions: int
    #: None keeps records forever (compacted topics keep the latest per key).
    retention_ms: int | None
    compacted: bool
    #: Envelope ``type`` values a consumer of this topic accepts.
    types: frozenset[str]
    #: Suggested ``Decoder(max_age_ms=...)``: None where old records are normal
    #: (compacted topics are replayed from the start; histories are re-read).
    max_age_ms: int | None
    description: str
    #: The deployment id every record of this topic is signed for.
    deployment: str = DEFAULT_DEPLOYMENT

    @property
    def channel(self) -> Channel:
        """What a record produced to this topic is signed for: pass it to ``seal``."""
        return Channel(self.deployment, self.name)

    def configs(self, limits: Limits = DEFAULT_LIMITS) -> dict[str, str]:
        """Topic-level Kafka configs for creation."""
        return {
            "cleanup.policy": "compact" if self.compacted else "delete",
            "retention.ms": str(-1 if self.retention_ms is None else self.retention_ms),
            "max.message.bytes": str(limits.kafka_max_bytes),
        }


def _spec(
    name: str,
    *,
    key: str,
    partitions: int,
    retention_ms: int | None,
    types: set[str],
    max_age_ms: int | None,
    description: str,
    compacted: bool = False,
) -> TopicSpec:
    return TopicSpec(
        name=name,
        key=key,
        partitions=partitions,
        retention_ms=retention_ms,
        compacted=compacted,
        types=frozenset(types),
        max_age_ms=max_age_ms,
        description=description,
    )


@dataclass(frozen=True, slots=True)
class Topics:
    """All topics of one deployment. Iterate to get every ``TopicSpec``."""

    enrollments: TopicSpec
    enrollment_results: TopicSpec
    heartbeats: TopicSpec
    devices: TopicSpec
    health: TopicSpec
    rounds: TopicSpec
    models: TopicSpec
    updates: TopicSpec
    rounds_complete: TopicSpec
    audit: TopicSpec
    audit_heads: TopicSpec
    jobs: TopicSpec
    registry_control: TopicSpec
    model_store: TopicSpec

    def __iter__(self) -> Iterator[TopicSpec]:
        for f in fields(self):
            yield getattr(self, f.name)

    def by_name(self, name: str) -> TopicSpec:
        for spec in self:
            if spec.name == name:
                return spec
        raise ConfigError(f"no topic named {name!r}", field="topic")


def topics(prefix: str = "", *, deployment: str) -> Topics:
    """The topic set of ``deployment``, each name prefixed with ``prefix`` (e.g. ``"test-1a2b."``)."""
    check_deployment(deployment)
    base = Topics(
        enrollments=_spec(
            "qflare.device.enrollments",
            key="device_id",
            partitions=3,
            retention_ms=7 * _DAY,
            types={"enrollment", "deregistration"},
            max_age_ms=10 * _MINUTE,
            description="Devices ask to join (self-signed) or to leave.",
        ),
        enrollment_results=_spec(
            "qflare.device.enrollment.results",
            key="device_id",
            partitions=3,
            retention_ms=7 * _DAY,
            types={"enrollment_result"},
            # None: a device matches its result by the enrolment's id, and one whose clock
            # is wrong must still be able to read the ``stale`` result that tells it so.
            max_age_ms=None,
            description="The registry's signed answer to each enrolment: accepted, or rejected with "
            "its reason. Readable by every device, so it carries nothing secret.",
        ),
        heartbeats=_spec(
            "qflare.device.heartbeats",
            key="device_id",
            partitions=6,
            retention_ms=_DAY,
            types={"heartbeat"},
            max_age_ms=10 * _MINUTE,
            description="Periodic liveness and load from each device.",
        ),
        devices=_spec(
            "qflare.devices",
            key="device_id",
            partitions=3,
            retention_ms=None,
            compacted=True,
            types={"device"},
            max_age_ms=None,
            description="Registry's current record per device, with its public key; every key cache is "
            "built from it. A null value (tombstone) deletes the device.",
        ),
        health=_spec(
            "qflare.device.health",
            key="device_id",
            partitions=3,
            retention_ms=_DAY,
            types={"device_health"},
            max_age_ms=10 * _MINUTE,
            description="Online/stale/offline transitions derived from heartbeats.",
        ),
        rounds=_spec(
            "qflare.rounds",
            key="<job_id>:<round>",
            partitions=3,
            retention_ms=7 * _DAY,
            types={"round_task"},
            max_age_ms=_HOUR,
            description="The scheduler opens rounds: selected devices, deadline, quorum, config.",
        ),
        models=_spec(
            "qflare.models",
            key="<job_id>:<chunk index> (0 when unchunked)",
            partitions=3,
            retention_ms=None,
            compacted=True,
            types={"model", "model_chunk"},
            max_age_ms=None,
            description="Global model versions. Compaction keeps the latest record per key, so each chunk "
            "position has its own key and a new version overwrites the previous one slice by slice.",
        ),
        updates=_spec(
            "qflare.updates",
            key="device_id",
            partitions=6,
            retention_ms=3 * _DAY,
            types={"model_update", "model_chunk", "round_failure"},
            max_age_ms=_HOUR,
            description=(
                "Devices' trained weights, chunked when large (chunks of one update share a key), "
                "and their failed replies."
            ),
        ),
        rounds_complete=_spec(
            "qflare.rounds.complete",
            key="job_id",
            # One partition: the scheduler's round-progress table is co-partitioned
            # with it and with the (single-partition) job control topic.
            partitions=1,
            retention_ms=30 * _DAY,
            types={"round_complete"},
            max_age_ms=None,
            description="The aggregator closes a round and names the new model version.",
        ),
        audit=_spec(
            "qflare.audit.events",
            key="source",
            partitions=3,
            retention_ms=30 * _DAY,
            types={"audit_event"},
            max_age_ms=None,
            description="Rejections and security events from every service.",
        ),
        audit_heads=_spec(
            "qflare.audit.heads",
            key='stream (the topic prefix; "-" for none)',
            partitions=1,
            retention_ms=None,
            compacted=True,
            types={"audit_head"},
            max_age_ms=None,
            description="The audit service's signed chain heads (last seq and hash). Compaction keeps the "
            "latest, so a verifier can tell a truncated or emptied chain from a short one.",
        ),
        jobs=_spec(
            "qflare.control.jobs",
            key="job_id",
            partitions=1,
            retention_ms=30 * _DAY,
            types={"job_command"},
            max_age_ms=_DAY,
            description="Operator commands: start, pause, resume or stop a job.",
        ),
        registry_control=_spec(
            "qflare.control.registry",
            key="command",
            partitions=1,
            retention_ms=30 * _DAY,
            types={"registry_command"},
            max_age_ms=_DAY,
            description="Operator commands to the registry: issue enrolment tokens, revoke a device, "
            "authorise a key rotation. Signed with operator keys the registry trusts.",
        ),
        model_store=_spec(
            "qflare.model_store",
            key="<name>@<version>:<chunk index> (0 when unchunked)",
            partitions=1,
            retention_ms=None,
            compacted=True,
            types={"stored_model", "model_chunk"},
            max_age_ms=None,
            description="Models imported by an operator, for the aggregator's model store. Each chunk "
            "position has its own key, so compaction keeps every slice of every version.",
        ),
    )
    return Topics(*(replace(spec, name=prefix + spec.name, deployment=deployment) for spec in base))
