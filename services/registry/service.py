"""The registry's consumer loop, top to bottom.

Reads enrolments, heartbeats and signed commands (``commands.py``); keeps devices in
PostgreSQL and liveness in Redis; publishes device records (compacted topic)
and health transitions, and reads the device topic back (``watch.py``).
Offsets are committed only after a batch's effects are durable, and every
handler is idempotent, so a kill -9 at any point replays a few records
harmlessly: no accepted enrolment is lost and none is duplicated.
"""

from __future__ import annotations

import asyncio
from contextlib import nullcontext
from typing import Any

import redis.asyncio as aioredis
import structlog
from aiokafka import ConsumerRecord

from qflare import metrics, poison
from qflare.authority import authorise
from qflare.clock import now_ms
from qflare.errors import Rejected, UnknownKeyError, is_transient
from qflare.identity import TrustedKeys, load_identity
from qflare.kafka import KafkaSettings, make_consumer, make_producer, prepare_topics
from qflare.keys import DeviceKeys
from qflare.protocol import Decoder, Message
from qflare.protocol.control import RegistryCommand
from qflare.protocol.devices import Deregistration, DeviceHealth, Enrollment, Heartbeat
from qflare.reasons import Reason
from qflare.runner import BatchLoop
from qflare.tracing import process_span
from services.registry.commands import Commands
from services.registry.config import RegistrySettings
from services.registry.liveness import Liveness
from services.registry.publisher import SERVICE, Publisher
from services.registry.results import Results
from services.registry.store import DeviceRow, EnrolmentClaim, RegistryStore
from services.registry.watch import DeviceTopicWatch

log = structlog.get_logger("qflare.registry")


