"""The strict msgpack subset: agreement with msgpack, limits, refusals, zero copy."""

from __future__ import annotations

import contextlib
import math

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from qflare.errors import LimitError, ProtocolError, SchemaError
from qflare.protocol import wire

LIMITS = wire.WireLimits(
    max_bytes=1 << 20, max_depth=8, max_array_len=1000, max_map_len=100, max_str_len=1000, max_bin_len=1 << 16
)

#: Any character but NUL, which no str on the wire may hold (see ``test_nul_in_any_str_is_refused``).
NO_NUL = st.characters(exclude_characters="\x00", exclude_categories=["Cs"])
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(1 << 63), max_value=(1 << 64) - 1)
    | st.floats(allow_nan=False)
    | st.text(alphabet=NO_NUL, max_size=300)
    | st.binary(max_size=300)
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=20)
        | st.dictionaries(st.text(alphabet=NO_NUL, max_size=10), inner, max_size=10)
    ),
    max_leaves=40,
)


def _plain(obj: object) -> object:
    """Bins come back as memoryviews; compare them as bytes."""
    if isinstance(obj, memoryview):
        return bytes(obj)
    if isinstance(obj, list):
        return [_plain(x) for x in obj]
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    return obj


@given(values)
def test_pack_matches_msgpack_and_roundtrips(obj: object) -> None:
    packed = wire.pack(obj)
    assert packed == msgpack.packb(obj, use_bin_type=True)
    assert _plain(wire.unpack(packed, LIMITS)) == obj


def test_large_bins_are_passed_through_without_copy() -> None:
    data = b"x" * 10_000
    parts = wire.pack_parts({"data": data})
    assert any(p is data for p in parts)
    view = memoryview(data)
    assert any(isinstance(p, memoryview) and p.obj is data for p in wire.pack_parts([view]))
    assert b"".join(parts) == msgpack.packb({"data": data})


def test_unpacked_bins_are_views_of_the_input() -> None:
    record = msgpack.packb({"data": b"y" * 100})
    value = wire.unpack(record, LIMITS)
    assert isinstance(value, dict)
    view = value["data"]
    assert isinstance(view, memoryview)
    assert view.obj is record


def test_floats_of_both_widths_decode() -> None:
    assert wire.unpack(msgpack.packb(1.5, use_single_float=True), LIMITS) == 1.5
    assert math.isnan(float(wire.unpack(msgpack.packb(float("nan")), LIMITS)))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (msgpack.packb([[[[[[[[[1]]]]]]]]]), LimitError),  # depth 9 > 8
        (msgpack.packb(list(range(1001))), LimitError),
        (msgpack.packb({str(i): i for i in range(101)}), LimitError),
        (msgpack.packb("x" * 1001), LimitError),
        (msgpack.packb(b"x" * 70_000), LimitError),
        (b"\xdd\xff\xff\xff\xff", LimitError),  # array32 declaring 4 billion items
        (b"\xdf\xff\xff\xff\xff", LimitError),  # map32
        (b"\xdb\xff\xff\xff\xff", LimitError),  # str32
        (b"\xc6\xff\xff\xff\xff", LimitError),  # bin32
        (b"\xdc\x03\xe8", SchemaError),  # array16 of 1000 items, no items present
        (b"\xc6\x00\x00\x00\x10abc", SchemaError),  # bin shorter than declared
        (b"\xd4\x01\x00", SchemaError),  # fixext: not allowed
        (b"\xc7\x01\x01\x00", SchemaError),  # ext8
        (b"\xc1", SchemaError),  # never-used byte
        (b"", SchemaError),
        (b"\xcd\x01", SchemaError),  # truncated uint16
        (b"\x81\x01\x02", SchemaError),  # non-str key
        (b"\x82\xa1a\x01\xa1a\x02", SchemaError),  # duplicate key
        (b"\xa2\xff\xfe", SchemaError),  # invalid UTF-8
        (b"\x01\x02", SchemaError),  # trailing byte
    ],
)
def test_bad_input_raises_typed_errors(data: bytes, error: type[ProtocolError]) -> None:
    with pytest.raises(error):
        wire.unpack(data, LIMITS)


def test_total_size_limit_is_checked_first() -> None:
    tight = wire.WireLimits(10, 8, 10, 10, 10, 10)
    with pytest.raises(LimitError) as info:
        wire.unpack(b"\xc0" * 11, tight, root="body")
    assert info.value.field == "body"


def test_errors_name_the_path() -> None:
    bad = b"\x81\xa5outer\x81\xa5inner\x92\x01\xa2\xff\xfe"
    with pytest.raises(SchemaError) as info:
        wire.unpack(bad, LIMITS, root="body")
    assert info.value.field == "body.outer.inner[1]"


def test_duplicate_keys_name_the_repeated_key() -> None:
    with pytest.raises(SchemaError) as info:
        wire.unpack(b"\x81\xa1m\x82\xa1a\x01\xa1a\x02", LIMITS, root="body")
    assert info.value.field == "body.m.a"


def test_depth_counts_the_outermost_container_as_one() -> None:
    def nested(levels: int) -> bytes:
        return b"\x91" * (levels - 1) + b"\x90"

    assert wire.unpack(nested(8), LIMITS) is not None  # max_depth 8: eight containers pass
    with pytest.raises(LimitError) as info:
        wire.unpack(nested(9), LIMITS, root="body")
    assert info.value.field == "body" + "[0]" * 8


def test_a_container_header_checks_depth_then_limit_then_bytes_left() -> None:
    tight = wire.WireLimits(1000, 1, 3, 3, 1000, 1000)
    # Too deep wins over too long, and over too short.
    with pytest.raises(LimitError, match="nesting"):
        wire.unpack(b"\x91\xdc\x00\x09", tight)
    # Over the limit wins over "not enough bytes left".
    with pytest.raises(LimitError, match="exceeds"):
        wire.unpack(b"\xdc\x00\x04", tight)
    with pytest.raises(SchemaError, match="truncated"):
        wire.unpack(b"\xdc\x00\x03\x01", tight)
    with pytest.raises(LimitError, match="exceeds"):
        wire.unpack(b"\xc5\x04\x00", tight)  # bin of 1024 > 1000, though only 0 bytes follow
    with pytest.raises(SchemaError, match="truncated"):
        wire.unpack(b"\xc5\x00\x10", tight)


@given(st.binary(max_size=200))
def test_random_bytes_never_escape_as_other_exceptions(data: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        wire.unpack(data, LIMITS)


def test_writer_refuses_unencodable_values() -> None:
    with pytest.raises(SchemaError):
        wire.pack(object())
    with pytest.raises(LimitError):
        wire.pack(1 << 64)
    with pytest.raises(LimitError):
        wire.pack(-(1 << 63) - 1)


@pytest.mark.parametrize("value", [{"label": "a\x00b"}, ["ok", "\x00"], {"k\x00": 1}])
def test_nul_in_any_str_is_refused(value: object) -> None:
    # PostgreSQL text refuses NUL, so a str holding one would stop whichever service stored it.
    with pytest.raises(SchemaError, match="NUL") as info:
        wire.unpack(wire.pack(value), LIMITS)
    assert info.value.field in ("label", "[1]", "$")
