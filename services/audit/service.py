"""The audit service's consumer loop, top to bottom.

Per fetch: bring the device keys up to date (the compacted device topic, read from the
start on every start-up; its records past the stored position are audited too), then
turn each record into at most one chain entry (``services.audit.events``), link them
after the chain's head, add a signed checkpoint every ``checkpoint_every`` entries, and
commit the entries together with the position of every partition read in ONE PostgreSQL
transaction. Positions live in PostgreSQL, not in a Kafka group: on start the partitions
are sought to them, so a kill -9 anywhere re-reads exactly the records whose entries were
not committed, and no entry is lost or doubled. Elasticsearch is fed by a separate task
(``services.audit.indexer``) that never holds up intake.

After a committed batch (at most once per ``head_interval_s``) the chain's head is signed and
published (``services.audit.heads``); at start the stored chain must still hold the last head
published, or the service refuses to run. Events named ``audit.*`` on the wire are refused
(``reserved_event``): those names belong to the entries this service writes itself.

Poison records (``qflare.poison``): whatever a record holds it becomes at most one entry and
never stops the loop. Refused records are rate-limited: per topic and reason the first few of
a window get an entry each, the rest one ``rejections.summary`` entry. An entry the database
refuses for good is replaced by an entry saying so, and a stored position that left the log
becomes an ``offset.gap`` entry.
"""

from __future__ import annotations

import time

import structlog

from qflare import metrics as shared
from qflare import poison
from qflare.authority import allowed
from qflare.clock import now_ms
from qflare.crypto.base import fingerprint
from qflare.errors import Reason, Rejected, ReplayError, SchemaError
from qflare.identity import TrustedKeys, load_identity
from qflare.kafka import (
    KafkaSettings,
    Record,
    assign_from_start,
    make_consumer,
    make_producer,
    partitions,
    prepare_topics,
    read_to_end,
)
from qflare.keys import AnyKey, DeviceKeys, refuse_tombstone
from qflare.protocol import Decoder
from qflare.protocol.control import AuditEvent
from qflare.protocol.decoder import KeyLookup
from qflare.protocol.devices import Device
from qflare.protocol.topics import TopicSpec
from qflare.runner import BatchLoop
from qflare.tracing import process_span
from services.audit import events, metrics
from services.audit.chain import CHECKPOINT, RESERVED_PREFIX, Entry, Event, make_entry
from services.audit.config import AuditSettings
from services.audit.heads import HeadWriter, check_own_key, check_published
from services.audit.indexer import Indexer
from services.audit.store import AuditStore
from services.audit.verifier import verify_forever

log = structlog.get_logger("qflare.audit")
SERVICE = "audit"


