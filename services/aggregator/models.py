"""Global model versions: build, encode, digest and decode them.

A stored version is the ``GlobalModel`` body exactly as it goes on the wire
(msgpack), so the SHA-256 kept with it is the digest a receiver computes over
the (reassembled) body it fetched, and the store never needs a second format.

A version carries the model's weights first, in layout order, then the tensor
groups the job's strategy sends devices with it (``Strategy.server_groups``:
SCAFFOLD's ``control``), each tensor named ``<group>/<name>``, groups sorted by
name. The metadata key ``server_groups`` lists those groups (comma-separated;
absent when there are none, so a plain model's bytes are what they always were),
so a reader that wants the weights alone (``weights_of``, the CLI's export) can
take them without knowing the strategy.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from qflare.errors import AggregationError, ProtocolError
from qflare.fl import NDArrays, UpdateSpec
from qflare.ml import ModelName, layout
from qflare.protocol import Tensor, wire
from qflare.protocol.limits import DEFAULT_LIMITS, Limits
from qflare.protocol.tensors import WEIGHTS_GROUP, qualified, split_groups
from qflare.protocol.training import GlobalModel

#: The dtype of every tensor of a global model and of every accepted update.
MODEL_DTYPE = "<f4"
#: The metadata key listing the server groups a version carries after its weights.
SERVER_GROUPS = "server_groups"
#: A group's tensors as they are published: their names (unqualified) and arrays, in order.
NamedGroups = Mapping[str, tuple[Sequence[str], Sequence[NDArray[Any]]]]


@dataclass(frozen=True, slots=True)
class Layout:
    """What an update's tensors must look like: names, shapes and dtype, in wire order."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    dtype: str = MODEL_DTYPE

    @property
    def data_bytes(self) -> int:
        """Bytes of tensor data an update of this layout carries (its body is a little more)."""
        return sum(math.prod(shape) for shape in self.shapes) * np.dtype(self.dtype).itemsize

    @classmethod
    def of(cls, model: ModelName) -> Layout:
        entries = layout(model)
        return cls(tuple(n for n, _ in entries), tuple(tuple(s) for _, s in entries))

    @classmethod
    def of_tensors(cls, tensors: Sequence[Tensor]) -> Layout:
        """The layout of a stored model: its tensors' names and shapes, in its order."""
        return cls(tuple(t.name for t in tensors), tuple(tuple(t.array.shape) for t in tensors))


@dataclass(frozen=True, slots=True)
class EncodedModel:
    body: GlobalModel
    data: bytes

    @property
    def digest(self) -> bytes:
        return hashlib.sha256(self.data).digest()


def encode(
    job_id: str,
    version: int,
    weights: Sequence[NDArray[Any]],
    names: Sequence[str],
    *,
    round: int | None,
    model: str,
    parent: int | None,
    groups: NamedGroups | None = None,
) -> EncodedModel:
    """The ``GlobalModel`` for ``weights`` (float32), then the server ``groups``, and its exact bytes.

    Metadata holds only values derived from the inputs (no clock), so encoding
    the same version twice, e.g. after a crash, gives the same bytes.
    """
    tensors = [
        Tensor.of(name, np.ascontiguousarray(w, dtype=np.float32))
        for name, w in zip(names, weights, strict=True)
    ]
    extra = sorted(g for g in (groups or {}) if g != WEIGHTS_GROUP)
    for group in extra:
        group_names, arrays = (groups or {})[group]
        tensors.extend(
            Tensor.of(qualified(group, name), np.ascontiguousarray(a, dtype=np.float32))
            for name, a in zip(group_names, arrays, strict=True)
        )
    metadata: dict[str, str | int | float | bool | None] = {"model": model, "parent": parent}
    if extra:
        metadata[SERVER_GROUPS] = ",".join(extra)
    body = GlobalModel(job_id=job_id, version=version, tensors=tuple(tensors), round=round, metadata=metadata)
    return EncodedModel(body, b"".join(bytes(p) for p in wire.pack_parts(body.to_body())))


def decode(data: bytes, limits: Limits = DEFAULT_LIMITS) -> GlobalModel:
    """Parse a stored model body (ours, but checked like any input: a corrupt row must not load)."""
    bounds = wire.WireLimits(
        max_bytes=limits.max_message_bytes,
        max_depth=limits.max_depth,
        max_array_len=limits.max_array_len,
        max_map_len=limits.max_map_len,
        max_str_len=limits.max_str_len,
        max_bin_len=limits.max_message_bytes,
    )
    try:
        return GlobalModel.from_body(wire.unpack(data, bounds, root="body"))
    except ProtocolError as exc:
        raise AggregationError(f"stored model does not decode: {exc}", field="weights") from exc


def server_groups_of(model: GlobalModel) -> tuple[str, ...]:
    """The server groups a version carries after its weights (its ``server_groups`` metadata)."""
    listed = model.metadata.get(SERVER_GROUPS)
    return tuple(listed.split(",")) if isinstance(listed, str) and listed else ()


def weights_tensors(model: GlobalModel) -> list[Tensor]:
    """The model's weights alone: its tensors less the server groups it lists."""
    return split_groups(model.tensors, server_groups_of(model)).get(WEIGHTS_GROUP, [])


def weights_of(model: GlobalModel, expected: Layout) -> NDArrays:
    """The model's weights in layout order, checked against the layout (server groups left out)."""
    weights = weights_tensors(model)
    got = tuple(t.name for t in weights)
    if got != expected.names:
        raise AggregationError(f"stored model has tensors {got}, expected {expected.names}", field="tensors")
    return [t.array for t in weights]


def named_groups(
    groups: Mapping[str, NDArrays], spec: UpdateSpec, layout: Layout
) -> dict[str, tuple[Sequence[str], Sequence[NDArray[Any]]]]:
    """``Strategy.server_groups`` with each tensor's name: the update spec's names for a group it
    declares too (SCAFFOLD's ``control``), else the model's (a group in the model's tensor order)."""
    out: dict[str, tuple[Sequence[str], Sequence[NDArray[Any]]]] = {}
    for group, arrays in groups.items():
        declared = spec.groups.get(group)
        names = declared.names if declared is not None else layout.names
        if len(names) != len(arrays):
            raise AggregationError(
                f"server group {group!r} has {len(arrays)} tensors, its names are {len(names)}",
                field=f"server_groups.{group}",
            )
        out[group] = (names, arrays)
    return out
