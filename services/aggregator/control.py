"""The control topics: device records (keys), imported models, job commands and round tasks.

``sync`` reads every control partition up to the end offsets it sees when
called. The service calls it after fetching a batch of updates and before
handling it: a device answers a round only after the round task (and its own
device record) were in Kafka, so every update is judged against rounds and
keys at least as new as itself, whichever topic the consumer happened to read
first. Job commands and round tasks are each handled in one transaction with
the position of their partition, so none is applied twice or lost.

Before the first record a sync applies, ``before_change`` runs: the service
commits there whatever it handled of the updates topic since its last
checkpoint, so a crash never replays updates against control state newer than
the state they were first judged by (a round closed, a job paused, a key
revoked since). The end offsets come from a client that does not fetch: an
idle consumer's own ``end_offsets`` waits behind its long-poll (``fetch_max_wait_ms``,
500 ms), on every batch.
"""

from __future__ import annotations

import heapq
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from qflare import poison
from qflare.authority import authorise, check_command
from qflare.clock import now_ms
from qflare.errors import ProtocolError, QflareError, Rejected, ReplayError
from qflare.fl import JobSpec, StrategyState
from qflare.identity import TrustedKeys
from qflare.kafka import KafkaSettings, partitions, read_to_end
from qflare.keys import DeviceKeys, refuse_tombstone
from qflare.protocol import Decoder, Message
from qflare.protocol.control import JobCommand
from qflare.protocol.devices import Device
from qflare.protocol.topics import Topics
from qflare.protocol.training import RoundTask
from qflare.reasons import Reason
from services.aggregator.closing import Closer
from services.aggregator.config import AggregatorSettings
from services.aggregator.cursor import Cursor
from services.aggregator.jobs import Job
from services.aggregator.model_store import Imports, ModelStore
from services.aggregator.models import encode, named_groups
from services.aggregator.publisher import SERVICE, Publisher
from services.aggregator.rounds import OpenRound
from services.aggregator.store import AggregatorStore
from services.aggregator.weights import DeviceBook, RoundWeighting

log = structlog.get_logger("qflare.aggregator")


