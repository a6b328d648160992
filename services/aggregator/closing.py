"""Closing a round: the new model version, its evaluation, and the ``RoundComplete`` report.

The round's status flip, the new row in the model store, the strategy state
carried to the next round and the outgoing records (model, result) are one
PostgreSQL transaction. The flip is conditional on the round still being
open, so a close that is retried after a crash (the in-memory round is
rebuilt from the checkpoint and closed again) either does all of it once or
nothing; the outbox then delivers exactly the bytes that were committed.

A streaming strategy aggregates the round's exact sums; a buffered one the
round's updates (``OpenRound.buffer``, in device-id order), whose stored rows
are deleted in the same transaction. The new version carries the strategy's
server groups of the carried state after its weights.

A job with a publication gate (``services.aggregator.gate``) may hold the new
version instead: the round then closes ``held`` on its base version, audited
``round.held``, and neither the version nor the carried state is stored.
"""

from __future__ import annotations

import time
from dataclasses import asdict, replace

import structlog

from qflare.clock import now_ms
from qflare.errors import AggregationError
from qflare.fl import RoundInput, StrategyState
from qflare.metrics import record_round_closed
from qflare.protocol.training import RoundComplete
from qflare.tracing import FanIn, tracer
from qflare.types import Scalar
from services.aggregator import buffered
from services.aggregator.anomaly import Detector
from services.aggregator.evaluation import Evaluator, central, federated
from services.aggregator.gate import HELD, Gate
from services.aggregator.jobs import Job
from services.aggregator.models import EncodedModel, decode, encode, named_groups, weights_of
from services.aggregator.publisher import Publisher
from services.aggregator.rounds import COMPLETED, OpenRound, known_faulty, round_metrics
from services.aggregator.store import AggregatorStore

log = structlog.get_logger("qflare.aggregator")


