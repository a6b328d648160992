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


@dataclass(frozen=True)
class TrainResult:
    #: In the task's layout: a list in the order of ``task.weights``, or a dict keyed by ``task.names``.
    weights: Weights | Mapping[str, npt.NDArray[Any]]
    num_examples: int
    metrics: dict[str, float] = field(default_factory=dict)


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
        """The handler's result with its weights as a list in the task's layout, or a failed reply."""
        result = await self._call("train", task)
        if not isinstance(result, TrainResult):
            return result if isinstance(result, Failure) else _wrong_type("train", result)
        try:
            weights = check_layout(task.names, task.weights, result.weights)
        except LayoutError as exc:
            return Failure(exc.reason, f"@app.train returned the wrong layout: {exc}")
        labels = tensor_labels(task.names, len(weights))
        bad = [n for n, w in zip(labels, weights, strict=True) if not np.all(np.isfinite(w))]
        if bad:
            return Failure(Reason.NON_FINITE, f"train produced NaN or Inf in tensors {bad}")
        return replace(result, weights=weights)

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
