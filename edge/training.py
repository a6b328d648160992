"""Devices that train: follow round tasks and global models, train locally, send updates.

One :class:`RoundFollower` per process reads the round and model topics
(verified: round tasks must come from the scheduler, models from the
aggregator) and hands each task to the local devices it names. A device trains
through its :class:`~edge.app.DeviceApp` handler in a worker thread and sends
its signed update (chunked when large) through its link.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import structlog
from opentelemetry.context import Context

from edge.app import (
    EvaluateResult,
    EvaluateTask,
    Failure,
    TrainResult,
    TrainTask,
)
from edge.builtin import builtin_arch as builtin_arch  # importable from here, as before
from edge.builtin import mnist_app as mnist_app
from edge.groups import default_local_steps, split_model, update_tensors
from edge.runtime import DeviceRuntime
from qflare import poison
from qflare.authority import allowed
from qflare.errors import ConfigError, SchemaError
from qflare.fl import TrainConfig
from qflare.fl.evaluation import PREFIX as EVAL_PREFIX
from qflare.fl.evaluation import DeviceEvaluation
from qflare.kafka import KafkaSettings, replay
from qflare.protocol import Decoder, Reassembler, seal_chunked
from qflare.protocol.decoder import KeyLookup
from qflare.protocol.topics import Topics
from qflare.protocol.training import GlobalModel, ModelUpdate, RoundFailure, RoundTask
from qflare.reasons import Reason
from qflare.tracing import configure_tracing, extract_context, round_headers, send_span, tracer

log = structlog.get_logger("qflare.edge.training")

#: The round trace each task arrived with, by (job, round): a device continues it.
_task_contexts: dict[tuple[str, int], Context] = {}
_MAX_CONTEXTS = 64


@dataclass
class RoundFollower:
    kafka: KafkaSettings
    topics: Topics
    trusted: KeyLookup
    #: job id -> version -> (the tensors' wire names, their values); only the newest few versions
    #: are kept. Names go with their version: a strategy may send extra groups with some versions
    #: only (SCAFFOLD's control is absent from version 0), so one list per job would not fit them all.
    models: dict[str, dict[int, tuple[tuple[str, ...], list[npt.NDArray[Any]]]]] = field(default_factory=dict)
    tasks: asyncio.Queue[RoundTask] = field(default_factory=asyncio.Queue)
    #: Rate limit of the "ignored record" log lines (qflare.poison).
    tally: poison.Tally = field(default_factory=lambda: poison.Tally("edge"))

    async def run(self) -> None:
        configure_tracing("edge")
        decoder = Decoder(
            self.trusted,
            deployment=self.kafka.deployment_id,
            allowed_types={"round_task", "model", "model_chunk"},
            max_age_ms=None,
        )
        reassembler = Reassembler(decoder)
        async with replay(self.kafka, self.topics.rounds, self.topics.models) as consumer:
            while True:
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    for record in records:
                        try:
                            self._accept(decoder, reassembler, record.value, record.topic, record.headers)
                        except Exception as exc:  # whatever a record holds, the device goes on
                            if poison.retry(exc):
                                raise
                            refused = poison.rejection(exc)
                            if self.tally.note(record.topic, None, refused.reason):
                                log.warning("ignored record", reason=refused.reason, error=str(refused))

    def _accept(
        self,
        decoder: Decoder,
        reassembler: Reassembler,
        value: bytes | None,
        topic: str,
        headers: Any = None,
    ) -> None:
        """Apply one record; raises for a record to ignore (``run`` counts and logs it)."""
        if value is None:
            return
        msg = reassembler.feed(decoder.decode(value, topic))
        if msg is None:
            return
        body, sender = msg.body, msg.header.sender
        if isinstance(body, GlobalModel) and allowed("model", sender):
            versions = self.models.setdefault(body.job_id, {})
            versions[body.version] = (
                tuple(t.name for t in body.tensors),
                [np.array(t.array, dtype=np.float32) for t in body.tensors],
            )
            for old in sorted(versions)[:-3]:
                del versions[old]
        elif isinstance(body, RoundTask) and allowed("round_task", sender):
            _task_contexts[(body.job_id, body.round)] = extract_context(headers)
            while len(_task_contexts) > _MAX_CONTEXTS:
                del _task_contexts[next(iter(_task_contexts))]
            self.tasks.put_nowait(body)

    async def weights(
        self, job_id: str, version: int, timeout_s: float
    ) -> tuple[tuple[str, ...], list[npt.NDArray[Any]]] | None:
        """The tensor names and values of ``version``, waiting up to ``timeout_s`` for it to arrive."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while loop.time() < deadline:
            found = self.models.get(job_id, {}).get(version)
            if found is not None:
                return found
            await asyncio.sleep(0.1)
        return None