class Closer:
    def __init__(
        self,
        store: AggregatorStore,
        out: Publisher,
        evaluator: Evaluator,
        jobs: dict[str, Job],
        rounds: dict[tuple[str, int], OpenRound],
    ) -> None:
        self.store, self.out, self.evaluator = store, out, evaluator
        self.gate = Gate(store, evaluator)
        self.jobs, self.rounds = jobs, rounds
        #: Trace contexts of each open round's included updates (in memory: tracing is best effort).
        self.fanin: dict[tuple[str, int], FanIn] = {}
        self.anomaly = Detector(store, out)

    async def close_ready(self, now_ms: int | None) -> int:
        """Close every round whose outcome is decided (``now_ms=None``: ignore deadlines); return how many."""
        closed = 0
        for rnd in list(self.rounds.values()):
            outcome = rnd.decide(now_ms)
            if outcome is not None:
                await self.close(rnd, outcome)
                closed += 1
        return closed

    async def close(self, rnd: OpenRound, outcome: str) -> None:
        """Close ``rnd`` inside the round's trace; the span links to every included update."""
        fan = self.fanin.pop(rnd.key, None) or FanIn()
        attrs = {"qflare.job_id": rnd.job_id, "qflare.round": str(rnd.round), "qflare.outcome": outcome}
        with tracer().start_as_current_span(
            f"aggregate {rnd.round}", context=fan.context(), links=fan.span_links(), attributes=attrs
        ):
            await self._close(rnd, outcome)

    async def _close(self, rnd: OpenRound, outcome: str) -> None:
        job = self.jobs[rnd.job_id]
        closed_ms = now_ms()
        model: EncodedModel | None = None
        carried: StrategyState | None = None
        scored = None  # a buffered round's anomaly scores (anomaly.py)
        if outcome == COMPLETED and not rnd.evaluate_only:
            model, carried, metrics, evaluated = await self._aggregate(job, rnd, closed_ms)
            scored = await self.anomaly.assess(job, rnd, model, metrics)
            scores = {} if scored is None else scored.record_scores()
            done = self._report(rnd, COMPLETED, model.body.version, model.digest, metrics, evaluated, scores)
            verdict = await self.gate.check(job, rnd, done.metrics)  # None: the job has no gate
            if verdict is not None and verdict.held:  # the candidate goes nowhere: the base stays
                model = carried = None
                done = self._report(rnd, HELD, rnd.model_version, None, verdict.metrics, evaluated, scores)
            elif verdict is not None:
                done = replace(done, metrics=verdict.metrics)
        else:
            # An evaluation-only round, or one without a quorum: no new version, but whatever the
            # devices evaluated of the round's version is reported.
            evaluated, found = federated(job, rnd)
            metrics = round_metrics(rnd, closed_ms, found)
            done = self._report(rnd, outcome, rnd.model_version, None, metrics, evaluated)
        result = {k: v for k, v in asdict(done).items() if k != "model_digest"}
        result["model_digest"] = None if done.model_digest is None else done.model_digest.hex()
        async with self.store.conn.transaction():
            closed = await self.store.close_round(rnd, done.status, result)
            if job.strategy.mode == "buffered":
                await buffered.drop(self.store.conn, rnd)
            if closed:
                await self.out.queue_round_complete(done)
                await self.anomaly.record(scored)
                if model is not None and carried is not None:
                    await self._store_version(rnd, model, carried, done.metrics)
                elif done.status == HELD:
                    await self._audit_held(done)
        if closed:
            if carried is not None:
                job.strategy_state = carried.to_bytes()
            record_round_closed(rnd.job_id, rnd.round, done.status, done.metrics)
            log.info(
                "round closed",
                job_id=rnd.job_id,
                round=rnd.round,
                status=done.status,
                model_version=done.model_version,
                updates=done.num_updates,
            )
        else:
            log.warning("round was already closed", job_id=rnd.job_id, round=rnd.round)
        del self.rounds[rnd.key]
        if rnd.buffer is not None:
            rnd.buffer.close()  # its spilled files
        await self.out.flush_outbox()

    async def _aggregate(
        self, job: Job, rnd: OpenRound, closed_ms: int
    ) -> tuple[EncodedModel, StrategyState, dict[str, float], str | None]:
        """The new version (parent: the round's version), the state to carry, the round's metrics,
        and who evaluated (None: nobody)."""
        layout = job.layout
        base = await self.store.model(rnd.job_id, rnd.model_version)
        if base is None:  # the round was opened on this version; only a damaged store lacks it
            raise AggregationError(f"model {rnd.model_version} of {rnd.job_id!r} is missing", field="model")
        began = time.perf_counter()
        strategy = job.strategy.excluding(known_faulty(rnd))
        # A buffered round's input is its updates in device-id order (the buffer keeps that order).
        round_input: RoundInput = rnd.sums if strategy.mode == "streaming" else (rnd.buffer or ())
        weights, carried = strategy.aggregate(
            StrategyState.from_bytes(job.strategy_state),
            round_input,
            weights_of(decode(base.weights), layout),
        )
        model = encode(
            rnd.job_id,
            rnd.model_version + 1,
            weights,
            layout.names,
            round=rnd.round,
            model=job.model,
            parent=rnd.model_version,
            groups=named_groups(strategy.server_groups(carried), job.spec, layout),
        )
        aggregated = time.perf_counter()
        if job.config.evaluation == "central":
            evaluation = await self.evaluator.evaluate_job_async(job, weights)
            evaluated = central(evaluation, model.body.version)
        else:
            evaluated, evaluation = federated(job, rnd)
        # Where a round's time goes, for ops and the benchmark: finalising the sum and
        # encoding the model, then the held-out evaluation.
        timing = {"aggregate_s": aggregated - began, "eval_s": time.perf_counter() - aggregated}
        return model, carried, round_metrics(rnd, closed_ms, {**evaluation, **timing}), evaluated

    async def _audit_held(self, done: RoundComplete) -> None:
        """Audit (and log) a round whose new version the publication gate refused."""
        m = done.metrics
        detail: dict[str, Scalar] = {
            "job_id": done.job_id,
            "round": done.round,
            "model_version": done.model_version,
            "candidate_version": done.model_version + 1,
            **{k: m[k] for k in ("candidate_accuracy", "base_accuracy", "gate_drop") if k in m},
        }
        log.warning("publication gate held the round's new version", **detail)
        await self.out.queue_audit(
            "round.held", "warning", reason="accuracy_drop", subject=done.job_id, detail=detail
        )

    async def _store_version(
        self, rnd: OpenRound, model: EncodedModel, carried: StrategyState, metrics: dict[str, float]
    ) -> None:
        await self.store.insert_model(
            rnd.job_id,
            model.body.version,
            parent=rnd.model_version,
            round=rnd.round,
            metrics=metrics,
            digest=model.digest,
            weights=model.data,
        )
        await self.store.set_job(rnd.job_id, strategy_state=carried.to_bytes())
        await self.out.queue_model(model)

    def _report(
        self,
        rnd: OpenRound,
        status: str,
        version: int,
        digest: bytes | None,
        metrics: dict[str, float],
        evaluation: str | None,
        scores: dict[str, dict[str, float]] | None = None,
    ) -> RoundComplete:
        included = sorted(rnd.included)
        return RoundComplete(
            job_id=rnd.job_id,
            round=rnd.round,
            status=status,
            model_version=version,
            num_updates=len(included),
            num_examples=rnd.num_examples,
            included=tuple(included),
            model_digest=digest,
            metrics=metrics,
            evaluation=evaluation,
            scores=scores or {},
        )
