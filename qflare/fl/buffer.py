"""A buffered strategy's round input: every accepted update, in device-id order, within a memory budget.

A buffered strategy (``Strategy.mode == "buffered"``: robust aggregators, FedNova)
needs all of a round's updates at once, so they cannot be folded into a sum as
they arrive. ``UpdateBuffer`` holds them as a ``Sequence[Update]`` sorted by
device id whatever the arrival order, so ``aggregate`` sees the same input after
any replay. Updates are kept in memory while their tensors fit ``max_bytes``;
past that each further update is written to its own folder in a temporary
directory (one ``.npy`` per tensor group, the group's tensors flattened end to
end, plus a small msgpack header) and read back lazily, memory-mapped, when the
strategy indexes it. ``close()`` removes the files.

``encode_update``/``decode_update`` give one update as bytes, for a caller that
must persist it (the aggregator keeps a buffered round's updates in its database
so they survive a crash).

Pure: no Kafka, no database.
"""

from __future__ import annotations

import bisect
import math
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, overload

import msgpack
import numpy as np
from numpy.typing import NDArray

from qflare.errors import AggregationError
from qflare.fl.strategy import Update

_VERSION = 1
_HEADER = "header.msgpack"
#: The prefix of a buffer's temporary directory.
_PREFIX = "qflare-buffer-"
# Dtypes an update's tensors may have in a buffer (the aggregator accepts float32 only).
_DTYPES = frozenset({"<f4", "<f8", "<f2"})


def _nbytes(update: Update) -> int:
    return sum(int(a.nbytes) for arrays in update.groups.values() for a in arrays)


def _dtype_tag(array: NDArray[Any]) -> str:
    tag = array.dtype.newbyteorder("<").str
    if tag not in _DTYPES:
        raise AggregationError(f"dtype {array.dtype} cannot be buffered", field="groups")
    return tag


def _header(update: Update) -> dict[str, Any]:
    """The update without its values: ids, count, metrics and each group's tensor dtypes and shapes."""
    return {
        "v": _VERSION,
        "device_id": update.device_id,
        "num_examples": int(update.num_examples),
        "metrics": {str(k): float(v) for k, v in sorted(update.metrics.items())},
        "groups": {
            g: [[_dtype_tag(a), [int(d) for d in a.shape]] for a in arrays]
            for g, arrays in sorted(update.groups.items())
        },
    }


def _check_header(doc: object) -> dict[str, Any]:
    if not isinstance(doc, dict) or doc.get("v") != _VERSION:
        raise AggregationError("buffered update has no known version", field="v")
    if not isinstance(doc.get("device_id"), str) or type(doc.get("num_examples")) is not int:
        raise AggregationError("buffered update lacks its device id or example count", field="device_id")
    metrics, groups = doc.get("metrics"), doc.get("groups")
    if not isinstance(metrics, dict) or not all(isinstance(v, float) for v in metrics.values()):
        raise AggregationError("buffered update's metrics are not floats", field="metrics")
    if not isinstance(groups, dict):
        raise AggregationError("buffered update's groups are not a map", field="groups")
    for g, entries in groups.items():
        if not isinstance(entries, list) or not all(
            isinstance(e, list)
            and len(e) == 2
            and e[0] in _DTYPES
            and isinstance(e[1], list)
            and all(type(d) is int and d >= 0 for d in e[1])
            for e in entries
        ):
            raise AggregationError("tensor entries are not [dtype, shape]", field=f"groups.{g}")
    return doc


def _split(flat: NDArray[Any], entries: Sequence[list[Any]], group: str) -> list[NDArray[Any]]:
    """``flat`` cut into the group's tensors (views, no copy)."""
    sizes = [math.prod(shape) for _, shape in entries]
    if sum(sizes) != flat.size:
        raise AggregationError(
            f"{flat.size} values, the header declares {sum(sizes)}", field=f"groups.{group}"
        )
    out, at = [], 0
    for (_, shape), size in zip(entries, sizes, strict=True):
        out.append(flat[at : at + size].reshape(shape))
        at += size
    return out


