"""The device SDK: decorate plain functions, the runtime calls them.

    app = DeviceApp()

    @app.train
    def train(task: TrainTask) -> TrainResult:
        ...

    @app.evaluate
    def evaluate(task: EvaluateTask) -> EvaluateResult:
        ...

Both decorators also work with parentheses (``@app.train()``). Handlers may be
sync (run in a worker thread, so heartbeats keep flowing during training) or
async. A handler that raises yields a failed reply, which is data the runtime
reports, not an exception that stops the device.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar, overload

import numpy as np
import numpy.typing as npt

from qflare.errors import QflareError, Reason
from qflare.fl import TrainConfig

Weights = list[npt.NDArray[Any]]


@dataclass(frozen=True)
class TrainTask:
    round: int
    model_version: int
    weights: Weights
    #: The round's instructions, as the job's strategy gave them (typed, checked on receipt).
    config: TrainConfig


@dataclass(frozen=True)
class TrainResult:
    weights: Weights
    num_examples: int
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class EvaluateTask:
    round: int
    model_version: int
    weights: Weights
    config: TrainConfig


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
        result = await self._call("train", task)
        if isinstance(result, TrainResult):
            bad = [i for i, w in enumerate(result.weights) if not np.all(np.isfinite(w))]
            if bad:
                return Failure(Reason.NON_FINITE, f"train produced NaN or Inf in tensors {bad}")
        return result if isinstance(result, TrainResult | Failure) else _wrong_type("train", result)

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
        except (ValueError, RuntimeError, ArithmeticError, MemoryError) as exc:
            # User code: its ordinary failures become a failed reply the platform can count.
            return Failure(type(exc).__name__, str(exc))


def _wrong_type(kind: str, value: object) -> Failure:
    return Failure("bad_result", f"@app.{kind} returned {type(value).__name__}")
