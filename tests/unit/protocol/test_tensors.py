"""Tensor codec: layout, zero-copy decode, dtype/shape checks, finiteness, bfloat16."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from numpy.typing import NDArray

from qflare.errors import LimitError, NonFiniteTensorError, SchemaError, TensorError
from qflare.protocol import Tensor, wire
from qflare.protocol.tensors import bf16_to_float32, decode_tensor, float32_to_bf16

LIMITS = wire.WireLimits(1 << 24, 8, 1000, 100, 1000, 1 << 24)


def _roundtrip(tensor: Tensor) -> tuple[Tensor, bytes]:
    record = wire.pack(tensor.to_wire())
    return decode_tensor(wire.unpack(record, LIMITS), where="t"), record


@given(
    hnp.arrays(
        st.sampled_from([np.float32, np.float16, np.int8, np.uint8]),
        hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5),
    )
)
def test_roundtrip_is_bit_exact(array: NDArray[Any]) -> None:
    tensor = Tensor.of("x", array)
    back, _ = _roundtrip(tensor)
    assert back == tensor
    assert back.array.shape == array.shape


def test_wire_layout_is_name_dtype_shape_data() -> None:
    array = np.array([[1.0, 2.0]], dtype=np.float32)
    wired = Tensor.of("w", array).to_wire()
    assert list(wired) == ["name", "dtype", "shape", "data"]
    assert wired["dtype"] == "<f4"
    assert wired["shape"] == [1, 2]
    assert bytes(wired["data"]) == array.astype("<f4").tobytes()


def test_decode_does_not_copy() -> None:
    back, record = _roundtrip(Tensor.of("w", np.ones(1000, dtype=np.float32)))
    assert not back.array.flags.writeable
    assert not back.array.flags.owndata
    base: object = back.array
    while isinstance(base, np.ndarray):
        base = base.base
    assert isinstance(base, memoryview)
    assert base.obj is record


def test_big_endian_input_is_stored_little_endian() -> None:
    big = np.array([1.0, 2.0], dtype=">f4")
    tensor = Tensor.of("x", big)
    assert tensor.dtype == "<f4"
    assert bytes(tensor.to_wire()["data"]) == np.array([1.0, 2.0], dtype="<f4").tobytes()


def test_non_contiguous_input_is_encoded_in_c_order() -> None:
    array = np.arange(12, dtype=np.float32).reshape(3, 4).T
    back, _ = _roundtrip(Tensor.of("x", array))
    np.testing.assert_array_equal(back.array, array)


@pytest.mark.parametrize("dtype", [np.float64, np.int32, np.uint16, np.bool_, np.complex64])
def test_unsupported_dtypes_are_refused(dtype: type[np.generic]) -> None:
    with pytest.raises(TensorError):
        Tensor.of("x", np.zeros(2, dtype=dtype))


def _wired(**change: object) -> dict[str, object]:
    wired: dict[str, object] = {"name": "t", "dtype": "<f4", "shape": [2], "data": memoryview(bytes(8))}
    wired.update(change)
    return wired


@pytest.mark.parametrize(
    ("change", "reason", "field"),
    [
        ({"shape": [3]}, "tensor", "t.data"),
        ({"shape": [2, 2]}, "tensor", "t.data"),
        ({"dtype": ">f4"}, "tensor", "t.dtype"),
        ({"dtype": "<f8"}, "tensor", "t.dtype"),
        ({"dtype": 4}, "schema", "t.dtype"),
        ({"shape": [-1]}, "tensor", "t.shape[0]"),
        ({"shape": [True, 2]}, "schema", "t.shape[0]"),
        ({"shape": [2, 1.0]}, "schema", "t.shape[1]"),
        ({"shape": [1] * 9}, "tensor", "t.shape"),
        ({"shape": "2"}, "schema", "t.shape"),
        ({"shape": [2, 1 << 31]}, "tensor", "t.shape[1]"),
        ({"name": ""}, "schema", "t.name"),
        ({"name": "x" * 257}, "schema", "t.name"),
        ({"name": 3}, "schema", "t.name"),
        ({"data": "text"}, "schema", "t.data"),
        ({"extra": 1}, "schema", "t.extra"),
    ],
)
def test_inconsistent_tensors_name_the_field(change: dict[str, object], reason: str, field: str) -> None:
    with pytest.raises(SchemaError) as info:
        decode_tensor(_wired(**change), where="t")
    assert (info.value.reason, info.value.field) == (reason, field)


def test_unexpected_keys_come_before_missing_ones_in_wire_order() -> None:
    wired = {"zz": 1, "name": "t", "aa": 2, "dtype": "<f4", "data": memoryview(bytes(8))}
    with pytest.raises(SchemaError) as info:
        decode_tensor(wired, where="t")
    assert info.value.field == "t.zz"
    del wired["zz"], wired["aa"]
    with pytest.raises(SchemaError) as info:
        decode_tensor(wired, where="t")
    assert info.value.field == "t.shape"


def test_a_256_character_name_counts_characters_not_bytes() -> None:
    name = "\u00e9" * 256  # 512 UTF-8 bytes
    assert decode_tensor(_wired(name=name), where="t").name == name


def test_missing_key_is_named() -> None:
    wired = _wired()
    del wired["shape"]
    with pytest.raises(SchemaError) as info:
        decode_tensor(wired, where="t")
    assert info.value.field == "t.shape"


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("maker", ["f4", "f2", "bf16"])
def test_non_finite_values_are_caught(bad: float, maker: str) -> None:
    values = np.array([1.0, bad, 2.0], dtype=np.float32)
    tensor = {
        "f4": lambda: Tensor.of("x", values),
        "f2": lambda: Tensor.of("x", values.astype(np.float16)),
        "bf16": lambda: Tensor.bf16("x", values),
    }[maker]()
    with pytest.raises(NonFiniteTensorError) as info:
        tensor.check_finite("body.tensors[0]")
    assert info.value.field == "body.tensors[0].data"


def test_finite_and_integer_tensors_pass() -> None:
    Tensor.of("x", np.array([3e38, -3e38, 0.0], dtype=np.float32)).check_finite()
    Tensor.of("x", np.zeros((0, 3), dtype=np.float32)).check_finite()
    Tensor.of("x", np.array([-128, 127], dtype=np.int8)).check_finite()
    Tensor.bf16("x", np.array([1.0, -2.5], dtype=np.float32)).check_finite()


def test_bf16_conversion_rounds_to_nearest_even() -> None:
    exact = np.array([1.0, -2.0, 0.5, 2.0**100, 0.0], dtype=np.float32)
    np.testing.assert_array_equal(bf16_to_float32(float32_to_bf16(exact)), exact)
    # 1 + 2^-8 is halfway between bf16 neighbours 1 and 1 + 2^-7: ties go to the even one (1.0).
    halfway = np.array([1 + 2**-8, 1 + 3 * 2**-8], dtype=np.float32)
    np.testing.assert_array_equal(bf16_to_float32(float32_to_bf16(halfway)), [1.0, 1 + 2**-6])
    assert np.isnan(bf16_to_float32(float32_to_bf16(np.array([np.nan], dtype=np.float32))))[0]


def test_bf16_travels_as_tagged_u2() -> None:
    tensor = Tensor.bf16("x", np.array([1.0, 2.0], dtype=np.float32))
    wired = tensor.to_wire()
    assert wired["dtype"] == "bf16"
    assert bytes(wired["data"]) == bytes.fromhex("803f0040")
    back, _ = _roundtrip(tensor)
    assert back.array.dtype == np.dtype("<u2")
    np.testing.assert_array_equal(bf16_to_float32(back.array), [1.0, 2.0])


def test_tag_must_match_array() -> None:
    with pytest.raises(TensorError):
        Tensor("x", "<f4", np.zeros(2, dtype=np.float16))
    with pytest.raises(TensorError):
        Tensor("x", "f32", np.zeros(2, dtype=np.float32))


@pytest.mark.parametrize(
    "shape",
    [
        [0, (1 << 31) - 1, (1 << 31) - 1, (1 << 31) - 1],  # numpy cannot even describe this extent
        [0, 1 << 20, 1 << 20],
        [(1 << 31) - 1, 0],
    ],
)
def test_an_absurd_shape_with_no_data_is_a_typed_rejection(shape: list[int]) -> None:
    # The length check passes (0 elements, 0 bytes); before the extent bound, reshape raised a
    # plain ValueError that no consumer caught, and the aggregator exited on every restart.
    obj = {"name": "w", "dtype": "<f4", "shape": shape, "data": b""}
    with pytest.raises(LimitError) as info:
        decode_tensor(wire.unpack(wire.pack(obj), LIMITS), where="t")
    assert info.value.field == "t.shape"


def test_an_empty_tensor_of_sane_shape_still_decodes() -> None:
    obj = {"name": "w", "dtype": "<f4", "shape": [0, 128, 3], "data": b""}
    tensor = decode_tensor(wire.unpack(wire.pack(obj), LIMITS), where="t")
    assert tensor.array.shape == (0, 128, 3)
