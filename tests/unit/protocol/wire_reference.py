"""The msgpack reader as it was before its fast paths: a test oracle for ``wire.unpack``.

Kept verbatim (bar names) so that tests can check the current reader returns the
same values, and raises the same error class with the same field and message,
for any input.
"""

from __future__ import annotations

import struct

from qflare.errors import LimitError, SchemaError
from qflare.protocol.wire import WireLimits

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


class _Reader:
    __slots__ = ("buf", "limits", "path", "pos")

    def __init__(self, buf: memoryview, limits: WireLimits, root: str) -> None:
        self.buf = buf
        self.pos = 0
        self.limits = limits
        self.path = [root] if root else []

    def where(self) -> str:
        # "body.tensors[0].data": keys joined by dots, array indexes appended.
        out = "".join(p if p.startswith("[") else f".{p}" for p in self.path).lstrip(".")
        return out or "$"

    def need(self, n: int) -> None:
        if n > len(self.buf) - self.pos:
            raise SchemaError(f"truncated: needs {n} more bytes at offset {self.pos}", field=self.where())

    def length(self, size: int) -> int:
        self.need(size)
        n = (_U16 if size == 2 else _U32).unpack_from(self.buf, self.pos)[0]
        self.pos += size
        return int(n)

    def value(self, depth: int) -> object:
        self.need(1)
        b = self.buf[self.pos]
        self.pos += 1
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
            out = fixed.unpack_from(self.buf, self.pos)[0]
            self.pos += fixed.size
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
        self.need(n)
        try:
            out = str(self.buf[self.pos : self.pos + n], "utf-8")
        except UnicodeDecodeError as exc:
            raise SchemaError("string is not valid UTF-8", field=self.where()) from exc
        if "\x00" in out:  # the one rule added since (protocol §6: no NUL in a str)
            raise SchemaError("string contains a NUL character", field=self.where())
        self.pos += n
        return out

    def binary(self, n: int) -> memoryview:
        if n > self.limits.max_bin_len:
            raise LimitError(f"bin of {n} bytes exceeds {self.limits.max_bin_len}", field=self.where())
        self.need(n)
        self.pos += n
        return self.buf[self.pos - n : self.pos]

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
        for i in range(n):
            self.path.append(f"[{i}]")
            out.append(self.value(depth + 1))
            self.path.pop()
        return out

    def map(self, n: int, depth: int) -> dict[str, object]:
        self.enter(depth)
        if n > self.limits.max_map_len:
            raise LimitError(f"map of {n} entries exceeds {self.limits.max_map_len}", field=self.where())
        self.need(2 * n)  # every entry takes at least two bytes
        out: dict[str, object] = {}
        for _ in range(n):
            key = self.value(depth + 1)
            if not isinstance(key, str):
                raise SchemaError(f"map key must be a str, got {type(key).__name__}", field=self.where())
            self.path.append(key)
            if key in out:
                raise SchemaError(f"duplicate map key {key!r}", field=self.where())
            out[key] = self.value(depth + 1)
            self.path.pop()
        return out


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
