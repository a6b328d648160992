"""The base of every typed message body, and strict field readers for ``from_body``.

Each body is a frozen dataclass that turns itself into a msgpack-ready map
(``to_body``) and back (``from_body``). ``from_body`` goes through ``Fields``,
which refuses wrong types, out-of-range values and unexpected keys, and names
the offending field in every ``SchemaError``.
"""

from __future__ import annotations

import math
import re
from abc import ABC, abstractmethod
from collections.abc import Collection, Mapping, Sequence
from typing import Any, ClassVar, Self, TypeVar

from qflare.errors import NonFiniteTensorError, SchemaError, TensorError
from qflare.protocol import wire
from qflare.protocol.tensors import MAX_NDIM, Tensor, decode_tensor
from qflare.types import Scalar

#: Ids of devices, jobs and services: printable, no spaces, safe in logs and Kafka keys.
ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@/-]{0,127}")
_INT64_MAX = (1 << 63) - 1

#: A ``job_command`` config value: a scalar, or one level of named scalars (a strategy's parameters).
Setting = Scalar | dict[str, Scalar]
V = TypeVar("V")


class Body(ABC):
    """A typed payload. ``TYPE`` is the envelope's ``type`` string, ``KEYS`` its keys in wire order."""

    __slots__ = ()
    TYPE: ClassVar[str]
    KEYS: ClassVar[tuple[str, ...]]

    @abstractmethod
    def to_body(self) -> dict[str, Any]:
        """The msgpack map for this body: keys in ``KEYS`` order, free-form maps sorted."""

    @classmethod
    @abstractmethod
    def from_body(cls, data: object) -> Self:
        """Validate a decoded msgpack map and build the body, or raise ``SchemaError``."""

    def all_tensors(self) -> tuple[Tensor, ...]:
        """Tensors carried by this body, for finiteness checks."""
        return ()

    def claimed_key(self) -> tuple[str, bytes] | None:
        """(owner, public key) for bodies that introduce their own signing key."""
        return None


def sorted_map(entries: Mapping[str, V]) -> dict[str, V]:
    """A free-form map in the order encoders write it: keys sorted by their UTF-8 bytes.

    Code point order and UTF-8 byte order agree, so sorting the ``str`` keys suffices.
    """
    return dict(sorted(entries.items()))