class RegistryService(BatchLoop):
    def __init__(self, cfg: RegistrySettings | None = None, kafka: KafkaSettings | None = None) -> None:
        super().__init__()
        self.cfg = cfg or RegistrySettings()
        self.kafka = kafka or KafkaSettings()
        self.topics = self.kafka.topics
        self.identity = load_identity(self.cfg.identity, self.cfg.keys_dir)
        self.device_keys = DeviceKeys()
        self.handled = 0

    # -- lifecycle -----------------------------------------------------------
    async def start(self) -> None:
        self.store = await RegistryStore.connect(self.cfg.postgres_dsn)
        self._hold(self.store.close)
        self.redis = aioredis.Redis.from_url(self.cfg.redis_url)
        self._hold(self.redis.aclose)
        namespace = f"qflare:{self.kafka.topic_prefix}registry"
        self.live = Liveness(
            self.redis,
            namespace,
            stale_after_s=self.cfg.stale_after_s,
            offline_after_s=self.cfg.offline_after_s,
        )
        await prepare_topics(self.kafka)
        # The truth is rebuilt from PostgreSQL, never carried over in memory.
        for row in await self.store.devices():
            self._remember(row)
        t = self.topics
        operators = TrustedKeys(self.cfg.keys_dir)
        self.decoders = {
            t.enrollments.name: Decoder(
                self.device_keys,
                deployment=self.kafka.deployment_id,
                allowed_types=t.enrollments.types,
                self_signed={"enrollment"},
                max_age_ms=t.enrollments.max_age_ms,
            ),
            t.heartbeats.name: Decoder(
                self.device_keys,
                deployment=self.kafka.deployment_id,
                allowed_types=t.heartbeats.types,
                max_age_ms=t.heartbeats.max_age_ms,
            ),
            t.registry_control.name: Decoder(
                operators,
                deployment=self.kafka.deployment_id,
                allowed_types=t.registry_control.types,
                max_age_ms=t.registry_control.max_age_ms,
            ),
        }
        self.producer = await self._started(make_producer(self.kafka))
        tally = poison.Tally(
            SERVICE,
            window_s=self.cfg.rejection_window_s,
            reports_per_window=self.cfg.rejection_reports_per_window,
        )
        self.out = Publisher(self.producer, self.store, self.identity, self.topics, tally)
        self.results = Results(self.out, self.store, self.identity, self.topics)
        self.watch = DeviceTopicWatch(t.devices, operators, self.identity.name, self.store, self.out)
        self.commands = Commands(
            self.store, self.out, self.live, self._remember, max_age_s=self.cfg.command_max_age_s
        )
        # Records a crash left in the outbox go out before anything new.
        await self.out.flush_outbox()
        self.consumer = await self._started(
            make_consumer(
                self.kafka,
                t.enrollments.name,
                t.heartbeats.name,
                t.registry_control.name,
                t.devices.name,
                group_id=self.cfg.group_id,
                enable_auto_commit=False,
                # "none": a committed position that left the log raises, and is audited as a gap.
                auto_offset_reset="none",
            )
        )
        self._spawn(self._sweep_forever(), name="registry-sweep")
        log.info("registry started", devices=len(self.device_keys), topics_prefix=self.kafka.topic_prefix)

    # -- the loop ------------------------------------------------------------
    async def _step(self) -> None:
        batches, gaps = await poison.fetch(
            self.consumer, service=SERVICE, timeout_ms=500, max_records=self.cfg.batch_max_records
        )
        for gap in gaps:
            await self.out.gap(gap)
        seen: dict[str, int] = {}
        for records in batches.values():
            for record in records:
                # Heartbeats are too many to trace one by one; everything else gets a span.
                traced = record.topic != self.topics.heartbeats.name
                with process_span(record, group=self.cfg.group_id) if traced else nullcontext():
                    await self._handle(record, seen)
        await self.live.beat(seen)
        for summary in self.out.tally.due():
            await self.out.summary(summary)
        if batches or gaps:
            await self.out.flush_outbox()
            await self.out.settle()
            await self.consumer.commit()

    async def _handle(self, record: ConsumerRecord[Any, Any], seen: dict[str, int]) -> None:
        self.handled += 1
        metrics.BYTES_IN.labels(SERVICE).inc(len(record.value or b""))
        msg: Message | None = None
        try:
            if record.topic == self.topics.devices.name:
                await self.watch.check(record)
                return
            msg = self._decode(record)
            authorise(msg)
            body = msg.body
            if isinstance(body, Enrollment):
                await self._enrol(msg, body)
            elif isinstance(body, Heartbeat):
                self._beat(msg, body, seen)
            elif isinstance(body, Deregistration):
                await self._deregister(msg, body)
            elif isinstance(body, RegistryCommand):
                await self.commands.apply(msg, body)
            metrics.ACCEPTED.labels(SERVICE, msg.header.type).inc()
        except Exception as exc:  # whatever one record holds, it is one rejection (qflare.poison)
            if poison.retry(exc):
                raise
            refused = poison.rejection(exc)  # the decoder's, the registry's own Rejected, a store's
            await self.out.reject(
                record,
                refused,
                source=None if msg is None else msg.header.sender,
                ref=msg if msg is not None and isinstance(msg.body, RegistryCommand) else None,
            )
            await self.results.rejected(record, refused, msg)

    def _decode(self, record: ConsumerRecord[Any, Any]) -> Message:
        if record.value is None:
            raise Rejected(Reason.SCHEMA, "record has no value", field="$")
        try:
            return self.decoders[record.topic].decode(record.value, record.topic)
        except UnknownKeyError as exc:
            # Name the reason precisely when the key belonged to a retired device.
            device = self.device_keys.retired_owner(exc.key_id)
            if device is not None:
                raise Rejected(
                    Reason.REVOKED, f"device {device} is revoked or deregistered", field="key_id"
                ) from exc
            raise

    # -- handlers ------------------------------------------------------------
    # State changes and the records that report them (device record, audit
    # event) are written in one PostgreSQL transaction through the outbox.
    async def _enrol(self, msg: Message, body: Enrollment) -> None:
        if msg.header.sender != body.device_id:
            raise Rejected(Reason.SENDER_MISMATCH, "sender is not the enrolling device", field="sender")
        claim = EnrolmentClaim(
            scope=self.kafka.deployment_id,
            device_id=body.device_id,
            public_key=body.public_key,
            kid=msg.header.key_id,
            labels=body.labels,
            token_id=body.token_id,
            token_mac=body.token_mac,
            rotation_proof=body.rotation_proof,
        )
        async with self.store.conn.transaction():
            row, outcome = await self.store.enrol(claim, max_declared=self.cfg.max_declared_examples)
            if outcome != "unchanged":
                await self.out.queue_device(row)
                await self.out.queue_audit(
                    "device.enrolled", "info", reason=outcome, subject=row.device_id, ref=msg
                )
            # After the device record, so a device told "accepted" finds itself published.
            await self.results.accepted(msg, row, outcome)
        self._remember(row)  # a rotated key stops verifying here
        metrics.ENROLLED.labels(outcome).inc()

    def _beat(self, msg: Message, body: Heartbeat, seen: dict[str, int]) -> None:
        if msg.header.sender != body.device_id:
            raise Rejected(Reason.SENDER_MISMATCH, "heartbeat for another device", field="body.device_id")
        seen_ms = min(msg.header.ts_ms, now_ms())
        seen[body.device_id] = max(seen.get(body.device_id, 0), seen_ms)

    async def _deregister(self, msg: Message, body: Deregistration) -> None:
        if msg.header.sender != body.device_id:
            raise Rejected(
                Reason.SENDER_MISMATCH, "a device may only deregister itself", field="body.device_id"
            )
        async with self.store.conn.transaction():
            row = await self.commands.retire(body.device_id, "deregistered", msg)
        await self.commands.after_retire(row)

    def _remember(self, row: DeviceRow) -> None:
        self.device_keys.set(row.device_id, row.status, row.public_key)

    # -- health sweep ----------------------------------------------------------
    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.sweep_interval_s)
            try:
                await self.sweep()
            except Exception as exc:
                if not is_transient(exc):
                    raise
                # Unpublished transitions stay uncommitted in Redis and go out next sweep.
                log.warning("health sweep failed, will retry", error=f"{type(exc).__name__}: {exc}")

    async def sweep(self) -> None:
        changes = await self.live.transitions(now_ms())
        for change in changes:
            event = DeviceHealth(change.device_id, change.state, change.last_seen_ms)
            await self.out.health(event)
        await self.live.commit(changes)
        for state, count in (await self.live.counts()).items():
            metrics.DEVICES_BY_HEALTH.labels(state).set(count)
