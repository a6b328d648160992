"""The aggregator's consumer loop, top to bottom.

Per fetched batch of updates: bring the control topics up to date (rounds,
jobs, device keys), then verify, check and fold each update into its round's
exact running sum (a buffered strategy keeps its updates instead). What the
batches change accumulates in memory until a checkpoint commits in ONE
PostgreSQL transaction the sums, the included (device, message id) pairs, a
buffered round's new updates (``services.aggregator.buffered``, reloaded at
start), the audit events of those batches (accepted and rejected updates, gaps)
and the position of every updates partition.
A checkpoint is taken every ``checkpoint_every_updates`` updates or
``checkpoint_interval_s`` seconds, at the end of the start-up backlog, before
any round closes, before a control record is applied, and at a clean stop:
a CNN's running sum is 13.3 MB, too much to rewrite for every batch of six.

Offsets live in PostgreSQL, not in a Kafka group: on start the partitions are
assigned and sought to the checkpointed positions, so a kill -9 anywhere
replays exactly the records whose effects were not committed, and the
fixed-point sums make the result independent of the replay order. The audit
events of a batch enter the outbox only in the checkpoint that covers it, so
a replayed batch reports its records once, not once per run. Rounds close when
everyone answered (checked after each batch) or at their deadline (a timer
task), through ``Closer``.

Poison records (``qflare.poison``): whatever one record holds, it is refused with
a typed reason and committed past; only a transient error (a server away) stops
the step. A stored position that left the log is an audited ``offset.gap``.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field, replace
from typing import Any

import structlog
from aiokafka import ConsumerRecord, TopicPartition

from qflare import metrics, poison
from qflare.clock import now_ms
from qflare.errors import (
    ChunkTimeoutError,
    InvalidUpdateError,
    ProtocolError,
    QflareError,
    Rejected,
    is_transient,
)
from qflare.fl import FixedPoint, JobSpec
from qflare.fl.buffer import UpdateBuffer, remove_stale
from qflare.fl.evaluation import DeviceEvaluation, personal_accuracy
from qflare.identity import load_identity
from qflare.kafka import KafkaSettings, make_consumer, make_producer, partitions, prepare_topics
from qflare.keys import DeviceKeys
from qflare.protocol import Message
from qflare.protocol.messages import ModelChunk
from qflare.protocol.training import ModelUpdate, RoundFailure
from qflare.runner import BatchLoop
from qflare.tracing import FanIn, process_span
from qflare.types import Scalar
from services.aggregator import buffered
from services.aggregator.checks import (
    admit_stream,
    check_answer,
    check_capacity,
    check_evaluation_reply,
    check_update,
    check_values,
    find_round,
    out_of_range,
)
from services.aggregator.closing import Closer
from services.aggregator.config import AggregatorSettings
from services.aggregator.control import Control
from services.aggregator.cursor import Cursor
from services.aggregator.evaluation import Evaluator
from services.aggregator.intake import Intake
from services.aggregator.jobs import Job
from services.aggregator.model_store import ModelStore
from services.aggregator.publisher import SERVICE, Publisher
from services.aggregator.rounds import Included, OpenRound, check_round_sender, weigh_answer
from services.aggregator.store import AggregatorStore
from services.aggregator.weights import DeviceBook, RoundWeighting

log = structlog.get_logger("qflare.aggregator")


class AggregatorService(BatchLoop):
    def __init__(self, cfg: AggregatorSettings | None = None, kafka: KafkaSettings | None = None) -> None:
        super().__init__()
        self.cfg = cfg or AggregatorSettings()
        self.kafka = kafka or KafkaSettings()
        self.topics = self.kafka.topics
        self.identity = load_identity(self.cfg.identity, self.cfg.keys_dir)
        self.keys = DeviceKeys()
        self.book = DeviceBook()  # each device's status and declared size, from the same records
        self.jobs: dict[str, Job] = {}
        self.rounds: dict[tuple[str, int], OpenRound] = {}
        self.fixed_point = FixedPoint()
        self.intake = Intake(
            self.keys,
            self.topics.updates,
            self.kafka.limits,
            timeout_ms=int(self.cfg.chunk_timeout_s * 1000),
            max_streams=self.cfg.max_open_streams,
            lifetime_ms=int(self.cfg.chunk_lifetime_s * 1000),
            max_bytes=self.cfg.max_stream_bytes,
            max_bytes_per_sender=self.cfg.max_stream_bytes_per_sender,
            admit=self._admit_stream,
            book=self.book,
        )
        self.tally = poison.Tally(
            SERVICE,
            window_s=self.cfg.rejection_window_s,
            reports_per_window=self.cfg.rejection_reports_per_window,
        )
        self.cursors: dict[int, Cursor] = {}
        self._lock = asyncio.Lock()
        #: What the batches handled since the last checkpoint changed (committed by ``_checkpoint``).
        self._batch = _Batch()

    # -- lifecycle -----------------------------------------------------------
    async def start(self) -> None:
        self.store = await AggregatorStore.connect(self.cfg.postgres_dsn, self.kafka.topic_prefix)
        self._hold(self.store.close)
        await prepare_topics(self.kafka)
        self.models = ModelStore(self.store, self.kafka.limits)
        # The truth is rebuilt from PostgreSQL, never carried over in memory.
        for row in await self.store.jobs():
            try:
                spec = JobSpec.parse(row.config)
                stored = None if spec.builtin is not None else await self.models.get(spec.model)
                self.jobs[row.job_id] = Job(
                    row.job_id, spec, row.status, row.strategy_state, row.fencing_token, stored
                )
            except (ProtocolError, Rejected) as exc:
                # Stored by an older version with another schema: left out, not fatal to every other job.
                log.error("stored job does not load; it is left out", job_id=row.job_id, error=str(exc))
        if self.cfg.buffer_dir is not None:  # this aggregator's own: what a kill -9 left there goes
            remove_stale(self.cfg.buffer_dir)
        for rnd in await self.store.open_rounds():
            if rnd.job_id in self.jobs:
                self.rounds[rnd.key] = rnd
                if self.jobs[rnd.job_id].strategy.mode == "buffered":
                    # A buffered round's checkpoint is its stored updates, not a sum.
                    rnd.buffer = await buffered.load(
                        self.store.conn, rnd, self.cfg.buffer_max_bytes, self.cfg.buffer_dir
                    )
        self.producer = await self._started(make_producer(self.kafka))
        self.out = Publisher(
            self.producer, self.store, self.identity, self.topics, self.kafka.limits, self.tally
        )
        await self.out.flush_outbox()  # what a crash left unsent goes out before anything new
        # "none" here too: a checkpointed position of a control topic that left the log is a gap.
        self.control_consumer = await self._started(
            make_consumer(self.kafka, group_id=None, auto_offset_reset="none")
        )
        # Assigned nothing, so it never fetches: its end offsets answer at once (control.py).
        self.offsets = await self._started(make_consumer(self.kafka, group_id=None))
        self.closer = Closer(
            self.store,
            self.out,
            Evaluator(self.cfg.eval_examples, self.cfg.evaluators),
            self.jobs,
            self.rounds,
        )
        self.control = Control(
            self.cfg,
            self.kafka,
            self.topics,
            self.store,
            self.out,
            self.keys,
            self.closer,
            self.models,
            self.book,
        )
        self.control.before_change = self._checkpoint
        await self.control.start(self.control_consumer, self.offsets)
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
        # "none": a stored position that left the log raises, and ``poison.fetch`` audits the gap.
        self.updates = await self._started(make_consumer(self.kafka, group_id=None, auto_offset_reset="none"))
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
        end = await self.offsets.end_offsets(list(self.updates.assignment()))
        while True:
            await self._step()
            positions = {tp: await self.updates.position(tp) for tp in end}
            if all(positions[tp] >= offset for tp, offset in end.items()):
                break
        async with self._lock:
            await self._checkpoint()

    async def run(self) -> None:
        """The batch loop; a clean stop commits what was handled since the last checkpoint."""
        await super().run()
        async with self._lock:
            await self._checkpoint()

    async def _step(self) -> None:
        """One fetch: control topics first, then the batch, then close the rounds everyone answered."""
        batches, gaps = await poison.fetch(
            self.updates, service=SERVICE, timeout_ms=200, max_records=self.cfg.batch_max_records
        )
        async with self._lock:
            await self.control.sync()
            await self._handle_batch(batches, gaps)
            await self._close_ready(None)
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
                    await self._close_ready(now_ms())
            except Exception as exc:
                if not is_transient(exc):
                    raise
                # Nothing changed in memory before the failed commit (the checkpoint's batch is
                # kept until its commit succeeds): the next tick tries again.
                log.warning("closing at deadline failed, will retry", error=f"{type(exc).__name__}: {exc}")

    async def _close_ready(self, now: int | None) -> None:
        """Close the rounds whose outcome is decided, once everything they hold is checkpointed."""
        if any(rnd.decide(now) is not None for rnd in self.rounds.values()):
            await self._checkpoint()
            await self.closer.close_ready(now)

    # -- batches, and the checkpoint that commits them -------------------------------
    async def _handle_batch(
        self,
        batches: dict[TopicPartition, list[ConsumerRecord[Any, Any]]],
        gaps: list[poison.Gap] | None = None,
    ) -> None:
        """Handle one fetched batch into ``self._batch``; checkpoint when one is due."""
        batch = self._batch
        for gap in gaps or []:
            self._skip(gap)
            batch.gaps.append(gap)
        for tp, records in batches.items():
            cursor = self.cursors[tp.partition]
            for record in records:
                msg = None
                with process_span(record):
                    try:
                        got = self.intake.read(record, cursor)
                        if got is not None:
                            msg, size = got
                            if isinstance(msg.body, RoundFailure):
                                self._include_failure(msg, msg.body, size, batch)
                            else:
                                assert isinstance(msg.body, ModelUpdate)
                                self._include(msg, msg.body, size, batch)
                            batch.accepted.append(_metadata(msg))
                            key = (msg.body.job_id, msg.body.round)
                            self.closer.fanin.setdefault(key, FanIn()).add(record.headers)
                    except Exception as exc:  # whatever one record holds, it is one rejection
                        if poison.retry(exc):
                            raise
                        batch.rejected.append(_rejection(poison.rejection(exc), record, msg))
                cursor.advance(record.offset)
        batch.timeouts.extend(self.intake.expire(list(self.cursors.values())))
        batch.summaries.extend(self.tally.due())
        if self._checkpoint_due():
            await self._checkpoint()

    def _checkpoint_due(self) -> bool:
        """Enough handled since the last checkpoint, or its oldest change waited long enough."""
        batch, cfg = self._batch, self.cfg
        if not (batch.changes or any(c.dirty for c in self.cursors.values())):
            return False
        if batch.since is None:
            batch.since = time.monotonic()
        if len(batch.accepted) + len(batch.rejected) >= cfg.checkpoint_every_updates:
            return True
        return time.monotonic() - batch.since >= cfg.checkpoint_interval_s

    async def _checkpoint(self) -> None:
        """Commit, in one transaction, everything handled since the last checkpoint (the caller
        holds ``_lock``); then send its audit events. Nothing to commit: nothing done."""
        batch = self._batch
        dirty = [c for c in self.cursors.values() if c.dirty]
        if not (batch.changes or dirty):
            return
        try:
            await self._commit(batch, dirty)
        except BaseException:
            for cursor in dirty:  # not saved after all: the retry must write them
                cursor.dirty = True
            raise
        for rnd in batch.touched.values():
            rnd.pending.clear()
            rnd.pending_updates.clear()
            rnd.dirty = False
        self._batch = _Batch()
        await self.out.flush_outbox()

    async def _commit(self, batch: _Batch, cursors: list[Cursor]) -> None:
        async with self.store.conn.transaction():
            for rnd in batch.touched.values():
                await self.store.checkpoint_round(rnd)
                await buffered.save_pending(self.store.conn, rnd)  # a buffered round's new updates
            for gap in batch.gaps:
                await self.out.queue_gap(gap)
            for accepted in batch.accepted:
                if isinstance(accepted.body, RoundFailure):
                    await self._isolated(self.out.queue_update_failed(accepted))
                else:
                    await self._isolated(self.out.queue_update_accepted(accepted))
            for rejection in batch.rejected:
                await self._isolated(self._report(rejection))
            for expired in batch.timeouts:
                await self.out.queue_rejection(
                    expired, topic=self.topics.updates.name, partition=-1, offset=-1, subject=None
                )
            for summary in batch.summaries:
                await self.out.queue_summary(summary)
            for cursor in cursors:
                await self.store.save_cursor(cursor)

    async def _isolated(self, write: Coroutine[Any, Any, None]) -> None:
        """One record's write in a savepoint: if the database refuses it for good, the batch's
        other writes stand and only this report is lost (logged); a transient error still
        aborts the whole transaction, to be retried."""
        try:
            async with self.store.conn.transaction():
                await write
        except Exception as exc:
            if poison.retry(exc):
                raise
            refused = poison.rejection(exc)
            log.error("a report of the batch could not be stored", reason=refused.reason, error=str(refused))

    def _skip(self, gap: poison.Gap) -> None:
        """Move the partition's cursor past a gap; streams that began inside it can never finish."""
        cursor = self.cursors[gap.partition]
        for key, (first, _) in list(cursor.open_streams.items()):
            if first < gap.resumed:
                cursor.stream_done(key)
        if gap.resumed > 0:
            cursor.advance(gap.resumed - 1)
        cursor.dirty = True

    def _admit_stream(self, msg: Message, chunk: ModelChunk) -> None:
        admit_stream(msg, chunk, self.rounds, self.jobs, self.cfg.update_framing_bytes)

    def _include(self, msg: Message, update: ModelUpdate, size: int, batch: _Batch) -> None:
        """Check the update against its job's update spec and fold it into its round (the sums of a
        streaming strategy, the buffer of a buffered one), or raise ``Rejected`` (counted per round)."""
        head = msg.header
        # The round the update claims: its traffic and rejections are reported with it.
        claimed = self.rounds.get((update.job_id, update.round))
        if claimed is not None:
            claimed.count("bytes_in", size)
            batch.touched[claimed.key] = claimed
        try:
            rnd = find_round(update, sender=head.sender, header_round=head.round, rounds=self.rounds)
            check_round_sender(self.book, rnd, head.sender, head.id)
            job, weight = self.jobs[rnd.job_id], update.num_examples
            if rnd.evaluate_only:
                check_evaluation_reply(update, message_id=head.id, rnd=rnd)
            else:
                spec = job.spec
                accepted = check_update(update, message_id=head.id, rnd=rnd, spec=spec, fmt=self.fixed_point)
                # The strategy aggregates with the server's weight, never the device's own claim.
                weighting = rnd.weighting or RoundWeighting.open(job.config, rnd.devices, self.book)
                accepted = weigh_answer(rnd, accepted, weighting, self.book, head.id)
                weight = accepted.num_examples
                if job.strategy.mode == "buffered":
                    check_values(accepted, spec)  # no sum guards a buffered strategy's range
                    if rnd.buffer is None:
                        rnd.buffer = UpdateBuffer(self.cfg.buffer_max_bytes, self.cfg.buffer_dir)
                    rnd.buffer.add(accepted)
                    rnd.pending_updates.append(accepted)
                else:
                    if len(spec.groups) > 1:
                        # Each group's sum guards its own range, one group after the other: all
                        # must be known good before the first is added, or a bad second group
                        # would leave the first one's sum changed.
                        check_values(accepted, spec)
                        check_capacity(rnd.sums, spec, accepted.num_examples)
                    try:
                        job.strategy.accumulate(rnd.sums, accepted)
                    except InvalidUpdateError as exc:  # the sum's own range and capacity checks
                        raise out_of_range(exc, spec) from exc
        except Rejected as exc:
            if claimed is not None:
                claimed.count(f"rejected_{exc.reason}")
            raise
        # A reply without a usable evaluation still counts as an answer; it is left out of the combination.
        evaluation = DeviceEvaluation.from_metrics(update.metrics)
        loss = update.metrics.get("loss")
        personal = personal_accuracy(update.metrics)
        rnd.include(
            Included(update.device_id, head.id, weight, loss, evaluation, None, personal, update.num_examples)
        )
        metrics.ACCEPTED.labels(SERVICE, update.TYPE).inc()

    def _include_failure(self, msg: Message, failure: RoundFailure, size: int, batch: _Batch) -> None:
        """Count a device's failed reply as its answer (no update), or raise ``Rejected``."""
        head = msg.header
        claimed = self.rounds.get((failure.job_id, failure.round))
        if claimed is not None:
            claimed.count("bytes_in", size)
            batch.touched[claimed.key] = claimed
        try:
            rnd = find_round(failure, sender=head.sender, header_round=head.round, rounds=self.rounds)
            check_round_sender(self.book, rnd, head.sender, head.id)
            check_answer(failure, message_id=head.id, rnd=rnd)
        except Rejected as exc:
            if claimed is not None:
                claimed.count(f"rejected_{exc.reason}")
            raise
        rnd.include(Included(failure.device_id, head.id, 0, None, failure=failure.reason))
        metrics.ACCEPTED.labels(SERVICE, failure.TYPE).inc()

    async def _report(self, r: _Rejection) -> None:
        await self.out.queue_rejection(
            r.error,
            topic=r.topic,
            partition=r.partition,
            offset=r.offset,
            subject=r.subject,
            ref_id=r.ref_id,
            context=dict(r.context),
            source=r.source,
        )


