"""A strict msgpack subset: reader with limits and zero-copy bins, writer with shortest forms.

Why not ``msgpack.unpackb``: it copies every bin into a new ``bytes`` and then
hands back whatever it parsed. Here every length is checked against the limit
*and* against the bytes actually left before anything is allocated, bins come
back as ``memoryview`` slices of the input (so tensors decode with no copy), and
the accepted subset is exactly what the protocol uses: nil, bool, int, float,
str (UTF-8), bin, array, and maps with unique str keys. Ext types are refused.

The writer (``qflare.protocol.packer``, re-exported here) emits the shortest
encoding of every value (what ``msgpack.packb`` does too) and returns large bins
as separate buffer parts, so a body can be hashed and framed into a record with
a single copy of its tensor data.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from qflare.errors import LimitError, SchemaError
from qflare.protocol.packer import Buffer, bin_header, map_header, pack, pack_entries, pack_parts

__all__ = [
    "Buffer",
    "WireLimits",
    "bin_header",
    "check_keys",
    "map_header",
    "pack",
    "pack_entries",
    "pack_parts",
    "unpack",
]

_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_FIXED = {
    0xCC: struct.Struct(">B"),
    0xCD: struct.Struct(">H"),
    0xCE: struct.Struct(">I"),
    0xCF: struct.Struct(">Q"),
    0xD0: struct.Struct(">b"),
    0xD1: struct.Struct(">h"),
    0xD2: struct.Struct(">i"),
    0xD3: struct.Struct(">q"),
    0xCA: struct.Struct(">f"),
    0xCB: struct.Struct(">d"),
}


@dataclass(frozen=True, slots=True)
class WireLimits:
    max_bytes: int
    max_depth: int
    max_array_len: int
    max_map_len: int
    max_str_len: int
    max_bin_len: int


class _Reader:
    __slots__ = ("buf", "end", "limits", "path", "pos")

    def __init__(self, buf: memoryview, limits: WireLimits, root: str) -> None:
        self.buf = buf
        self.end = len(buf)
        self.pos = 0
        self.limits = limits
        # Map keys, and array indexes as ints (formatted only when an error names the path).
        self.path: list[str | int] = [root] if root else []

    def where(self) -> str:
        # "body.tensors[0].data": keys joined by dots, array indexes appended.
        out = "".join(
            f"[{p}]" if isinstance(p, int) else p if p.startswith("[") else f".{p}" for p in self.path
        ).lstrip(".")
        return out or "$"

    def truncated(self, n: int) -> SchemaError:
        return SchemaError(f"truncated: needs {n} more bytes at offset {self.pos}", field=self.where())

    def need(self, n: int) -> None:
        if n > self.end - self.pos:
            raise self.truncated(n)

    def length(self, size: int) -> int:
        self.need(size)
        n = (_U16 if size == 2 else _U32).unpack_from(self.buf, self.pos)[0]
        self.pos += size
        return int(n)

    def value(self, depth: int) -> object:
        pos = self.pos
        if pos >= self.end:
            raise self.truncated(1)
        b = self.buf[pos]
        self.pos = pos + 1
        if b <= 0x7F:
            return b
        if b >= 0xE0:
            return b - 0x100
        if 0xA0 <= b <= 0xBF:
            return self.text(b & 0x1F)
        if 0x90 <= b <= 0x9F:
            return self.array(b & 0x0F, depth)
        if 0x80 <= b <= 0x8F:
            return self.map(b & 0x0F, depth)
        if b == 0xC0:
            return None
        if b == 0xC2:
            return False
        if b == 0xC3:
            return True
        fixed = _FIXED.get(b)
        if fixed is not None:
            self.need(fixed.size)
            out = fixed.unpack_from(self.buf, pos + 1)[0]
            self.pos = pos + 1 + fixed.size
            return out
        if b in (0xD9, 0xDA, 0xDB):
            return self.text(self.byte() if b == 0xD9 else self.length(2 if b == 0xDA else 4))
        if b in (0xC4, 0xC5, 0xC6):
            return self.binary(self.byte() if b == 0xC4 else self.length(2 if b == 0xC5 else 4))
        if b in (0xDC, 0xDD):
            return self.array(self.length(2 if b == 0xDC else 4), depth)
        if b in (0xDE, 0xDF):
            return self.map(self.length(2 if b == 0xDE else 4), depth)
        raise SchemaError(f"msgpack type byte 0x{b:02x} is not allowed", field=self.where())

    def byte(self) -> int:
        self.need(1)
        self.pos += 1
        return self.buf[self.pos - 1]

    def text(self, n: int) -> str:
        if n > self.limits.max_str_len:
            raise LimitError(f"string of {n} bytes exceeds {self.limits.max_str_len}", field=self.where())
        start = self.pos
        if n > self.end - start:
            raise self.truncated(n)
        try:
            out = str(self.buf[start : start + n], "utf-8")
        except UnicodeDecodeError as exc:
            raise SchemaError("string is not valid UTF-8", field=self.where()) from exc
        if "\x00" in out:
            # PostgreSQL text cannot hold NUL: a string that reached a store with one would make
            # the insert fail for good, so no string with one gets past decoding.
            raise SchemaError("string contains a NUL character", field=self.where())
        self.pos = start + n
        return out

    def binary(self, n: int) -> memoryview:
        if n > self.limits.max_bin_len:
            raise LimitError(f"bin of {n} bytes exceeds {self.limits.max_bin_len}", field=self.where())
        start = self.pos
        if n > self.end - start:
            raise self.truncated(n)
        self.pos = start + n
        return self.buf[start : start + n]

    def enter(self, depth: int) -> None:
        # ``depth`` counts the containers around this one: the outermost is at 0,
        # so ``max_depth`` containers may nest and one more is refused.
        if depth >= self.limits.max_depth:
            raise LimitError(f"nesting deeper than {self.limits.max_depth}", field=self.where())

    # A container header is checked in a fixed order (docs/protocol.md §10): nesting
    # depth, then the declared length against its limit (``limit``), then against the
    # bytes left (``schema``), so every implementation names the same failure.
    def array(self, n: int, depth: int) -> list[object]:
        self.enter(depth)
        if n > self.limits.max_array_len:
            raise LimitError(f"array of {n} items exceeds {self.limits.max_array_len}", field=self.where())
        self.need(n)  # every item takes at least one byte: bounds the list before it exists
        out: list[object] = []
        path = self.path
        for i in range(n):
            path.append(i)
            out.append(self.value(depth + 1))
            path.pop()
        return out

    def map(self, n: int, depth: int) -> dict[str, object]:
        self.enter(depth)
        if n > self.limits.max_map_len:
            raise LimitError(f"map of {n} entries exceeds {self.limits.max_map_len}", field=self.where())
        self.need(2 * n)  # every entry takes at least two bytes
        out: dict[str, object] = {}
        buf, path = self.buf, self.path
        for _ in range(n):
            pos = self.pos
            # Keys are almost always fixstr: read them without the generic dispatch.
            if pos < self.end and 0xA0 <= (b := buf[pos]) <= 0xBF:
                self.pos = pos + 1
                key: object = self.text(b & 0x1F)
            else:
                key = self.value(depth + 1)
            if type(key) is not str:
                raise SchemaError(f"map key must be a str, got {type(key).__name__}", field=self.where())
            path.append(key)
            if key in out:
                raise SchemaError(f"duplicate map key {key!r}", field=self.where())
            out[key] = self.value(depth + 1)
            path.pop()
        return out


def check_keys(raw: Mapping[str, object], keys: Sequence[str], where: str = "") -> None:
    """The key rule of every fixed-key map (docs/protocol.md §6, "Naming the field"):
    the first key in wire order that is not in ``keys``, else the first of ``keys`` missing."""
    prefix = f"{where}." if where else ""
    for key in raw:
        if key not in keys:
            raise SchemaError("unexpected field", field=prefix + key)
    for key in keys:
        if key not in raw:
            raise SchemaError("required field is missing", field=prefix + key)


def unpack(data: bytes | bytearray | memoryview, limits: WireLimits, *, root: str = "") -> object:
    """Decode exactly one value filling all of ``data``; bins are views into ``data``."""
    view = data if isinstance(data, memoryview) else memoryview(data)
    if view.ndim != 1 or view.itemsize != 1:
        view = view.cast("B")
    if len(view) > limits.max_bytes:
        raise LimitError(f"{len(view)} bytes exceeds {limits.max_bytes}", field=root or "$")
    reader = _Reader(view, limits, root)
    value = reader.value(0)
    if reader.pos != len(view):
        raise SchemaError(f"{len(view) - reader.pos} trailing bytes after the value", field=root or "$")
    return value
