"""The device SDK: decorate plain functions, the runtime calls them.

    app = DeviceApp()

    @app.train
    def train(task: TrainTask) -> TrainResult:
        data = my_data(task.context.partition, task.context.num_partitions)
        ...

    @app.evaluate
    def evaluate(task: EvaluateTask) -> EvaluateResult:
        ...

Both decorators also work with parentheses (``@app.train()``). Handlers may be
sync (run in a worker thread, so heartbeats keep flowing during training) or
async. A handler that raises yields a failed reply, which is data the runtime
reports, not an exception that stops the device.

Tasks carry the global model's ``weights`` (numpy arrays, in the model's order),
their ``names`` (same order) and the device's :class:`DeviceContext`. A train
handler returns weights in that same layout, as a list or as a dict of name to
array; any other layout is a failed reply naming the tensor
(:class:`~edge.layout.LayoutError`), and nothing is sent.

Strategies that exchange more than weights (SCAFFOLD's ``control``) put the
server's groups on ``TrainTask.groups`` and take the device's from
``TrainResult.groups``, each in the weights' layout. ``TrainResult.commit``, when
given, is called once the update passed every check, right before it is handed
to the device's durable outbox: the place to persist state that must move in
step with what the server receives (SCAFFOLD's c_i).
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar, overload

import numpy as np
import numpy.typing as npt

from edge.layout import LayoutError, check_layout, tensor_labels
from qflare.errors import QflareError, Reason
from qflare.fl import TrainConfig

Weights = list[npt.NDArray[Any]]
#: A returned tensor group: a list in the task's layout, or a dict keyed by the task's names.
Returned = Weights | Mapping[str, npt.NDArray[Any]]


@dataclass(frozen=True)
class DeviceContext:
    """Who and where this device is: what an app needs to find its own data and keep its state."""

    device_id: str = ""
    #: This device's share of a partitioned dataset: its index, and how many shares there are
    #: (a simulated fleet gives each device its index in the fleet; ``qflare-edge --partition``).
    partition: int = 0
    num_partitions: int = 1
    #: A directory of this device's own that survives restarts (created before the first task).
    state_dir: Path = Path(".qflare-edge/app")


@dataclass(frozen=True)
class TrainTask:
    round: int
    model_version: int
    #: The global model, in its layout order.
    weights: Weights
    #: The round's instructions, as the job's strategy gave them (typed, checked on receipt).
    config: TrainConfig
    #: The tensors' names, in the order of ``weights``.
    names: tuple[str, ...] = ()
    context: DeviceContext = field(default_factory=DeviceContext)
    #: The job this round belongs to (keys per-job state in ``context.state_dir``).
    job_id: str = ""
    #: The server's other tensor groups sent with the model (``control`` under SCAFFOLD), each a
    #: list in the order of ``names``; empty when the strategy sends none.
    groups: Mapping[str, Weights] = field(default_factory=dict)


@dataclass(frozen=True)
class TrainResult:
    #: In the task's layout: a list in the order of ``task.weights``, or a dict keyed by ``task.names``.
    #: Under FedPer (``config.personal``) the runtime sends only the tensors that are not personal.
    weights: Returned
    num_examples: int
    #: Sent with the update. ``local_steps`` (SGD steps taken) is always reported: when a handler
    #: leaves it out, the runtime reports ``epochs * ceil(num_examples / batch_size)``.
    metrics: dict[str, float] = field(default_factory=dict)
    #: Other tensor groups to send (``control``), each in the task's layout like ``weights``.
    groups: Mapping[str, Returned] = field(default_factory=dict)
    #: Called after the update passed every check, right before it is queued to be sent; if it
    #: raises, the round's reply is a failure instead. Persist state tied to this update here.
    commit: Callable[[], None] | None = None


@dataclass(frozen=True)
class EvaluateTask:
    round: int
    model_version: int
    weights: Weights
    config: TrainConfig
    names: tuple[str, ...] = ()
    context: DeviceContext = field(default_factory=DeviceContext)


@dataclass(frozen=True)
class EvaluateResult:
    num_examples: int
    loss: float
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Failure:
    """A handler's failure, reported instead of raised."""

    reason: str
    message: str


