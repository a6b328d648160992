"""The aggregator's PostgreSQL state: jobs, model versions, rounds with their checkpoint, offsets, outbox.

Methods do not open transactions of their own (except where noted): the
service groups them, so that a batch's running sums, included updates,
offsets and outgoing records commit together or not at all.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import TupleRow

from qflare.fl import RoundSums
from qflare.fl.evaluation import DeviceEvaluation, is_evaluation_round
from qflare.migrations import migrate
from qflare.outbox import Outbox
from services.aggregator.cursor import Cursor
from services.aggregator.rounds import Included, OpenRound
from services.aggregator.weights import RoundWeighting

SCHEMA_DIR = Path(__file__).with_name("schema")
Conn = psycopg.AsyncConnection[TupleRow]


@dataclass(frozen=True, slots=True)
class JobRow:
    job_id: str
    config: dict[str, Any]
    status: str
    strategy_state: bytes
    fencing_token: int = 0


@dataclass(frozen=True, slots=True)
class ModelRow:
    version: int
    parent: int | None
    round: int | None
    digest: bytes
    weights: bytes


class AggregatorStore:
    def __init__(self, conn: Conn, scope: str) -> None:
        self.conn = conn
        #: The topic prefix: which jobs, rounds and outbox rows are this deployment's.
        self.scope = scope
        self.outbox = Outbox(conn, "aggregator", scope)

    @classmethod
    async def connect(cls, dsn: str, scope: str = "") -> AggregatorStore:
        conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
        await migrate(conn, "aggregator", SCHEMA_DIR)
        return cls(conn, scope)

    async def close(self) -> None:
        await self.conn.close()

    # --- jobs and models ---------------------------------------------------------------

    async def jobs(self) -> list[JobRow]:
        cur = await self.conn.execute(
            "SELECT job_id, config, status, strategy_state, fencing_token FROM aggregator.jobs "
            "WHERE scope = %s",
            (self.scope,),
        )
        return [JobRow(str(j), dict(c), str(s), bytes(st), int(f)) for j, c, s, st, f in await cur.fetchall()]

    async def insert_job(self, job_id: str, config: dict[str, Any], strategy_state: bytes) -> bool:
        """Create the job; False when the id is taken already (by this deployment or another)."""
        cur = await self.conn.execute(
            "INSERT INTO aggregator.jobs (job_id, scope, config, status, strategy_state) "
            "VALUES (%s, %s, %s, 'running', %s) ON CONFLICT (job_id) DO NOTHING RETURNING job_id",
            (job_id, self.scope, json.dumps(config), strategy_state),
        )
        return await cur.fetchone() is not None

    async def set_job(
        self,
        job_id: str,
        *,
        status: str | None = None,
        strategy_state: bytes | None = None,
        fencing_token: int | None = None,
    ) -> None:
        await self.conn.execute(
            "UPDATE aggregator.jobs SET status = coalesce(%s, status), "
            "strategy_state = coalesce(%s, strategy_state), "
            "fencing_token = greatest(fencing_token, coalesce(%s, 0)), updated_at = now() WHERE job_id = %s",
            (status, strategy_state, fencing_token, job_id),
        )

    async def latest_version(self, job_id: str) -> int | None:
        cur = await self.conn.execute(
            "SELECT max(version) FROM aggregator.models WHERE job_id = %s", (job_id,)
        )
        row = await cur.fetchone()
        return None if row is None or row[0] is None else int(row[0])

    async def model(self, job_id: str, version: int) -> ModelRow | None:
        cur = await self.conn.execute(
            "SELECT version, parent, round, digest, weights FROM aggregator.models "
            "WHERE job_id = %s AND version = %s",
            (job_id, version),
        )
        row = await cur.fetchone()
        if row is None:
            return None
        v, parent, rnd, digest, weights = row
        return ModelRow(int(v), parent, rnd, bytes(digest), bytes(weights))

    async def insert_model(
        self,
        job_id: str,
        version: int,
        *,
        parent: int | None,
        round: int | None,
        metrics: dict[str, float],
        digest: bytes,
        weights: bytes,
    ) -> None:
        await self.conn.execute(
            "INSERT INTO aggregator.models (job_id, version, parent, round, metrics, digest, weights) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s)",
            (job_id, version, parent, round, json.dumps(metrics), digest, weights),
        )

    async def model_metrics(self, job_id: str, version: int) -> dict[str, float]:
        """The metrics stored with a version (its central evaluation, when it had one)."""
        cur = await self.conn.execute(
            "SELECT metrics FROM aggregator.models WHERE job_id = %s AND version = %s", (job_id, version)
        )
        row = await cur.fetchone()
        stored = None if row is None else row[0]
        return {str(k): float(v) for k, v in dict(stored or {}).items() if isinstance(v, int | float)}

    async def add_model_metrics(self, job_id: str, version: int, metrics: dict[str, float]) -> None:
        """Merge ``metrics`` into those stored with a version (e.g. a late central evaluation)."""
        await self.conn.execute(
            "UPDATE aggregator.models SET metrics = coalesce(metrics, '{}'::jsonb) || %s::jsonb "
            "WHERE job_id = %s AND version = %s",
            (json.dumps(metrics), job_id, version),
        )

    # --- rounds ----------------------------------------------------------------------

    async def round_task_id(self, job_id: str, round: int) -> bytes | None:
        cur = await self.conn.execute(
            "SELECT task_id FROM aggregator.rounds WHERE job_id = %s AND round = %s", (job_id, round)
        )
        row = await cur.fetchone()
        return None if row is None else bytes(row[0])

    async def last_round(self, job_id: str) -> int | None:
        cur = await self.conn.execute("SELECT max(round) FROM aggregator.rounds WHERE job_id = %s", (job_id,))
        row = await cur.fetchone()
        return None if row is None or row[0] is None else int(row[0])

    async def insert_round(self, rnd: OpenRound, config: dict[str, Any]) -> None:
        await self.conn.execute(
            "INSERT INTO aggregator.rounds (job_id, round, task_id, model_version, strategy, devices, "
            "deadline_ms, min_updates, config, status, state, opened_at, weighting) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, 'open', %s, to_timestamp(%s / 1000.0), %s)",
            (
                rnd.job_id,
                rnd.round,
                rnd.task_id,
                rnd.model_version,
                rnd.strategy,
                list(rnd.devices),
                rnd.deadline_ms,
                rnd.min_updates,
                json.dumps(config),
                rnd.sums.to_bytes(),
                rnd.opened_ms,
                None if rnd.weighting is None else json.dumps(rnd.weighting.to_json()),
            ),
        )

    async def open_rounds(self) -> list[OpenRound]:
        cur = await self.conn.execute(
            "SELECT job_id, round, task_id, model_version, strategy, devices, deadline_ms, min_updates, "
            "(extract(epoch FROM opened_at) * 1000)::bigint, state, stats, rounds.config, weighting "
            "FROM aggregator.rounds JOIN aggregator.jobs USING (job_id) "
            "WHERE rounds.status = 'open' AND jobs.scope = %s ORDER BY job_id, round",
            (self.scope,),
        )
        rounds = []
        for (
            job,
            rnd,
            task,
            version,
            strategy,
            devices,
            deadline,
            quorum,
            opened,
            state,
            stats,
            config,
            weighting,
        ) in await cur.fetchall():
            rounds.append(
                OpenRound(
                    job_id=str(job),
                    round=int(rnd),
                    task_id=bytes(task),
                    model_version=int(version),
                    strategy=str(strategy),
                    devices=tuple(devices),
                    deadline_ms=int(deadline),
                    min_updates=int(quorum),
                    opened_ms=int(opened),
                    sums=RoundSums.from_bytes(bytes(state)),
                    stats=Counter({str(k): int(v) for k, v in dict(stats).items()}),
                    evaluate_only=is_evaluation_round(dict(config)),
                    weighting=None if weighting is None else RoundWeighting.from_json(weighting),
                )
            )
        for r in rounds:
            cur = await self.conn.execute(
                "SELECT device_id, message_id, num_examples, loss, evaluation, failure, personal_accuracy, "
                "claimed "
                "FROM aggregator.included WHERE job_id = %s AND round = %s",
                (r.job_id, r.round),
            )
            for device, msg_id, n, loss, evaluation, failure, personal, claimed in await cur.fetchall():
                entry = Included(
                    str(device),
                    bytes(msg_id),
                    int(n),
                    loss,
                    _evaluation(evaluation),
                    failure,
                    personal,
                    claimed,
                )
                answers = r.included if failure is None else r.failed
                answers[entry.device_id] = entry
        return rounds

    async def checkpoint_round(self, rnd: OpenRound) -> None:
        """Write the round's running sum, counters and newly included updates (caller's transaction)."""
        await self.conn.execute(
            "UPDATE aggregator.rounds SET state = %s, stats = %s WHERE job_id = %s AND round = %s",
            (rnd.sums.to_bytes(), json.dumps(dict(rnd.stats)), rnd.job_id, rnd.round),
        )
        if rnd.pending:
            async with self.conn.cursor() as cur:
                await cur.executemany(
                    "INSERT INTO aggregator.included "
                    "(job_id, round, device_id, message_id, num_examples, loss, evaluation, failure, "
                    "personal_accuracy, claimed) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                    [
                        (
                            rnd.job_id,
                            rnd.round,
                            i.device_id,
                            i.message_id,
                            i.num_examples,
                            i.loss,
                            None if i.evaluation is None else json.dumps(i.evaluation.to_metrics()),
                            i.failure,
                            i.personal_accuracy,
                            i.claimed,
                        )
                        for i in rnd.pending
                    ],
                )

    async def close_round(self, rnd: OpenRound, status: str, result: dict[str, Any]) -> bool:
        """Mark the round closed; False if it already was (the close is then not repeated)."""
        cur = await self.conn.execute(
            "UPDATE aggregator.rounds SET status = %s, result = %s, state = NULL, stats = %s, "
            "closed_at = now() WHERE job_id = %s AND round = %s AND status = 'open' RETURNING round",
            (status, json.dumps(result), json.dumps(dict(rnd.stats)), rnd.job_id, rnd.round),
        )
        return await cur.fetchone() is not None

    async def first_application(self, sender: str, message_id: bytes, ts_ms: int, keep_after_ms: int) -> bool:
        """Record a command as applied; False if it already was. Forgets those before ``keep_after_ms``."""
        await self.conn.execute("DELETE FROM aggregator.applied_commands WHERE ts_ms < %s", (keep_after_ms,))
        cur = await self.conn.execute(
            "INSERT INTO aggregator.applied_commands (sender, message_id, ts_ms) VALUES (%s, %s, %s) "
            "ON CONFLICT DO NOTHING RETURNING sender",
            (sender, message_id, ts_ms),
        )
        return await cur.fetchone() is not None

    # --- consumer positions --------------------------------------------------------------

    async def cursors(self, topic: str, now_ms: int) -> dict[int, Cursor]:
        cur = await self.conn.execute(
            "SELECT partition, next_offset, open_streams FROM aggregator.offsets WHERE topic = %s", (topic,)
        )
        return {
            int(p): Cursor.restore(topic, int(p), int(n), list(s), now_ms) for p, n, s in await cur.fetchall()
        }

    async def save_cursor(self, c: Cursor) -> None:
        await self.conn.execute(
            "INSERT INTO aggregator.offsets (topic, partition, next_offset, resume_offset, open_streams) "
            "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (topic, partition) DO UPDATE SET "
            "next_offset = EXCLUDED.next_offset, resume_offset = EXCLUDED.resume_offset, "
            "open_streams = EXCLUDED.open_streams",
            (c.topic, c.partition, c.next_offset, c.resume_offset, json.dumps(c.streams_json())),
        )
        c.dirty = False


def _evaluation(stored: object) -> DeviceEvaluation | None:
    """An ``included`` row's evaluation (its ``eval_*`` metrics as JSON), or None."""
    if not isinstance(stored, dict):
        return None
    return DeviceEvaluation.from_metrics({str(k): float(v) for k, v in stored.items()})
