"""Every body type: strict from_body (missing, extra and wrongly typed fields are named)."""

from __future__ import annotations

import contextlib
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qflare.errors import SchemaError
from qflare.protocol import Body, wire
from qflare.protocol.devices import Device, Heartbeat
from qflare.protocol.messages import BODY_TYPES
from tests.unit.protocol.helpers import sample_bodies

BODIES = sample_bodies()
LIMITS = wire.WireLimits(1 << 20, 16, 1000, 100, 1000, 1 << 20)


def _decoded(body: Body) -> dict[str, object]:
    value = wire.unpack(wire.pack(body.to_body()), LIMITS)
    assert isinstance(value, dict)
    return value


def test_every_type_has_a_sample() -> None:
    assert {b.TYPE for b in BODIES} == set(BODY_TYPES)


@pytest.mark.parametrize("body", BODIES, ids=lambda b: b.TYPE)
def test_roundtrip(body: Body) -> None:
    assert type(body).from_body(_decoded(body)) == body


def _wrong(value: object) -> list[object]:
    """Values whose msgpack type differs from ``value``'s."""
    candidates: list[object] = [12345, "text", b"\x00", [1], {"k": object}, True, 1.5, None, -1]
    out = []
    for c in candidates:
        if isinstance(c, dict):
            c = {"k": [1]}
        same = (
            type(c) is type(value)
            or (isinstance(value, memoryview) and isinstance(c, bytes))
            or (isinstance(value, float) and isinstance(c, int) and not isinstance(c, bool))
        )
        if not same:
            out.append(c)
    return out


@pytest.mark.parametrize("body", BODIES, ids=lambda b: b.TYPE)
def test_each_field_missing_or_mistyped_is_named(body: Body) -> None:
    cls = type(body)
    for key, value in _decoded(body).items():
        data = _decoded(body)
        del data[key]
        with pytest.raises(SchemaError) as info:
            cls.from_body(data)
        assert info.value.field == f"body.{key}", (body.TYPE, key)
        for wrong in _wrong(value):
            data = _decoded(body)
            data[key] = wrong
            try:
                cls.from_body(data)
            except SchemaError as exc:
                assert exc.field is not None and exc.field.startswith(f"body.{key}"), (key, wrong, exc)
            else:
                # Only nil for an optional field, or an empty container, may pass.
                assert wrong is None or wrong == [] or wrong == {}, (body.TYPE, key, wrong)


@pytest.mark.parametrize("body", BODIES, ids=lambda b: b.TYPE)
def test_unexpected_field_is_named(body: Body) -> None:
    data = _decoded(body)
    data["surprise"] = 1
    with pytest.raises(SchemaError) as info:
        type(body).from_body(data)
    assert info.value.field == "body.surprise"


def test_value_checks() -> None:
    hb = _decoded(Heartbeat("dev-1", 1))
    for key, value in (
        ("state", "sleeping"),
        ("seq", -1),
        ("device_id", "bad id"),
        ("metrics", {"x": math.inf}),
    ):
        data = dict(hb, **{key: value})
        with pytest.raises(SchemaError) as info:
            Heartbeat.from_body(data)
        assert info.value.field is not None and info.value.field.startswith(f"body.{key}")
    device = next(b for b in BODIES if isinstance(b, Device))
    data = _decoded(device)
    data["key_id"] = b"\x00" * 16
    with pytest.raises(SchemaError) as info:
        Device.from_body(data)
    assert info.value.field == "body.key_id"


def test_non_map_body() -> None:
    for cls in BODY_TYPES.values():
        with pytest.raises(SchemaError) as info:
            cls.from_body([1, 2])
        assert info.value.field == "body"


json_like = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20) | st.binary(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=6),
    max_leaves=20,
)


@settings(max_examples=300)
@given(st.sampled_from(sorted(BODY_TYPES)), st.dictionaries(st.text(max_size=12), json_like, max_size=10))
def test_arbitrary_maps_only_raise_schema_errors(type_: str, data: dict[str, object]) -> None:
    with contextlib.suppress(SchemaError):
        BODY_TYPES[type_].from_body(data)


def test_registry_commands_name_a_device_exactly_when_needed() -> None:
    from qflare.protocol.control import RegistryCommand

    assert RegistryCommand.from_body(_decoded(RegistryCommand("revoke", "dev-1"))).device_id == "dev-1"
    for body in (RegistryCommand("revoke", None), RegistryCommand("issue_tokens", "dev-1")):
        with pytest.raises(SchemaError) as info:
            RegistryCommand.from_body(_decoded(body))
        assert info.value.field == "body.device_id"
    data = _decoded(RegistryCommand("issue_tokens", None, (b"\x00" * 32,)))
    data["token_hashes"] = [b"\x00" * 31]
    with pytest.raises(SchemaError) as info:
        RegistryCommand.from_body(data)
    assert info.value.field == "body.token_hashes[0]"