class HandlerMissing(QflareError):
    reason = Reason.HANDLER_MISSING


class AlreadyAnswered(QflareError):
    """Raised by a train handler whose durable state already covers the task's round.

    A device restarted mid-round reads the round's task again; training it twice would
    commit local state (SCAFFOLD's c_i) twice for one update. The runtime sends nothing.
    """

    reason = Reason.DUPLICATE


T = TypeVar("T")
Task = TypeVar("Task", TrainTask, EvaluateTask)
Handler = Callable[[Any], Any]


class DeviceApp:
    """Holds the device's train and evaluate handlers."""

    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}

    @overload
    def train(self, fn: Handler) -> Handler: ...
    @overload
    def train(self, fn: None = None) -> Callable[[Handler], Handler]: ...
    def train(self, fn: Handler | None = None) -> Handler | Callable[[Handler], Handler]:
        return self._register("train", fn)

    @overload
    def evaluate(self, fn: Handler) -> Handler: ...
    @overload
    def evaluate(self, fn: None = None) -> Callable[[Handler], Handler]: ...
    def evaluate(self, fn: Handler | None = None) -> Handler | Callable[[Handler], Handler]:
        return self._register("evaluate", fn)

    def _register(self, kind: str, fn: Handler | None) -> Handler | Callable[[Handler], Handler]:
        def decorate(handler: Handler) -> Handler:
            self._handlers[kind] = handler
            return handler

        return decorate(fn) if fn is not None else decorate

    def handles(self, kind: str) -> bool:
        return kind in self._handlers

    async def run_train(self, task: TrainTask) -> TrainResult | Failure:
        """The handler's result with its weights and groups as lists in the task's layout, or a
        failed reply."""
        result = await self._call("train", task)
        if not isinstance(result, TrainResult):
            return result if isinstance(result, Failure) else _wrong_type("train", result)
        odd = [g for g in result.groups if not isinstance(g, str) or not g.isidentifier() or g == "weights"]
        if odd:
            return Failure(
                Reason.SCHEMA, f"@app.train returned groups {odd!r}: names must be identifiers, not 'weights'"
            )
        checked: dict[str, Weights] = {}
        for group, returned in (("weights", result.weights), *sorted(result.groups.items())):
            try:
                arrays = check_layout(task.names, task.weights, returned)
            except LayoutError as exc:
                where = "" if group == "weights" else f" in group {group!r}"
                return Failure(exc.reason, f"@app.train returned the wrong layout{where}: {exc}")
            labels = tensor_labels(task.names, len(arrays))
            bad = [n for n, w in zip(labels, arrays, strict=True) if not np.all(np.isfinite(w))]
            if bad:
                where = "" if group == "weights" else f"{group} "
                return Failure(Reason.NON_FINITE, f"train produced NaN or Inf in {where}tensors {bad}")
            checked[group] = arrays
        weights = checked.pop("weights")
        return replace(result, weights=weights, groups=checked)

    async def run_evaluate(self, task: EvaluateTask) -> EvaluateResult | Failure:
        result = await self._call("evaluate", task)
        return result if isinstance(result, EvaluateResult | Failure) else _wrong_type("evaluate", result)

    async def _call(self, kind: str, task: Any) -> Any:
        handler = self._handlers.get(kind)
        if handler is None:
            return Failure(Reason.HANDLER_MISSING, f"no @app.{kind} handler is registered")
        try:
            if inspect.iscoroutinefunction(handler):
                return await handler(task)
            outcome = await asyncio.to_thread(handler, task)
            return await outcome if isinstance(outcome, Awaitable) else outcome
        except QflareError as exc:
            return Failure(exc.reason, str(exc))
        except Exception as exc:  # noqa: BLE001 - user code: whatever it raises is reported, not swallowed
            # The handler is the user's: any failure of it becomes a failed reply the device logs
            # and counts, while the device itself keeps heartbeating and takes the next round.
            return Failure(type(exc).__name__, str(exc) or repr(exc))


def _wrong_type(kind: str, value: object) -> Failure:
    return Failure("bad_result", f"@app.{kind} returned {type(value).__name__}")
