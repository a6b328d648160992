"""The scheduler: a faust app whose tables are changelog-backed, so a restart resumes.

Tables:
- ``device-health`` and ``device-status`` (co-partitioned with the health and
  device topics) say which devices are selectable: active and online.
- ``round-progress`` (one partition) holds each job's state machine
  (:class:`services.scheduler.logic.Progress`).

One agent, concurrency 1 (higher concurrency can lose messages, faust-streaming
issue #606), reads job commands and round-complete events in order and opens
rounds. A timer nudges jobs that wait for devices or whose round is overdue by
sending the scheduler's own signed ``resume`` command through the same topic,
so every state change happens inside the agent and reaches the changelog.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import faust
import structlog

from qflare import health, metrics, poison
from qflare.clock import now_ms
from qflare.errors import ConfigError, ProtocolError
from qflare.fl import JobSpec
from qflare.identity import Identity, TrustedKeys
from qflare.kafka import KafkaSettings
from qflare.keys import newer, refuse_tombstone
from qflare.protocol import Decoder, seal
from qflare.protocol.control import JobCommand
from qflare.protocol.devices import Device, DeviceHealth
from qflare.protocol.training import RoundComplete, RoundTask
from qflare.tracing import process_span, round_span, send_span
from services.scheduler.config import SchedulerSettings
from services.scheduler.gate import SERVICE, Gate
from services.scheduler.logic import Progress, after_complete, overdue, quorum, select, task_config
from services.scheduler.state import SignedTable

log = structlog.get_logger("qflare.scheduler")


@dataclass(frozen=True)
class _Record:
    """Where the event a faust stream is at came from: what a ``process`` span records."""

    topic: str
    partition: int
    offset: int
    headers: Any


def _record_of(stream: faust.StreamT[bytes]) -> _Record:
    event = stream.current_event
    if event is None:
        return _Record("unknown", -1, -1, None)
    m = event.message
    return _Record(m.topic, m.partition, m.offset, m.headers)


def faust_credentials(kafka: KafkaSettings) -> faust.types.auth.CredentialsT | None:
    """The scheduler's own principal, as the factories of qflare.kafka would log in."""
    if kafka.security_protocol in ("SASL_SSL", "SASL_PLAINTEXT"):
        secret = kafka.password
        return faust.SASLCredentials(
            username=kafka.username,
            password=None if secret is None else secret.get_secret_value(),
            ssl_context=kafka.ssl_context(),
            mechanism=kafka.sasl_mechanism,
        )
    if kafka.security_protocol == "SSL":
        return faust.SSLCredentials(kafka.ssl_context())
    return None


def app_id(cfg: SchedulerSettings, kafka: KafkaSettings) -> str:
    """The faust app id, which is also the consumer group's id."""
    return f"{cfg.app_id}{kafka.topic_prefix}".rstrip(".")


