"""Aggregator ingest speed against a bare aiokafka consumer of the same records.

Run from the repository root, with the local stack up (``qflare stack up``)::

    python bench/ingest.py [--updates N] [--quick] [--model cnn] [--repeat R]

Puts N signed model updates (``builtin:cnn`` by default: 6.6 MB each) for one
open round on a fresh updates topic (a topic prefix of its own), then, on the
same records in the same run and under the same machine load:

- **bare**: one aiokafka consumer reads the partitions from the start to their
  end offsets and decodes every record (device signature, digest, tensors),
  as the aggregator's intake would, and nothing else;
- **aggregator**: the real ``AggregatorService`` (in this process, so its phases
  can be timed) starts on the backlog; its ingest time runs from the start of its
  catch-up until the round's running sums hold all N updates and that is
  committed to PostgreSQL (the ``included`` rows say N). The round has one
  extra selected device that never answers, so it stays open: closing (the new
  model) is not ingest.

The bare arm runs before and after the aggregator (``--repeat`` times each) and
its mean is used. Prints where the aggregator's ingest time goes (PostgreSQL
transactions, running-sum checkpoint writes, control-topic syncs, their
``end_offsets`` calls, outbox flushes, record decoding, folding into the sum,
Kafka fetches), then the speed ratio
aggregator/bare (bare seconds / aggregator seconds: 1.0 is as fast as the bare
loop). The last line is JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402
from aiokafka import AIOKafkaConsumer  # noqa: E402

from qflare.fl import FedAvg  # noqa: E402
from qflare.identity import load_identity  # noqa: E402
from qflare.kafka import KafkaSettings, make_consumer, partitions  # noqa: E402
from qflare.keys import DeviceKeys  # noqa: E402
from qflare.ml import init_weights, tensor_names  # noqa: E402
from qflare.protocol import Decoder, Reassembler  # noqa: E402
from qflare.protocol.devices import Device  # noqa: E402
from qflare.protocol.training import ModelUpdate, RoundFailure  # noqa: E402
from qflare_cli.stack import quiet_clients  # noqa: E402
from services.aggregator.config import AggregatorSettings  # noqa: E402
from services.aggregator.control import Control  # noqa: E402
from services.aggregator.intake import Intake  # noqa: E402
from services.aggregator.publisher import Publisher  # noqa: E402
from services.aggregator.service import AggregatorService  # noqa: E402
from services.aggregator.store import AggregatorStore  # noqa: E402
from tests.integration.services.aggregator_harness import JOB_CONFIG, ControlPlane, SimDevice  # noqa: E402

T = TypeVar("T")


# --- timing the aggregator's phases ---------------------------------------------------------


class Phases:
    """Seconds spent in named calls while ``on`` (outermost call only when a phase nests)."""

    def __init__(self) -> None:
        self.seconds: defaultdict[str, float] = defaultdict(float)
        self.calls: defaultdict[str, int] = defaultdict(int)
        self.depth: defaultdict[str, int] = defaultdict(int)
        self.on = False

    def wrap(self, owner: type, attr: str, phase: str) -> None:
        if not hasattr(owner, attr):
            return  # a method this version of the code does not have
        original = getattr(owner, attr)
        phases = self

        async def timed(*args: Any, **kwargs: Any) -> Any:
            if not phases.on or phases.depth[phase]:
                return await original(*args, **kwargs)
            phases.depth[phase] += 1
            began = time.perf_counter()
            try:
                return await original(*args, **kwargs)
            finally:
                phases.depth[phase] -= 1
                phases.seconds[phase] += time.perf_counter() - began
                phases.calls[phase] += 1

        setattr(owner, attr, timed)

    def wrap_sync(self, owner: type, attr: str, phase: str) -> None:
        original = getattr(owner, attr)
        phases = self

        def timed(*args: Any, **kwargs: Any) -> Any:
            if not phases.on:
                return original(*args, **kwargs)
            began = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                phases.seconds[phase] += time.perf_counter() - began
                phases.calls[phase] += 1

        setattr(owner, attr, timed)

    def wrap_transactions(self) -> None:
        """Time each outermost transaction block of any psycopg async connection (the aggregator's)."""
        original = psycopg.AsyncConnection.transaction
        phases = self

        @contextlib.asynccontextmanager
        async def timed(conn: Any, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
            outer = phases.on and not phases.depth["db_transactions"]
            if outer:
                phases.depth["db_transactions"] += 1
            began = time.perf_counter()
            try:
                async with original(conn, *args, **kwargs) as tx:
                    yield tx
            finally:
                if outer:
                    phases.depth["db_transactions"] -= 1
                    phases.seconds["db_transactions"] += time.perf_counter() - began
                    phases.calls["db_transactions"] += 1

        psycopg.AsyncConnection.transaction = timed  # type: ignore[assignment,method-assign]


def instrument() -> Phases:
    phases = Phases()
    phases.wrap_transactions()
    phases.wrap(AggregatorStore, "checkpoint_round", "checkpoint_writes")
    phases.wrap(Control, "sync", "control_sync")
    phases.wrap(AIOKafkaConsumer, "end_offsets", "end_offsets")
    phases.wrap(Publisher, "flush_outbox", "outbox_flush")
    phases.wrap_sync(Intake, "read", "decode_verify")
    phases.wrap_sync(FedAvg, "accumulate", "accumulate")
    phases.wrap(AIOKafkaConsumer, "getmany", "kafka_getmany")
    return phases


# --- the records ------------------------------------------------------------------------------


def _weights(model: str, seed: int) -> list[np.ndarray[Any, Any]]:
    base = init_weights(model, int(JOB_CONFIG["seed"]))
    rng = np.random.default_rng(seed)
    return [(w + rng.standard_normal(w.shape, dtype=np.float32) * 0.01).astype(np.float32) for w in base]


async def produce(
    plane: ControlPlane, job: str, n: int, model: str, progress: Callable[[str], None]
) -> tuple[list[SimDevice], int]:
    """Devices, N updates, then the job and its round (newest, so no age limit bites); returns
    the devices and the bytes of update records sent."""
    devices = [await plane.device(f"d{i:04d}-{job}") for i in range(n)]
    names = tensor_names(model)
    sent = 0
    topic = plane.topics.updates.name
    pending: list[Awaitable[Any]] = []
    for i, device in enumerate(devices):
        records = device.update(job, 1, 0, _weights(model, i), 100 + i, names=names)
        for record in records:
            sent += len(record)
            pending.append(await plane.producer.send(topic, record, key=device.device_id.encode()))
        if len(pending) >= 16:
            await asyncio.gather(*pending)
            pending.clear()
        if (i + 1) % 25 == 0:
            progress(f"produced {i + 1}/{n} updates")
    await asyncio.gather(*pending)
    await plane.start_job(job, model=f"builtin:{model}")
    ids = [d.device_id for d in devices]
    # One more selected device that never answers: the round stays open, ingest is all it does.
    await plane.open_round(job, 1, 0, [*ids, f"absent-{job}"], deadline_s=3600, min_updates=n)
    return devices, sent


# --- the two arms -------------------------------------------------------------------------------


async def bare(kafka: KafkaSettings, devices: list[SimDevice], n: int, batch: int) -> dict[str, float]:
    """Read and decode every update record from the start to the end offsets; nothing else."""
    keys = DeviceKeys()
    now = int(time.time() * 1000)
    for d in devices:
        keys.apply(Device(d.device_id, "active", d.key.public_key, now, now, revision=1))
    spec = kafka.topics.updates
    decoder = Decoder(
        keys, deployment=spec.deployment, allowed_types=spec.types, max_age_ms=None, limits=kafka.limits
    )
    reassembler = Reassembler(decoder)
    consumer = make_consumer(kafka, group_id=None)
    await consumer.start()
    try:
        parts = partitions(spec)
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        began = time.perf_counter()
        end = await consumer.end_offsets(parts)
        got = nbytes = 0
        while [tp for tp in parts if await consumer.position(tp) < end[tp]]:
            for records in (await consumer.getmany(timeout_ms=200, max_records=batch)).values():
                for record in records:
                    nbytes += len(record.value)
                    whole = reassembler.feed(decoder.decode(record.value, record.topic))
                    if whole is not None and isinstance(whole.body, ModelUpdate | RoundFailure):
                        got += 1
        seconds = time.perf_counter() - began
    finally:
        await consumer.stop()
    if got != n:
        raise SystemExit(f"bare consumer decoded {got} updates, expected {n}")
    return {"seconds": seconds, "bytes": float(nbytes)}


async def aggregator(
    kafka: KafkaSettings, keys_dir: Path, job: str, n: int, phases: Phases
) -> dict[str, Any]:
    """Start the real service on the backlog; time its catch-up until all N are committed."""
    cfg = AggregatorSettings(keys_dir=keys_dir, eval_examples=0, metrics_port=0)
    service = AggregatorService(cfg, kafka)
    timing: dict[str, float] = {}
    original = service._catch_up

    async def catch_up() -> None:
        phases.on = True
        began = time.perf_counter()
        try:
            await original()
        finally:
            timing["seconds"] = time.perf_counter() - began
            phases.on = False

    service._catch_up = catch_up  # type: ignore[method-assign]
    began = time.perf_counter()
    async with service:
        timing["start_s"] = time.perf_counter() - began
        rnd = service.rounds.get((job, 1))
        in_memory = 0 if rnd is None else len(rnd.included)
        async with await psycopg.AsyncConnection.connect(cfg.postgres_dsn, autocommit=True) as conn:
            cur = await conn.execute("SELECT count(*) FROM aggregator.included WHERE job_id = %s", (job,))
            row = await cur.fetchone()
            committed = int(row[0]) if row else 0
    if in_memory != n or committed != n:
        raise SystemExit(f"aggregator holds {in_memory} updates, committed {committed}; expected {n}")
    return {
        **timing,
        "phases_s": {k: round(v, 3) for k, v in sorted(phases.seconds.items())},
        "phase_calls": dict(sorted(phases.calls.items())),
    }


async def cleanup(dsn: str, job: str) -> None:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        for table in ("included", "rounds", "models"):
            await conn.execute(f"DELETE FROM aggregator.{table} WHERE job_id = %s", (job,))
        await conn.execute("DELETE FROM aggregator.jobs WHERE job_id = %s", (job,))


async def run(args: argparse.Namespace) -> dict[str, Any]:
    n = args.updates if args.updates is not None else (20 if args.quick else 200)
    tag = uuid.uuid4().hex[:8]
    job = f"ingest-{tag}"
    kafka = KafkaSettings(topic_prefix=f"bench{tag}.", deployment_id=f"bench-{tag}")

    def say(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    phases = instrument()
    with tempfile.TemporaryDirectory(prefix="qflare-ingest-") as tmp:
        keys_dir = Path(tmp) / "keys"
        load_identity("aggregator", keys_dir, create=True)
        plane = ControlPlane(kafka, keys_dir)
        await plane.start()
        try:
            say(f"producing {n} {args.model} updates to {kafka.topics.updates.name} …")
            devices, sent = await produce(plane, job, n, args.model, say)
        finally:
            await plane.stop()
        batch = AggregatorSettings(keys_dir=keys_dir).batch_max_records
        bare_runs = []
        for _ in range(args.repeat):
            bare_runs.append(await bare(kafka, devices, n, batch))
            say(f"bare: {bare_runs[-1]['seconds']:.2f} s")
        say("aggregator …")
        agg = await aggregator(kafka, keys_dir, job, n, phases)
        say(f"aggregator: {agg['seconds']:.2f} s")
        for _ in range(args.repeat):
            bare_runs.append(await bare(kafka, devices, n, batch))
            say(f"bare: {bare_runs[-1]['seconds']:.2f} s")
        await cleanup(AggregatorSettings(keys_dir=keys_dir).postgres_dsn, job)
    bare_s = sum(r["seconds"] for r in bare_runs) / len(bare_runs)
    agg_s = float(agg["seconds"])
    mb = sent / 1e6
    return {
        "bench": "ingest",
        "model": args.model,
        "updates": n,
        "megabytes": round(mb, 1),
        "bare_s": round(bare_s, 3),
        "bare_runs_s": [round(r["seconds"], 3) for r in bare_runs],
        "aggregator_s": round(agg_s, 3),
        "aggregator_start_s": round(float(agg["start_s"]), 3),
        "bare_mb_per_s": round(mb / bare_s, 1),
        "aggregator_mb_per_s": round(mb / agg_s, 1),
        "ratio": round(bare_s / agg_s, 3),
        "phases_s": agg["phases_s"],
        "phase_share": {k: round(v / agg_s, 3) for k, v in agg["phases_s"].items()},
        "phase_calls": agg["phase_calls"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--updates", type=int, default=None, help="updates to ingest (default 200)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 20 updates unless --updates")
    parser.add_argument("--model", default="cnn", choices=("cnn", "2nn"), help="builtin model (default cnn)")
    parser.add_argument("--repeat", type=int, default=1, help="bare runs before and after (default 1)")
    args = parser.parse_args(argv)
    quiet_clients()
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass
    out = asyncio.run(run(args))
    print(f"{out['updates']} {out['model']} updates, {out['megabytes']} MB")
    print(f"bare consumer:  {out['bare_s']:.2f} s  ({out['bare_mb_per_s']} MB/s)  runs {out['bare_runs_s']}")
    print(f"aggregator:     {out['aggregator_s']:.2f} s  ({out['aggregator_mb_per_s']} MB/s)")
    print("where the aggregator's ingest time goes (seconds, share of its ingest time, calls):")
    for phase, seconds in out["phases_s"].items():
        share = out["phase_share"][phase]
        print(f"  {phase:<18} {seconds:8.2f} s  {share:6.1%}  {out['phase_calls'][phase]}")
    print(f"speed ratio aggregator/bare: {out['ratio']:.3f}x")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
