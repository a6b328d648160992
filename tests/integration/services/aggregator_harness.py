"""Run the real aggregator as a process and play the registry, scheduler, operator and devices around it.

Every stand-in signs with a key of its own in the test's keys directory, so the
aggregator trusts the registry, scheduler and operator exactly as it would in
production (``<keys_dir>/trusted/*.pub``) and knows device keys only from the
device records published here.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from aiokafka import AIOKafkaProducer
from numpy.typing import NDArray

from qflare.children import ServiceProcess
from qflare.crypto import KeyFile, Signer, generate_key
from qflare.errors import ProtocolError
from qflare.identity import Identity, TrustedKeys, load_identity
from qflare.kafka import KafkaSettings, make_producer, prepare_topics, replay
from qflare.ml import init_weights, tensor_names
from qflare.protocol import Channel, Decoder, Reassembler, Tensor, seal, seal_chunked
from qflare.protocol.control import AuditEvent, JobCommand
from qflare.protocol.devices import DECLARED_EXAMPLES_LABEL, Device
from qflare.protocol.training import GlobalModel, ModelUpdate, RoundComplete, RoundFailure, RoundTask
from qflare.types import Scalar
from tests.integration.services.harness import audit_events, channel_for, read_topic
from tests.integration.services.processes import ManagedService, scrape

JOB_CONFIG: dict[str, Any] = {
    "model": "builtin:2nn",
    "strategy": {"name": "fedavg"},
    "rounds": 5,
    "fraction": 1.0,
    "min_clients": 2,
    "deadline_s": 30.0,
    "epochs": 1,
    "batch_size": 10,
    "lr": 0.05,
    "seed": 7,
    "dataset": "mnist",
}
#: The dataset size a stand-in device declares unless told otherwise: above every claim the tests
#: make, and the same for all, so the cap (3 × the median) never binds and weights are the claims.
DECLARED = 1_000_000


@dataclass
class AggregatorProcess(ManagedService):
    """``python -m services.aggregator`` with its own topics and keys (PostgreSQL is shared)."""

    service = "aggregator"

    kafka: KafkaSettings
    keys_dir: Path
    log_path: Path
    eval_examples: int = 500
    #: /metrics and /healthz (the readiness probe); 0: any free port, read back once started.
    metrics_port: int = 0
    proc: ServiceProcess | None = None
    starts: int = 0

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "QFLARE_KAFKA_TOPIC_PREFIX": self.kafka.topic_prefix,
            "QFLARE_KAFKA_DEPLOYMENT_ID": self.kafka.deployment_id,
            "QFLARE_KAFKA_BOOTSTRAP": self.kafka.bootstrap,
            "QFLARE_AGGREGATOR_KEYS_DIR": str(self.keys_dir),
            "QFLARE_AGGREGATOR_EVAL_EXAMPLES": str(self.eval_examples),
            "QFLARE_AGGREGATOR_DEADLINE_TICK_S": "0.2",
        }

    def metric(self, name: str, **labels: str) -> float:
        return scrape(self.metrics_port, name, **labels)


@dataclass
class SimDevice:
    device_id: str
    key: KeyFile
    signer: Signer
    #: The updates topic its records are signed for.
    channel: Channel

    def update(
        self,
        job_id: str,
        round: int,
        base_version: int,
        weights: Sequence[NDArray[Any]],
        num_examples: int,
        *,
        loss: float = 0.5,
        names: Sequence[str] | None = None,
        chunk_bytes: int | None = None,
        metrics: dict[str, float] | None = None,
    ) -> list[bytes]:
        """The signed record(s) of one update (several when ``chunk_bytes`` splits it); ``metrics``
        are added to its training loss."""
        names = names or tensor_names("2nn")
        tensors = tuple(Tensor.of(n, w) for n, w in zip(names, weights, strict=True))
        body = ModelUpdate(
            job_id,
            round,
            self.device_id,
            base_version,
            num_examples,
            tensors,
            {"loss": loss, **(metrics or {})},
        )
        return seal_chunked(
            body, self.signer, self.channel, sender=self.device_id, round=round, chunk_bytes=chunk_bytes
        )

    def evaluation_reply(
        self, job_id: str, round: int, version: int, metrics: dict[str, float]
    ) -> list[bytes]:
        """The signed reply to an evaluation-only round: no weights, the evaluation in ``metrics``."""
        body = ModelUpdate(job_id, round, self.device_id, version, 0, (), metrics)
        return seal_chunked(body, self.signer, self.channel, sender=self.device_id, round=round)

    def failure(self, job_id: str, round: int, base_version: int, reason: str, message: str) -> bytes:
        """The signed failed reply of a device that could not train for the round."""
        body = RoundFailure(job_id, round, self.device_id, base_version, reason, message)
        return seal(body, self.signer, self.channel, sender=self.device_id, round=round)


@dataclass
class ControlPlane:
    """The registry, scheduler and operator as far as the aggregator sees them: signed records."""

    kafka: KafkaSettings
    keys_dir: Path
    identities: dict[str, Identity] = field(default_factory=dict)
    #: The last revision published per device.
    revisions: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.topics = self.kafka.topics
        for name in ("registry", "scheduler", "operator"):
            self.identities[name] = load_identity(name, self.keys_dir, create=True)

    async def start(self) -> None:
        await prepare_topics(self.kafka)
        self.producer: AIOKafkaProducer = make_producer(self.kafka)
        await self.producer.start()

    async def stop(self) -> None:
        await self.producer.stop()

    def _seal(self, who: str, body: Any, round: int | None = None) -> bytes:
        identity = self.identities[who]
        return seal(body, identity.signer, channel_for(self.topics, body), sender=identity.name, round=round)

    async def send(self, topic: str, key: str, *records: bytes) -> None:
        for record in records:
            await self.producer.send_and_wait(topic, record, key=key.encode())

    async def device(
        self,
        device_id: str,
        status: str = "active",
        key: KeyFile | None = None,
        *,
        sender: str = "registry",
        revision: int | None = None,
        declared: int | None = DECLARED,
    ) -> SimDevice:
        """Publish the registry's record of a device (with a fresh key unless given); each record
        of a device gets the next revision unless one is given, as the registry's would. It declares
        ``declared`` examples (label ``qflare.num_examples``; None: no label)."""
        key = key or generate_key()
        now = int(time.time() * 1000)
        revision = revision or self.revisions.get(device_id, 0) + 1
        self.revisions[device_id] = max(revision, self.revisions.get(device_id, 0))
        labels = {} if declared is None else {DECLARED_EXAMPLES_LABEL: str(declared)}
        record = Device(device_id, status, key.public_key, now, now, revision=revision, labels=labels)
        await self.send(self.topics.devices.name, device_id, self._seal(sender, record))
        return SimDevice(device_id, key, key.signer(), self.topics.updates.channel)

    async def start_job(self, job_id: str, *, sender: str = "operator", **overrides: Any) -> None:
        command = JobCommand(job_id, "start", {**JOB_CONFIG, **overrides})
        await self.send(self.topics.jobs.name, job_id, self._seal(sender, command))

    async def command(self, job_id: str, command: str) -> None:
        """``pause``, ``resume`` or ``stop`` a job, as the operator."""
        await self.send(
            self.topics.jobs.name, job_id, self._seal("operator", JobCommand(job_id, command, {}))
        )

    async def open_round(
        self,
        job_id: str,
        round: int,
        model_version: int,
        devices: Sequence[str],
        *,
        deadline_s: float = 60.0,
        min_updates: int = 1,
        sender: str = "scheduler",
        fencing_token: int = 1,
        config: dict[str, Scalar] | None = None,
        strategy: str = "fedavg",
    ) -> RoundTask:
        deadline_ms = int((time.time() + deadline_s) * 1000)
        task = RoundTask(
            job_id,
            round,
            model_version,
            strategy,
            tuple(devices),
            deadline_ms,
            min_updates,
            fencing_token,
            config or {},
        )
        await self.send(self.topics.rounds.name, f"{job_id}:{round}", self._seal(sender, task, round))
        return task


def perturbed(seed: int, scale: float = 0.01, model: str = "2nn") -> list[NDArray[np.float32]]:
    """Version 0 of a job with ``seed=JOB_CONFIG['seed']``, plus noise: a plausible trained update."""
    rng = np.random.default_rng(seed)
    base = init_weights(model, JOB_CONFIG["seed"])
    return [(w + rng.normal(0, scale, w.shape)).astype(np.float32) for w in base]


async def round_results(
    kafka: KafkaSettings, keys_dir: Path, until: Callable[[list[RoundComplete]], bool], timeout_s: float = 90
) -> list[RoundComplete]:
    t = kafka.topics
    bodies = await read_topic(
        kafka,
        t.rounds_complete,
        TrustedKeys(keys_dir),
        until=lambda got: until([b for b in got if isinstance(b, RoundComplete)]),
        timeout_s=timeout_s,
    )
    return [b for b in bodies if isinstance(b, RoundComplete)]


async def global_model(
    kafka: KafkaSettings, keys_dir: Path, job_id: str, version: int, timeout_s: float = 60
) -> GlobalModel:
    """Read (and verify, and reassemble) one version of a job's model from the models topic."""
    t = kafka.topics
    decoder = Decoder(
        TrustedKeys(keys_dir), deployment=kafka.deployment_id, allowed_types=t.models.types, max_age_ms=None
    )
    reassembler = Reassembler(decoder)
    async with replay(kafka, t.models) as consumer:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=200)).values():
                for record in records:
                    try:
                        whole = reassembler.feed(decoder.decode(record.value, record.topic))
                    except ProtocolError:
                        continue
                    body = None if whole is None else whole.body
                    if isinstance(body, GlobalModel) and body.job_id == job_id and body.version == version:
                        return body
    raise AssertionError(f"model {job_id} v{version} not published within {timeout_s} s")


async def rejections(
    kafka: KafkaSettings, keys_dir: Path, until: Callable[[dict[str, list[AuditEvent]]], bool]
) -> dict[str, list[AuditEvent]]:
    """The aggregator's ``update.rejected`` events, by reason, once ``until`` holds."""

    def by_reason(events: list[AuditEvent]) -> dict[str, list[AuditEvent]]:
        out: dict[str, list[AuditEvent]] = {}
        for e in events:
            if e.source == "aggregator" and e.event == "update.rejected":
                out.setdefault(e.reason, []).append(e)
        return out

    return by_reason(await audit_events(kafka, keys_dir, lambda ev: until(by_reason(ev))))
