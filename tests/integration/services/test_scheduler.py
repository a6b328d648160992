"""The scheduler against real Kafka and Redis: selection, round lifecycle, restart resumes."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka import TopicPartition

from qflare.children import ServiceProcess
from qflare.crypto import generate_key
from qflare.fl import TrainConfig
from qflare.identity import Identity, TrustedKeys, load_identity
from qflare.kafka import KafkaSettings, make_admin, make_producer, prepare_topics
from qflare.protocol import seal
from qflare.protocol.body import Setting
from qflare.protocol.control import AuditEvent, JobCommand
from qflare.protocol.devices import Device, DeviceHealth
from qflare.protocol.state import seal_state
from qflare.protocol.training import RoundComplete, RoundTask
from services.scheduler.config import SchedulerSettings
from services.scheduler.service import app_id
from tests.integration.services.harness import audit_events, delete_to_end, read_topic
from tests.integration.services.processes import ManagedService, scrape


class SchedulerProcess(ManagedService):
    service = "scheduler"

    def __init__(self, kafka: KafkaSettings, keys_dir: Path, tmp: Path) -> None:
        self._env = {
            **os.environ,
            "QFLARE_KAFKA_TOPIC_PREFIX": kafka.topic_prefix,
            "QFLARE_KAFKA_DEPLOYMENT_ID": kafka.deployment_id,
            "QFLARE_KAFKA_BOOTSTRAP": kafka.bootstrap,
            "QFLARE_SCHEDULER_KEYS_DIR": str(keys_dir),
            "QFLARE_SCHEDULER_DATA_DIR": str(tmp / "faust"),
            "QFLARE_SCHEDULER_LEASE_S": "3",
            "QFLARE_SCHEDULER_GRACE_S": "2",
        }
        self.log_path = tmp / "scheduler.log"
        self.keys_dir = keys_dir
        self.metrics_port = 0
        self.proc: ServiceProcess | None = None
        self.starts = 0

    def env(self) -> dict[str, str]:
        return self._env

    def metric(self, name: str, **labels: str) -> float:
        return scrape(self.metrics_port, name, **labels)


@pytest.fixture
def ids(keys_dir: Path) -> dict[str, Identity]:
    return {
        name: load_identity(name, keys_dir, create=True) for name in ("registry", "operator", "aggregator")
    }


@pytest.fixture
def scheduler(
    kafka: KafkaSettings, keys_dir: Path, tmp_path: Path, ids: dict[str, Identity]
) -> Iterator[SchedulerProcess]:
    proc = SchedulerProcess(kafka, keys_dir, tmp_path)
    yield proc
    proc.stop()


async def _publish(kafka: KafkaSettings, records: list[tuple[str, str, bytes]]) -> None:
    # As the services do at start, so partition counts match qflare.protocol.topics.
    await prepare_topics(kafka)
    producer = make_producer(kafka)
    await producer.start()
    try:
        for topic, key, value in records:
            await producer.send_and_wait(topic, value, key=key.encode())
    finally:
        await producer.stop()


async def _tasks(kafka: KafkaSettings, keys_dir: Path, count: int, timeout_s: float = 90) -> list[RoundTask]:
    t = kafka.topics
    got = await read_topic(
        kafka,
        t.rounds,
        TrustedKeys(keys_dir),
        timeout_s=timeout_s,
        until=lambda b: sum(isinstance(x, RoundTask) for x in b) >= count,
    )
    return sorted((b for b in got if isinstance(b, RoundTask)), key=lambda r: r.round)


async def test_rounds_open_on_healthy_devices_and_resume_after_kill9(
    kafka: KafkaSettings, keys_dir: Path, ids: dict[str, Identity], scheduler: SchedulerProcess, unique: str
) -> None:
    t = kafka.topics
    reg, op, agg = ids["registry"], ids["operator"], ids["aggregator"]
    now = int(time.time() * 1000)
    names = [f"s{unique}-{i}" for i in range(5)]
    records = []
    for i, name in enumerate(names):
        dev = Device(name, "active", generate_key().public_key, now, now)
        records.append((t.devices.name, name, seal(dev, reg.signer, t.devices.channel, sender=reg.name)))
        # The last device is offline: it must never be selected.
        state = "offline" if i == 4 else "online"
        records.append(
            (
                t.health.name,
                name,
                seal(DeviceHealth(name, state, now), reg.signer, t.health.channel, sender=reg.name),
            )
        )
    job = JobCommand(
        f"job-{unique}",
        "start",
        {"rounds": 2, "fraction": 0.5, "min_clients": 2, "deadline_s": 600.0, "model": "builtin:2nn"},
    )
    await _publish(kafka, records)
    scheduler.start()
    await asyncio.sleep(3)
    await _publish(kafka, [(t.jobs.name, job.job_id, seal(job, op.signer, t.jobs.channel, sender=op.name))])

    (first,) = await _tasks(kafka, keys_dir, 1)
    assert first.round == 1 and first.model_version == 0 and first.job_id == job.job_id
    assert len(first.devices) == 2 and names[4] not in first.devices
    assert first.config["model"] == "builtin:2nn" and first.fencing_token >= 1
    assert (
        TrainConfig.parse(first.config).proximal_mu == 0.0
    )  # the strategy's instructions, as devices parse them

    # Crash the scheduler with round 1 open; the restarted one must know it is waiting on round 1.
    scheduler.kill9()
    scheduler.start()
    done = RoundComplete(job.job_id, 1, "completed", 1, 2, 1200, included=first.devices)
    await asyncio.sleep(8)
    await _publish(
        kafka,
        [
            (
                t.rounds_complete.name,
                job.job_id,
                seal(done, agg.signer, t.rounds_complete.channel, sender=agg.name),
            )
        ],
    )
    tasks = await _tasks(kafka, keys_dir, 2, timeout_s=120)
    second = tasks[-1]
    assert second.round == 2 and second.model_version == 1
    assert names[4] not in second.devices
    # The restarted scheduler is a new leader: its lease gave it a larger fencing token.
    assert second.fencing_token > first.fencing_token


async def test_quorum_not_met_retries_with_a_fresh_round(
    kafka: KafkaSettings, keys_dir: Path, ids: dict[str, Identity], scheduler: SchedulerProcess, unique: str
) -> None:
    t = kafka.topics
    reg, op, agg = ids["registry"], ids["operator"], ids["aggregator"]
    now = int(time.time() * 1000)
    records = []
    for i in range(3):
        name = f"q{unique}-{i}"
        dev = Device(name, "active", generate_key().public_key, now, now)
        records.append((t.devices.name, name, seal(dev, reg.signer, t.devices.channel, sender=reg.name)))
        records.append(
            (
                t.health.name,
                name,
                seal(DeviceHealth(name, "online", now), reg.signer, t.health.channel, sender=reg.name),
            )
        )
    config: dict[str, Setting] = {
        "rounds": 1,
        "fraction": 1.0,
        "min_clients": 2,
        "deadline_s": 600.0,
        "strategy": {"name": "fedprox", "proximal_mu": 0.3},
    }
    job = JobCommand(f"job-{unique}", "start", config)
    await _publish(
        kafka, [*records, (t.jobs.name, job.job_id, seal(job, op.signer, t.jobs.channel, sender=op.name))]
    )
    scheduler.start()
    (first,) = await _tasks(kafka, keys_dir, 1)
    # FedProx's μ is in the devices' instructions because the strategy put it there.
    assert first.strategy == "fedprox" and TrainConfig.parse(first.config).proximal_mu == 0.3
    failed = RoundComplete(job.job_id, first.round, "quorum_not_met", 0, 1, 600)
    await _publish(
        kafka,
        [
            (
                t.rounds_complete.name,
                job.job_id,
                seal(failed, agg.signer, t.rounds_complete.channel, sender=agg.name),
            )
        ],
    )
    retry = (await _tasks(kafka, keys_dir, 2))[-1]
    assert retry.round == 2 and retry.model_version == 0


async def test_forged_state_rows_are_dropped_on_recovery_and_no_task_is_built_from_them(
    kafka: KafkaSettings, keys_dir: Path, ids: dict[str, Identity], scheduler: SchedulerProcess, unique: str
) -> None:
    t = kafka.topics
    reg, op, agg = ids["registry"], ids["operator"], ids["aggregator"]
    now = int(time.time() * 1000)
    records = []
    for i in range(2):
        name = f"f{unique}-{i}"
        dev = Device(name, "active", generate_key().public_key, now, now)
        records.append((t.devices.name, name, seal(dev, reg.signer, t.devices.channel, sender=reg.name)))
        records.append(
            (
                t.health.name,
                name,
                seal(DeviceHealth(name, "online", now), reg.signer, t.health.channel, sender=reg.name),
            )
        )
    config: dict[str, Setting] = {"rounds": 2, "min_clients": 2, "deadline_s": 600.0, "model": "builtin:2nn"}
    job = JobCommand(f"job-{unique}", "start", config)
    await _publish(
        kafka, [*records, (t.jobs.name, job.job_id, seal(job, op.signer, t.jobs.channel, sender=op.name))]
    )
    scheduler.start()
    (first,) = await _tasks(kafka, keys_dir, 1)
    scheduler.kill9()

    # Someone who can write the changelog adds a job of their own, waiting for devices (so the
    # scheduler would open a round of it at its first tick), and a row sealed with another key.
    forged = f"forged-{unique}"
    progress = {
        "job_id": forged,
        "config": config,
        "status": "waiting_devices",
        "round": 0,
        "model_version": 0,
        "completed_rounds": 0,
        "open": False,
        "selected": [],
        "deadline_ms": 0,
        "attempts": 0,
        "history": [],
    }
    other = f"other-{unique}"
    changelog = f"qflare-scheduler{kafka.topic_prefix}".rstrip(".") + "-round-progress-changelog"
    rows = [
        (changelog, forged, json.dumps(progress).encode()),
        (changelog, other, seal_state(agg.signer, table="round-progress", key=other, value=progress)),
    ]
    await _publish(kafka, rows)
    scheduler.start()

    def refused(events: list[AuditEvent]) -> dict[str, str]:
        return {e.subject or "": e.reason for e in events if e.source == "scheduler"}

    want = {f"round-progress/{forged}": "state_invalid", f"round-progress/{other}": "state_invalid"}
    events = await audit_events(kafka, keys_dir, lambda ev: want.items() <= refused(ev).items())
    assert want.items() <= refused(events).items()
    # The real job's state survived: its round 1 completes and round 2 opens.
    done = RoundComplete(job.job_id, 1, "completed", 1, 2, 1200, included=first.devices)
    await _publish(
        kafka,
        [
            (
                t.rounds_complete.name,
                job.job_id,
                seal(done, agg.signer, t.rounds_complete.channel, sender=agg.name),
            )
        ],
    )
    tasks = await _tasks(kafka, keys_dir, 2, timeout_s=120)
    assert [(r.job_id, r.round) for r in tasks] == [(job.job_id, 1), (job.job_id, 2)]
    assert scheduler.metric("qflare_rejected_messages_total", reason="state_invalid") >= 2


async def test_job_commands_are_obeyed_only_from_allowed_senders_and_only_once(
    kafka: KafkaSettings, keys_dir: Path, ids: dict[str, Identity], scheduler: SchedulerProcess, unique: str
) -> None:
    t = kafka.topics
    op, agg = ids["operator"], ids["aggregator"]
    config: dict[str, Setting] = {"rounds": 1, "min_clients": 1, "deadline_s": 600.0, "model": "builtin:2nn"}
    hour_ago = int(time.time() * 1000) - 3_600_000
    stale = JobCommand(f"old-{unique}", "start", config)
    wrong = JobCommand(f"agg-{unique}", "start", config)
    # An operator's stop, applied once, then replayed after a restart (the decoder's memory is gone).
    stop = seal(JobCommand(f"stop-{unique}", "stop"), op.signer, t.jobs.channel, sender=op.name)
    scheduler.start()
    await _publish(
        kafka,
        [
            (
                t.jobs.name,
                stale.job_id,
                seal(stale, op.signer, t.jobs.channel, sender=op.name, ts_ms=hour_ago),
            ),
            (t.jobs.name, f"stop-{unique}", stop),
            # Refused after the stop was handled (one agent, in order): the restart comes after both.
            (t.jobs.name, wrong.job_id, seal(wrong, agg.signer, t.jobs.channel, sender=agg.name)),
        ],
    )

    def refused(events: list[AuditEvent]) -> dict[str, str]:
        return {e.reason: e.subject or "" for e in events if e.source == "scheduler"}

    await audit_events(
        kafka, keys_dir, lambda ev: {"command_expired", "sender_not_allowed"} <= set(refused(ev))
    )
    scheduler.stop()
    scheduler.start()
    await _publish(kafka, [(t.jobs.name, f"stop-{unique}", stop)])
    events = await audit_events(kafka, keys_dir, lambda ev: "command_replay" in refused(ev))
    assert refused(events)["sender_not_allowed"] == agg.name
    assert refused(events)["command_replay"] == op.name


async def _committed(kafka: KafkaSettings, group: str, topic: str) -> int:
    admin = make_admin(kafka)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    return sum(meta.offset for tp, meta in offsets.items() if tp.topic == topic and meta.offset > 0)


async def test_an_offset_gap_in_the_scheduler_group_is_audited_before_faust_resets_it(
    kafka: KafkaSettings, keys_dir: Path, ids: dict[str, Identity], scheduler: SchedulerProcess
) -> None:
    health = kafka.topics.health
    group = app_id(SchedulerSettings(), kafka)
    scheduler.start()
    await _publish(kafka, [(health.name, "k", b"\x93first, refused")])
    for _ in range(120):  # until the group committed its position past the refused record
        if await _committed(kafka, group, health.name) >= 1:
            break
        await asyncio.sleep(0.5)
    else:
        raise AssertionError("the scheduler never committed its position on the health topic")
    scheduler.stop()

    # Records arrive while it is down and are deleted before it reads them.
    await _publish(kafka, [(health.name, "k", b"\x93lost " + bytes([i])) for i in range(3)])
    ends = await delete_to_end(kafka, health)
    scheduler.start()
    events = await audit_events(
        kafka, keys_dir, lambda ev: any(e.source == "scheduler" and e.event == "offset.gap" for e in ev)
    )
    (gap,) = [e for e in events if e.source == "scheduler" and e.event == "offset.gap"]
    assert gap.subject == health.name and gap.severity == "critical" and gap.detail["skipped"] == 3
    partition = gap.detail["partition"]
    assert isinstance(partition, int)
    assert gap.detail["resumed_offset"] == ends[TopicPartition(health.name, partition)]
    assert scheduler.alive