@dataclass(frozen=True, slots=True)
class _Rejection:
    """A refused record as its report needs it: never its bytes, which would otherwise be held
    in memory until the checkpoint."""

    error: QflareError
    topic: str
    partition: int
    offset: int
    subject: str | None
    ref_id: bytes | None
    context: dict[str, Scalar]
    source: str | None


def _rejection(exc: QflareError, record: ConsumerRecord[Any, Any], msg: Message | None) -> _Rejection:
    context: dict[str, Scalar] = {}
    ref = None
    if msg is not None and isinstance(msg.body, ModelUpdate | RoundFailure):
        context = {
            "job_id": msg.body.job_id,
            "round": msg.body.round,
            "digest": msg.header.body_digest.hex(),
        }
        ref = msg.header.id
    elif record.value is not None:
        # Not verified: no id or job can be believed, but the bytes can be named.
        context = {"record_sha256": hashlib.sha256(record.value).hexdigest()}
    return _Rejection(
        exc,
        record.topic,
        record.partition,
        record.offset,
        poison.record_key(record),
        ref,
        context,
        None if msg is None else msg.header.sender,
    )


def _metadata(msg: Message) -> Message:
    """The accepted message as its audit event needs it: an update without its tensors (the sum
    has them), so what waits for the checkpoint stays small."""
    if isinstance(msg.body, ModelUpdate):
        return replace(msg, body=replace(msg.body, tensors=()))
    return msg


@dataclass
class _Batch:
    """What the batches handled since the last checkpoint changed, to be committed in one transaction."""

    touched: dict[tuple[str, int], OpenRound] = field(default_factory=dict)
    #: Updates folded into a round and failed replies counted, each audited (metadata only)
    #: in the same transaction.
    accepted: list[Message] = field(default_factory=list)
    rejected: list[_Rejection] = field(default_factory=list)
    #: Chunk streams dropped, rejection summaries due and offset gaps met, each audited.
    timeouts: list[ChunkTimeoutError] = field(default_factory=list)
    summaries: list[poison.Summary] = field(default_factory=list)
    gaps: list[poison.Gap] = field(default_factory=list)
    #: ``time.monotonic()`` when a checkpoint first had something to commit (None: not yet).
    since: float | None = None

    @property
    def changes(self) -> bool:
        return bool(
            self.touched or self.accepted or self.rejected or self.timeouts or self.summaries or self.gaps
        )
