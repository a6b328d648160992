"""Central evaluation of model-store models through entry points registered on the aggregator's host.

The aggregator has no code for an imported model, so by default such a job is
evaluated by its devices. A model's owner who wants central evaluation installs
a function on the aggregator's host and names it by the model's store key:

    QFLARE_AGGREGATOR_EVALUATORS='{"my-net@1": "my_pkg.evaluate:central"}'

The function is called with the tensor names and the new global model's weights
(numpy float32 arrays in the model's layout order) and returns an object with
``num_examples`` (int), ``loss`` (float) and ``metrics`` (str -> float), as a
device's ``EvaluateResult`` has; it is reported as ``test_loss``,
``test_<metric>`` and ``test_examples``, like the built-ins' central evaluation.
"""

from __future__ import annotations

import importlib
import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from numpy.typing import NDArray

from qflare.errors import ConfigError

#: The setting's name, which every error about an entry point names.
SETTING = "QFLARE_AGGREGATOR_EVALUATORS"
_TARGET = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")

EntryPoint = Callable[[tuple[str, ...], list[NDArray[Any]]], Any]


def check_targets(evaluators: Mapping[str, str]) -> Mapping[str, str]:
    """The setting's value, each target of the form ``package.module:function``."""
    for ref, target in evaluators.items():
        if not _TARGET.fullmatch(target):
            raise ConfigError(f"{ref}: {target!r} is not 'package.module:function'", field=SETTING)
    return evaluators


def load(ref: str, target: str) -> EntryPoint:
    """Import ``target`` (``package.module:function``); ``ConfigError`` naming the model if it fails."""
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        # error: named as a ConfigError, never an exception that stops the aggregator
        raise ConfigError(f"{ref}: cannot import {module_name!r}: {exc}", field=SETTING) from exc
    found = getattr(module, attr, None)
    if not callable(found):
        raise ConfigError(f"{ref}: {target!r} is not a function", field=SETTING)
    entry: EntryPoint = found
    return entry


def run(
    ref: str, entry: EntryPoint, names: Sequence[str], weights: Sequence[NDArray[Any]]
) -> dict[str, float]:
    """Call ``entry`` on the model and report its result as central evaluation's metrics.

    What the owner's function returns is checked: ``ConfigError`` names what is wrong.
    """
    result = entry(tuple(names), list(weights))
    examples, loss = getattr(result, "num_examples", None), getattr(result, "loss", None)
    metrics = getattr(result, "metrics", {})
    if not isinstance(examples, int) or isinstance(examples, bool) or examples < 1:
        raise ConfigError(f"{ref}: the evaluator returned num_examples {examples!r}", field=SETTING)
    if not isinstance(loss, int | float) or not isinstance(metrics, Mapping):
        raise ConfigError(f"{ref}: the evaluator must return a loss and a metrics map", field=SETTING)
    out = {"test_loss": float(loss), "test_examples": float(examples)}
    for name, value in metrics.items():
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise ConfigError(f"{ref}: metric {name!r} is not a number", field=SETTING)
        out[f"test_{name}"] = float(value)
    # A diverged model may evaluate to an infinite loss: left out, as the wire refuses it.
    return {k: v for k, v in out.items() if math.isfinite(v)}
