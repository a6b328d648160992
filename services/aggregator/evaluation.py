"""Test accuracy and loss of a new global model on the held-out split of the job's dataset.

torch is imported on first use only, so an aggregator that never closes a
round (or has evaluation off) starts quickly and stays small. The test split
is read once per dataset and kept as float32, already normalised.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import numpy as np
import structlog
from numpy.typing import NDArray

from qflare.errors import ConfigError, DatasetError
from qflare.ml import DatasetName, ModelName, load_dataset, to_float

log = structlog.get_logger("qflare.aggregator")


class Evaluator:
    def __init__(self, examples: int) -> None:
        #: How many test examples to use (the first N); 0 turns evaluation off.
        self.examples = examples
        self._test: dict[str, tuple[NDArray[np.float32], NDArray[np.int64]]] = {}

    def _split(self, dataset: DatasetName) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
        if dataset not in self._test:
            data = load_dataset(dataset)
            self._test[dataset] = (to_float(data.test_images), data.test_labels)
        images, labels = self._test[dataset]
        return images[: self.examples], labels[: self.examples]

    def evaluate(
        self, model: ModelName, dataset: DatasetName, weights: Sequence[NDArray[Any]]
    ) -> dict[str, float]:
        """``{"test_loss", "test_accuracy", "test_examples"}``, or {} when off or the data is missing."""
        if self.examples == 0:
            return {}
        try:
            images, labels = self._split(dataset)
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
        self, model: ModelName, dataset: DatasetName, weights: Sequence[NDArray[Any]]
    ) -> dict[str, float]:
        """``evaluate`` in a worker thread, so the event loop keeps serving Kafka meanwhile."""
        return await asyncio.to_thread(self.evaluate, model, dataset, weights)
