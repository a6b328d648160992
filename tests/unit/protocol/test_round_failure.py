"""A device's failed reply: its bounds on the wire, and how a device makes one from what it caught."""

from __future__ import annotations

import pytest

from qflare.errors import SchemaError
from qflare.protocol import wire
from qflare.protocol.training import MAX_FAILURE_MESSAGE, RoundFailure

LIMITS = wire.WireLimits(1 << 20, 16, 1000, 100, 64 * 1024, 1 << 20)


def _body(**changes: object) -> dict[str, object]:
    body = RoundFailure("job-1", 4, "dev-1", 3, "ModuleNotFoundError", "No module named 'mine'").to_body()
    body.update(changes)
    value = wire.unpack(wire.pack(body), LIMITS)
    assert isinstance(value, dict)
    return value


def test_round_trip() -> None:
    failure = RoundFailure.from_body(_body())
    assert failure == RoundFailure("job-1", 4, "dev-1", 3, "ModuleNotFoundError", "No module named 'mine'")


def test_a_message_too_long_is_refused_naming_it() -> None:
    assert (
        RoundFailure.from_body(_body(message="x" * MAX_FAILURE_MESSAGE)).message == "x" * MAX_FAILURE_MESSAGE
    )
    with pytest.raises(SchemaError) as info:
        RoundFailure.from_body(_body(message="x" * (MAX_FAILURE_MESSAGE + 1)))
    assert info.value.field == "body.message"


def test_a_nul_in_the_message_is_refused_naming_it() -> None:
    # The wire refuses it first; a body built in memory is refused by the body's own check.
    with pytest.raises(SchemaError) as info:
        _body(message="bad\x00byte")
    assert info.value.field == "message"
    with pytest.raises(SchemaError) as info:
        RoundFailure.from_body(_body() | {"message": "bad\x00byte"})
    assert info.value.field == "body.message"


@pytest.mark.parametrize("reason", ["", "has space", "1starts_with_digit", "x" * 65, "semi;colon"])
def test_a_reason_that_is_not_a_token_is_refused_naming_it(reason: str) -> None:
    with pytest.raises(SchemaError) as info:
        RoundFailure.from_body(_body(reason=reason))
    assert info.value.field == "body.reason"


def test_a_device_makes_any_failure_fit_the_wire() -> None:
    made = RoundFailure.of("job-1", 4, "dev-1", 3, "bad reason!", "a\x00b" + "y" * 5000)
    again = RoundFailure.from_body(wire.unpack(wire.pack(made.to_body()), LIMITS))
    assert again == made
    assert made.reason == "bad_reason_"
    assert made.message.startswith("ab") and len(made.message) == MAX_FAILURE_MESSAGE
    assert RoundFailure.of("j", 1, "d", 0, "", "").reason == "error"
    assert RoundFailure.of("j", 1, "d", 0, "9lives", "").reason == "error"
    assert RoundFailure.of("j", 1, "d", 0, "handler_missing", "").reason == "handler_missing"
