"""Health is derived from the age of the last heartbeat."""

from __future__ import annotations

from services.registry.liveness import OFFLINE, ONLINE, STALE, health_state


def test_health_state_boundaries() -> None:
    assert health_state(0.0, 15, 30) == ONLINE
    assert health_state(14.99, 15, 30) == ONLINE
    assert health_state(15.0, 15, 30) == STALE
    assert health_state(29.99, 15, 30) == STALE
    assert health_state(30.0, 15, 30) == OFFLINE
