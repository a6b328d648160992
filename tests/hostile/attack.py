"""The attacker: enrols a device of its own, reads what is on the topics, then sends hostile records.

It holds what the issue's threat model grants: an enrolled device (never
selected: it sends no heartbeat), the trusted service keys (to sign commands as
the wrong sender), and read/write access to every topic on the broker.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

from edge.runtime import enrolment
from qflare import operator
from qflare.crypto import generate_key
from qflare.errors import ProtocolError, StackError
from qflare.identity import Identity, TrustedKeys, load_identity
from qflare.kafka import KafkaSettings, make_consumer, make_producer, partitions, read_to_end
from qflare.protocol import Decoder
from qflare.protocol.devices import Device
from tests.hostile.kinds import FLOOD_ALLOWANCE, Arsenal, Hostile, build
from tests.hostile.sealing import sign
from tests.hostile.targets import Target, targets

#: Enrolment tokens spent on validly signed enrolments whose labels carry NUL.
NUL_ENROLMENTS = 4
_SERVICES = ("registry", "scheduler", "aggregator", "audit", "operator")


@dataclass
class AttackConfig:
    total: int = 10_500
    #: Records per second; the attack is spread over the job rather than burst at its start.
    rate: float = 250.0
    seed: int = 0
    #: Only these kinds (None: every kind), to find which kind stops which service.
    kinds: frozenset[str] | None = None
    #: Most seconds to wait for the registry to enrol the attacker's device.
    enrol_timeout_s: float = 120.0


@dataclass
class Attack:
    kafka: KafkaSettings
    keys_dir: Path
    job_id: str
    victims: list[str]
    cfg: AttackConfig
    #: Called with (records sent so far, records planned).
    progress: Callable[[int, int], None] = lambda done, total: None
    sent: Counter[tuple[str, str]] = field(default_factory=Counter)
    failed: Counter[tuple[str, str]] = field(default_factory=Counter)
    records: list[Hostile] = field(default_factory=list)
    #: The records the broker acknowledged.
    delivered: list[Hostile] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.topics = self.kafka.topics
        self.targets: list[Target] = targets(self.topics, self.kafka.topic_prefix)
        self.attacker_id = f"evil-{uuid.uuid4().hex[:6]}"
        self.attacker = generate_key()
        self.tokens: list[str] = []

    # -- before the job starts --------------------------------------------------
    async def enrol(self, ops: Identity) -> None:
        """Enrol the attacker's device like any other (a valid token), and keep spare tokens."""
        tokens = await operator.issue_tokens(
            self.kafka, ops, 1 + NUL_ENROLMENTS, 3600, {"hostile": self.attacker_id}, keys_dir=self.keys_dir
        )
        self.tokens = tokens[1:]
        body = enrolment(self.attacker_id, self.attacker.public_key, tokens[0], self.kafka.deployment_id)
        name = self.topics.enrollments.name
        record = sign(body, self.attacker.signer(), sender=self.attacker_id, topic=name)
        producer = make_producer(self.kafka)
        await producer.start()
        try:
            await producer.send_and_wait(name, record, key=self.attacker_id.encode())
        finally:
            await producer.stop()
        await self._wait_enrolled()

    async def _wait_enrolled(self) -> None:
        decoder = Decoder(
            TrustedKeys(self.keys_dir),
            deployment=self.kafka.deployment_id,
            allowed_types={"device"},
            max_age_ms=None,
        )
        consumer = make_consumer(self.kafka, group_id=None, auto_offset_reset="earliest")
        await consumer.start()
        try:
            consumer.subscribe([self.topics.devices.name])
            deadline = time.monotonic() + self.cfg.enrol_timeout_s
            while time.monotonic() < deadline:
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    for record in records:
                        if record.value is None:
                            continue
                        try:
                            msg = decoder.decode(record.value, record.topic)
                        except ProtocolError:
                            continue
                        if isinstance(msg.body, Device) and msg.body.device_id == self.attacker_id:
                            return
        finally:
            await consumer.stop()
        raise StackError("hostile", f"the registry did not enrol {self.attacker_id}")

    # -- while the job runs -----------------------------------------------------
    async def run(self) -> None:
        """Read what is on every topic, build the hostile records, and send them at the set rate."""
        harvest = await self._harvest()
        services = {name: load_identity(name, self.keys_dir, create=False) for name in _SERVICES}
        arsenal = Arsenal(
            self.targets,
            self.job_id,
            self.victims,
            self.attacker_id,
            self.attacker.signer(),
            self.tokens,
            services,
            harvest,
        )
        rng = random.Random(self.cfg.seed)
        # Signing a thousand records takes seconds: off the loop, so the job's progress is still read.
        records = await asyncio.to_thread(build, arsenal, self.cfg.total, rng)
        self.records = [h for h in records if self.cfg.kinds is None or h.kind in self.cfg.kinds]
        await self._send()

    async def _harvest(self) -> dict[str, list[tuple[bytes | None, bytes]]]:
        consumer = make_consumer(self.kafka, group_id=None)
        await consumer.start()
        out: dict[str, list[tuple[bytes | None, bytes]]] = {}
        try:
            # The first round task is worth replaying: wait (briefly) until the scheduler sent it.
            rounds = partitions(self.topics.rounds)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not sum((await consumer.end_offsets(rounds)).values()):
                await asyncio.sleep(1.0)
            parts = [TopicPartition(t.name, p) for t in self.targets for p in range(t.partitions)]
            known = set(await consumer.topics())
            parts = [tp for tp in parts if tp.topic in known]
            consumer.assign(parts)
            await consumer.seek_to_beginning(*parts)
            async for record in read_to_end(consumer, parts, timeout_s=30):
                if record.value is not None:
                    out.setdefault(record.topic, []).append((record.key, record.value))
        finally:
            await consumer.stop()
        return out

    async def _send(self) -> None:
        producer = make_producer(self.kafka)
        await producer.start()
        began = time.monotonic()
        try:
            for start in range(0, len(self.records), 50):
                batch = self.records[start : start + 50]
                futures = []
                for h in batch:
                    try:
                        futures.append((h, await producer.send(h.target.name, h.value, key=h.key)))
                    except KafkaError:
                        self.failed[(h.target.role, h.kind)] += 1
                for h, fut in futures:
                    try:
                        await fut
                        self.sent[(h.target.role, h.kind)] += 1
                        self.delivered.append(h)
                    except KafkaError:
                        self.failed[(h.target.role, h.kind)] += 1
                done = start + len(batch)
                self.progress(done, len(self.records))
                ahead = done / self.cfg.rate - (time.monotonic() - began)
                if ahead > 0:
                    await asyncio.sleep(ahead)
        finally:
            await producer.stop()

    def expected(self) -> Counter[tuple[str, str]]:
        """(service, topic role) -> records sent there that the service must count as rejected."""
        out: Counter[tuple[str, str]] = Counter()
        for h in self.delivered:
            for service in h.judges & h.target.counted_by:
                out[(service, h.target.role)] += 1
        # The first few flood streams are legitimately held open, not refused.
        if any(h.kind == "chunk_flood" for h in self.delivered):
            out[("aggregator", "updates")] = max(0, out[("aggregator", "updates")] - FLOOD_ALLOWANCE)
        return out
