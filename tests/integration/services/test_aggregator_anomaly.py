"""Anomaly scores and quarantine through the real aggregator: a sign-flipping, scaling device is flagged
every round, and after two flagged rounds of three the aggregator asks the registry, once, to suspend it.

The job aggregates with the coordinate-wise median over five devices. Four honest devices move the
model a little along one shared direction (plus noise of their own); the attacker sends that move
flipped and scaled by 5, so its delta is long (``norm``) and points away from the aggregate
(``cosine``). Three rounds run with ``quarantine_k = 2, quarantine_m = 3``: the suspend command goes
out at the close of round 2, and round 3 (which still includes the attacker: no registry runs here to
act on the command) asks nothing more. The command is read back from the registry control topic and
verified against the aggregator's public key.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from qflare.identity import trusted_ring
from qflare.kafka import KafkaSettings, replay
from qflare.protocol import Decoder, Message
from qflare.protocol.control import AuditEvent, RegistryCommand
from qflare.protocol.training import GlobalModel
from qflare.types import Scalar
from tests.integration.services.aggregator_harness import (
    AggregatorProcess,
    ControlPlane,
    global_model,
    round_results,
)
from tests.integration.services.harness import audit_events

ROUNDS = 3
STEP = 0.01


def _moves(model: GlobalModel, seed: int) -> tuple[list[NDArray[np.float32]], list[NDArray[np.float32]]]:
    """The round's shared direction, and one device's own noise, shaped like ``model``'s tensors."""
    common = np.random.default_rng(1000 + (model.round or 0))
    own = np.random.default_rng(seed)
    shapes = [t.array.shape for t in model.tensors]
    return (
        [common.normal(0, STEP, s).astype(np.float32) for s in shapes],
        [own.normal(0, STEP / 2, s).astype(np.float32) for s in shapes],
    )


def _weights(model: GlobalModel, seed: int, attacker: bool) -> list[NDArray[np.float32]]:
    shared, noise = _moves(model, seed)
    sign = -5.0 if attacker else 1.0
    return [
        (t.array + sign * (c + n)).astype(np.float32)
        for t, c, n in zip(model.tensors, shared, noise, strict=True)
    ]


async def _commands(kafka: KafkaSettings, keys_dir: Path, until_s: float = 5.0) -> list[Message]:
    """Every verified record of the registry control topic (read to its current end)."""
    t = kafka.topics
    decoder = Decoder(
        trusted_ring(keys_dir),
        deployment=kafka.deployment_id,
        allowed_types={"registry_command"},
        max_age_ms=None,
    )
    out: list[Message] = []
    async with replay(kafka, t.registry_control) as consumer:
        for _ in range(int(until_s / 0.2)):
            batch = await consumer.getmany(timeout_ms=200)
            for records in batch.values():
                out.extend(decoder.decode(r.value, r.topic) for r in records if r.value is not None)
    return out


def _num(value: Scalar) -> float:
    assert isinstance(value, float)
    return value


def _of(events: Sequence[AuditEvent], event: str, job: str) -> list[AuditEvent]:
    return [e for e in events if e.event == event and e.detail.get("job_id") == job]