class Scheduler:
    def __init__(self, cfg: SchedulerSettings, kafka: KafkaSettings, identity: Identity, fence: int) -> None:
        self.cfg = cfg
        self.tally = poison.Tally(
            SERVICE, window_s=cfg.rejection_window_s, reports_per_window=cfg.rejection_reports_per_window
        )
        self.t = kafka.topics
        self.identity = identity
        self.fence = fence
        trusted = TrustedKeys(cfg.keys_dir)
        t = self.t
        self.decoder = Decoder(
            trusted,
            deployment=kafka.deployment_id,
            allowed_types={"device", "device_health", "job_command", "round_complete"},
            max_age_ms=None,
        )
        metrics.preset_rejections(SERVICE, (t.health.name, t.devices.name, "control"))
        self.app = faust.App(
            app_id(cfg, kafka),
            broker=f"kafka://{kafka.bootstrap}",
            broker_credentials=faust_credentials(kafka),
            store="memory://",
            datadir=str(cfg.data_dir),
            topic_partitions=1,
            web_enabled=False,
            consumer_auto_offset_reset="earliest",
            broker_commit_every=1,
            # A killed scheduler's group membership must lapse quickly so its
            # successor gets the partitions (and the open rounds) within seconds.
            broker_session_timeout=10.0,
            broker_heartbeat_interval=2.0,
        )
        self.health_topic = self._raw(t.health.name, partitions=t.health.partitions)
        self.devices_topic = self._raw(t.devices.name, partitions=t.devices.partitions)
        self.control = self._raw(t.jobs.name, t.rounds_complete.name, partitions=1)
        self.jobs_topic = self._raw(t.jobs.name, partitions=1)
        self.rounds_topic = self._raw(t.rounds.name, partitions=t.rounds.partitions)
        self.audit_topic = self._raw(t.audit.name, partitions=t.audit.partitions)
        signer = identity.signer
        # Every table row is a record this scheduler signed (services/scheduler/state.py).
        self.health = SignedTable(self.app.Table("device-health", partitions=t.health.partitions), signer)
        self.status = SignedTable(self.app.Table("device-status", partitions=t.devices.partitions), signer)
        progress = self.app.Table("round-progress", partitions=1)
        self.progress = SignedTable(progress, signer, check=Progress.from_dict)
        #: Job commands applied, by sender and id: a copy is refused even after a restart.
        self.applied = SignedTable(self.app.Table("applied-commands", partitions=1), signer)
        self.gate = Gate(cfg, identity, self.decoder, self.audit_topic, t.audit.channel, self.applied)
        self.gate.tables = (self.health, self.status, self.progress, self.applied)
        self.app.agent(self.health_topic, name="health", concurrency=1)(self._health_agent)
        self.app.agent(self.devices_topic, name="devices", concurrency=1)(self._devices_agent)
        self.app.agent(self.control, name="progress", concurrency=1)(self._progress_agent)
        self.app.timer(cfg.tick_s)(self._tick)
        # faust starts app tasks once its tables are recovered: from then on it schedules.
        health.set_status(SERVICE, "starting")
        self.app.task(self._ready)

    def _raw(self, *names: str, partitions: int) -> faust.TopicT:
        # Records are our signed envelopes: faust passes the bytes through untouched.
        return self.app.topic(*names, partitions=partitions, key_serializer="raw", value_serializer="raw")

    async def _ready(self) -> None:
        # Tables are recovered by now: rows nobody signed are refused before anything is scheduled.
        dropped = sum(table.verify_all() for table in self.gate.tables)
        await self.gate.report_state()
        log.info("state verified", dropped=dropped)
        health.set_status(SERVICE, "ready")

    # -- inputs ----------------------------------------------------------------
    # Poison records (qflare.poison): whatever a record holds, an agent rejects it and goes on.
    # An exception that left an agent would crash the worker, and it would meet the same record
    # again after every restart; only a transient error may leave.
    def _decode(self, value: bytes | None, topic: str, read_from: str | None = None) -> Any:
        """``topic`` labels the metrics; ``read_from`` (default: ``topic``) is the record's topic."""
        if value is None:
            return None
        try:
            return self.decoder.decode(value, read_from or topic)
        except ProtocolError as exc:
            self._reject(topic, exc, None)
            return None

    def _reject(self, topic: str, exc: BaseException, source: str | None) -> None:
        """Count and log one refused record, rate-limited (the scheduler writes no audit events)."""
        refused = poison.rejection(exc)
        # Counted always; only the log line is rate-limited.
        metrics.REJECTED.labels(SERVICE, topic, refused.reason).inc()
        if self.tally.note(topic, source, refused.reason):
            log.warning("rejected", topic=topic, reason=refused.reason, error=str(refused))
        for summary in self.tally.due():
            log.warning("rejections summarised", source=summary.source, **summary.detail())

    async def _health_agent(self, stream: faust.StreamT[bytes]) -> None:
        async for value in stream:
            try:
                msg = self._decode(value, self.t.health.name)
                if msg is not None and isinstance(msg.body, DeviceHealth) and await self.gate.allowed(msg):
                    self.health[msg.body.device_id] = {"state": msg.body.state}
            except Exception as exc:
                if poison.retry(exc):
                    raise
                self._reject(self.t.health.name, exc, None)

    async def _devices_agent(self, stream: faust.StreamT[bytes]) -> None:
        async for value in stream:
            try:
                if value is None:
                    # Unsigned: the device keeps its status. Only a signed "deleted" record removes it.
                    refuse_tombstone(None)
                msg = self._decode(value, self.t.devices.name)
                if msg is None or not isinstance(msg.body, Device) or not await self.gate.allowed(msg):
                    continue
                device = msg.body
                # The revision lives in the signed status row, so it survives a restart with it.
                row = self.status.get(device.device_id) or {}
                if newer(device, int(row.get("revision", 0))):
                    self.status[device.device_id] = {"status": device.status, "revision": device.revision}
            except Exception as exc:
                if poison.retry(exc):
                    raise
                self._reject(self.t.devices.name, exc, None)

    async def _progress_agent(self, stream: faust.StreamT[bytes]) -> None:
        async for value in stream:
            msg = None
            try:
                msg = self._decode(value, "control", _record_of(stream).topic)
                if msg is None:
                    continue
                body = msg.body
                if isinstance(body, JobCommand) and await self.gate.fresh_command(msg):
                    await self._command(body)
                elif isinstance(body, RoundComplete) and await self.gate.allowed(msg):
                    with process_span(_record_of(stream), group=self.app.conf.id):
                        await self._completed(body)
                await self.gate.report_state()
            except Exception as exc:
                if poison.retry(exc):
                    raise
                self._reject("control", exc, None if msg is None else msg.header.sender)

    # -- the state machine -------------------------------------------------------
    async def _command(self, cmd: JobCommand) -> None:
        current = self.progress.get(cmd.job_id)
        if cmd.command == "start":
            if current:
                return  # a job starts once; a re-delivered start is a no-op
            try:
                JobSpec.parse(cmd.config)
            except ProtocolError as exc:
                log.warning("job refused", job_id=cmd.job_id, error=str(exc))
                return
            p = Progress(cmd.job_id, dict(cmd.config))
            log.info("job started", job_id=cmd.job_id, config=dict(cmd.config))
            await self._open(p)
            return
        if not current:
            return
        p = Progress.from_dict(current)
        if cmd.command == "stop":
            p.status, p.open = "stopped", False
        elif cmd.command == "pause" and p.status == "running":
            p.status = "paused"
        elif cmd.command == "resume":
            await self._resume(p)
            return
        self.progress[p.job_id] = p.to_dict()

    async def _resume(self, p: Progress) -> None:
        if p.status in ("paused", "waiting_devices"):
            p.status = "running"
            if not p.open:
                await self._open(p)
                return
        if overdue(p, now_ms(), int(self.cfg.grace_s * 1000)):
            log.warning("round overdue, retrying", job_id=p.job_id, round=p.round)
            p.open = False
            p.attempts += 1
            await self._open(p)
            return
        self.progress[p.job_id] = p.to_dict()

    async def _completed(self, rc: RoundComplete) -> None:
        current = self.progress.get(rc.job_id)
        if not current:
            return
        p = Progress.from_dict(current)
        log.info(
            "round complete", job_id=rc.job_id, round=rc.round, status=rc.status, version=rc.model_version
        )
        if after_complete(p, rc.round, rc.status, rc.model_version, dict(rc.metrics)):
            await self._open(p)
        else:
            self.progress[p.job_id] = p.to_dict()
            if p.status == "done":
                log.info("job done", job_id=p.job_id, rounds=p.completed_rounds, version=p.model_version)

    async def _open(self, p: Progress) -> None:
        try:
            cfg = JobSpec.parse(p.config)
        except ProtocolError as exc:  # e.g. a job stored by a version with another schema
            self._stop(p, exc)
            return
        online = {d for d, row in self.health.items() if row.get("state") == "online"}
        available = [d for d, row in self.status.items() if row.get("status") == "active" and d in online]
        chosen = select(available, cfg, p.round + 1)
        if chosen is None:
            p.status = "waiting_devices"
            self.progress[p.job_id] = p.to_dict()
            log.info("waiting for devices", job_id=p.job_id, available=len(available), need=cfg.min_clients)
            return
        try:
            # The job's strategy says what devices do this round.
            config = task_config(cfg, p.round + 1, chosen, evaluate_only=p.evaluating)
        except ConfigError as exc:
            self._stop(p, exc)
            return
        p.status, p.open, p.round, p.selected = "running", True, p.round + 1, chosen
        p.deadline_ms = now_ms() + int(cfg.deadline_s * 1000)
        task = RoundTask(
            job_id=p.job_id,
            round=p.round,
            model_version=p.model_version,
            strategy=cfg.strategy.name,
            devices=tuple(chosen),
            deadline_ms=p.deadline_ms,
            min_updates=quorum(cfg, len(chosen)),
            fencing_token=self.fence,
            config=config,
        )
        # The table is written first: a crash after it replays the command, and a
        # job already running ignores a second start, while the aggregator and
        # devices treat a repeated (job, round) task as the same round.
        self.progress[p.job_id] = p.to_dict()
        record = seal(
            task, self.identity.signer, self.t.rounds.channel, sender=self.identity.name, round=p.round
        )
        key = f"{p.job_id}:{p.round}".encode()
        # The round's trace starts here; devices and the aggregator continue it from the headers.
        with round_span(p.job_id, p.round) as span:
            span.set_attribute("qflare.devices", len(chosen))
            with send_span(self.rounds_topic.get_topic_name(), key=key) as headers:
                await self.rounds_topic.send(key=key, value=record, headers=headers)
            metrics.ACCEPTED.labels(SERVICE, "round_opened").inc()
            metrics.record_round_opened(SERVICE, p.job_id)
            log.info(
                "round opened", job_id=p.job_id, round=p.round, devices=len(chosen), version=p.model_version
            )

    def _stop(self, p: Progress, exc: Exception) -> None:
        """A job the scheduler cannot run: stopped, and said so, rather than stopping the agent."""
        p.status, p.open = "stopped", False
        self.progress[p.job_id] = p.to_dict()
        log.error("job stopped", job_id=p.job_id, error=str(exc))

    async def _tick(self) -> None:
        """Nudge jobs that wait for devices, or whose round is overdue."""
        grace = int(self.cfg.grace_s * 1000)
        for job_id, state in list(self.progress.items()):
            p = Progress.from_dict(state)
            if p.status == "waiting_devices" or overdue(p, now_ms(), grace):
                cmd = JobCommand(job_id, "resume")
                await self.jobs_topic.send(
                    key=job_id.encode(),
                    value=seal(cmd, self.identity.signer, self.t.jobs.channel, sender=self.identity.name),
                )
