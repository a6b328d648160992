"""The aggregator's consumer loop, top to bottom.

Per fetched batch of updates: bring the control topics up to date (rounds,
jobs, device keys), then verify, check and fold each update into its round's
exact running sum, then commit in ONE PostgreSQL transaction the sums, the
included (device, message id) pairs, the rejection reports and the position
of every updates partition. Offsets live in PostgreSQL, not in a Kafka group:
on start the partitions are assigned and sought to the stored positions, so a
kill -9 anywhere replays only records whose effects were not committed, and
the fixed-point sums make the result independent of the replay order. Rounds
close when everyone answered (checked after each batch) or at their deadline
(a timer task), through ``Closer``.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass, field
from typing import Any

import structlog
from aiokafka import ConsumerRecord, TopicPartition

from qflare import metrics
from qflare.clock import now_ms
from qflare.errors import InvalidUpdateError, ProtocolError, QflareError, Rejected, is_transient
from qflare.fl import FixedPoint, JobSpec, Update
from qflare.identity import load_identity
from qflare.kafka import KafkaSettings, make_consumer, make_producer, partitions, prepare_topics
from qflare.keys import DeviceKeys
from qflare.protocol import Message
from qflare.protocol.training import ModelUpdate
from qflare.runner import BatchLoop
from qflare.tracing import FanIn, process_span
from services.aggregator.checks import check_update, find_round, out_of_range
from services.aggregator.closing import Closer
from services.aggregator.config import AggregatorSettings
from services.aggregator.control import Control
from services.aggregator.cursor import Cursor
from services.aggregator.evaluation import Evaluator
from services.aggregator.intake import Intake
from services.aggregator.jobs import Job
from services.aggregator.publisher import SERVICE, Publisher
from services.aggregator.rounds import Included, OpenRound
from services.aggregator.store import AggregatorStore

log = structlog.get_logger("qflare.aggregator")


class AggregatorService(BatchLoop):
    def __init__(self, cfg: AggregatorSettings | None = None, kafka: KafkaSettings | None = None) -> None:
        super().__init__()
        self.cfg = cfg or AggregatorSettings()
        self.kafka = kafka or KafkaSettings()
        self.topics = self.kafka.topics
        self.identity = load_identity(self.cfg.identity, self.cfg.keys_dir)
        self.keys = DeviceKeys()
        self.jobs: dict[str, Job] = {}
        self.rounds: dict[tuple[str, int], OpenRound] = {}
        self.fixed_point = FixedPoint()
        self.intake = Intake(
            self.keys,
            self.topics.updates,
            self.kafka.limits,
            timeout_ms=int(self.cfg.chunk_timeout_s * 1000),
            max_streams=self.cfg.max_open_streams,
        )
        self.cursors: dict[int, Cursor] = {}
        self._lock = asyncio.Lock()

    # -- lifecycle -----------------------------------------------------------
    async def start(self) -> None:
        self.store = await AggregatorStore.connect(self.cfg.postgres_dsn, self.kafka.topic_prefix)
        self._hold(self.store.close)
        await prepare_topics(self.kafka)
        # The truth is rebuilt from PostgreSQL, never carried over in memory.
        for row in await self.store.jobs():
            try:
                spec = JobSpec.parse(row.config)
                self.jobs[row.job_id] = Job(
                    row.job_id, spec, row.status, row.strategy_state, row.fencing_token
                )
            except (ProtocolError, Rejected) as exc:
                # Stored by an older version with another schema: left out, not fatal to every other job.
                log.error("stored job does not load; it is left out", job_id=row.job_id, error=str(exc))
        for rnd in await self.store.open_rounds():
            if rnd.job_id in self.jobs:
                self.rounds[rnd.key] = rnd
        self.producer = await self._started(make_producer(self.kafka))
        self.out = Publisher(self.producer, self.store, self.identity, self.topics, self.kafka.limits)
        await self.out.flush_outbox()  # what a crash left unsent goes out before anything new
        self.control_consumer = await self._started(make_consumer(self.kafka, group_id=None))
        self.closer = Closer(self.store, self.out, Evaluator(self.cfg.eval_examples), self.jobs, self.rounds)
        self.control = Control(
            self.cfg, self.kafka, self.topics, self.store, self.out, self.keys, self.closer
        )
        await self.control.start(self.control_consumer)
        await self.control.sync()
        await self._assign_updates()
        await self._catch_up()
        self._spawn(self._deadlines_forever(), name="aggregator-deadlines")
        log.info(
            "aggregator started",
            jobs=len(self.jobs),
            open_rounds=len(self.rounds),
            devices=len(self.keys),
            topics_prefix=self.kafka.topic_prefix,
        )

    async def _assign_updates(self) -> None:
        spec = self.topics.updates
        self.updates = await self._started(make_consumer(self.kafka, group_id=None))
        parts = partitions(spec)
        self.updates.assign(parts)
        stored = await self.store.cursors(spec.name, now_ms())
        for tp in parts:
            cursor = stored.get(tp.partition) or Cursor(spec.name, tp.partition)
            self.cursors[tp.partition] = cursor
            self.updates.seek(tp, cursor.resume_offset)

    async def _catch_up(self) -> None:
        """Handle the backlog present at start-up before any deadline may close a round.

        A round whose deadline passed while the aggregator was down then counts
        every update that reached Kafka before the restart, as it would have live.
        """
        end = await self.updates.end_offsets(list(self.updates.assignment()))
        while True:
            await self._step()
            positions = {tp: await self.updates.position(tp) for tp in end}
            if all(positions[tp] >= offset for tp, offset in end.items()):
                break

    async def _step(self) -> None:
        """One fetch: control topics first, then the batch, then close the rounds everyone answered."""
        batches = await self.updates.getmany(timeout_ms=200, max_records=self.cfg.batch_max_records)
        async with self._lock:
            await self.control.sync()
            await self._handle_batch(batches)
            await self.closer.close_ready(None)
        for tp in batches:
            highwater = self.updates.highwater(tp)
            if highwater is not None:
                lag = highwater - await self.updates.position(tp)
                metrics.CONSUMER_LAG.labels(SERVICE, tp.topic).set(max(0, lag))

    async def _deadlines_forever(self) -> None:
        """The deadline timer: closes rounds on time even when no update arrives to wake the loop."""
        while True:
            now = now_ms()
            nearest = min((r.deadline_ms for r in self.rounds.values()), default=now + 60_000)
            await asyncio.sleep(min(self.cfg.deadline_tick_s, max(0.0, (nearest - now) / 1000)))
            try:
                async with self._lock:
                    await self.closer.close_ready(now_ms())
            except Exception as exc:
                if not is_transient(exc):
                    raise
                # Nothing changed in memory before the failed commit: the next tick tries again.
                log.warning("closing at deadline failed, will retry", error=f"{type(exc).__name__}: {exc}")

    # -- one batch, one transaction --------------------------------------------
    async def _handle_batch(self, batches: dict[TopicPartition, list[ConsumerRecord[Any, Any]]]) -> None:
        batch = _Batch()
        for tp, records in batches.items():
            cursor = self.cursors[tp.partition]
            for record in records:
                msg = None
                with process_span(record):
                    try:
                        got = self.intake.read(record, cursor)
                        if got is not None:
                            msg, size = got
                            assert isinstance(msg.body, ModelUpdate)
                            self._include(msg, msg.body, size, batch)
                            batch.accepted.append(msg)
                            key = (msg.body.job_id, msg.body.round)
                            self.closer.fanin.setdefault(key, FanIn()).add(record.headers)
                    except (ProtocolError, Rejected) as exc:
                        batch.rejected.append((exc, record, msg))
                cursor.advance(record.offset)
        timeouts = self.intake.expire(list(self.cursors.values()))
        if not (batch.touched or batch.rejected or timeouts or any(c.dirty for c in self.cursors.values())):
            return
        async with self.store.conn.transaction():
            for rnd in batch.touched.values():
                await self.store.checkpoint_round(rnd)
            for accepted in batch.accepted:
                await self.out.queue_update_accepted(accepted)
            for error, record, rejected in batch.rejected:
                await self._report(error, record, rejected)
            for expired in timeouts:
                await self.out.queue_rejection(
                    expired, topic=self.topics.updates.name, partition=-1, offset=-1, subject=None
                )
            for cursor in self.cursors.values():
                if cursor.dirty:
                    await self.store.save_cursor(cursor)
        for rnd in batch.touched.values():
            rnd.pending.clear()
            rnd.dirty = False
        await self.out.flush_outbox()

    def _include(self, msg: Message, update: ModelUpdate, size: int, batch: _Batch) -> None:
        """Check the update and fold it into its round's sum, or raise ``Rejected`` (counted per round)."""
        head = msg.header
        # The round the update claims: its traffic and rejections are reported with it.
        claimed = self.rounds.get((update.job_id, update.round))
        if claimed is not None:
            claimed.count("bytes_in", size)
            batch.touched[claimed.key] = claimed
        try:
            rnd = find_round(update, sender=head.sender, header_round=head.round, rounds=self.rounds)
            job = self.jobs[rnd.job_id]
            check_update(update, message_id=head.id, rnd=rnd, layout=job.layout, fmt=self.fixed_point)
            try:
                job.strategy.accumulate(
                    rnd.state, Update([t.array for t in update.tensors], update.num_examples)
                )
            except InvalidUpdateError as exc:  # the sum's own range and capacity checks
                raise out_of_range(exc, job.layout) from exc
        except Rejected as exc:
            if claimed is not None:
                claimed.count(f"rejected_{exc.reason}")
            raise
        rnd.include(Included(update.device_id, head.id, update.num_examples, update.metrics.get("loss")))
        metrics.ACCEPTED.labels(SERVICE, update.TYPE).inc()

    async def _report(self, exc: QflareError, record: ConsumerRecord[Any, Any], msg: Message | None) -> None:
        context: dict[str, str | int | float | bool | None] = {}
        ref = None
        if msg is not None and isinstance(msg.body, ModelUpdate):
            context = {
                "job_id": msg.body.job_id,
                "round": msg.body.round,
                "digest": msg.header.body_digest.hex(),
            }
            ref = msg.header.id
        elif record.value is not None:
            # Not verified: no id or job can be believed, but the bytes can be named.
            context = {"record_sha256": hashlib.sha256(record.value).hexdigest()}
        subject = record.key.decode(errors="replace") if record.key else None
        await self.out.queue_rejection(
            exc,
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            subject=subject,
            ref_id=ref,
            context=context,
        )


@dataclass
class _Batch:
    """What handling one fetched batch changed, to be committed in one transaction."""

    touched: dict[tuple[str, int], OpenRound] = field(default_factory=dict)
    #: Updates folded into a round, each audited (metadata only) in the same transaction.
    accepted: list[Message] = field(default_factory=list)
    rejected: list[tuple[QflareError, ConsumerRecord[Any, Any], Message | None]] = field(default_factory=list)
