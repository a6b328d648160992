"""Evaluation of a job's global model: central (here) or federated (the devices').

Central: test accuracy and loss of a new global model on the held-out split of
the job's dataset. Federated: the round's devices evaluated the version they
were given; ``federated`` combines what they reported (``qflare.fl.evaluation``).

torch is imported on first use only, so an aggregator that never closes a
round (or has evaluation off) starts quickly and stays small. The test split
is read once per dataset and kept as float32, already normalised.

An FLTrust job's server trains on a root set taken from the test split
(``qflare.ml.rootset``): its central evaluation uses the test split less those
images (``evaluation_indices``, the choice ``qflare sim`` makes too), so no
defence is scored on data the server trained on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import structlog
from numpy.typing import NDArray

from qflare.errors import ConfigError, DatasetError, Rejected
from qflare.fl import JobSpec
from qflare.fl.strategies.fltrust import FLTrustParams
from qflare.ml import DatasetName, ModelName, load_dataset, to_float
from qflare.ml.rootset import evaluation_indices
from qflare.reasons import Reason
from services.aggregator import entrypoints
from services.aggregator.jobs import Job
from services.aggregator.rounds import OpenRound

log = structlog.get_logger("qflare.aggregator")


class Evaluator:
    def __init__(self, examples: int, evaluators: Mapping[str, str] | None = None) -> None:
        #: How many test examples to use (the first N); 0 turns evaluation off.
        self.examples = examples
        #: Model-store key -> ``package.module:function`` of its owner's central evaluation.
        self.evaluators = dict(evaluators or {})
        self._test: dict[str, tuple[NDArray[np.float32], NDArray[np.int64]]] = {}
        self._loaded: dict[str, entrypoints.EntryPoint] = {}

    def _split(
        self, dataset: DatasetName, root_size: int = 0
    ) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
        """The first ``examples`` test images, those of a root set of ``root_size`` left out."""
        if dataset not in self._test:
            data = load_dataset(dataset)
            self._test[dataset] = (to_float(data.test_images), data.test_labels)
        images, labels = self._test[dataset]
        if root_size:
            keep = evaluation_indices(len(labels), root_size)[: self.examples]
            return images[keep], labels[keep]
        return images[: self.examples], labels[: self.examples]

    def evaluate(
        self, model: ModelName, dataset: DatasetName, weights: Sequence[NDArray[Any]], root_size: int = 0
    ) -> dict[str, float]:
        """``{"test_loss", "test_accuracy", "test_examples"}``, or {} when off or the data is missing.

        ``root_size``: an FLTrust root set of that size is left out of the test split."""
        if self.examples == 0:
            return {}
        try:
            images, labels = self._split(dataset, root_size)
        except DatasetError as exc:
            # A missing dataset must not stop training: the round still closes, without test metrics.
            log.warning("evaluation skipped", dataset=dataset, error=str(exc))
            return {}
        from qflare.ml.train import evaluate  # torch: imported on first use

        try:
            loss, accuracy = evaluate(model, weights, images, labels)
        except ConfigError as exc:
            log.warning("evaluation failed", model=model, error=str(exc))
            return {}
        return {"test_loss": loss, "test_accuracy": accuracy, "test_examples": float(len(labels))}

    async def evaluate_async(
        self, model: ModelName, dataset: DatasetName, weights: Sequence[NDArray[Any]], root_size: int = 0
    ) -> dict[str, float]:
        """``evaluate`` in a worker thread, so the event loop keeps serving Kafka meanwhile."""
        return await asyncio.to_thread(self.evaluate, model, dataset, weights, root_size)

    def entry_point(self, ref: str) -> entrypoints.EntryPoint:
        """The registered central evaluation of model-store model ``ref`` (``ConfigError`` if none)."""
        if ref not in self._loaded:
            target = self.evaluators.get(ref)
            if target is None:
                raise ConfigError(f"no evaluator is registered for {ref!r}", field=entrypoints.SETTING)
            self._loaded[ref] = entrypoints.load(ref, target)
        return self._loaded[ref]

    def evaluate_stored(
        self, ref: str, names: Sequence[str], weights: Sequence[NDArray[Any]]
    ) -> dict[str, float]:
        """A model-store model's central evaluation by its registered entry point; {} if it fails."""
        try:
            return entrypoints.run(ref, self.entry_point(ref), names, weights)
        except Exception as exc:  # noqa: BLE001 - the owner's code, whatever it raises, is reported here
            # The owner's code failing must not stop training: the round closes without test metrics
            # (and the log line says why), rather than the aggregator exiting on every restart.
            log.warning("evaluation failed", model=ref, error=f"{type(exc).__name__}: {exc}")
            return {}

    async def evaluate_job_async(self, job: Job, weights: Sequence[NDArray[Any]]) -> dict[str, float]:
        """The central evaluation of ``job``'s new model, in a worker thread."""
        if job.builtin is None:
            return await asyncio.to_thread(self.evaluate_stored, job.config.model, job.layout.names, weights)
        params = job.config.strategy
        root_size = params.root_size if isinstance(params, FLTrustParams) else 0
        return await self.evaluate_async(job.builtin, job.config.dataset, weights, root_size)

    def check(self, spec: JobSpec) -> None:
        """Refuse a job whose evaluation this aggregator cannot run.

        Central evaluation runs the model's code, which the aggregator has for the
        built-in models and for model-store models whose owner registered an entry
        point here; any other model is evaluated by its devices.
        """
        if spec.evaluation != "central" or spec.builtin is not None:
            return
        if spec.model not in self.evaluators:
            raise Rejected(
                Reason.NO_EVALUATOR,
                f"model {spec.model!r} has no evaluation entry point here ({entrypoints.SETTING}); "
                "use evaluation 'federated'",
                field="body.config.evaluation",
            )
        try:
            self.entry_point(spec.model)
        except ConfigError as exc:
            raise Rejected(Reason.NO_EVALUATOR, str(exc), field="body.config.evaluation") from exc


def central(evaluation: dict[str, float], version: int) -> str | None:
    """Mark a central evaluation of ``version`` as such, in place; "central", or None if it did not run."""
    if "test_examples" not in evaluation:
        return None
    evaluation["evaluated_examples"] = evaluation["test_examples"]
    evaluation["evaluated_version"] = float(version)
    return "central"


def federated(job: Job, rnd: OpenRound) -> tuple[str | None, dict[str, float]]:
    """The devices' combined evaluation of ``rnd``'s version, for a federated job; (None, {}) if none."""
    if job.config.evaluation != "federated":
        return None, {}
    found = rnd.federated_evaluation()
    return ("federated", found) if found else (None, {})
