"""Tensors on the wire: ``{name, dtype, shape, data}`` with raw little-endian C-order bytes.

Decoding never copies: ``data`` arrives as a memoryview into the received
record and becomes a read-only ``numpy.frombuffer`` array over the same memory.
Such arrays may be unaligned (their offset inside the record is arbitrary);
numpy handles that, and callers that need alignment or writability copy.

bfloat16 has no numpy dtype, so it travels with the tag ``"bf16"`` and is held
in memory as its raw 16-bit patterns (``<u2``); ``bf16_to_float32`` widens it.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from qflare.errors import LimitError, NonFiniteTensorError, SchemaError, TensorError
from qflare.protocol import wire
from qflare.protocol.limits import DEFAULT_LIMITS

#: wire tag -> in-memory numpy dtype. Only these tags are accepted.
DTYPES: dict[str, np.dtype[Any]] = {
    "<f4": np.dtype("<f4"),
    "<f2": np.dtype("<f2"),
    "bf16": np.dtype("<u2"),
    "|i1": np.dtype("|i1"),
    "|u1": np.dtype("|u1"),
}
_FLOAT_TAGS = frozenset({"<f4", "<f2"})
#: The tensor map's keys, in wire order.
KEYS = ("name", "dtype", "shape", "data")
_MAX_DIM = (1 << 31) - 1
#: More dimensions than any layer needs; bounds the shape array a peer can send.
MAX_NDIM = 8
#: Largest extent one tensor may declare: no reassembled body can carry more.
MAX_TENSOR_BYTES = DEFAULT_LIMITS.max_message_bytes


@dataclass(frozen=True, slots=True, eq=False)
class Tensor:
    """A named array plus its wire dtype tag (which differs from ``array.dtype`` only for bf16)."""

    name: str
    dtype: str
    array: NDArray[Any]

    def __eq__(self, other: object) -> bool:
        # Bitwise, so NaN payloads and -0.0 compare the way the wire sees them.
        if not isinstance(other, Tensor):
            return NotImplemented
        return (self.name, self.dtype, self.array.shape) == (
            other.name,
            other.dtype,
            other.array.shape,
        ) and self.array.tobytes() == other.array.tobytes()

    __hash__ = None  # type: ignore[assignment]

    @classmethod
    def of(cls, name: str, array: NDArray[Any]) -> Tensor:
        """Wrap ``array``, picking the tag from its dtype (byte order normalised to little-endian)."""
        for tag, dtype in DTYPES.items():
            if tag != "bf16" and array.dtype.kind == dtype.kind and array.dtype.itemsize == dtype.itemsize:
                return cls(name, tag, np.asarray(array, dtype=dtype))
        raise TensorError(f"unsupported dtype {array.dtype}; use one of {sorted(DTYPES)}", field=name)

    @classmethod
    def bf16(cls, name: str, array: NDArray[Any]) -> Tensor:
        """Round a float array to bfloat16 (nearest even) and wrap it."""
        return cls(name, "bf16", float32_to_bf16(array))

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise TensorError(f"unsupported dtype {self.dtype!r}", field=f"{self.name}.dtype")
        if self.array.dtype != DTYPES[self.dtype]:
            raise TensorError(
                f"array dtype {self.array.dtype} does not match tag {self.dtype}", field=self.name
            )

    def to_wire(self) -> dict[str, Any]:
        """The tensor map; ``data`` is a zero-copy view of the array (copied only if not C-contiguous)."""
        flat = np.ascontiguousarray(self.array).reshape(-1)
        return {
            "name": self.name,
            "dtype": self.dtype,
            "shape": [int(d) for d in self.array.shape],
            "data": memoryview(flat.view(np.uint8).data),
        }

    def check_finite(self, where: str = "tensor") -> None:
        """Raise ``NonFiniteTensorError`` if a float tensor holds NaN or +-inf."""
        if self.array.size == 0:
            return
        if self.dtype == "bf16":
            # all-ones exponent marks inf/NaN in bfloat16
            if bool(np.any((self.array & 0x7F80) == 0x7F80)):
                raise NonFiniteTensorError("contains NaN or infinity", field=f"{where}.data")
        elif self.dtype in _FLOAT_TAGS and not (
            # min/max propagate NaN and expose +-inf, and allocate nothing (isfinite would).
            np.isfinite(self.array.min()) and np.isfinite(self.array.max())
        ):
            raise NonFiniteTensorError("contains NaN or infinity", field=f"{where}.data")


def decode_tensor(
    obj: object, *, where: str, max_ndim: int = MAX_NDIM, max_bytes: int = MAX_TENSOR_BYTES
) -> Tensor:
    """Build a tensor from its decoded map without copying ``data``.

    Wrong msgpack types are ``schema``; a dtype, shape or length that breaks §8 is ``tensor``;
    a shape whose extent (zero dimensions counted as 1) needs more than ``max_bytes`` is
    ``limit``, refused before numpy sees it.
    """
    if not isinstance(obj, dict):
        raise SchemaError(f"expected a tensor map, got {type(obj).__name__}", field=where)
    wire.check_keys(obj, KEYS, where)
    name, tag, shape, data = obj["name"], obj["dtype"], obj["shape"], obj["data"]
    if not isinstance(name, str) or not 0 < len(name) <= 256:
        raise SchemaError("expected a str of 1..256 characters", field=f"{where}.name")
    if not isinstance(tag, str):
        raise SchemaError(f"expected a str, got {type(tag).__name__}", field=f"{where}.dtype")
    if tag not in DTYPES:
        raise TensorError(f"dtype must be one of {sorted(DTYPES)}", field=f"{where}.dtype")
    if not isinstance(shape, list):
        raise SchemaError(f"expected an array, got {type(shape).__name__}", field=f"{where}.shape")
    if len(shape) > max_ndim:
        raise TensorError(f"{len(shape)} dimensions exceed {max_ndim}", field=f"{where}.shape")
    count = 1
    # The product of the non-zero dimensions: numpy refuses a shape whose extent overflows
    # even when another dimension is 0 and the array holds no bytes, so it is bounded too.
    extent = 1
    for i, dim in enumerate(shape):
        if not isinstance(dim, int) or isinstance(dim, bool):
            raise SchemaError(f"expected an int, got {type(dim).__name__}", field=f"{where}.shape[{i}]")
        if not 0 <= dim <= _MAX_DIM:
            raise TensorError(f"dimension {dim} is outside [0, {_MAX_DIM}]", field=f"{where}.shape[{i}]")
        count *= dim
        extent *= max(dim, 1)
    dtype = DTYPES[tag]
    if extent * dtype.itemsize > max_bytes:
        raise LimitError(
            f"shape {shape} of {tag} spans {extent * dtype.itemsize} bytes, over {max_bytes}",
            field=f"{where}.shape",
        )
    if not isinstance(data, memoryview | bytes):
        raise SchemaError(f"expected bin, got {type(data).__name__}", field=f"{where}.data")
    if count * dtype.itemsize != len(data):
        raise TensorError(
            f"shape {shape} of {tag} needs {count * dtype.itemsize} bytes, got {len(data)}",
            field=f"{where}.data",
        )
    try:
        array = np.frombuffer(data, dtype=dtype).reshape(shape)
    except ValueError as exc:  # the bounds above should make this unreachable; never a crash
        raise TensorError(f"shape {shape} does not fit the data: {exc}", field=f"{where}.shape") from exc
    return Tensor(name, tag, array)


def float32_to_bf16(array: NDArray[Any]) -> NDArray[np.uint16]:
    """bfloat16 bit patterns of ``array`` (round to nearest, ties to even; NaN stays NaN)."""
    bits = np.ascontiguousarray(array, dtype="<f4").view("<u4")
    rounded = (bits + (0x7FFF + ((bits >> 16) & 1))) >> 16
    nan = (bits & 0x7FFFFFFF) > 0x7F800000
    out = np.where(nan, (bits >> 16) | 0x0040, rounded)
    return out.astype("<u2")


def bf16_to_float32(bits: NDArray[Any]) -> NDArray[np.float32]:
    """Widen bfloat16 bit patterns to float32 (exact)."""
    return (np.asarray(bits, dtype="<u2").astype("<u4") << 16).view("<f4")


#: The tensor group of a model's own weights: its tensors travel under their plain names.
WEIGHTS_GROUP = "weights"
#: Separates a group from a tensor name: ``control/fc1.weight`` is ``fc1.weight`` of group ``control``.
GROUP_SEP = "/"


def qualified(group: str, name: str) -> str:
    """The wire name of tensor ``name`` of ``group`` (weights keep their plain names)."""
    return name if group == WEIGHTS_GROUP else f"{group}{GROUP_SEP}{name}"


def split_groups(tensors: Sequence[Tensor], groups: Collection[str]) -> dict[str, list[Tensor]]:
    """Tensors by group, each renamed to its plain name, in their wire order.

    A tensor named ``g/rest`` with ``g`` one of ``groups`` (the groups other than the
    weights that the receiver expects) belongs to ``g``; every other tensor is a weight.
    The receiver's list decides, not the name alone: a model tensor whose own name has
    a ``/`` (ONNX initialisers can) stays a weight unless its prefix is an expected group.
    """
    out: dict[str, list[Tensor]] = {}
    for tensor in tensors:
        group, sep, rest = tensor.name.partition(GROUP_SEP)
        if sep and rest and group in groups and group != WEIGHTS_GROUP:
            out.setdefault(group, []).append(Tensor(rest, tensor.dtype, tensor.array))
        else:
            out.setdefault(WEIGHTS_GROUP, []).append(tensor)
    return out
