"""Commands against the real registry and aggregator: who may give them, how old, and how often.

Each refusal is checked in the audit trail, where the service reports it with
its typed reason; a copy of a command re-sent after the service restarted (so
the decoder's in-memory replay cache is empty) is refused from PostgreSQL.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from qflare.identity import Identity, load_identity
from qflare.kafka import KafkaSettings
from qflare.protocol import seal
from qflare.protocol.control import AuditEvent, JobCommand, RegistryCommand
from tests.integration.services.aggregator_harness import (
    AggregatorProcess,
    ControlPlane,
    global_model,
    round_results,
)
from tests.integration.services.harness import RegistryProcess, audit_events, send_records

_HOUR_MS = 3_600_000


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def _refusals(source: str, events: list[AuditEvent]) -> set[tuple[str, str]]:
    """(reason, signer of the refused message) of ``source``'s rejections."""
    return {
        (e.reason, str(e.detail.get("error", "")))
        for e in events
        if e.source == source and e.event == "message.rejected"
    }


def _reasons(source: str, events: list[AuditEvent]) -> set[str]:
    return {reason for reason, _ in _refusals(source, events)}


@pytest.fixture
def aggregator_id(keys_dir: Path) -> Identity:
    # Before the registry starts, so its trusted keys include it from the first record on.
    return load_identity("aggregator", keys_dir, create=True)


@pytest.fixture
def registry(
    kafka: KafkaSettings, keys_dir: Path, tmp_path: Path, operator_id: Identity, aggregator_id: Identity
) -> Iterator[RegistryProcess]:
    proc = RegistryProcess(kafka, keys_dir, tmp_path / "registry.log", metrics_port=_free_port())
    proc.start()
    yield proc
    proc.stop()


async def test_registry_obeys_only_fresh_operator_commands_and_each_only_once(
    kafka: KafkaSettings,
    keys_dir: Path,
    operator_id: Identity,
    aggregator_id: Identity,
    registry: RegistryProcess,
    unique: str,
) -> None:
    t = kafka.topics
    control = t.registry_control.name
    aggregator = aggregator_id
    mint = RegistryCommand("issue_tokens", None, (bytes(32),), int(time.time() * 1000) + _HOUR_MS, {})
    revoke = RegistryCommand("revoke", f"d{unique}")
    op = operator_id
    # A trusted service key is not an operator: it may neither mint tokens nor revoke devices.
    await send_records(
        kafka,
        control,
        "x",
        seal(mint, aggregator.signer, t.registry_control.channel, sender=aggregator.name),
        seal(revoke, aggregator.signer, t.registry_control.channel, sender=aggregator.name),
        seal(
            mint,
            op.signer,
            t.registry_control.channel,
            sender=op.name,
            ts_ms=int(time.time() * 1000) - _HOUR_MS,
        ),
    )
    events = await audit_events(
        kafka, keys_dir, lambda ev: {"sender_not_allowed", "command_expired"} <= _reasons("registry", ev)
    )
    errors = [err for reason, err in _refusals("registry", events) if reason == "sender_not_allowed"]
    assert sorted(errors) == [
        "sender: 'aggregator' may not send registry_command:issue_tokens",
        "sender: 'aggregator' may not send registry_command:revoke",
    ]
    assert not [e for e in events if e.event == "tokens.issued"]

    # Applied once; the same record re-sent after a restart is refused from the database.
    rotate = RegistryCommand("rotate_key", f"r{unique}", (), int(time.time() * 1000) + _HOUR_MS)
    fresh = seal(rotate, op.signer, t.registry_control.channel, sender=op.name)
    authorised = "device.rotation_authorised"
    await send_records(kafka, control, "rotate_key", fresh)
    await audit_events(kafka, keys_dir, lambda ev: any(e.event == authorised for e in ev))
    registry.kill9()
    registry.start()
    await send_records(kafka, control, "rotate_key", fresh)
    events = await audit_events(kafka, keys_dir, lambda ev: "command_replay" in _reasons("registry", ev))
    assert len([e for e in events if e.event == authorised]) == 1


async def test_aggregator_obeys_only_fresh_job_commands_from_allowed_senders_and_each_only_once(
    kafka: KafkaSettings, keys_dir: Path, plane: ControlPlane, aggregator: AggregatorProcess, unique: str
) -> None:
    job, jobs = f"job-{unique}", plane.topics.jobs.name
    await plane.start_job(job)
    await global_model(kafka, keys_dir, job, 0)
    op, sch = plane.identities["operator"], plane.identities["scheduler"]
    hour_ago = int(time.time() * 1000) - _HOUR_MS
    # The scheduler may nudge a job (resume) but not stop it; an hour-old stop has expired.
    await send_records(
        kafka,
        jobs,
        job,
        seal(JobCommand(job, "stop"), sch.signer, plane.topics.jobs.channel, sender=sch.name),
        seal(JobCommand(job, "stop"), op.signer, plane.topics.jobs.channel, sender=op.name, ts_ms=hour_ago),
    )
    pause = seal(JobCommand(job, "pause"), op.signer, plane.topics.jobs.channel, sender=op.name)
    await send_records(kafka, jobs, job, pause)
    # A round task for the paused job is refused: proof that the pause was applied.
    await plane.open_round(job, 1, 0, ["nobody"], deadline_s=1.0)
    wanted = {"sender_not_allowed", "command_expired", "job_not_running"}
    await audit_events(kafka, keys_dir, lambda ev: wanted <= _reasons("aggregator", ev))
    # The operator resumes; a copy of the earlier pause, re-sent after a restart, must not pause it again.
    await plane.command(job, "resume")
    aggregator.kill9()
    aggregator.start()
    await send_records(kafka, jobs, job, pause)
    events = await audit_events(kafka, keys_dir, lambda ev: "command_replay" in _reasons("aggregator", ev))
    errors = {reason: err for reason, err in _refusals("aggregator", events)}
    assert errors["sender_not_allowed"] == "sender: 'scheduler' may not send job_command:stop"
    # Still running: a round task is accepted and its round closes (a paused job would refuse it).
    await plane.open_round(job, 1, 0, ["nobody"], deadline_s=1.0)
    (closed,) = await round_results(kafka, keys_dir, lambda got: len(got) >= 1)
    assert (closed.job_id, closed.round, closed.status) == (job, 1, "quorum_not_met")