async def test_an_attacker_is_flagged_each_round_and_quarantined_once(
    kafka: KafkaSettings, keys_dir: Path, plane: ControlPlane, aggregator: AggregatorProcess, unique: str
) -> None:
    job = f"anomaly-{unique}"
    devices = [await plane.device(f"h{i}-{unique}") for i in range(4)]
    attacker = await plane.device(f"x-{unique}")
    everyone = [*devices, attacker]
    ids = [d.device_id for d in everyone]
    settings: dict[str, Any] = {
        "strategy": {"name": "median"},
        "min_clients": 5,
        "weighting": "equal",
        "quarantine_k": 2,
        "quarantine_m": 3,
    }
    await plane.start_job(job, **settings)
    for rnd in range(1, ROUNDS + 1):
        # Round r opens on version r - 1, once the previous round has published it.
        base = await global_model(kafka, keys_dir, job, rnd - 1)
        await plane.open_round(job, rnd, rnd - 1, ids, deadline_s=300, min_updates=5, strategy="median")
        for seed, device in enumerate(everyone):
            w = _weights(base, 100 * rnd + seed, attacker=device is attacker)
            await plane.send(
                plane.topics.updates.name, device.device_id, *device.update(job, rnd, rnd - 1, w, 100)
            )

    done = await round_results(kafka, keys_dir, lambda got: sum(x.job_id == job for x in got) >= ROUNDS)
    results = sorted((r for r in done if r.job_id == job), key=lambda r: r.round)
    assert [r.round for r in results] == list(range(1, ROUNDS + 1))
    for r in results:
        assert r.status == "completed" and r.num_updates == 5
        assert r.metrics["flagged_updates"] == 1.0
        assert r.metrics["anomaly_cosine_min"] < 0 < r.metrics["anomaly_norm_median"]
        # Each update's own scores travel in the record itself, the attacker's marked flagged.
        assert set(r.scores) == set(ids)
        for scored_id, row in r.scores.items():
            bad = scored_id == attacker.device_id
            assert row["flagged"] == (1.0 if bad else 0.0)
            assert (row["cosine"] < 0) is bad and row["norm"] > 0
        assert min(row["cosine"] for row in r.scores.values()) == r.metrics["anomaly_cosine_min"]

    def enough(events: list[AuditEvent]) -> bool:
        return len(_of(events, "update.scored", job)) >= 5 * ROUNDS and bool(
            _of(events, "device.quarantine_requested", job)
        )

    events = await audit_events(kafka, keys_dir, enough)
    scored = _of(events, "update.scored", job)
    assert len(scored) == 5 * ROUNDS  # one per included update, each exactly once
    assert {(e.subject, e.detail["round"]) for e in scored} == {
        (d, r) for d in ids for r in range(1, ROUNDS + 1)
    }
    for e in scored:
        assert e.source == "aggregator" and e.ref_id is not None
        bad = e.subject == attacker.device_id
        assert e.detail["flagged"] is bad
        assert e.severity == ("warning" if bad else "info")
        assert e.detail["flags"] == ("norm,cosine" if bad else "")
        # What the rule weighed the update by: its claimed 100 examples, or 1 where intake applies
        # the job's equal weighting.
        assert e.detail["weight"] in (1, 100)
        assert _num(e.detail["norm"]) > 0 and -1 <= _num(e.detail["cosine"]) <= 1
    # The honest deltas agree with the median's; the attacker's is five times as long and opposed.
    honest_norms = [_num(e.detail["norm"]) for e in scored if e.subject != attacker.device_id]
    attack_norms = [_num(e.detail["norm"]) for e in scored if e.subject == attacker.device_id]
    assert min(attack_norms) > 3 * max(honest_norms)
    # The audit record's ref is the update's message id: the update.accepted event carries the same.
    accepted = {(e.subject, e.detail["round"]): e.ref_id for e in events if e.event == "update.accepted"}
    assert all(accepted[(e.subject, e.detail["round"])] == e.ref_id for e in scored)

    (requested,) = _of(events, "device.quarantine_requested", job)
    assert requested.subject == attacker.device_id and requested.severity == "warning"
    assert requested.detail["rounds"] == "1,2" and requested.detail["round"] == 2
    assert requested.reason == "flagged 2 of 3 rounds"

    commands = await _commands(kafka, keys_dir)
    assert len(commands) == 1  # round 3 flagged the attacker again, and asked nothing more
    (msg,) = commands
    assert msg.header.sender == "aggregator"  # verified against the aggregator's trusted key
    assert msg.header.id == requested.ref_id
    body = msg.body
    assert isinstance(body, RegistryCommand)
    assert body.command == "suspend" and body.device_id == attacker.device_id
    assert body.labels == {"job_id": job, "rounds": "1,2", "reason": "flagged 2 of 3 rounds"}

    assert aggregator.metric("qflare_flagged_updates_total", job_id=job, reason="norm") == ROUNDS
    assert aggregator.metric("qflare_flagged_updates_total", job_id=job, reason="cosine") == ROUNDS
    assert aggregator.metric("qflare_quarantine_requests_total", job_id=job) == 1


async def test_quarantine_with_a_streaming_strategy_is_refused_at_job_start(
    kafka: KafkaSettings, keys_dir: Path, plane: ControlPlane, aggregator: AggregatorProcess, unique: str
) -> None:
    job = f"streaming-{unique}"
    await plane.start_job(job, strategy={"name": "fedavg"}, quarantine_k=1, quarantine_m=3, weighting="equal")

    # The audit event's error text names the setting (the poison policy keeps the message, not the
    # exception's field).
    def refused(events: list[AuditEvent]) -> list[AuditEvent]:
        return [
            e
            for e in events
            if e.event == "message.rejected"
            and e.subject == job
            and "body.config.quarantine_k" in str(e.detail.get("error"))
        ]

    (event,) = refused(await audit_events(kafka, keys_dir, lambda got: bool(refused(got))))
    assert event.reason == "config" and "buffered strategy" in str(event.detail["error"])
