"""Every body type: strict from_body (missing, extra and wrongly typed fields are named)."""

from __future__ import annotations

import contextlib
import math
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qflare.errors import NonFiniteTensorError, QflareError, SchemaError
from qflare.protocol import Body, wire
from qflare.protocol.control import JobCommand
from qflare.protocol.devices import Deregistration, Device, EnrollmentResult, Heartbeat
from qflare.protocol.messages import BODY_TYPES
from qflare.protocol.training import RoundComplete
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


@pytest.mark.parametrize("body", BODIES, ids=lambda b: b.TYPE)
def test_keys_are_written_in_the_listed_order(body: Body) -> None:
    assert tuple(body.to_body()) == type(body).KEYS
    assert tuple(_decoded(body)) == type(body).KEYS


@pytest.mark.parametrize("body", BODIES, ids=lambda b: b.TYPE)
def test_the_first_bad_value_in_listed_order_is_named(body: Body) -> None:
    # True is the wrong type for every body field; from each key on, all are wrong.
    keys = type(body).KEYS
    for i, key in enumerate(keys):
        data = _decoded(body) | dict.fromkeys(keys[i:], True)
        with pytest.raises(SchemaError) as info:
            type(body).from_body(data)
        assert info.value.field == f"body.{key}", (body.TYPE, key)


def test_unexpected_keys_come_first_in_wire_order_then_missing_ones() -> None:
    data = _decoded(Heartbeat("dev-1", 1))
    del data["seq"]
    data = {"zeta": 1, **data, "alpha": 2}
    with pytest.raises(SchemaError) as info:
        Heartbeat.from_body(data)
    assert info.value.field == "body.zeta"
    del data["zeta"], data["alpha"]
    with pytest.raises(SchemaError) as info:
        Heartbeat.from_body(data)
    assert info.value.field == "body.seq"


def test_free_form_maps_are_written_sorted_by_utf8_key_bytes() -> None:
    hb = Heartbeat("dev-1", 1, "idle", {"\u00e9": 1.0, "b": 2.0, "Z": 3.0, "a": 4.0})
    assert list(hb.to_body()["metrics"]) == ["Z", "a", "b", "\u00e9"]
    assert sorted(k.encode() for k in hb.metrics) == [k.encode() for k in hb.to_body()["metrics"]]
    # Receivers accept any order, and the typed body compares equal.
    data = _decoded(hb)
    data["metrics"] = dict(reversed(list(hb.metrics.items())))
    assert Heartbeat.from_body(data) == hb
    for body in BODIES:
        for value in body.to_body().values():
            if isinstance(value, dict) and not {"name", "dtype"} <= set(value):
                assert list(value) == sorted(value), body.TYPE


def test_float_maps_take_ints_and_both_float_widths_and_refuse_non_finite() -> None:
    record = b"\x83\xa1a\x01\xa1b\xca" + struct.pack(">f", 0.25) + b"\xa1c\xcb" + struct.pack(">d", -1.5)
    data = _decoded(Heartbeat("dev-1", 1)) | {"metrics": wire.unpack(record, LIMITS)}
    assert Heartbeat.from_body(data).metrics == {"a": 1.0, "b": 0.25, "c": -1.5}
    assert wire.pack(Heartbeat.from_body(data).to_body()["metrics"]) == wire.pack(
        {"a": 1.0, "b": 0.25, "c": -1.5}
    )
    for bad in (math.inf, -math.inf, math.nan):
        data["metrics"] = {"ok": 1.0, "cpu": bad}
        with pytest.raises(NonFiniteTensorError) as info:
            Heartbeat.from_body(data)
        assert (info.value.reason, info.value.field) == ("non_finite", "body.metrics.cpu")
    data["metrics"] = {"cpu": True}
    with pytest.raises(SchemaError) as wrong:
        Heartbeat.from_body(data)
    assert (wrong.value.reason, wrong.value.field) == ("schema", "body.metrics.cpu")


