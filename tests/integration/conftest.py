"""Integration tests run against the real servers of `qflare stack up`.

They fail (rather than skip) when the stack is down: `make test` starts it, and a
skipped integration suite would report green without testing anything.
"""

from __future__ import annotations

import asyncio

import pytest

from devstack import launcher
from devstack.settings import StackSettings


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration" in str(item.path):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session", autouse=True)
def _stack_is_up() -> None:
    rows = asyncio.run(launcher.status(StackSettings()))
    down = [f"{r.name} ({r.note})" for r in rows if not r.up]
    if down:
        pytest.fail("the local stack is not up: " + ", ".join(down) + "; run `qflare stack up`")
