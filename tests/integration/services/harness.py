"""Run the real registry as a process and drive devices against it, for integration tests."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka import TopicPartition
from aiokafka.admin import RecordsToDelete

from edge.link import Link
from edge.runtime import DeviceConfig, DeviceRuntime, load_or_create_key
from edge.spool import Spool
from qflare.children import ServiceProcess
from qflare.crypto import KeyFile
from qflare.errors import ProtocolError
from qflare.identity import trusted_ring
from qflare.kafka import KafkaSettings, make_admin, make_consumer, make_producer, partitions, replay
from qflare.operator import FleetView, read_fleet
from qflare.protocol import Body, Channel, Decoder, KeyRing
from qflare.protocol.control import AuditEvent
from qflare.protocol.topics import Topics, TopicSpec
from tests.integration.services.processes import ManagedService, scrape


@dataclass
class RegistryProcess(ManagedService):
    """``python -m services.registry`` with its own topics, group, Redis namespace and keys."""

    service = "registry"

    kafka: KafkaSettings
    keys_dir: Path
    log_path: Path
    stale_after_s: float = 1.5
    offline_after_s: float = 3.0
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
            "QFLARE_REGISTRY_KEYS_DIR": str(self.keys_dir),
            "QFLARE_REGISTRY_GROUP_ID": f"registry-{self.kafka.topic_prefix}",
            "QFLARE_REGISTRY_STALE_AFTER_S": str(self.stale_after_s),
            "QFLARE_REGISTRY_OFFLINE_AFTER_S": str(self.offline_after_s),
            "QFLARE_REGISTRY_SWEEP_INTERVAL_S": "0.25",
        }

    def metric(self, name: str, **labels: str) -> float:
        return scrape(self.metrics_port, name, **labels)


@dataclass
class Fleet:
    """Devices sharing one link (as the simulator does), each with its own key."""

    kafka: KafkaSettings
    state_dir: Path
    heartbeat_interval_s: float = 0.5
    devices: dict[str, DeviceRuntime] = field(default_factory=dict)
    tasks: dict[str, asyncio.Task[None]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.topics: Topics = self.kafka.topics
        self.spool = Spool(self.state_dir / "fleet.spool")
        self.link = Link(self.spool, lambda: make_producer(self.kafka, request_timeout_ms=5000))

    def add(
        self,
        device_id: str,
        token: str | None,
        *,
        key: KeyFile | None = None,
        num_examples: int | None = None,
    ) -> DeviceRuntime:
        """A device; ``num_examples`` is the dataset size it declares at enrolment."""
        key = key or load_or_create_key(self.state_dir / "keys" / f"{device_id}.key")
        cfg = DeviceConfig(
            device_id,
            token,
            {"hardware": "test"},
            self.heartbeat_interval_s,
            scope=self.kafka.deployment_id,
            num_examples=num_examples,
        )
        device = DeviceRuntime(cfg, key, self.link, self.topics)
        self.devices[device_id] = device
        return device

    def devices_keyring(self) -> KeyRing:
        ring = KeyRing()
        for device_id, device in self.devices.items():
            ring.add(device_id, device.key.public_key)
        return ring

    def run(self, device_id: str) -> None:
        self.tasks[device_id] = asyncio.create_task(self.devices[device_id].run())

    def kill(self, device_id: str) -> None:
        self.devices[device_id].alive = False
        self.tasks.pop(device_id).cancel()

    async def close(self) -> None:
        for task in self.tasks.values():
            task.cancel()
        await self.link.stop()
        self.spool.close()


def channel_for(t: Topics, body: Body) -> Channel:
    """The channel of the one topic that carries ``body``'s type: what a test record is signed for."""
    (spec,) = [s for s in t if body.TYPE in s.types]
    return spec.channel


async def read_topic(
    kafka: KafkaSettings,
    spec: TopicSpec,
    keys: Any,
    *,
    until: Callable[[list[Any]], bool],
    timeout_s: float = 60,
    types: set[str] | None = None,
) -> list[Any]:
    """Decode (and verify) every record of ``spec`` from the start until ``until(bodies)`` holds."""
    decoder = Decoder(keys, deployment=kafka.deployment_id, allowed_types=types, max_age_ms=None)
    bodies: list[Any] = []
    async with replay(kafka, spec) as consumer:
        deadline = time.monotonic() + timeout_s
        while not until(bodies):
            if time.monotonic() > deadline:
                raise AssertionError(f"condition on {spec.name} not met in {timeout_s} s; saw {len(bodies)}")
            for records in (await consumer.getmany(timeout_ms=200)).values():
                for record in records:
                    if record.value is None:
                        continue
                    try:
                        bodies.append(decoder.decode(record.value, record.topic).body)
                    except ProtocolError as exc:
                        bodies.append(exc)
    return bodies


async def audit_events(
    kafka: KafkaSettings, keys_dir: Path, until: Callable[[list[AuditEvent]], bool], timeout_s: float = 60
) -> list[AuditEvent]:
    t = kafka.topics
    bodies = await read_topic(
        kafka,
        t.audit,
        trusted_ring(keys_dir),
        until=lambda got: until([b for b in got if isinstance(b, AuditEvent)]),
        timeout_s=timeout_s,
    )
    return [b for b in bodies if isinstance(b, AuditEvent)]


async def delete_to_end(kafka: KafkaSettings, spec: TopicSpec) -> dict[TopicPartition, int]:
    """Delete every record of ``spec`` now in Kafka (deleteRecords); returns each partition's end."""
    probe = make_consumer(kafka, group_id=None)
    await probe.start()
    try:
        ends: dict[TopicPartition, int] = await probe.end_offsets(partitions(spec))
    finally:
        await probe.stop()
    admin = make_admin(kafka)
    await admin.start()
    try:
        await admin.delete_records(
            {tp: RecordsToDelete(end) for tp, end in ends.items() if end}, timeout_ms=30_000
        )
    finally:
        await admin.close()
    return ends


async def fleet_state(
    kafka: KafkaSettings, keys_dir: Path, check: Callable[[FleetView], bool], timeout_s: float = 60
) -> FleetView:
    """The fleet as the operator reads it, once ``check`` holds for it (a device it names may not
    be there yet: a ``KeyError`` means "not yet"); ``AssertionError`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        view = await read_fleet(kafka, keys_dir)
        try:
            if check(view):
                return view
        except KeyError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"fleet state not reached in {timeout_s} s: {sorted(view.devices)}")
        await asyncio.sleep(0.5)


async def send_records(kafka: KafkaSettings, topic: str, key: str, *values: bytes | None) -> None:
    """Produce ``values`` to ``topic`` under ``key``, in order, as raw bytes (``None``: a tombstone)."""
    producer = make_producer(kafka)
    await producer.start()
    try:
        for value in values:
            await producer.send_and_wait(topic, value, key=key.encode())
    finally:
        await producer.stop()
