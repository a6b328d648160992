"""Bad updates are refused with typed, audited, counted reasons; the round still closes with the good ones."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np

from qflare.crypto import generate_key
from qflare.kafka import KafkaSettings
from qflare.protocol import Tensor, seal
from qflare.protocol.control import AuditEvent
from qflare.protocol.training import ModelUpdate
from tests.integration.services.aggregator_harness import (
    AggregatorProcess,
    ControlPlane,
    SimDevice,
    global_model,
    perturbed,
    rejections,
    round_results,
)
from tests.integration.services.harness import audit_events


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_each_bad_update_is_rejected_and_the_round_still_closes(
    kafka: KafkaSettings, keys_dir: Path, plane: ControlPlane, aggregator: AggregatorProcess, unique: str
) -> None:
    job = f"job-{unique}"
    d1, d2, d3 = [await plane.device(f"d{i}-{unique}") for i in (1, 2, 3)]
    outsider = await plane.device(f"out-{unique}")
    revoked = await plane.device(f"rv-{unique}")
    await plane.device(revoked.device_id, "revoked", key=revoked.key)
    unknown_key = generate_key()  # never published: the aggregator cannot know it
    stranger = SimDevice(f"un-{unique}", unknown_key, unknown_key.signer(), plane.topics.updates.channel)
    await plane.start_job(job)
    await global_model(kafka, keys_dir, job, 0)
    await plane.open_round(job, 1, 0, [d1.device_id, d2.device_id, d3.device_id], min_updates=3)
    updates = plane.topics.updates.name
    good = {d.device_id: perturbed(i) for i, d in enumerate((d1, d2, d3))}

    first = d1.update(job, 1, 0, good[d1.device_id], 100)
    await plane.send(updates, d1.device_id, *first)

    def altered(index: int, change: object) -> list[np.ndarray]:
        weights = [w.copy() for w in good[d2.device_id]]
        weights[index] = change(weights[index])  # type: ignore[operator]
        return weights

    w2 = good[d2.device_id]
    tampered_body = bytearray(d2.update(job, 1, 0, w2, 100)[0])
    tampered_body[len(tampered_body) // 2] ^= 0x01
    tampered_sig = bytearray(d2.update(job, 1, 0, w2, 100)[0])
    tampered_sig[-100] ^= 0x01
    spoof = ModelUpdate(job, 1, d3.device_id, 0, 100, tuple(Tensor.of(f"t{i}", w) for i, w in enumerate(w2)))
    half = [w.astype(np.float16) for w in w2]
    bad = {
        "unknown_key": (stranger.device_id, stranger.update(job, 1, 0, w2, 100)),
        "revoked": (revoked.device_id, revoked.update(job, 1, 0, w2, 100)),
        "unselected": (outsider.device_id, outsider.update(job, 1, 0, w2, 100)),
        "wrong_round": (d2.device_id, d2.update(job, 99, 0, w2, 100)),
        "wrong_version": (d2.device_id, d2.update(job, 1, 3, w2, 100)),
        "shape": (d2.device_id, d2.update(job, 1, 0, altered(5, lambda a: np.zeros(11, np.float32)), 100)),
        "non_finite": (d2.device_id, d2.update(job, 1, 0, altered(0, lambda a: a * np.float32("nan")), 100)),
        # Beyond the exact sum's range, |x| <= 2**20.
        "out_of_range": (d2.device_id, d2.update(job, 1, 0, altered(1, lambda a: a + 2e6), 100)),
        "duplicate": (d1.device_id, d1.update(job, 1, 0, good[d2.device_id], 100)),
        "replay": (d1.device_id, first),
        "digest": (d2.device_id, [bytes(tampered_body)]),
        "signature": (d2.device_id, [bytes(tampered_sig)]),
        "sender_mismatch": (d2.device_id, [seal(spoof, d2.signer, d2.channel, sender=d2.device_id, round=1)]),
    }
    for key, records in bad.values():
        await plane.send(updates, key, *records)
    await plane.send(
        updates, d2.device_id, *d2.update(job, 1, 0, half, 100)
    )  # float16: not the model's dtype

    def complete(found: dict[str, list[AuditEvent]]) -> bool:
        return set(bad) <= set(found) and len(found["shape"]) >= 2

    found = await rejections(kafka, keys_dir, complete)
    assert aggregator.alive
    for reason in bad:
        topic = plane.topics.updates.name
        assert aggregator.metric("qflare_rejected_messages_total", reason=reason, topic=topic) >= 1, reason
    event = found["wrong_version"][0]
    assert event.subject == d2.device_id and event.detail["job_id"] == job and event.detail["round"] == 1
    assert event.ref_id is not None and event.severity == "warning"

    # The good updates still close the round, with only them in the model.
    for device in (d2, d3):
        await plane.send(updates, device.device_id, *device.update(job, 1, 0, good[device.device_id], 100))
    (done,) = await round_results(kafka, keys_dir, lambda got: any(r.job_id == job for r in got))
    assert done.status == "completed" and done.num_updates == 3
    assert sorted(done.included) == sorted(good)
    v1 = await global_model(kafka, keys_dir, job, 1)
    mean = (np.float64(1) / 3) * sum(w[0].astype(np.float64) for w in good.values())
    assert np.allclose(v1.tensors[0].array, mean, atol=1e-6)
    # Rejections attributable to the round are reported with it.
    m = done.metrics
    for reason in ("unselected", "wrong_version", "duplicate", "out_of_range", "sender_mismatch"):
        assert m[f"rejected_{reason}"] >= 1, reason
    assert m["rejected_shape"] == 2

    # After closing: a new update for the closed round is wrong_round, an old one re-sent a replay.
    await plane.send(updates, d3.device_id, *d3.update(job, 1, 0, good[d3.device_id], 100))
    await plane.send(updates, d1.device_id, *first)
    await rejections(
        kafka, keys_dir, lambda f: len(f.get("wrong_round", [])) >= 2 and len(f.get("replay", [])) >= 2
    )
    assert aggregator.alive


async def test_control_messages_are_obeyed_only_from_their_principal(
    kafka: KafkaSettings, keys_dir: Path, plane: ControlPlane, aggregator: AggregatorProcess, unique: str
) -> None:
    job, updates = f"job-{unique}", plane.topics.updates.name
    forged = await plane.device(f"fg-{unique}", sender="operator")  # not the registry's record
    await plane.start_job(f"nojob-{unique}", sender="registry")  # not an operator's command
    await plane.start_job(f"badcfg-{unique}", model="resnet")
    await plane.start_job(f"badmu-{unique}", strategy={"name": "fedprox", "proximal_mu": -1.0})
    await plane.start_job(f"nomodel-{unique}", model="my-net@1")  # a model-store model it lacks
    await plane.open_round(f"ghost-{unique}", 1, 0, [forged.device_id])  # no such job
    await plane.start_job(job)
    await global_model(kafka, keys_dir, job, 0)
    await plane.open_round(job, 1, 0, [forged.device_id], sender="operator")  # not the scheduler's task
    await plane.open_round(job, 2, 5, [forged.device_id])  # no version 5 yet
    await plane.command(job, "pause")
    await plane.open_round(job, 4, 0, [forged.device_id])  # paused: no new rounds

    def refused(events: list[AuditEvent]) -> dict[str, str]:
        return {
            f"{e.detail['topic']}:{e.subject}": e.reason
            for e in events
            if e.source == "aggregator" and e.event == "message.rejected"
        }

    want = {
        f"{plane.topics.devices.name}:{forged.device_id}": "sender_not_allowed",
        f"{plane.topics.jobs.name}:nojob-{unique}": "sender_not_allowed",
        f"{plane.topics.jobs.name}:badcfg-{unique}": "schema",
        f"{plane.topics.jobs.name}:badmu-{unique}": "schema",
        f"{plane.topics.jobs.name}:nomodel-{unique}": "unknown_model",
        f"{plane.topics.rounds.name}:ghost-{unique}:1": "unknown_job",
        f"{plane.topics.rounds.name}:{job}:1": "sender_not_allowed",
        f"{plane.topics.rounds.name}:{job}:2": "wrong_version",
        f"{plane.topics.rounds.name}:{job}:4": "job_not_running",
    }
    events = await audit_events(kafka, keys_dir, lambda ev: want.items() <= refused(ev).items())
    assert want.items() <= refused(events).items()
    fields = {e.subject: e.detail["field"] for e in events if e.event == "message.rejected"}
    assert fields[f"badmu-{unique}"] == "body.config.strategy.proximal_mu"
    await plane.command(job, "resume")
    # Resumed, the job takes rounds again; the forged device record gave its key no power.
    await plane.open_round(job, 5, 0, [forged.device_id])
    await plane.send(updates, forged.device_id, *forged.update(job, 5, 0, perturbed(0), 10))
    await rejections(kafka, keys_dir, lambda found: "unknown_key" in found)
    assert aggregator.alive


async def test_a_deposed_scheduler_leaders_round_task_is_refused_and_survives_a_restart(
    kafka: KafkaSettings, keys_dir: Path, plane: ControlPlane, aggregator: AggregatorProcess, unique: str
) -> None:
    job, updates = f"job-{unique}", plane.topics.updates.name
    device = await plane.device(f"fc-{unique}")
    await plane.start_job(job)
    await global_model(kafka, keys_dir, job, 0)

    def stale(events: list[AuditEvent]) -> list[AuditEvent]:
        return [
            e
            for e in events
            if e.source == "aggregator"
            and e.event == "message.rejected"
            and e.reason == "stale_fencing_token"
        ]

    async def complete(round: int, version: int, token: int) -> None:
        await plane.open_round(job, round, version, [device.device_id], fencing_token=token)
        await plane.send(updates, device.device_id, *device.update(job, round, version, perturbed(round), 50))
        await round_results(
            kafka, keys_dir, lambda got: any(r.job_id == job and r.round == round for r in got)
        )

    # The leader with token 5 runs round 1; then a deposed leader (token 4) tries to open round 2.
    await complete(1, 0, token=5)
    await plane.open_round(job, 2, 1, [device.device_id], fencing_token=4)
    (refused,) = stale(await audit_events(kafka, keys_dir, lambda ev: len(stale(ev)) >= 1))
    assert refused.subject == f"{job}:2" and refused.detail["field"] == "body.fencing_token"
    assert aggregator.alive
    # The current leader's round 2 is accepted (the refused task left nothing behind).
    await complete(2, 1, token=5)

    # The highest token is stored with the job: after a kill -9 the deposed leader is still refused.
    aggregator.kill9()
    aggregator.start()
    await plane.open_round(job, 3, 2, [device.device_id], fencing_token=4)
    await audit_events(kafka, keys_dir, lambda ev: len(stale(ev)) >= 2)
    await complete(3, 2, token=6)  # a newer leader takes over
    assert aggregator.alive
    assert aggregator.metric("qflare_rejected_messages_total", reason="stale_fencing_token") >= 1
