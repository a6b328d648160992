"""The msgpack writer behind ``wire.pack``: shortest forms, large bins passed through uncopied.

Every value is written in its shortest encoding (what ``msgpack.packb`` does
too). Bins of at least ``ZERO_COPY_MIN`` bytes are not copied into the output:
they become their own buffer part, so a body can be hashed part by part and
framed into a record with a single copy of its tensor data.

The concrete types a body is made of (str, dict, list, int) are tested before
the abstract ``Mapping``/``Sequence`` (whose checks are slow); every value
still gets the same bytes as before.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence

from qflare.errors import LimitError, SchemaError

#: Bins at least this large are passed through as their own part, not copied.
ZERO_COPY_MIN = 4096

Buffer = bytes | bytearray | memoryview

_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_F64 = struct.Struct(">d")
#: (type byte, layout, smallest, largest) of each integer width, narrowest first.
_UINTS = (
    (0xCC, struct.Struct(">B"), 0, (1 << 8) - 1),
    (0xCD, struct.Struct(">H"), 0, (1 << 16) - 1),
    (0xCE, struct.Struct(">I"), 0, (1 << 32) - 1),
    (0xCF, struct.Struct(">Q"), 0, (1 << 64) - 1),
)
_SINTS = (
    (0xD0, struct.Struct(">b"), -(1 << 7), -1),
    (0xD1, struct.Struct(">h"), -(1 << 15), -1),
    (0xD2, struct.Struct(">i"), -(1 << 31), -1),
    (0xD3, struct.Struct(">q"), -(1 << 63), -1),
)


def _head(out: bytearray, n: int, fix: int | None, fix_max: int, c8: int | None, c16: int, c32: int) -> None:
    if fix is not None and n <= fix_max:
        out.append(fix | n)
    elif c8 is not None and n <= 0xFF:
        out += bytes((c8, n))
    elif n <= 0xFFFF:
        out.append(c16)
        out += _U16.pack(n)
    elif n <= 0xFFFFFFFF:
        out.append(c32)
        out += _U32.pack(n)
    else:
        raise LimitError(f"length {n} does not fit msgpack")


def _int(out: bytearray, v: int) -> None:
    if 0 <= v <= 0x7F or -32 <= v < 0:
        out.append(v & 0xFF)
        return
    for code, layout, lo, hi in _UINTS if v >= 0 else _SINTS:
        if lo <= v <= hi:
            out.append(code)
            out += layout.pack(v)
            return
    raise LimitError(f"integer {v} does not fit msgpack")


def _write(obj: object, out: bytearray, parts: list[Buffer]) -> None:
    # The common types first, concrete classes before the (slower) abstract ones.
    # str, dict, list and int exclude one another, so the order changes no output.
    if isinstance(obj, str):
        raw = obj.encode("utf-8")
        if len(raw) <= 31:
            out.append(0xA0 | len(raw))
        else:
            _head(out, len(raw), None, 0, 0xD9, 0xDA, 0xDB)
        out += raw
    elif isinstance(obj, dict):
        _map(obj, out, parts)
    elif isinstance(obj, list):
        _array(obj, out, parts)
    elif obj is None:
        out.append(0xC0)
    elif obj is True or obj is False:
        out.append(0xC3 if obj else 0xC2)
    elif isinstance(obj, int):
        _int(out, obj)
    elif isinstance(obj, float):
        out.append(0xCB)
        out += _F64.pack(obj)
    elif isinstance(obj, bytes | bytearray | memoryview):
        view = memoryview(obj).cast("B") if isinstance(obj, memoryview) else obj
        _head(out, len(view), None, 0, 0xC4, 0xC5, 0xC6)
        if len(view) >= ZERO_COPY_MIN:
            parts.append(bytes(out))
            out.clear()
            parts.append(view)
        else:
            out += view
    elif isinstance(obj, Mapping):
        _map(obj, out, parts)
    elif isinstance(obj, Sequence):
        _array(obj, out, parts)
    else:
        raise SchemaError(f"cannot encode {type(obj).__name__}")


def _map(obj: Mapping[object, object], out: bytearray, parts: list[Buffer]) -> None:
    _head(out, len(obj), 0x80, 15, None, 0xDE, 0xDF)
    for key, value in obj.items():
        _write(key, out, parts)
        _write(value, out, parts)


def _array(obj: Sequence[object], out: bytearray, parts: list[Buffer]) -> None:
    _head(out, len(obj), 0x90, 15, None, 0xDC, 0xDD)
    for item in obj:
        _write(item, out, parts)


def map_header(n: int) -> bytes:
    out = bytearray()
    _head(out, n, 0x80, 15, None, 0xDE, 0xDF)
    return bytes(out)


def bin_header(n: int) -> bytes:
    out = bytearray()
    _head(out, n, None, 0, 0xC4, 0xC5, 0xC6)
    return bytes(out)


def pack_entries(entries: Sequence[tuple[str, object]]) -> bytes:
    """Map entries (key, value, key, value, ...) without the map header, for splicing."""
    out = bytearray()
    parts: list[Buffer] = []
    for key, value in entries:
        _write(key, out, parts)
        _write(value, out, parts)
    parts.append(bytes(out))
    return b"".join(parts)


def pack_parts(obj: object) -> list[Buffer]:
    """Encode ``obj`` as a list of buffers whose concatenation is its msgpack form."""
    out = bytearray()
    parts: list[Buffer] = []
    _write(obj, out, parts)
    if out:
        parts.append(bytes(out))
    return parts


def pack(obj: object) -> bytes:
    """Encode ``obj`` to shortest-form msgpack (byte-identical to ``msgpack.packb``)."""
    return b"".join(pack_parts(obj))