class AuditService(BatchLoop):
    def __init__(self, cfg: AuditSettings | None = None, kafka: KafkaSettings | None = None) -> None:
        super().__init__()
        self.cfg = cfg or AuditSettings()
        self.kafka = kafka or KafkaSettings()
        self.stream = self.kafka.topic_prefix
        self.topics = self.kafka.topics
        self.identity = load_identity(self.cfg.identity, self.cfg.keys_dir)
        self.devices = DeviceKeys()
        trusted = TrustedKeys(self.cfg.keys_dir)
        t = self.topics
        # Heartbeats and raw updates are not audited (see the package docstring).
        self.audited: list[TopicSpec] = [
            t.enrollments,
            t.enrollment_results,
            t.health,
            t.rounds,
            t.rounds_complete,
            t.models,
            t.audit,
            t.jobs,
            t.registry_control,
        ]
        self.decoders: dict[str, Decoder] = {}
        for spec in [t.devices, *self.audited]:
            lookup: KeyLookup = AnyKey(trusted, self.devices) if spec is t.enrollments else trusted
            self.decoders[spec.name] = Decoder(
                lookup,
                deployment=spec.deployment,
                allowed_types=spec.types,
                max_age_ms=None,  # a restart re-reads a backlog: its age must not change the verdict
                limits=self.kafka.limits,
                self_signed=("enrollment",) if spec is t.enrollments else (),
            )
        shared.preset_rejections(SERVICE, self.decoders)
        self.positions: dict[tuple[str, int], int] = {}
        self._last_device: Device | None = None
        self.tally = poison.Tally(
            SERVICE,
            window_s=self.cfg.rejection_window_s,
            reports_per_window=self.cfg.rejection_reports_per_window,
        )

    # -- lifecycle -----------------------------------------------------------
    async def start(self) -> None:
        check_own_key(self.identity, self.cfg.key_fingerprint)
        self.store = await AuditStore.connect(self.cfg.postgres_dsn, self.stream)
        self._hold(self.store.close)
        await prepare_topics(self.kafka)
        self.head = await self.store.head()
        metrics.CHAIN_LENGTH.labels(self.stream).set(self.head[0])
        self.head_writer = HeadWriter(
            self.identity,
            self.stream,
            self.topics.audit_heads,
            await self._started(make_producer(self.kafka)),
            self.cfg.head_file,
        )
        self.head_writer.published = await check_published(
            self.store,
            self.kafka,
            self.topics.audit_heads,
            self.identity,
            self.cfg.head_file,
            self.cfg.head_scan_records,
        )
        self._head_sent_s = 0.0
        await self._publish_head(force=True)
        self.positions = await self.store.offsets()
        self.device_consumer = await self._started(make_consumer(self.kafka, group_id=None))
        await assign_from_start(self.device_consumer, self.topics.devices)
        # "none": a stored position that left the log raises, and ``poison.fetch`` audits the gap.
        self.consumer = await self._started(
            make_consumer(self.kafka, group_id=None, auto_offset_reset="none")
        )
        parts = partitions(*self.audited)
        self.consumer.assign(parts)
        for tp in parts:
            self.consumer.seek(tp, self.positions.get((tp.topic, tp.partition), 0))
        await self._sync_devices()
        if self.cfg.index_prefix:
            self.index_store = await AuditStore.connect(self.cfg.postgres_dsn, self.stream)
            self._hold(self.index_store.close)
            self.indexer = Indexer(
                self.index_store,
                self.cfg.elasticsearch_url,
                self.cfg.index_prefix,
                batch=self.cfg.index_batch,
                interval_s=self.cfg.index_interval_s,
            )
            self._hold(self.indexer.close)
            self._spawn(self.indexer.run(), name="audit-indexer")
        if self.cfg.verify_interval_s:
            checker = verify_forever(
                self.cfg.postgres_dsn,
                self.stream,
                self.identity.key.public_key,
                self.cfg.verify_interval_s,
                lambda: self.head_writer.published,
            )
            self._spawn(checker, name="audit-verifier")
        log.info(
            "audit started",
            chain_length=self.head[0],
            devices=len(self.devices),
            stream=self.stream,
            # What `qflare audit verify --key-fingerprint` pins.
            key_fingerprint=f"SHA256:{fingerprint(self.identity.key.public_key)}",
        )

    async def _publish_head(self, *, force: bool = False) -> None:
        """Sign and publish the head when the chain moved since the last one (rate-limited)."""
        if self.head_writer.published == self.head:
            return
        if not force and time.monotonic() - self._head_sent_s < self.cfg.head_interval_s:
            return
        await self.head_writer.publish(self.head[0], self.head[1], now_ms())
        self._head_sent_s = time.monotonic()

    async def _step(self) -> None:
        batches, gaps = await poison.fetch(
            self.consumer, service=SERVICE, timeout_ms=200, max_records=self.cfg.batch_max_records
        )
        await self._sync_devices()
        found: list[Event] = [events.gap(g, now_ms()) for g in gaps]
        moved: dict[tuple[str, int], int] = {(g.topic, g.partition): g.resumed for g in gaps}
        for tp, records in batches.items():
            for record in records:
                # Continues the trace the record carries (e.g. a round's), so the audit of a
                # round shows up in that round's trace.
                with process_span(record, group=SERVICE):
                    event = self._read(record)
                if event is not None:
                    found.append(event)
                moved[(tp.topic, tp.partition)] = record.offset + 1
        found += [events.summary(s, now_ms()) for s in self.tally.due()]
        await self._commit(found, moved)
        for tp in batches:
            highwater = self.consumer.highwater(tp)
            if highwater is not None:
                lag = highwater - await self.consumer.position(tp)
                shared.CONSUMER_LAG.labels(SERVICE, tp.topic).set(max(0, lag))
        await self._publish_head()

    async def _sync_devices(self) -> None:
        """Apply every device record up to the current end; audit those past the stored position."""
        found: list[Event] = []
        moved: dict[tuple[str, int], int] = {}
        async for record in read_to_end(self.device_consumer):
            key = (record.topic, record.partition)
            event = self._device(record)
            if record.offset >= self.positions.get(key, 0):
                if event is not None:
                    found.append(event)
                moved[key] = record.offset + 1
        await self._commit(found, moved)

    def _device(self, record: Record) -> Event | None:
        subject = poison.record_key(record)
        if record.value is None:
            # Unsigned, so it changes nothing: only a signed record with status "deleted" does.
            try:
                refuse_tombstone(record.key)
            except Rejected as exc:
                return self._refused(exc, record, subject)
        event = self._read(record)
        if event is not None and event.outcome != "rejected":
            if not allowed("device", event.actor):
                return events.rejection(
                    Rejected(Reason.SENDER_NOT_ALLOWED, f"{event.actor!r} may not send it", field="sender"),
                    record.value,
                    record.topic,
                    record.partition,
                    record.offset,
                    subject,
                    now_ms(),
                )
            if self._last_device is not None:
                try:
                    self.devices.apply(self._last_device)
                except Rejected as exc:  # an older revision than one already applied
                    return self._refused(exc, record, subject)
        return event

    def _refused(self, exc: Rejected, record: Record, subject: str | None) -> Event | None:
        """The entry for a device record refused here, within the rejection rate limit."""
        shared.REJECTED.labels(SERVICE, record.topic, exc.reason).inc()
        if not self.tally.note(record.topic, None, exc.reason):
            return None  # counted in the window's summary
        log.warning("rejected", topic=record.topic, offset=record.offset, reason=exc.reason, error=str(exc))
        return events.rejection(
            exc, record.value, record.topic, record.partition, record.offset, subject, now_ms()
        )

    def _read(self, record: Record) -> Event | None:
        """The entry for one record: its meaning, a rejection, or None (not audited, a re-send, or a
        rejection past the rate limit, which the window's summary counts)."""
        key = poison.record_key(record)
        try:
            if record.value is None:
                raise SchemaError("record has no value", field="$")
            msg = self.decoders[record.topic].decode(record.value, record.topic)
            if isinstance(msg.body, AuditEvent) and msg.body.event.startswith(RESERVED_PREFIX):
                raise Rejected(
                    Reason.RESERVED_EVENT,
                    f"{msg.body.event!r} is reserved for the audit chain's own entries",
                    field="body.event",
                )
            self._last_device = msg.body if isinstance(msg.body, Device) else None
            event = events.from_message(msg, record.topic, record.partition, record.offset, key)
        except ReplayError:
            metrics.REPLAYS.labels(record.topic).inc()
            return None
        except Exception as exc:  # whatever one record holds, it is one rejection
            if poison.retry(exc):
                raise
            refused = poison.rejection(exc)
            # The sender of a record that did not verify is unknown: all such share one budget.
            if not self.tally.note(record.topic, None, refused.reason):
                return None
            shared.REJECTED.labels(SERVICE, record.topic, refused.reason).inc()
            log.warning(
                "rejected",
                topic=record.topic,
                offset=record.offset,
                reason=refused.reason,
                error=str(refused),
            )
            return events.rejection(
                refused, record.value, record.topic, record.partition, record.offset, key, now_ms()
            )
        shared.ACCEPTED.labels(SERVICE, msg.header.type).inc()
        return event

    async def _commit(self, found: list[Event], moved: dict[tuple[str, int], int]) -> None:
        """Link ``found`` after the head and store them with the positions ``moved``, in one transaction.

        When the database refuses the batch for good (a value it cannot store), the batch is
        stored again entry by entry, each in a savepoint, and an entry refused again is replaced
        by one that says so: the other entries of the batch are kept, and the chain stays linked.
        """
        if not moved and not found:
            return
        try:
            entries, head = await self._store(found, moved, one_by_one=False)
        except Exception as exc:
            if poison.retry(exc):
                raise
            log.error("a batch of entries was refused; storing it entry by entry", error=str(exc))
            entries, head = await self._store(found, moved, one_by_one=True)
        self.head = head
        self.positions.update(moved)
        for entry in entries:
            metrics.EVENTS.labels(entry.event.type, entry.event.outcome).inc()
            if entry.event.type == CHECKPOINT:
                metrics.CHECKPOINTS.inc()
        metrics.CHAIN_LENGTH.labels(self.stream).set(head[0])

    async def _store(
        self, found: list[Event], moved: dict[tuple[str, int], int], *, one_by_one: bool
    ) -> tuple[list[Entry], tuple[int, bytes]]:
        entries: list[Entry] = []
        head = self.head
        async with self.store.conn.transaction():
            for event in found:
                entry = make_entry(head, event)
                if one_by_one:
                    entry = await self._append_one(head, entry)
                entries.append(entry)
                head = (entry.seq, entry.hash)
                if entry.seq % self.cfg.checkpoint_every == 0:
                    mark = make_entry(
                        head, self._checkpoint(entry), sign=self.identity.signer.sign, stream=self.stream
                    )
                    if one_by_one:
                        await self.store.append([mark])
                    entries.append(mark)
                    head = (mark.seq, mark.hash)
            if not one_by_one:
                await self.store.append(entries)
            if moved:
                await self.store.save_offsets(moved)
        return entries, head

    async def _append_one(self, head: tuple[int, bytes], entry: Entry) -> Entry:
        """Store ``entry`` in a savepoint; if refused for good, store in its place an entry saying so."""
        try:
            async with self.store.conn.transaction():
                await self.store.append([entry])
            return entry
        except Exception as exc:
            if poison.retry(exc):
                raise
            refused = poison.rejection(exc)
            shared.REJECTED.labels(SERVICE, entry.event.source_topic, refused.reason).inc()
            log.error("an entry was refused by the store", reason=refused.reason, error=str(refused))
            stand_in = make_entry(head, events.unstorable(entry.event, refused, now_ms()))
            await self.store.append([stand_in])
            return stand_in

    def _checkpoint(self, last: Entry) -> Event:
        return Event(
            time_ms=now_ms(),
            actor=self.identity.name,
            type=CHECKPOINT,
            outcome="info",
            source_topic="",
            source_partition=-1,
            source_offset=-1,
            detail={
                "upto_seq": last.seq,
                "upto_hash": last.hash.hex(),
                "key_id": self.identity.signer.key_id.hex(),
            },
        )