async def train_and_send(
    device: DeviceRuntime, task: RoundTask, weights: list[npt.NDArray[Any]], names: tuple[str, ...]
) -> TrainResult | EvaluateResult | Failure:
    """Run the device's handlers for the task and send its signed reply, in the round's trace.

    A training round's reply is the update; an evaluation-only round's is the evaluation
    alone (docs/protocol.md, "Federated evaluation"). What is returned is the train
    handler's result, or in an evaluation-only round the evaluate handler's.
    """
    attrs = {"qflare.job_id": task.job_id, "qflare.round": str(task.round), "qflare.device": device.device_id}
    parent = _task_contexts.get((task.job_id, task.round))
    with tracer().start_as_current_span(f"train {task.round}", context=parent, attributes=attrs):
        try:
            return await _train_and_send(device, task, weights, names, parent)
        except Exception as exc:  # noqa: BLE001 - one task, whatever went wrong, must not stop the device
            failure = Failure(Reason.UNHANDLED, f"{type(exc).__name__}: {exc}"[:1000])
            log.error("task failed", device=device.device_id, job_id=task.job_id, error=failure.message)
            return failure


async def _train_and_send(
    device: DeviceRuntime,
    task: RoundTask,
    weights: list[npt.NDArray[Any]],
    names: tuple[str, ...],
    parent: Context | None,
) -> TrainResult | EvaluateResult | Failure:
    try:
        config = TrainConfig.parse(task.config)
    except SchemaError as exc:
        log.warning("round task refused", device=device.device_id, reason=exc.reason, error=str(exc))
        return Failure(exc.reason, str(exc))
    try:
        # The model record holds the weights, then the strategy's groups (``control/<name>``).
        weights, names, groups = split_model(names, weights, config)
    except (SchemaError, ConfigError) as exc:
        failure = Failure(exc.reason, str(exc))
        device.failed("training", failure, job_id=task.job_id, round=task.round)
        _send(device, task, parent, _failure(task, device, failure))
        return failure
    evaluated: EvaluateResult | Failure | None = None
    # The federated evaluation's eval_* metrics: the platform's keys, which the app's cannot override.
    reported: dict[str, float] = {}
    if config.evaluate_global:
        # The version as given, before training: what federated evaluation reports.
        evaluated = await evaluate_global(device, task, weights, names, config)
        if isinstance(evaluated, EvaluateResult):
            found = DeviceEvaluation(evaluated.num_examples, evaluated.loss, evaluated.metrics)
            reported = found.to_metrics()
    if not config.train:
        # An evaluation-only round: a reply without weights, and without eval_* when it failed.
        reply = ModelUpdate(task.job_id, task.round, device.device_id, task.model_version, 0, (), reported)
        _send(device, task, parent, reply)
        return evaluated or Failure(Reason.SCHEMA, "an evaluation-only round without evaluate_global")
    # Each device gets its own copy: a handler that changes the arrays in place must not
    # change the global model the next device on this host trains from.
    own = [w.copy() for w in weights]
    result = await device.app.run_train(
        TrainTask(
            task.round,
            task.model_version,
            own,
            config,
            names,
            device.context,
            job_id=task.job_id,
            groups={g: [a.copy() for a in arrays] for g, arrays in groups.items()},
        )
    )
    if isinstance(result, Failure) and result.reason == Reason.DUPLICATE:
        # The device's state already covers this round (it restarted after answering it).
        log.info("round already answered", device=device.device_id, job_id=task.job_id, round=task.round)
        return result
    if isinstance(result, Failure):
        device.failed("training", result, job_id=task.job_id, round=task.round)
        # Failures are data: the aggregator counts the reply as this device's answer, audits the
        # error, and need not wait for the deadline to go on without it.
        _send(device, task, parent, _failure(task, device, result))
        return result
    # run_train checked the layout and gave the weights back as a list in the model's order.
    trained = result.weights if isinstance(result.weights, list) else list(result.weights.values())
    metrics = {k: float(v) for k, v in result.metrics.items() if not k.startswith(EVAL_PREFIX)}
    metrics.setdefault("local_steps", float(default_local_steps(config, result.num_examples)))
    if config.evaluate and device.app.handles("evaluate"):
        checked = await device.app.run_evaluate(
            EvaluateTask(task.round, task.model_version, trained, config, names, device.context)
        )
        if isinstance(checked, EvaluateResult):
            metrics["val_loss"] = float(checked.loss)  # handlers may answer in numpy scalars
            metrics.update({f"val_{k}": float(v) for k, v in checked.metrics.items()})
    sent = {g: list(a) for g, a in result.groups.items() if isinstance(a, list)}
    update = ModelUpdate(
        job_id=task.job_id,
        round=task.round,
        device_id=device.device_id,
        base_version=task.model_version,
        num_examples=result.num_examples,
        tensors=update_tensors(names, trained, sent, config.personal),
        metrics={**metrics, **reported},
    )
    if result.commit is not None:
        # Committed before the update reaches the durable outbox, with no await in between:
        # the device never sends state it has not kept (edge/solver_state.py says why).
        try:
            result.commit()
        except Exception as exc:  # noqa: BLE001 - the app's commit: its failure is this round's reply
            failure = Failure(Reason.UNHANDLED, f"commit failed: {type(exc).__name__}: {exc}"[:1000])
            device.failed("training", failure, job_id=task.job_id, round=task.round)
            _send(device, task, parent, _failure(task, device, failure))
            return failure
    _send(device, task, parent, update)
    return result


