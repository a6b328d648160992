"""What the Byzantine-robust aggregators share: their bound checks, blockwise access and anomaly scores.

Every robust rule works on the updates' *deltas* ``Δ_k = w_k − w`` (the device's
weights minus the global model) and moves the model by the robust aggregate:
``w ← w + agg(Δ_1 … Δ_n)``. Two shapes of rule exist:

- *coordinate-wise* (median, trimmed mean, Bulyan's second stage): applied to
  blocks of coordinates, an ``n × b`` float64 matrix at a time;
- *combination* (Krum, RFA, centred clipping, norm bounding, FLTrust): the result
  is ``Σ c_k Δ_k`` for coefficients found from inner products alone, so one pass
  builds the ``n × n`` Gram matrix and one more pass forms the sum.

Either way no more than ``n × BLOCK_VALUES`` values are held at once, so a round
whose updates the buffer spilled to disk is read back a block at a time (the
buffer memory-maps them), whatever the model size.

A rule's bound (e.g. Krum's ``n ≥ 2f + 3``) is checked when the strategy is built
(``build_strategy``, at job start) against the fewest updates a round of the job
can close with, ``max(1, ceil(quorum × min_clients))``, and again when a round
closes against the updates it has (``AggregationError``, field ``updates``).

``f`` bounds the faulty devices among those a round selected. A selected device
the server already refused for misbehaving (an over-claim of its dataset size, a
suspended device: ``KNOWN_FAULTY_REASONS``) sent nothing the rule sees, so the
updates it does see hold at most ``f − r`` faulty ones for ``r`` such devices:
``excluding(r)`` is the rule with that budget, for both its bound and its maths.
Without it a round with two refused liars out of ten could not satisfy median's
``n ≥ 2f + 1`` at ``f = 4`` with its eight honest updates.
"""

from __future__ import annotations

import math
import mmap
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray
from pydantic import Field

from qflare.errors import AggregationError, ConfigError
from qflare.fl.accumulate import FixedPoint
from qflare.fl.arrays import NDArrays, check_like, shapes_of
from qflare.fl.job import JobSpec, StrategyParams
from qflare.fl.state import StrategyState
from qflare.fl.strategy import Mode, RoundInput, Strategy, Update

F64 = NDArray[np.float64]
#: Values per update held at once when reading blocks of coordinates (8 MiB of float64 per update).
BLOCK_VALUES = 1 << 20
#: Device id -> score name -> value.
Scores = dict[str, dict[str, float]]


class ByzantineParams(StrategyParams):
    """Parameters of a rule that tolerates up to ``num_byzantine`` faulty updates per round."""

    num_byzantine: int = Field(
        1, ge=0, description="f: the Byzantine updates per round the rule must tolerate."
    )


def guaranteed_updates(job: JobSpec) -> int:
    """The fewest updates a round of ``job`` can close with: its quorum of ``min_clients`` devices."""
    return max(1, math.ceil(job.quorum * job.min_clients))