def encode_update(update: Update) -> bytes:
    """One update as bytes: its header and each tensor's raw little-endian C-order data."""
    doc = _header(update)
    doc["data"] = {
        g: [np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<")).tobytes() for a in arrays]
        for g, arrays in sorted(update.groups.items())
    }
    return bytes(msgpack.packb(doc, use_bin_type=True))


def decode_update(data: bytes) -> Update:
    """The update ``encode_update`` gave ``data`` for (arrays are read-only views of ``data``)."""
    try:
        raw = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise AggregationError(f"buffered update does not decode: {exc}") from exc
    doc = _check_header(raw)
    blobs = doc.get("data")
    if not isinstance(blobs, dict) or set(blobs) != set(doc["groups"]):
        raise AggregationError("buffered update's data does not match its groups", field="data")
    groups: dict[str, list[NDArray[Any]]] = {}
    for g, entries in doc["groups"].items():
        parts = blobs[g]
        if not isinstance(parts, list) or len(parts) != len(entries):
            raise AggregationError("one data blob per tensor expected", field=f"data.{g}")
        arrays = []
        for (tag, shape), blob in zip(entries, parts, strict=True):
            dtype = np.dtype(tag)
            if not isinstance(blob, bytes) or len(blob) != math.prod(shape) * dtype.itemsize:
                raise AggregationError(f"data does not fit shape {shape} of {tag}", field=f"data.{g}")
            arrays.append(np.frombuffer(blob, dtype=dtype).reshape(shape))
        groups[g] = arrays
    return Update(doc["device_id"], groups, doc["num_examples"], doc["metrics"])


class UpdateBuffer(Sequence[Update]):
    """A round's updates in device-id order; in memory up to ``max_bytes`` of tensors, then on disk.

    ``spill_dir`` is where the temporary directory of spilled updates is made (the
    system's temporary directory if None); it is created on the first spill.
    """

    def __init__(self, max_bytes: int, spill_dir: str | Path | None = None) -> None:
        if max_bytes < 0:
            raise AggregationError("the memory budget must be >= 0 bytes", field="max_bytes")
        self.max_bytes = max_bytes
        self._spill_root = None if spill_dir is None else Path(spill_dir)
        self._dir: Path | None = None
        self._ids: list[str] = []
        self._memory: dict[str, Update] = {}
        self._spilled: dict[str, Path] = {}
        #: Bytes of tensor data held in memory now.
        self.memory_bytes = 0
        self._closed = False

    # --- filling -------------------------------------------------------------------------

    def add(self, update: Update) -> None:
        """Keep ``update``; a device id already held is refused (each device answers once)."""
        if self._closed:
            raise AggregationError("the buffer is closed", field="buffer")
        device = update.device_id
        if device in self._memory or device in self._spilled:
            raise AggregationError(f"{device!r} is already buffered", field="device_id")
        size = _nbytes(update)
        if self.memory_bytes + size <= self.max_bytes:
            self._memory[device] = update
            self.memory_bytes += size
        else:
            self._spilled[device] = self._spill(update)
        bisect.insort(self._ids, device)

    def _spill(self, update: Update) -> Path:
        if self._dir is None:
            if self._spill_root is not None:
                self._spill_root.mkdir(parents=True, exist_ok=True)
            self._dir = Path(tempfile.mkdtemp(prefix=_PREFIX, dir=self._spill_root))
        # A numbered folder, not one named by the device id: ids are not file names.
        folder = self._dir / f"u{len(self._spilled):08d}"
        folder.mkdir()
        header = _header(update)
        for index, (group, arrays) in enumerate(sorted(update.groups.items())):
            tags = {_dtype_tag(a) for a in arrays}
            if len(tags) > 1:
                raise AggregationError(
                    f"tensors of one group have dtypes {sorted(tags)}", field=f"groups.{group}"
                )
            dtype = np.dtype(tags.pop() if tags else "<f4")
            flat = np.concatenate(
                [np.ravel(a).astype(dtype, copy=False) for a in arrays] or [np.empty(0, dtype)]
            )
            np.save(folder / f"g{index}.npy", flat, allow_pickle=False)
        (folder / _HEADER).write_bytes(bytes(msgpack.packb(header, use_bin_type=True)))
        return folder

    # --- reading -------------------------------------------------------------------------

    def _load(self, folder: Path) -> Update:
        doc = _check_header(msgpack.unpackb((folder / _HEADER).read_bytes(), raw=False, strict_map_key=True))
        groups: dict[str, list[NDArray[Any]]] = {}
        for index, (group, entries) in enumerate(sorted(doc["groups"].items())):
            # Memory-mapped, read-only: a strategy touching one coordinate reads one page.
            flat = np.load(folder / f"g{index}.npy", mmap_mode="r", allow_pickle=False)
            groups[group] = _split(flat, entries, group)
        return Update(doc["device_id"], groups, doc["num_examples"], doc["metrics"])

    def get(self, device_id: str) -> Update | None:
        if device_id in self._memory:
            return self._memory[device_id]
        folder = self._spilled.get(device_id)
        return None if folder is None else self._load(folder)

    @property
    def device_ids(self) -> tuple[str, ...]:
        return tuple(self._ids)

    @property
    def spilled(self) -> int:
        """How many updates are on disk."""
        return len(self._spilled)

    def __len__(self) -> int:
        return len(self._ids)

    @overload
    def __getitem__(self, index: int) -> Update: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[Update]: ...

    def __getitem__(self, index: int | slice) -> Update | Sequence[Update]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        found = self.get(self._ids[index])
        assert found is not None  # every id listed is held in memory or on disk
        return found

    def __iter__(self) -> Iterator[Update]:
        for device in list(self._ids):
            found = self.get(device)
            assert found is not None
            yield found

    def __contains__(self, item: object) -> bool:
        device = item.device_id if isinstance(item, Update) else item
        return device in self._memory or device in self._spilled

    # --- lifetime ------------------------------------------------------------------------

    def close(self) -> None:
        """Forget every update and remove the spilled files (arrays read from them stay valid
        on POSIX while referenced, but should not be used after)."""
        self._closed = True
        self._memory.clear()
        self._spilled.clear()
        self._ids.clear()
        self.memory_bytes = 0
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self) -> UpdateBuffer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def remove_stale(spill_dir: str | Path) -> int:
    """Remove what buffers left in ``spill_dir`` (a process killed before ``close``); return how many.

    Only for a folder that one process's buffers use alone, before it makes any.
    """
    root = Path(spill_dir)
    stale = sorted(root.glob(f"{_PREFIX}*")) if root.is_dir() else []
    for folder in stale:
        shutil.rmtree(folder, ignore_errors=True)
    return len(stale)


def buffered(updates: Mapping[str, Update] | Sequence[Update], max_bytes: int = 1 << 30) -> UpdateBuffer:
    """A buffer holding ``updates`` (a convenience for tests and the simulation engine)."""
    buffer = UpdateBuffer(max_bytes)
    for update in updates.values() if isinstance(updates, Mapping) else updates:
        buffer.add(update)
    return buffer
