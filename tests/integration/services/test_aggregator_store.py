"""The aggregator's PostgreSQL store: what a checkpoint writes is exactly what a restart reads."""

from __future__ import annotations

from collections.abc import AsyncIterator

import numpy as np
import pytest

from devstack.settings import StackSettings
from qflare.fl import WEIGHTS, FedAvg, RoundSums, Update
from qflare.fl.arrays import shapes_of
from qflare.ml import init_weights, tensor_names
from qflare.protocol.training import RoundTask
from services.aggregator.cursor import Cursor
from services.aggregator.models import decode, encode
from services.aggregator.rounds import Included, OpenRound
from services.aggregator.store import AggregatorStore


@pytest.fixture
async def store(stack: StackSettings, unique: str) -> AsyncIterator[AggregatorStore]:
    made = await AggregatorStore.connect(stack.postgres_dsn, scope=f"t{unique}.")
    yield made
    await made.close()


async def test_job_model_round_checkpoint_and_close_round_trip(store: AggregatorStore, unique: str) -> None:
    job = f"job-{unique}"
    fedavg = FedAvg()
    assert await store.insert_job(job, {"model": "2nn"}, fedavg.initial_state().to_bytes())
    assert not await store.insert_job(job, {"model": "2nn"}, b"")  # ids are unique
    assert [j.job_id for j in await store.jobs()] == [job]
    weights = init_weights("2nn", 0)
    v0 = encode(job, 0, weights, tensor_names("2nn"), round=None, model="2nn", parent=None)
    await store.insert_model(job, 0, parent=None, round=None, metrics={}, digest=v0.digest, weights=v0.data)
    assert await store.latest_version(job) == 0
    row = await store.model(job, 0)
    assert row is not None and row.weights == v0.data and row.digest == v0.digest
    assert decode(row.weights).version == 0

    task = RoundTask(job, 1, 0, "fedavg", ("a", "b"), 2**41, 1, 1, {"lr": 0.1})
    state = fedavg.begin_round(fedavg.initial_state(), 1, tensor_names("2nn"), shapes_of(weights))
    rnd = OpenRound.from_task(task, b"\x07" * 16, 1_700_000_000_123, state)
    await store.insert_round(rnd, dict(task.config))
    assert await store.round_task_id(job, 1) == b"\x07" * 16 and await store.last_round(job) == 1

    fedavg.accumulate(rnd.sums, Update("a", {WEIGHTS: init_weights("2nn", 5)}, 42))
    rnd.include(Included("a", b"\x01" * 16, 42, 0.25))
    rnd.count("bytes_in", 999)
    rnd.count("rejected_shape")
    async with store.conn.transaction():
        await store.checkpoint_round(rnd)
    (back,) = [r for r in await store.open_rounds() if r.job_id == job]
    assert back.sums.to_bytes() == rnd.sums.to_bytes()
    assert back.included == {"a": Included("a", b"\x01" * 16, 42, 0.25)} and back.pending == []
    assert back.stats == rnd.stats and back.opened_ms == rnd.opened_ms and back.devices == ("a", "b")
    assert isinstance(back.sums, RoundSums) and back.sums.count == 1

    assert await store.close_round(back, "completed", {"status": "completed"})
    assert not await store.close_round(back, "completed", {"status": "completed"})  # a close happens once
    assert [r for r in await store.open_rounds() if r.job_id == job] == []
    np.testing.assert_array_equal(decode(v0.data).tensors[0].array, weights[0])


async def test_cursors_and_outbox_are_scoped(
    stack: StackSettings, store: AggregatorStore, unique: str
) -> None:
    topic = f"t{unique}.qflare.updates"
    c = Cursor(topic, 3, next_offset=40)
    c.chunk_seen(("dev", b"\xaa"), 33, now_ms=1)
    await store.save_cursor(c)
    assert not c.dirty
    (back,) = (await store.cursors(topic, now_ms=5)).values()
    assert (back.partition, back.next_offset, back.resume_offset) == (3, 40, 33)
    assert back.open_streams == {("dev", b"\xaa"): (33, 5)}

    other = await AggregatorStore.connect(stack.postgres_dsn, scope=f"o{unique}.")
    try:
        await store.outbox.queue("topic-a", b"k", b"mine")
        await other.outbox.queue("topic-b", None, b"theirs")
        mine = await store.outbox.pending()
        assert [(t, k, v) for _, t, k, v in mine] == [("topic-a", b"k", b"mine")]
        await store.outbox.sent(mine[-1][0])
        assert await store.outbox.pending() == []
        for i in range(3):
            await store.outbox.queue("topic-a", None, bytes([i]) * 10)
        assert [v[0] for *_, v in await store.outbox.pending(max_bytes=5)] == [0]  # always at least one
        assert [v[0] for *_, v in await store.outbox.pending(max_bytes=20)] == [0, 1]
        assert len(await store.outbox.pending(limit=1)) == 1
        await store.outbox.sent((await store.outbox.pending())[-1][0])
        assert [v for *_, v in await other.outbox.pending()] == [b"theirs"]
        await other.outbox.sent((await other.outbox.pending())[-1][0])
    finally:
        await other.close()