def blocks(sizes: Sequence[int], n: int) -> Iterator[tuple[int, int, int]]:
    """``(tensor, start, stop)`` ranges covering every tensor, at most ``BLOCK_VALUES / n`` values each."""
    step = max(1, BLOCK_VALUES // max(1, n))
    for t, size in enumerate(sizes):
        for start in range(0, size, step):
            yield t, start, min(size, start + step)


def _mappings(arrays: Sequence[NDArray[Any]]) -> list[mmap.mmap]:
    """The file mappings behind ``arrays`` (a spilled update's memory-mapped tensors), if any."""
    found: dict[int, mmap.mmap] = {}
    for array in arrays:
        base: object = array
        while base is not None:
            mapping = getattr(base, "_mmap", None)  # numpy.memmap keeps its mmap here
            if isinstance(mapping, mmap.mmap):
                found[id(mapping)] = mapping
                break
            base = getattr(base, "base", None)
    return list(found.values())


def release(mappings: Sequence[mmap.mmap]) -> None:
    """Drop the pages of spilled updates from this process's resident set once read (the kernel keeps
    them cached), so reading every update a block at a time does not hold them all resident."""
    for mapping in mappings:
        if not mapping.closed:
            mapping.madvise(mmap.MADV_DONTNEED)


class Deltas:
    """The round's deltas, read a block of coordinates at a time (float64, rows in device-id order)."""

    def __init__(self, updates: Sequence[Update], global_weights: Sequence[NDArray[Any]]) -> None:
        # One pass: each pass over a buffer maps its spilled updates afresh.
        held = list(updates)
        self.ids = [u.device_id for u in held]
        self.examples = np.array([u.num_examples for u in held], dtype=np.float64)
        # Flat views, taken once: a spilled update is memory-mapped, so nothing is read yet.
        self._rows = [[np.asarray(a).reshape(-1) for a in u.weights] for u in held]
        self._maps = [_mappings(u.weights) for u in held]
        self.global_flat = [np.asarray(g, np.float64).reshape(-1) for g in global_weights]
        self.shapes = shapes_of(global_weights)
        self.sizes = [g.size for g in self.global_flat]

    @property
    def n(self) -> int:
        return len(self.ids)

    def block(self, t: int, start: int, stop: int, rows: Sequence[int] | None = None) -> F64:
        pick = range(self.n) if rows is None else rows
        out = np.empty((len(pick), stop - start), dtype=np.float64)
        for r, k in enumerate(pick):
            out[r] = self._rows[k][t][start:stop]
            release(self._maps[k])
        out -= self.global_flat[t][start:stop]
        return out

    def blocks(self) -> Iterator[tuple[int, int, int]]:
        return blocks(self.sizes, self.n)

    def gram(self, extra: Sequence[F64] | None = None) -> F64:
        """Inner products of the deltas (and of ``extra``, a flat-per-tensor vector put last)."""
        size = self.n + (extra is not None)
        g = np.zeros((size, size), dtype=np.float64)
        for t, a, b in self.blocks():
            x = self.block(t, a, b)
            if extra is not None:
                x = np.vstack([x, extra[t][a:b]])
            g += x @ x.T
        return g

    def norms(self) -> F64:
        """Each delta's Euclidean norm."""
        sq = np.zeros(self.n)
        for t, a, b in self.blocks():
            x = self.block(t, a, b)
            sq += np.einsum("ij,ij->i", x, x)
        return np.sqrt(sq)

    def dots(self, vector: Sequence[F64]) -> F64:
        """Each delta's inner product with ``vector`` (flat per tensor)."""
        out = np.zeros(self.n)
        for t, a, b in self.blocks():
            out += self.block(t, a, b) @ vector[t][a:b]
        return out

    def combine(self, coeffs: F64, extra: Sequence[F64] | None = None, extra_coeff: float = 0.0) -> NDArrays:
        """``Σ c_k Δ_k`` (+ ``extra_coeff × extra``), per tensor, in float64."""
        out: NDArrays = [np.zeros(s, dtype=np.float64) for s in self.sizes]
        for t, a, b in self.blocks():
            out[t][a:b] = coeffs @ self.block(t, a, b)
            if extra is not None and extra_coeff != 0.0:
                out[t][a:b] += extra_coeff * extra[t][a:b]
        return out

    def coordinatewise(self, rule: Callable[[F64], F64], rows: Sequence[int] | None = None) -> NDArrays:
        """``rule`` (an ``n × b`` block -> ``b`` values) applied to every block of coordinates."""
        out: NDArrays = [np.zeros(s, dtype=np.float64) for s in self.sizes]
        for t, a, b in self.blocks():
            out[t][a:b] = rule(self.block(t, a, b, rows))
        return out


def distances(gram: F64) -> F64:
    """Squared Euclidean distances from a Gram matrix (clipped at 0 against rounding)."""
    diag = np.diag(gram)
    return np.maximum(diag[:, None] + diag[None, :] - 2.0 * gram, 0.0)


def flat_dot(a: Sequence[F64], b: Sequence[F64]) -> float:
    return float(sum(float(np.dot(x, y)) for x, y in zip(a, b, strict=True)))


class RobustStrategy(Strategy):
    """A buffered rule with a bound on the number of updates; subclasses give ``combine``."""

    mode: ClassVar[Mode] = "buffered"

    def __init__(self, job: JobSpec | None = None, *, fixed_point: FixedPoint | None = None) -> None:
        super().__init__(job, fixed_point=fixed_point)
        self.check_job()

    # --- the bound -------------------------------------------------------------------

    def min_updates(self) -> int:
        """The fewest updates the rule is defined (and robust) for; 1 unless the rule says more."""
        return 1

    def bound(self) -> str:
        """The bound in words, for error messages."""
        return "n ≥ 1"

    def check_job(self) -> None:
        """Refuse a job whose smallest possible round breaks the bound (called on construction)."""
        need, have = self.min_updates(), guaranteed_updates(self.job)
        if have < need:
            raise ConfigError(
                f"{self.name} needs {self.bound()} = {need} updates per round, but a round of this job may "
                f"close with {have} (ceil(quorum {self.job.quorum} × min_clients {self.job.min_clients})); "
                f"raise min_clients (and quorum) or lower the strategy's tolerance",
                field="min_clients",
            )

    def excluding(self, known_faulty: int) -> Strategy:
        # A copy built from the job alone: a subclass whose constructor takes more must override this.
        params = self.job.strategy
        if known_faulty <= 0 or not isinstance(params, ByzantineParams) or params.num_byzantine == 0:
            return self
        fewer = params.model_copy(update={"num_byzantine": max(0, params.num_byzantine - known_faulty)})
        return type(self)(self.job.model_copy(update={"strategy": fewer}), fixed_point=self.fixed_point)

    def check_round(self, n: int) -> None:
        if n < self.min_updates():
            raise AggregationError(
                f"{self.name} needs {self.bound()} = {self.min_updates()} updates, the round has {n}",
                field="updates",
            )

    # --- the round -------------------------------------------------------------------

    def combine(self, state: StrategyState, deltas: Deltas) -> tuple[NDArrays, Scores, StrategyState]:
        """The aggregate delta (float64, flat per tensor), each update's own score(s), the new state."""
        raise NotImplementedError

    def _deltas(self, round: RoundInput, global_weights: Sequence[NDArray[Any]]) -> Deltas:
        updates = self._updates(round)
        shapes = shapes_of(global_weights)
        names = [f"t{i}" for i in range(len(shapes))]
        check_like(global_weights, shapes, names)
        spec = self.update_spec(names, shapes)
        for update in updates:
            spec.check(update.groups, update.metrics)
            release(_mappings(update.weights))
        self.check_round(len(updates))
        return Deltas(updates, global_weights)

    def aggregate(
        self, state: StrategyState, round: RoundInput, global_weights: Sequence[NDArray[Any]]
    ) -> tuple[NDArrays, StrategyState]:
        self._check_owner(state)
        deltas = self._deltas(round, global_weights)
        step, _, new_state = self.combine(state, deltas)
        new = [
            (g + d).reshape(s).astype(np.float32)
            for g, d, s in zip(deltas.global_flat, step, deltas.shapes, strict=True)
        ]
        # A buffered round carries no round number; the state counts the rounds it has closed.
        return new, replace(new_state, round=state.round + 1)

    def scores(
        self, state: StrategyState, round: RoundInput, global_weights: Sequence[NDArray[Any]]
    ) -> Scores:
        """Per-update anomaly scores: ``norm`` of the delta, ``cosine`` to the aggregate delta, and the
        rule's own (e.g. ``krum_score``, ``trust``, ``trimmed``), by device id. Nothing is changed."""
        self._check_owner(state)
        deltas = self._deltas(round, global_weights)
        step, own, _ = self.combine(state, deltas)
        return delta_scores(deltas, step, own)


def delta_scores(deltas: Deltas, step: Sequence[F64], own: Scores) -> Scores:
    """``norm`` of each delta and its ``cosine`` to ``step`` (0 when either is zero), merged with ``own``."""
    n = deltas.n
    sq = np.zeros(n)
    dots = np.zeros(n)
    for t, a, b in deltas.blocks():
        x = deltas.block(t, a, b)
        sq += np.einsum("ij,ij->i", x, x)
        dots += x @ step[t][a:b]
    norm_step = math.sqrt(sum(float(np.dot(s, s)) for s in step))
    out: Scores = {}
    for k, device in enumerate(deltas.ids):
        norm = math.sqrt(float(sq[k]))
        cos = float(dots[k]) / (norm * norm_step) if norm > 0 and norm_step > 0 else 0.0
        out[device] = {"norm": norm, "cosine": cos, **own.get(device, {})}
    return out