class Control:
    def __init__(
        self,
        cfg: AggregatorSettings,
        kafka: KafkaSettings,
        topics: Topics,
        store: AggregatorStore,
        out: Publisher,
        keys: DeviceKeys,
        closer: Closer,
        models: ModelStore,
        book: DeviceBook | None = None,
    ) -> None:
        self.cfg, self.kafka, self.topics = cfg, kafka, topics
        self.store, self.out, self.keys = store, out, keys
        #: Each device's latest status and declared dataset size (``services.aggregator.weights``).
        self.book = book or DeviceBook()
        self.closer = closer
        self.jobs, self.rounds = closer.jobs, closer.rounds
        self.models = models
        trusted = TrustedKeys(cfg.keys_dir)
        self.imports = Imports(topics.model_store, trusted, kafka.limits, models, out)
        self.decoders = {
            spec.name: Decoder(
                trusted,
                deployment=spec.deployment,
                allowed_types=spec.types,
                max_age_ms=spec.max_age_ms,
                limits=kafka.limits,
            )
            for spec in (topics.devices, topics.jobs, topics.rounds)
        }
        self.cursors: dict[TopicPartition, Cursor] = {}
        #: Awaited before a sync applies its first record (see the module docstring).
        self.before_change: Callable[[], Awaitable[None]] | None = None

    async def start(self, consumer: AIOKafkaConsumer, offsets: AIOKafkaConsumer | None = None) -> None:
        """Assign every control partition: devices and imported models from the start, the others
        from the checkpoint. ``offsets``, a started consumer with nothing assigned, answers the
        end offsets (default: ``consumer`` itself)."""
        t = self.topics
        self.consumer = consumer
        self.offsets = offsets or consumer
        devices, logged = partitions(t.devices, t.model_store), partitions(t.jobs, t.rounds)
        consumer.assign([*devices, *logged])
        await consumer.seek_to_beginning(*devices)
        now = now_ms()
        for spec in (t.jobs, t.rounds):
            stored = await self.store.cursors(spec.name, now)
            for tp in partitions(spec):
                self.cursors[tp] = stored.get(tp.partition) or Cursor(spec.name, tp.partition)
                consumer.seek(tp, self.cursors[tp].next_offset)
        self.parts = [*devices, *logged]

    async def sync(self) -> None:
        """Handle every control record up to the current end of each partition."""
        held: dict[TopicPartition, list[ConsumerRecord[Any, Any]]] = {}
        end = await self.offsets.end_offsets(self.parts)
        first = True
        async for record in read_to_end(self.consumer, self.parts, fetch=self._fetch, end=end):
            if first and self.before_change is not None:
                await self.before_change()
            first = False
            if record.topic == self.topics.devices.name:
                await self._device(record)
            elif record.topic == self.topics.model_store.name:
                # Before any job command of this sync: a model imported before a job's start is known.
                await self.imports.record(record)
            else:
                held.setdefault(TopicPartition(record.topic, record.partition), []).append(record)
        # Records of different topics come in fetch order, not in the order they were produced
        # (a job's start must come before its first round, a pause before the round it refuses),
        # so partitions are merged by producer timestamp (a job command first on a tie), each
        # partition staying in its own order.
        jobs = self.topics.jobs.name
        for record in heapq.merge(*held.values(), key=lambda r: (r.timestamp, r.topic != jobs)):
            await self._logged(record)

    async def _fetch(self, parts: list[TopicPartition]) -> poison.Batches:
        batches, gaps = await poison.fetch(
            self.consumer, *parts, service=SERVICE, timeout_ms=200, max_records=1000
        )
        for gap in gaps:
            # The positions move past the gap together with its audit record.
            cursor = self.cursors.get(TopicPartition(gap.topic, gap.partition))
            async with self.store.conn.transaction():
                await self.out.queue_gap(gap)
                if cursor is not None:  # the device topic is re-read from its start, never checkpointed
                    cursor.resume_at(gap.resumed)
                    await self.store.save_cursor(cursor)
            await self.out.flush_outbox()
        return batches

    # --- device records (key cache only; re-read from the start on every start-up) ---------

    async def _device(self, record: ConsumerRecord[Any, Any]) -> None:
        try:
            if record.value is None:
                refuse_tombstone(record.key)
            msg = self.decoders[record.topic].decode(record.value, record.topic)
            authorise(msg)
            assert isinstance(msg.body, Device)
            self.keys.apply(msg.body)  # refuses an older revision
            self.book.apply(msg.body)
        except ReplayError:
            return  # the registry re-sent a record (its outbox after a crash): harmless, already applied
        except Exception as exc:  # whatever one record holds, it is one rejection
            if poison.retry(exc):
                raise
            # Not checkpointed: the topic is replayed at each start, so the report repeats then.
            async with self.store.conn.transaction():
                await self._reject(record, poison.rejection(exc))
            await self.out.flush_outbox()

    # --- job commands and round tasks ----------------------------------------------------

    async def _logged(self, record: ConsumerRecord[Any, Any]) -> None:
        cursor = self.cursors[TopicPartition(record.topic, record.partition)]
        cursor.advance(record.offset)
        msg: Message | ProtocolError | Rejected
        try:
            if record.value is None:
                raise Rejected(Reason.SCHEMA, "record has no value", field="$")
            msg = self.decoders[record.topic].decode(record.value, record.topic)
        except Exception as exc:  # whatever one record holds, it is one rejection
            if poison.retry(exc):
                raise
            msg = poison.rejection(exc)
        if isinstance(msg, Message) and isinstance(msg.body, RoundTask):
            await self._close_overdue(msg.body.job_id)
        async with self.store.conn.transaction():
            try:
                if not isinstance(msg, Message):
                    raise msg
                if isinstance(msg.body, JobCommand):
                    await self._admit(msg)
                # A savepoint: a command refused half-way leaves no row behind, only its report.
                async with self.store.conn.transaction():
                    if isinstance(msg.body, JobCommand):
                        await self._job(msg, msg.body)
                    elif isinstance(msg.body, RoundTask):
                        await self._round(msg, msg.body)
            except Exception as exc:  # the savepoint undid what the record changed; report it
                if poison.retry(exc):
                    raise
                await self._reject(record, poison.rejection(exc))
            await self.store.save_cursor(cursor)
        await self.out.flush_outbox()

    async def _close_overdue(self, job_id: str) -> None:
        """Before a new round of ``job_id``: close its open round if that one's deadline has passed.

        The scheduler gives up on a round it heard nothing about well after the
        deadline (e.g. while the aggregator was down) and opens the next one; the
        old round is over either way, so its result is settled first.
        """
        now = now_ms()
        for rnd in [r for r in self.rounds.values() if r.job_id == job_id and r.deadline_ms <= now]:
            outcome = rnd.decide(now)
            if outcome is not None:
                await self.closer.close(rnd, outcome)

    async def _admit(self, msg: Message) -> None:
        """An allowed sender, a fresh command, applied once (``command_replay`` for any copy).

        The id is recorded in the cursor's transaction, so a crash re-reads the record
        and finds neither, but outside the command's savepoint: a command refused for
        its content stays spent, and a copy cannot succeed later when the job has changed.
        """
        now, max_age_s = now_ms(), self.cfg.command_max_age_s
        check_command(msg, max_age_s=max_age_s, now_ms=now)
        keep_after = now - int(max_age_s * 1000) - self.decoders[self.topics.jobs.name].max_skew_ms
        head = msg.header
        if not await self.store.first_application(head.sender, head.id, head.ts_ms, keep_after):
            raise Rejected(Reason.COMMAND_REPLAY, f"command {head.id.hex()} was already applied", field="id")

    async def _job(self, msg: Message, cmd: JobCommand) -> None:
        job = self.jobs.get(cmd.job_id)
        if cmd.command != "start":
            if job is None:
                raise Rejected(Reason.UNKNOWN_JOB, f"no job {cmd.job_id!r}", field="body.job_id")
            if job.status == "stopped":
                raise Rejected(Reason.JOB_STOPPED, f"job {cmd.job_id!r} is stopped", field="body.command")
            job.status = {"pause": "paused", "resume": "running", "stop": "stopped"}[cmd.command]
            await self.store.set_job(job.job_id, status=job.status)
            return
        config = JobSpec.parse(cmd.config, where="body.config")
        if job is not None:
            if job.config != config:
                raise Rejected(
                    Reason.JOB_CONFLICT, f"job {cmd.job_id!r} exists with another config", field="body.config"
                )
            return  # a repeated start changes nothing
        stored = None if config.builtin is not None else await self.models.get(config.model)
        self.closer.evaluator.check(config)  # central evaluation needs the model's code
        # Refuses a model this aggregator does not have (``unknown_model``).
        job = Job(cmd.job_id, config, "running", stored=stored)
        if not await self.store.insert_job(job.job_id, dict(cmd.config), job.strategy_state):
            raise Rejected(Reason.JOB_CONFLICT, f"job id {cmd.job_id!r} is taken", field="body.job_id")
        if await self.store.latest_version(job.job_id) is None:
            layout = job.layout
            state = StrategyState.from_bytes(job.strategy_state)
            model = encode(
                job.job_id,
                0,
                job.initial_weights(),
                layout.names,
                round=None,
                model=job.model,
                parent=None,
                groups=named_groups(job.strategy.server_groups(state), job.spec, layout),
            )
            await self.store.insert_model(
                job.job_id, 0, parent=None, round=None, metrics={}, digest=model.digest, weights=model.data
            )
            await self.out.queue_model(model)
        self.jobs[job.job_id] = job
        log.info("job started", job_id=job.job_id, model=config.model, strategy=config.strategy.name)

    async def _round(self, msg: Message, task: RoundTask) -> None:
        authorise(msg)
        job = self.jobs.get(task.job_id)
        if job is None:
            raise Rejected(Reason.UNKNOWN_JOB, f"no job {task.job_id!r}", field="body.job_id")
        if job.status != "running":
            raise Rejected(
                Reason.JOB_NOT_RUNNING, f"job {task.job_id!r} is {job.status}", field="body.job_id"
            )
        if task.strategy != job.strategy.name:
            raise Rejected(
                Reason.STRATEGY_MISMATCH, f"the job uses {job.strategy.name!r}", field="body.strategy"
            )
        if task.fencing_token < job.fencing_token:
            raise Rejected(
                Reason.STALE_FENCING_TOKEN,
                f"a scheduler leader with token {job.fencing_token} has taken over",
                field="body.fencing_token",
            )
        known = await self.store.round_task_id(task.job_id, task.round)
        if known == msg.header.id:
            raise Rejected(Reason.REPLAY, f"round {task.round} was already opened by this task", field="id")
        same = self.rounds.get((task.job_id, task.round))
        if same is not None and _same_task(same, task):
            # A restarted scheduler re-announcing its open round: only its token is news.
            await self._fence(job, task.fencing_token)
            return
        last = await self.store.last_round(task.job_id)
        if last is not None and task.round <= last:
            raise Rejected(
                Reason.WRONG_ROUND, f"round numbers must increase; last was {last}", field="body.round"
            )
        busy = [r.round for r in self.rounds.values() if r.job_id == task.job_id]
        if busy:
            raise Rejected(Reason.ROUND_OPEN, f"round {busy[0]} of the job is still open", field="body.round")
        latest = await self.store.latest_version(task.job_id)
        if task.model_version != latest:
            raise Rejected(
                Reason.WRONG_VERSION, f"the job's latest model is {latest}", field="body.model_version"
            )
        # The latest version is a stored one, and a fresh sum needs only its shapes, which the
        # job's layout has: the stored model is neither fetched nor decoded to open a round.
        layout = job.layout
        sums = job.strategy.begin_round(
            StrategyState.from_bytes(job.strategy_state), task.round, layout.names, layout.shapes
        )
        rnd = OpenRound.from_task(task, msg.header.id, now_ms(), sums)
        if not rnd.evaluate_only:  # the weighting rule is fixed now, and stored with the round
            rnd.weighting = RoundWeighting.open(job.config, task.devices, self.book)
        await self.store.insert_round(rnd, dict(task.config))
        await self._fence(job, task.fencing_token)
        self.rounds[rnd.key] = rnd
        cap = None if rnd.weighting is None else rnd.weighting.rule.cap
        log.info(
            "round opened", job_id=task.job_id, round=task.round, devices=len(task.devices), weight_cap=cap
        )

    async def _fence(self, job: Job, token: int) -> None:
        """Remember the highest leader token seen for the job (in the caller's transaction)."""
        if token > job.fencing_token:
            await self.store.set_job(job.job_id, fencing_token=token)
            job.fencing_token = token

    async def _reject(self, record: ConsumerRecord[Any, Any], exc: QflareError) -> None:
        await self.out.queue_rejection(
            exc,
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            subject=poison.record_key(record),
        )


def _same_task(rnd: OpenRound, task: RoundTask) -> bool:
    return (rnd.model_version, rnd.devices, rnd.deadline_ms, rnd.min_updates) == (
        task.model_version,
        tuple(task.devices),
        task.deadline_ms,
        task.min_updates,
    )