def test_scalars_take_the_full_msgpack_int_range_and_refuse_non_finite_floats() -> None:
    job = JobCommand("job-1", "start", {"min": -(1 << 63), "max": (1 << 64) - 1, "x": None, "s": "t"})
    assert JobCommand.from_body(_decoded(job)) == job
    data = _decoded(job) | {"config": {"lr": math.nan}}
    with pytest.raises(NonFiniteTensorError) as info:
        JobCommand.from_body(data)
    assert info.value.field == "body.config.lr"


def test_job_settings_nest_one_level_sorted_and_name_the_inner_key() -> None:
    job = JobCommand("job-1", "start", {"strategy": {"name": "fedprox", "proximal_mu": 0.01}, "lr": 0.1})
    body = job.to_body()["config"]
    assert list(body) == ["lr", "strategy"] and list(body["strategy"]) == ["name", "proximal_mu"]
    assert JobCommand.from_body(_decoded(job)) == job
    data = _decoded(job)
    data["config"] = {"strategy": {"name": "fedprox", "proximal_mu": math.inf}}
    with pytest.raises(NonFiniteTensorError) as info:
        JobCommand.from_body(data)
    assert info.value.field == "body.config.strategy.proximal_mu"
    for deeper in ({"name": {"x": 1}}, {"name": [1]}):
        data["config"] = {"strategy": deeper}
        with pytest.raises(SchemaError) as wrong:
            JobCommand.from_body(data)
        assert wrong.value.field == "body.config.strategy.name"


def test_round_scores_are_sorted_per_included_update_and_name_the_bad_entry() -> None:
    done = RoundComplete(
        "job-1",
        2,
        "completed",
        2,
        2,
        600,
        ("dev-a", "dev-b"),
        scores={"dev-b": {"norm": 2.0, "cosine": -0.5, "flagged": 1.0}, "dev-a": {"norm": 1.0}},
    )
    body = done.to_body()["scores"]
    assert list(body) == ["dev-a", "dev-b"] and list(body["dev-b"]) == ["cosine", "flagged", "norm"]
    assert RoundComplete.from_body(_decoded(done)) == done
    data = _decoded(done)
    cases: list[tuple[object, type[QflareError], str]] = [
        ({"dev-c": {"norm": 1.0}}, SchemaError, "body.scores.dev-c"),  # not an included update
        ({"-bad": {"norm": 1.0}}, SchemaError, "body.scores.-bad"),
        ({"dev-a": 1.0}, SchemaError, "body.scores.dev-a"),
        ({"dev-a": {"norm": "1"}}, SchemaError, "body.scores.dev-a.norm"),
        ({"dev-a": {"norm": math.nan}}, NonFiniteTensorError, "body.scores.dev-a.norm"),
    ]
    for scores, error, where in cases:
        with pytest.raises(error) as info:
            RoundComplete.from_body(data | {"scores": scores})
        assert info.value.field == where, scores


def test_text_limits_count_characters() -> None:
    # Body field limits count Unicode code points; only the msgpack str limit (§10) counts bytes.
    assert (
        Deregistration.from_body(_decoded(Deregistration("dev-1", "\u00e9" * 256))).reason == "\u00e9" * 256
    )
    with pytest.raises(SchemaError) as info:
        Deregistration.from_body(_decoded(Deregistration("dev-1", "e" * 257)))
    assert info.value.field == "body.reason"


def test_enrollment_results_take_any_well_formed_reason_and_refuse_malformed_ones() -> None:
    answer = EnrollmentResult("dev-1", b"\x01" * 16, b"\x02" * 16, "accepted", "new")
    # Reasons are an open vocabulary: one this code never heard of is still a valid result.
    future = _decoded(answer) | {"status": "rejected", "reason": "quota_exceeded", "field": "labels"}
    assert EnrollmentResult.from_body(future).reason == "quota_exceeded"
    for key, bad in (
        ("reason", "Token-Reused"),
        ("reason", "x" * 65),
        ("status", "maybe"),
        ("field", "f" * 257),
    ):
        with pytest.raises(SchemaError) as info:
            EnrollmentResult.from_body(_decoded(answer) | {key: bad})
        assert info.value.field == f"body.{key}"
