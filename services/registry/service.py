"""The registry's consumer loop, top to bottom.

Reads enrolments, heartbeats and operator commands; keeps devices in
PostgreSQL and liveness in Redis; publishes device records (compacted topic)
and health transitions. Offsets are committed only after a batch's effects are
durable, and every handler is idempotent, so a kill -9 at any point replays a
few records harmlessly: no accepted enrolment is lost and none is duplicated.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from contextlib import nullcontext
from typing import Any

import psycopg
import redis.asyncio as aioredis
import structlog
from aiokafka import ConsumerRecord
from aiokafka.errors import KafkaError
from redis.exceptions import RedisError

from qflare import metrics
from qflare.errors import ProtocolError, QflareError, UnknownKeyError
from qflare.identity import TrustedKeys, load_identity
from qflare.kafka import KafkaSettings, ensure_topics, make_admin, make_consumer, make_producer
from qflare.protocol import Decoder, KeyRing, Message, topics
from qflare.protocol.control import RegistryCommand
from qflare.protocol.decoder import KnownKey
from qflare.protocol.devices import Deregistration, DeviceHealth, Enrollment, Heartbeat
from qflare.tracing import process_span
from services.registry.config import RegistrySettings
from services.registry.liveness import Liveness
from services.registry.publisher import SERVICE, Publisher
from services.registry.results import Results
from services.registry.store import DeviceRow, EnrollmentRejected, RegistryStore

log = structlog.get_logger("qflare.registry")
#: Infrastructure hiccups: retried, never fatal.
TRANSIENT = (KafkaError, RedisError, psycopg.OperationalError, OSError)


class Rejected(QflareError):
    """A verified message that the registry refuses (wrong sender, unknown device...)."""

    def __init__(self, reason: str, message: str, *, field: str | None = None) -> None:
        self.reason = reason
        super().__init__(message, field=field)


class RegistryService:
    def __init__(self, cfg: RegistrySettings | None = None, kafka: KafkaSettings | None = None) -> None:
        self.cfg = cfg or RegistrySettings()
        self.kafka = kafka or KafkaSettings()
        self.topics = topics(self.kafka.topic_prefix)
        self.identity = load_identity(self.cfg.identity, self.cfg.keys_dir)
        self.device_keys = KeyRing()
        #: key_id -> device id of revoked/deregistered devices, to name the reason on rejection.
        self.retired_keys: dict[bytes, str] = {}
        self._last_unknown = b""
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.handled = 0

    # -- lifecycle -----------------------------------------------------------
    async def start(self) -> None:
        self.store = await RegistryStore.connect(self.cfg.postgres_dsn)
        self.redis = aioredis.Redis.from_url(self.cfg.redis_url)
        namespace = f"qflare:{self.kafka.topic_prefix}registry"
        self.live = Liveness(
            self.redis,
            namespace,
            stale_after_s=self.cfg.stale_after_s,
            offline_after_s=self.cfg.offline_after_s,
        )
        admin = make_admin(self.kafka)
        await admin.start()
        try:
            await ensure_topics(admin, list(self.topics), self.kafka)
        finally:
            await admin.close()
        # The truth is rebuilt from PostgreSQL, never carried over in memory.
        for row in await self.store.devices():
            self._remember(row)
        t = self.topics
        operators = TrustedKeys(self.cfg.keys_dir)
        self.decoders = {
            t.enrollments.name: Decoder(
                self._device_key,
                allowed_types=t.enrollments.types,
                self_signed={"enrollment"},
                max_age_ms=t.enrollments.max_age_ms,
            ),
            t.heartbeats.name: Decoder(
                self._device_key, allowed_types=t.heartbeats.types, max_age_ms=t.heartbeats.max_age_ms
            ),
            t.registry_control.name: Decoder(
                operators, allowed_types=t.registry_control.types, max_age_ms=t.registry_control.max_age_ms
            ),
        }
        self.producer = make_producer(self.kafka)
        await self.producer.start()
        self.out = Publisher(self.producer, self.store, self.identity, self.topics)
        self.results = Results(self.out, self.store, self.identity, self.topics)
        # Records a crash left in the outbox go out before anything new.
        await self.out.flush_outbox()
        self.consumer = make_consumer(
            self.kafka,
            t.enrollments.name,
            t.heartbeats.name,
            t.registry_control.name,
            group_id=self.cfg.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        await self.consumer.start()
        self._tasks.append(asyncio.create_task(self._sweep_forever(), name="registry-sweep"))
        log.info("registry started", devices=len(self.device_keys), topics_prefix=self.kafka.topic_prefix)

    async def stop(self) -> None:
        self._stopping.set()
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.consumer.stop()
        await self.producer.stop()
        await self.redis.aclose()
        await self.store.close()

    async def __aenter__(self) -> RegistryService:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def request_stop(self) -> None:
        self._stopping.set()

    def _device_key(self, kid: bytes) -> KnownKey | None:
        found = self.device_keys(kid)
        if found is None:
            self._last_unknown = kid
        return found

    # -- the loop ------------------------------------------------------------
    async def run(self) -> None:
        while not self._stopping.is_set():
            batches = await self.consumer.getmany(timeout_ms=500, max_records=self.cfg.batch_max_records)
            seen: dict[str, int] = {}
            for records in batches.values():
                for record in records:
                    # Heartbeats are too many to trace one by one; everything else gets a span.
                    traced = record.topic != self.topics.heartbeats.name
                    with process_span(record, group=self.cfg.group_id) if traced else nullcontext():
                        await self._handle(record, seen)
            await self.live.beat(seen)
            if batches:
                await self.out.flush_outbox()
                await self.out.settle()
                await self.consumer.commit()

    async def _handle(self, record: ConsumerRecord[Any, Any], seen: dict[str, int]) -> None:
        self.handled += 1
        metrics.BYTES_IN.labels(SERVICE).inc(len(record.value or b""))
        msg: Message | None = None
        try:
            msg = self._decode(record)
            body = msg.body
            if isinstance(body, Enrollment):
                await self._enrol(msg, body)
            elif isinstance(body, Heartbeat):
                self._beat(msg, body, seen)
            elif isinstance(body, Deregistration):
                await self._deregister(msg, body)
            elif isinstance(body, RegistryCommand):
                await self._command(msg, body)
            metrics.ACCEPTED.labels(SERVICE, msg.header.type).inc()
        except (ProtocolError, EnrollmentRejected, Rejected) as exc:
            await self.out.reject(record, exc)
            await self.results.rejected(record, exc, msg)

    def _decode(self, record: ConsumerRecord[Any, Any]) -> Message:
        if record.value is None:
            raise Rejected("schema", "record has no value", field="$")
        try:
            return self.decoders[record.topic].decode(record.value)
        except UnknownKeyError as exc:
            # Name the reason precisely when the key belonged to a retired device.
            device = self.retired_keys.get(self._last_unknown)
            if device is not None:
                raise Rejected(
                    "revoked", f"device {device} is revoked or deregistered", field="key_id"
                ) from exc
            raise

    # -- handlers ------------------------------------------------------------
    # State changes and the records that report them (device record, audit
    # event) are written in one PostgreSQL transaction through the outbox.
    async def _enrol(self, msg: Message, body: Enrollment) -> None:
        if msg.header.sender != body.device_id:
            raise Rejected("sender_mismatch", "sender is not the enrolling device", field="sender")
        token_hash = hashlib.sha256(body.token.encode()).digest() if body.token else None
        before = await self.store.device(body.device_id)
        async with self.store.conn.transaction():
            row, outcome = await self.store.enrol(
                body.device_id, body.public_key, msg.header.key_id, token_hash, body.labels
            )
            if outcome != "unchanged":
                await self.out.queue_device(row)
                await self.out.queue_audit(
                    "device.enrolled", "info", reason=outcome, subject=row.device_id, ref=msg
                )
            # After the device record, so a device told "accepted" finds itself published.
            await self.results.accepted(msg, row, outcome)
        if outcome == "rotated" and before is not None:
            self.device_keys.remove(before.key_id)
        self._remember(row)
        metrics.ENROLLED.labels(outcome).inc()

    def _beat(self, msg: Message, body: Heartbeat, seen: dict[str, int]) -> None:
        if msg.header.sender != body.device_id:
            raise Rejected("sender_mismatch", "heartbeat for another device", field="body.device_id")
        seen_ms = min(msg.header.ts_ms, int(time.time() * 1000))
        seen[body.device_id] = max(seen.get(body.device_id, 0), seen_ms)

    async def _deregister(self, msg: Message, body: Deregistration) -> None:
        if msg.header.sender != body.device_id:
            raise Rejected("sender_mismatch", "a device may only deregister itself", field="body.device_id")
        async with self.store.conn.transaction():
            row = await self._retire(body.device_id, "deregistered", msg)
        await self._after_retire(row)

    async def _command(self, msg: Message, body: RegistryCommand) -> None:
        if body.command != "issue_tokens" and not body.device_id:
            raise Rejected("schema", f"{body.command} needs a device_id", field="body.device_id")
        retired = None
        async with self.store.conn.transaction():
            # A re-delivered command (same sender and id) was applied already.
            if not await self.store.first_application(msg.header.sender, msg.header.id):
                return
            if body.command == "issue_tokens":
                count = await self.store.add_tokens(list(body.token_hashes), body.expires_ms, body.labels)
                await self.out.queue_audit(
                    "tokens.issued", "info", reason=f"{count} tokens", subject=msg.header.sender, ref=msg
                )
            elif body.command == "revoke":
                retired = await self._retire(str(body.device_id), "revoked", msg)
            elif body.command == "rotate_key":
                await self.store.authorise_rotation(str(body.device_id), body.expires_ms)
                await self.out.queue_audit(
                    "device.rotation_authorised", "info", subject=body.device_id, ref=msg
                )
        if retired is not None:
            await self._after_retire(retired)

    async def _retire(self, device_id: str, status: str, msg: Message) -> DeviceRow:
        row = await self.store.set_status(device_id, status)
        if row is None:
            raise Rejected("unknown_device", f"no device {device_id}", field="device_id")
        await self.out.queue_device(row)
        await self.out.queue_audit(f"device.{status}", "warning", subject=device_id, ref=msg)
        return row

    async def _after_retire(self, row: DeviceRow) -> None:
        self._remember(row)
        await self.live.forget(row.device_id)

    def _remember(self, row: DeviceRow) -> None:
        if row.status == "active":
            self.device_keys.add(row.device_id, row.public_key)
            self.retired_keys.pop(row.key_id, None)
        else:
            self.device_keys.remove(row.key_id)
            self.retired_keys[row.key_id] = row.device_id

    # -- health sweep ----------------------------------------------------------
    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.sweep_interval_s)
            try:
                await self.sweep()
            except TRANSIENT as exc:
                # Unpublished transitions stay uncommitted in Redis and go out next sweep.
                log.warning("health sweep failed, will retry", error=f"{type(exc).__name__}: {exc}")

    async def sweep(self) -> None:
        changes = await self.live.transitions(int(time.time() * 1000))
        for change in changes:
            event = DeviceHealth(change.device_id, change.state, change.last_seen_ms)
            await self.out.health(event)
        await self.live.commit(changes)
        for state, count in (await self.live.counts()).items():
            metrics.DEVICES_BY_HEALTH.labels(state).set(count)