def _failure(task: RoundTask, device: DeviceRuntime, failure: Failure) -> RoundFailure:
    return RoundFailure.of(
        task.job_id, task.round, device.device_id, task.model_version, str(failure.reason), failure.message
    )


async def evaluate_global(
    device: DeviceRuntime,
    task: RoundTask,
    weights: list[npt.NDArray[Any]],
    names: tuple[str, ...],
    config: TrainConfig,
) -> EvaluateResult | Failure:
    """The app's evaluation of the task's model version; a failure is logged and returned, never raised."""
    own = [w.copy() for w in weights]  # the handler may change them; the training that follows may not see it
    result = await device.app.run_evaluate(
        EvaluateTask(task.round, task.model_version, own, config, names, device.context)
    )
    if isinstance(result, EvaluateResult):
        # Handlers often return numpy or torch scalars: the wire carries plain floats only.
        try:
            result = EvaluateResult(
                int(result.num_examples),
                float(result.loss),
                {str(k): float(v) for k, v in result.metrics.items()},
            )
        except (TypeError, ValueError, AttributeError) as exc:
            result = Failure(Reason.SCHEMA, f"the evaluation's result is not numbers: {exc}")
    if isinstance(result, EvaluateResult):
        values = (result.loss, *result.metrics.values())
        if result.num_examples < 1:
            result = Failure(Reason.NUM_EXAMPLES, f"evaluated {result.num_examples} examples")
        elif not all(math.isfinite(v) for v in values):
            result = Failure(Reason.NON_FINITE, "the evaluation's loss or a metric is NaN or infinite")
    if isinstance(result, Failure):
        log.warning("evaluation failed", device=device.device_id, reason=result.reason, error=result.message)
    return result


def _send(
    device: DeviceRuntime, task: RoundTask, parent: Context | None, reply: ModelUpdate | RoundFailure
) -> None:
    topic, key = device.topics.updates.name, device.device_id.encode()
    for record in seal_chunked(
        reply, device.signer, device.topics.updates.channel, sender=device.device_id, round=task.round
    ):
        with send_span(topic, key=key) as headers:
            device.link.send(topic, key, record, headers=headers + round_headers(parent))
