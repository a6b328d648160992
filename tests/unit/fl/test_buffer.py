"""The buffered round input: device-id order whatever the arrival order, a memory budget that spills."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from qflare.errors import AggregationError
from qflare.fl import CONTROL, WEIGHTS, Update
from qflare.fl.buffer import UpdateBuffer, decode_update, encode_update, remove_stale


def _update(device: str, seed: int, n: int = 10) -> Update:
    rng = np.random.default_rng(seed)
    weights = [rng.standard_normal((3, 4)).astype(np.float32), rng.standard_normal(4).astype(np.float32)]
    control = [rng.standard_normal((3, 4)).astype(np.float32)]
    return Update(device, {WEIGHTS: weights, CONTROL: control}, n, {"local_steps": float(seed + 1)})


def _same(a: Update, b: Update) -> None:
    assert (a.device_id, a.num_examples, dict(a.metrics)) == (b.device_id, b.num_examples, dict(b.metrics))
    assert set(a.groups) == set(b.groups)
    for g in a.groups:
        assert len(a.groups[g]) == len(b.groups[g])
        for x, y in zip(a.groups[g], b.groups[g], strict=True):
            assert x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes()


def test_updates_come_back_in_device_id_order_whatever_the_arrival_order() -> None:
    ids = ["d3", "a1", "z9", "b2", "c0"]
    updates = {d: _update(d, i) for i, d in enumerate(ids)}
    with UpdateBuffer(1 << 20) as buffer:
        for d in ids:
            buffer.add(updates[d])
        assert buffer.device_ids == tuple(sorted(ids))
        assert [u.device_id for u in buffer] == sorted(ids)
        assert len(buffer) == 5 and buffer.spilled == 0
        for got, d in zip(buffer, sorted(ids), strict=True):
            _same(got, updates[d])
        assert buffer[-1].device_id == "z9"
        assert [u.device_id for u in buffer[1:3]] == ["b2", "c0"]
        assert "a1" in buffer.device_ids and buffer.get("nobody") is None
        assert updates["a1"] in buffer


def test_over_the_budget_updates_spill_to_disk_and_read_back_identical(tmp_path: Path) -> None:
    updates = [_update(f"dev{i:02d}", i, n=i + 1) for i in range(7)]
    one = sum(a.nbytes for arrays in updates[0].groups.values() for a in arrays)
    buffer = UpdateBuffer(2 * one, tmp_path / "spill")
    for u in reversed(updates):
        buffer.add(u)
    assert buffer.spilled == 5 and buffer.memory_bytes == 2 * one
    files = list((tmp_path / "spill").rglob("*.npy"))
    assert len(files) == 5 * 2  # one file per group per spilled update
    for got, want in zip(buffer, updates, strict=True):
        _same(got, want)
    spilled = buffer[0]  # dev00 came last, so it is on disk: read-only, memory-mapped
    assert not spilled.weights[0].flags.writeable
    buffer.close()
    assert not list((tmp_path / "spill").iterdir())
    assert len(buffer) == 0
    with pytest.raises(AggregationError):
        buffer.add(updates[0])


def test_a_zero_budget_spills_everything_and_order_still_holds(tmp_path: Path) -> None:
    with UpdateBuffer(0, tmp_path) as buffer:
        for d in ["b", "a", "c"]:
            buffer.add(_update(d, ord(d)))
        assert buffer.spilled == 3 and buffer.memory_bytes == 0
        assert [u.device_id for u in buffer] == ["a", "b", "c"]
        _same(buffer[1], _update("b", ord("b")))


def test_a_device_is_buffered_once() -> None:
    with UpdateBuffer(1 << 20) as buffer:
        buffer.add(_update("a", 1))
        with pytest.raises(AggregationError) as caught:
            buffer.add(_update("a", 2))
        assert caught.value.field == "device_id"
        assert len(buffer) == 1


def test_an_update_round_trips_through_bytes() -> None:
    update = _update("dev", 4, n=17)
    again = decode_update(encode_update(update))
    _same(again, update)
    assert encode_update(again) == encode_update(update)  # deterministic


def test_damaged_bytes_are_an_aggregation_error_not_a_crash() -> None:
    data = encode_update(_update("dev", 1))
    for bad in (b"", b"\x01\x02", data[:-5], b"\x80"):
        with pytest.raises(AggregationError):
            decode_update(bad)


def test_what_a_killed_process_left_is_removed(tmp_path: Path) -> None:
    left = UpdateBuffer(0, tmp_path)
    left.add(_update("a", 1))  # never closed, as after a kill -9
    (tmp_path / "keep.txt").write_text("not a buffer's")
    assert remove_stale(tmp_path) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]
    assert remove_stale(tmp_path / "absent") == 0
