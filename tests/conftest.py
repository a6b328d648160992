"""Shared fixtures: the local stack's settings and unique names for Kafka topics."""

from __future__ import annotations

import uuid

import pytest

from devstack.settings import StackSettings


@pytest.fixture(scope="session")
def stack() -> StackSettings:
    return StackSettings()


@pytest.fixture
def unique() -> str:
    """A short unique suffix so each test uses its own topics, groups and indices."""
    return uuid.uuid4().hex[:10]
