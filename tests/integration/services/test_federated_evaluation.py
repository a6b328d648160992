"""Federated evaluation through the real aggregator: devices' evaluations combined by examples.

A federated job's training round reports the devices' evaluation of the version
it started from; the evaluation-only round after the last one reports the final
version. A device whose evaluation failed answers without one and is left out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge.app import DeviceApp, EvaluateResult, EvaluateTask, Failure, TrainResult, TrainTask
from edge.training import train_and_send
from qflare.fl import JobSpec, TrainConfig, build_strategy
from qflare.fl.evaluation import DeviceEvaluation, evaluation_round
from qflare.kafka import KafkaSettings
from qflare.ml import tensor_names
from qflare.protocol.control import AuditEvent
from qflare.protocol.training import RoundComplete
from qflare.types import Scalar
from tests.integration.services.aggregator_harness import (
    JOB_CONFIG,
    AggregatorProcess,
    ControlPlane,
    global_model,
    perturbed,
    rejections,
    round_results,
)
from tests.integration.services.harness import Fleet, audit_events

#: What the scheduler sends for a federated job's final round (only the two keys matter here).
EVALUATE_ONLY: dict[str, Scalar] = {"train": False, "evaluate_global": True}


async def _result(kafka: KafkaSettings, keys_dir: Path, job: str, round: int) -> RoundComplete:
    found = await round_results(
        kafka, keys_dir, lambda got: any(r.job_id == job and r.round == round for r in got)
    )
    return next(r for r in found if r.job_id == job and r.round == round)


async def test_devices_evaluations_are_combined_by_examples_and_the_final_model_is_evaluated(
    kafka: KafkaSettings, keys_dir: Path, plane: ControlPlane, aggregator: AggregatorProcess, unique: str
) -> None:
    job, updates = f"job-{unique}", plane.topics.updates.name
    a, b, c = [await plane.device(f"{name}-{unique}") for name in "abc"]
    ids = [d.device_id for d in (a, b, c)]
    await plane.start_job(job, evaluation="federated", rounds=1)
    await global_model(kafka, keys_dir, job, 0)

    # Round 1 trains from version 0; a and b evaluated version 0 first, c's evaluation failed.
    await plane.open_round(job, 1, 0, ids, min_updates=3)
    ev_a = DeviceEvaluation(100, 0.5, {"accuracy": 0.9})
    ev_b = DeviceEvaluation(300, 0.9, {"accuracy": 0.7})
    await plane.send(updates, a.device_id, *a.update(job, 1, 0, perturbed(1), 60, metrics=ev_a.to_metrics()))
    # A restart between two updates: the evaluation already counted is kept with the round.
    aggregator.kill9()
    aggregator.start()
    await plane.send(updates, b.device_id, *b.update(job, 1, 0, perturbed(2), 30, metrics=ev_b.to_metrics()))
    await plane.send(updates, c.device_id, *c.update(job, 1, 0, perturbed(3), 10))

    first = await _result(kafka, keys_dir, job, 1)
    assert first.status == "completed" and first.model_version == 1 and first.num_examples == 100
    assert first.evaluation == "federated"
    m = first.metrics
    # By hand: loss (0.5*100 + 0.9*300) / 400, accuracy (0.9*100 + 0.7*300) / 400.
    assert m["test_loss"] == pytest.approx(0.8) and m["test_accuracy"] == pytest.approx(0.75)
    assert m["evaluated_examples"] == 400 and m["evaluated_devices"] == 2
    assert m["evaluated_version"] == 0  # the version the round started from
    assert "test_examples" not in m  # no central evaluation ran

    # The evaluation-only round on the final version: replies without weights.
    await plane.open_round(job, 2, 1, ids, min_updates=2, config=EVALUATE_ONLY)
    await plane.send(updates, c.device_id, *c.update(job, 2, 1, perturbed(4), 10))  # weights: refused
    await rejections(kafka, keys_dir, lambda found: "shape" in found)
    final_a = DeviceEvaluation(200, 0.25, {"accuracy": 0.95})
    final_c = DeviceEvaluation(50, 0.5, {"accuracy": 0.8})
    await plane.send(updates, a.device_id, *a.evaluation_reply(job, 2, 1, final_a.to_metrics()))
    await plane.send(updates, b.device_id, *b.evaluation_reply(job, 2, 1, {}))  # a failed reply
    await plane.send(updates, c.device_id, *c.evaluation_reply(job, 2, 1, final_c.to_metrics()))

    final = await _result(kafka, keys_dir, job, 2)
    # Everyone answered, so it closed before its deadline; no new version was made.
    assert final.status == "completed" and final.model_version == 1 and final.model_digest is None
    assert sorted(final.included) == sorted(ids) and final.num_examples == 0
    assert final.evaluation == "federated"
    m = final.metrics
    assert m["test_accuracy"] == pytest.approx((0.95 * 200 + 0.8 * 50) / 250)
    assert m["test_loss"] == pytest.approx((0.25 * 200 + 0.5 * 50) / 250)
    assert m["evaluated_examples"] == 250 and m["evaluated_devices"] == 2 and m["evaluated_version"] == 1
    assert m["rejected_shape"] == 1
    assert aggregator.alive


async def test_central_evaluation_of_a_stored_model_is_refused_at_start(
    kafka: KafkaSettings, keys_dir: Path, plane: ControlPlane, aggregator: AggregatorProcess, unique: str
) -> None:
    await plane.start_job(f"central-{unique}", model="my-net@1", evaluation="central")

    def refused(events: list[AuditEvent]) -> list[AuditEvent]:
        return [e for e in events if e.event == "message.rejected" and e.subject == f"central-{unique}"]

    (event,) = refused(await audit_events(kafka, keys_dir, lambda ev: bool(refused(ev))))
    assert event.reason == "no_evaluator" and event.detail["field"] == "body.config.evaluation"


def _app(accuracy: float | None) -> DeviceApp:
    """A numpy-only app; its evaluation reports ``accuracy`` + 0.1 per model version, or raises.

    It answers in numpy scalars, as handlers often do: the device turns them into plain numbers.
    """
    app = DeviceApp()

    @app.train
    def train(task: TrainTask) -> TrainResult:
        return TrainResult([w + np.float32(0.001) for w in task.weights], 20, {"loss": 0.4})

    @app.evaluate
    def evaluate(task: EvaluateTask) -> EvaluateResult:
        if accuracy is None:
            raise RuntimeError("this device's held-out data is unreadable")
        mean = np.float32(accuracy + 0.1 * task.model_version)
        return EvaluateResult(np.int64(40), np.float32(1.0 - accuracy), {"accuracy": mean})  # type: ignore[arg-type,dict-item]

    return app


async def test_a_device_whose_evaluate_handler_fails_is_left_out_and_the_rounds_complete(
    kafka: KafkaSettings,
    keys_dir: Path,
    plane: ControlPlane,
    aggregator: AggregatorProcess,
    fleet: Fleet,
    unique: str,
) -> None:
    job = f"job-{unique}"
    apps = {"good1": _app(0.5), "good2": _app(0.7), "broken": _app(None)}
    devices = []
    for name, app in apps.items():
        device = fleet.add(f"{name}-{unique}", None)
        device.app = app
        await plane.device(device.device_id, key=device.key)
        devices.append(device)
    ids = [d.device_id for d in devices]
    overrides: dict[str, Any] = {"evaluation": "federated", "rounds": 1}
    spec = JobSpec.parse({**JOB_CONFIG, **overrides})
    await plane.start_job(job, **overrides)
    train = build_strategy(spec).train_config(1)
    names = tuple(tensor_names("2nn"))

    async def run_round(round: int, version: int, config: TrainConfig) -> list[object]:
        task = await plane.open_round(job, round, version, ids, min_updates=3, config=config.to_config())
        model = await global_model(kafka, keys_dir, job, version)
        weights = [t.array.copy() for t in model.tensors]
        return [await train_and_send(d, task, weights, names) for d in devices]

    # A training round: the broken device's update still counts, without an evaluation.
    outcomes = await run_round(1, 0, train)
    assert all(isinstance(o, TrainResult) for o in outcomes)
    first = await _result(kafka, keys_dir, job, 1)
    assert first.status == "completed" and first.num_updates == 3 and first.evaluation == "federated"
    assert first.metrics["evaluated_devices"] == 2 and first.metrics["evaluated_examples"] == 80
    assert first.metrics["test_accuracy"] == pytest.approx(0.6)  # (0.5 + 0.7) / 2, version 0
    assert first.metrics["evaluated_version"] == 0

    # The evaluation-only round: the broken device's failed reply lets the round close at once.
    outcomes = await run_round(2, 1, evaluation_round(spec, train))
    assert [type(o) for o in outcomes] == [EvaluateResult, EvaluateResult, Failure]
    final = await _result(kafka, keys_dir, job, 2)
    assert final.status == "completed" and sorted(final.included) == sorted(ids)
    assert final.metrics["evaluated_devices"] == 2 and final.metrics["evaluated_version"] == 1
    assert final.metrics["test_accuracy"] == pytest.approx(0.7)  # (0.6 + 0.8) / 2, version 1
    assert final.metrics["test_loss"] == pytest.approx(0.4)
    assert aggregator.alive