class Fields:
    """Reads one body map strictly, in the order of docs/protocol.md §6 ("Naming the field").

    The key set is checked up front (the first unexpected key in wire order, then
    the first missing key in ``keys`` order); the caller then reads the values in
    ``keys`` order and runs cross-field checks last.
    """

    def __init__(self, data: object, keys: Sequence[str], where: str = "body") -> None:
        if not isinstance(data, dict):
            raise SchemaError(f"expected a map, got {type(data).__name__}", field=where)
        self._data: dict[str, object] = data
        self._where = where
        # Every key is required, optional ones included (as nil): one canonical form per body.
        wire.check_keys(data, keys, where)

    def _name(self, key: str) -> str:
        return f"{self._where}.{key}"

    def _get(self, key: str) -> object:
        return self._data[key]

    def integer(self, key: str, *, lo: int = 0, hi: int = _INT64_MAX) -> int:
        value = self._get(key)
        if not isinstance(value, int) or isinstance(value, bool):
            raise SchemaError(f"expected an integer, got {type(value).__name__}", field=self._name(key))
        if not lo <= value <= hi:
            raise SchemaError(f"{value} is outside [{lo}, {hi}]", field=self._name(key))
        return value

    def opt_integer(self, key: str, *, lo: int = 0, hi: int = _INT64_MAX) -> int | None:
        if self._get(key) is None:
            return None
        return self.integer(key, lo=lo, hi=hi)

    def flag(self, key: str) -> bool:
        value = self._get(key)
        if not isinstance(value, bool):
            raise SchemaError(f"expected a bool, got {type(value).__name__}", field=self._name(key))
        return value

    def text(self, key: str, *, max_len: int = 1024, pattern: re.Pattern[str] | None = None) -> str:
        value = self._get(key)
        if not isinstance(value, str):
            raise SchemaError(f"expected a str, got {type(value).__name__}", field=self._name(key))
        if len(value) > max_len:
            raise SchemaError(f"longer than {max_len} characters", field=self._name(key))
        if pattern is not None and not pattern.fullmatch(value):
            raise SchemaError(f"does not match {pattern.pattern}", field=self._name(key))
        return value

    def id(self, key: str) -> str:
        return self.text(key, max_len=128, pattern=ID_PATTERN)

    def opt_id(self, key: str) -> str | None:
        if self._get(key) is None:
            return None
        return self.id(key)

    def opt_text(self, key: str, *, max_len: int = 1024) -> str | None:
        if self._get(key) is None:
            return None
        return self.text(key, max_len=max_len)

    def choice(self, key: str, allowed: Collection[str]) -> str:
        value = self.text(key, max_len=64)
        if value not in allowed:
            raise SchemaError(f"{value!r} is not one of {sorted(allowed)}", field=self._name(key))
        return value

    def opt_choice(self, key: str, allowed: Collection[str]) -> str | None:
        if self._get(key) is None:
            return None
        return self.choice(key, allowed)

    def blob(self, key: str, *, size: int | None = None, max_len: int = 1 << 20) -> bytes:
        value = self._get(key)
        if not isinstance(value, bytes | memoryview):
            raise SchemaError(f"expected bin, got {type(value).__name__}", field=self._name(key))
        if size is not None and len(value) != size:
            raise SchemaError(f"expected {size} bytes, got {len(value)}", field=self._name(key))
        if len(value) > max_len:
            raise SchemaError(f"longer than {max_len} bytes", field=self._name(key))
        return bytes(value)

    def view(self, key: str) -> memoryview:
        """A bin field without copying it (for bulk data)."""
        value = self._get(key)
        if not isinstance(value, bytes | memoryview):
            raise SchemaError(f"expected bin, got {type(value).__name__}", field=self._name(key))
        return memoryview(value)

    def opt_view(self, key: str) -> memoryview | None:
        if self._get(key) is None:
            return None
        return self.view(key)

    def opt_blob(self, key: str, *, size: int) -> bytes | None:
        if self._get(key) is None:
            return None
        return self.blob(key, size=size)

    def ids(self, key: str) -> tuple[str, ...]:
        value = self._get(key)
        if not isinstance(value, list):
            raise SchemaError(f"expected an array, got {type(value).__name__}", field=self._name(key))
        out = []
        for i, item in enumerate(value):
            if not isinstance(item, str) or not ID_PATTERN.fullmatch(item):
                raise SchemaError("expected an id string", field=f"{self._name(key)}[{i}]")
            out.append(item)
        return tuple(out)

    def digests(self, key: str) -> tuple[bytes, ...]:
        """An array of 32-byte bins (SHA-256 values)."""
        value = self._get(key)
        if not isinstance(value, list):
            raise SchemaError(f"expected an array, got {type(value).__name__}", field=self._name(key))
        for i, item in enumerate(value):
            if not isinstance(item, bytes | memoryview) or len(item) != 32:
                raise SchemaError("expected bin of 32 bytes", field=f"{self._name(key)}[{i}]")
        return tuple(bytes(item) for item in value)

    def _map(self, key: str) -> dict[str, object]:
        value = self._get(key)
        if not isinstance(value, dict):
            raise SchemaError(f"expected a map, got {type(value).__name__}", field=self._name(key))
        return value

    def str_map(self, key: str) -> dict[str, str]:
        out = self._map(key)
        for k, v in out.items():
            if not isinstance(v, str):
                raise SchemaError(f"expected a str, got {type(v).__name__}", field=f"{self._name(key)}.{k}")
        return out  # type: ignore[return-value]

    def float_map(self, key: str) -> dict[str, float]:
        """str -> finite number; an int or float32 on the wire is held as float64."""
        raw = self._map(key)
        out: dict[str, float] = {}
        for k, v in raw.items():
            if isinstance(v, bool) or not isinstance(v, int | float):
                raise SchemaError("expected a number", field=f"{self._name(key)}.{k}")
            out[k] = _finite(float(v), f"{self._name(key)}.{k}")
        return out

    def float_maps(self, key: str) -> dict[str, dict[str, float]]:
        """id -> (str -> finite number): a float map per id (``round_complete.scores``)."""
        out: dict[str, dict[str, float]] = {}
        for k, v in self._map(key).items():
            where = f"{self._name(key)}.{k}"
            if not isinstance(k, str) or not ID_PATTERN.fullmatch(k):
                raise SchemaError("expected an id as the key", field=where)
            if not isinstance(v, dict):
                raise SchemaError(f"expected a map, got {type(v).__name__}", field=where)
            inner: dict[str, float] = {}
            for name, value in v.items():
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise SchemaError("expected a number", field=f"{where}.{name}")
                inner[name] = _finite(float(value), f"{where}.{name}")
            out[k] = inner
        return out

    def scalar_map(self, key: str) -> dict[str, Scalar]:
        out = self._map(key)
        for k, v in out.items():
            _check_scalar(v, f"{self._name(key)}.{k}")
        return out  # type: ignore[return-value]

    def settings_map(self, key: str) -> dict[str, Setting]:
        """str -> scalar | (str -> scalar): "settings" in docs/protocol.md §7."""
        out = self._map(key)
        for k, v in out.items():
            if isinstance(v, dict):
                for inner, value in v.items():
                    _check_scalar(value, f"{self._name(key)}.{k}.{inner}")
            else:
                _check_scalar(v, f"{self._name(key)}.{k}")
        return out  # type: ignore[return-value]

    def tensors(self, key: str, *, max_ndim: int = MAX_NDIM) -> tuple[Tensor, ...]:
        value = self._get(key)
        if not isinstance(value, list):
            raise SchemaError(f"expected an array, got {type(value).__name__}", field=self._name(key))
        out = tuple(
            decode_tensor(item, where=f"{self._name(key)}[{i}]", max_ndim=max_ndim)
            for i, item in enumerate(value)
        )
        # Names are compared once every tensor passed its own checks; the second use is named.
        seen: set[str] = set()
        for i, tensor in enumerate(out):
            if tensor.name in seen:
                raise TensorError(
                    f"duplicate tensor name {tensor.name!r}", field=f"{self._name(key)}[{i}].name"
                )
            seen.add(tensor.name)
        return out


def _check_scalar(value: object, field: str) -> None:
    if value is not None and not isinstance(value, str | int | float | bool):
        raise SchemaError(f"expected a scalar, got {type(value).__name__}", field=field)
    if isinstance(value, float):
        _finite(value, field)


def sorted_settings(entries: Mapping[str, Setting]) -> dict[str, Setting]:
    """A settings map in canonical order: its keys sorted, and each inner map's keys too."""
    return {k: sorted_map(v) if isinstance(v, dict) else v for k, v in sorted(entries.items())}


def _finite(value: float, field: str) -> float:
    # NaN and infinities break JSON, SQL and every average they enter.
    if not math.isfinite(value):
        raise NonFiniteTensorError(f"{value} is not a finite number", field=field)
    return value
