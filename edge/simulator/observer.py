"""What the simulator shows: the fleet as the registry published it, and the registry's lag.

Reads the compacted device topic and the health topic (no consumer group, from
the beginning), verifying the registry's signatures, and measures the registry
consumer group's lag on the enrolment and heartbeat topics.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from aiokafka import AIOKafkaConsumer

from qflare import poison
from qflare.errors import ProtocolError
from qflare.kafka import KafkaSettings, assign_from_start, make_admin, make_consumer, partitions
from qflare.keys import Revisions, refuse_tombstone
from qflare.protocol import Decoder, KeyRing
from qflare.protocol.devices import Device, DeviceHealth


class FleetObserver:
    def __init__(
        self, kafka: KafkaSettings, registry_keys: KeyRing, *, device_prefix: str, registry_group: str
    ):
        self.kafka = kafka
        self.topics = kafka.topics
        self.prefix = device_prefix
        self.group = registry_group
        self.decoder = Decoder(
            registry_keys,
            deployment=kafka.deployment_id,
            allowed_types={"device", "device_health"},
            max_age_ms=None,
        )
        self.status: dict[str, str] = {}
        self.revisions = Revisions()
        self.health: dict[str, str] = {}
        self.rejected = 0
        self.lag_max = 0
        self.lag_now = 0

    async def start(self) -> None:
        self.consumer: AIOKafkaConsumer = make_consumer(self.kafka, group_id=None)
        await self.consumer.start()
        # Topics are created by the services with these partition counts (qflare.protocol.topics).
        await assign_from_start(self.consumer, self.topics.devices, self.topics.health)
        self.admin = make_admin(self.kafka)
        await self.admin.start()
        self.lag_consumer = make_consumer(self.kafka, group_id=None)
        await self.lag_consumer.start()

    async def stop(self) -> None:
        await self.consumer.stop()
        await self.lag_consumer.stop()
        await self.admin.close()

    async def poll(self) -> None:
        batches = await self.consumer.getmany(timeout_ms=200, max_records=5000)
        for records in batches.values():
            for record in records:
                try:
                    self._apply(record.value, record.topic)
                except Exception as exc:  # whatever a record holds, the observer goes on (qflare.poison)
                    if poison.retry(exc):
                        raise
                    self.rejected += 1

    def _apply(self, value: bytes | None, topic: str) -> None:
        try:
            if value is None:
                refuse_tombstone(None)  # unsigned: the device keeps its status
            body = self.decoder.decode(value, topic).body
            if isinstance(body, Device) and not self.revisions.admit(body):
                return  # the same state re-sent
        except ProtocolError:
            self.rejected += 1
            return
        if isinstance(body, Device) and body.device_id.startswith(self.prefix):
            if body.status == "deleted":
                self.status.pop(body.device_id, None)
            else:
                self.status[body.device_id] = body.status
        elif isinstance(body, DeviceHealth) and body.device_id.startswith(self.prefix):
            self.health[body.device_id] = body.state

    async def measure_lag(self) -> int:
        """Records the registry group has not yet committed, over its input topics."""
        offsets: dict[Any, Any] = await self.admin.list_consumer_group_offsets(self.group)
        ends = await self.lag_consumer.end_offsets(
            partitions(self.topics.enrollments, self.topics.heartbeats)
        )
        lag = int(sum(end - (offsets[tp].offset if tp in offsets else 0) for tp, end in ends.items()))
        self.lag_now = lag
        self.lag_max = max(self.lag_max, lag)
        return lag

    def counts(self) -> dict[str, int]:
        by_status = Counter(self.status.values())
        active = [d for d, s in self.status.items() if s == "active"]
        by_health = Counter(self.health.get(d, "unknown") for d in active)
        return {
            "enrolled": len(self.status),
            "active": by_status.get("active", 0),
            "revoked": by_status.get("revoked", 0),
            "deregistered": by_status.get("deregistered", 0),
            "online": by_health.get("online", 0),
            "stale": by_health.get("stale", 0),
            "offline": by_health.get("offline", 0),
        }


async def wait_until(predicate: Any, observer: FleetObserver, timeout_s: float) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline:
        await observer.poll()
        if predicate(observer.counts()):
            return True
    return False
