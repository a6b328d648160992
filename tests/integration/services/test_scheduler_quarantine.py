"""The scheduler and quarantine: a suspended device is never selected, and a held round is a round done
with no new version (the publication gate kept the old model)."""

from __future__ import annotations

import time
from pathlib import Path

from qflare.crypto import generate_key
from qflare.identity import Identity
from qflare.kafka import KafkaSettings
from qflare.protocol import seal
from qflare.protocol.body import Setting
from qflare.protocol.control import JobCommand
from qflare.protocol.devices import Device, DeviceHealth
from qflare.protocol.training import RoundComplete
from tests.integration.services import test_scheduler as base
from tests.integration.services.test_scheduler import SchedulerProcess, _publish, _tasks

# The scheduler process and the identities it trusts, as the scheduler's own tests make them.
ids = base.ids
scheduler = base.scheduler


async def test_suspended_devices_are_not_selected_and_a_held_round_keeps_the_version(
    kafka: KafkaSettings, keys_dir: Path, ids: dict[str, Identity], scheduler: SchedulerProcess, unique: str
) -> None:
    t = kafka.topics
    reg, op, agg = ids["registry"], ids["operator"], ids["aggregator"]
    now = int(time.time() * 1000)
    names = [f"h{unique}-{i}" for i in range(4)]
    records = []
    for i, name in enumerate(names):
        # The last device is suspended (after being active): online, but never to be selected.
        statuses = ["active", "suspended"] if i == 3 else ["active"]
        for revision, status in enumerate(statuses, start=1):
            dev = Device(name, status, generate_key().public_key, now, now, revision=revision)
            records.append((t.devices.name, name, seal(dev, reg.signer, t.devices.channel, sender=reg.name)))
        health = DeviceHealth(name, "online", now)
        records.append((t.health.name, name, seal(health, reg.signer, t.health.channel, sender=reg.name)))
    config: dict[str, Setting] = {"rounds": 2, "fraction": 1.0, "min_clients": 2, "deadline_s": 600.0}
    job = JobCommand(f"job-{unique}", "start", config)
    await _publish(
        kafka, [*records, (t.jobs.name, job.job_id, seal(job, op.signer, t.jobs.channel, sender=op.name))]
    )
    scheduler.start()
    (first,) = await _tasks(kafka, keys_dir, 1)
    # fraction 1.0 takes every selectable device: the three active ones.
    assert sorted(first.devices) == names[:3] and first.model_version == 0

    # The gate held round 1's version: round 2 trains from version 0 again, and is the last.
    held = RoundComplete(job.job_id, first.round, "held", 0, 3, 900, included=first.devices)
    await _publish(
        kafka,
        [
            (
                t.rounds_complete.name,
                job.job_id,
                seal(held, agg.signer, t.rounds_complete.channel, sender=agg.name),
            )
        ],
    )
    second = (await _tasks(kafka, keys_dir, 2))[-1]
    assert second.round == 2 and second.model_version == 0
    assert names[3] not in second.devices
