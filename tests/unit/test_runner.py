"""The batch-loop lifecycle: what start acquired is released, newest first; a dead helper is surfaced."""

from __future__ import annotations

import asyncio

import pytest

from qflare.runner import BatchLoop


class Client:
    def __init__(self, name: str, log: list[str], *, fail: bool = False) -> None:
        self.name, self.log, self.fail = name, log, fail

    async def start(self) -> None:
        self.log.append(f"start {self.name}")
        if self.fail:
            raise ConnectionError(f"{self.name} unreachable")

    async def stop(self) -> None:
        self.log.append(f"stop {self.name}")


class Loop(BatchLoop):
    def __init__(self, *, fail_at: str = "", helper_fails: bool = False) -> None:
        super().__init__()
        self.log: list[str] = []
        self.fail_at = fail_at
        self.helper_fails = helper_fails
        self.steps = 0

    async def start(self) -> None:
        self._hold(self._close_store)
        for name in ("producer", "consumer"):
            await self._started(Client(name, self.log, fail=name == self.fail_at))
        self._spawn(self._helper(), name="helper")

    async def _close_store(self) -> None:
        self.log.append("close store")

    async def _helper(self) -> None:
        if self.helper_fails:
            raise RuntimeError("helper died")
        await asyncio.Event().wait()

    async def _step(self) -> None:
        self.steps += 1
        await asyncio.sleep(0)
        if self.steps == 3:
            self.request_stop()


async def test_run_steps_until_stopped_then_releases_newest_first() -> None:
    loop = Loop()
    async with loop:
        await loop.run()
    assert loop.steps == 3
    assert loop.log == [
        "start producer",
        "start consumer",
        "stop consumer",
        "stop producer",
        "close store",
    ]


async def test_a_failed_start_releases_what_it_got_to() -> None:
    loop = Loop(fail_at="consumer")
    with pytest.raises(ConnectionError):
        async with loop:
            pytest.fail("the body must not run")
    # The consumer whose own start failed is stopped too, as aiokafka clients need.
    assert loop.log == ["start producer", "start consumer", "stop consumer", "stop producer", "close store"]


async def test_a_helper_that_ends_is_surfaced_by_run() -> None:
    loop = Loop(helper_fails=True)
    with pytest.raises(RuntimeError, match="helper died"):
        async with loop:
            await asyncio.sleep(0)
            await loop.run()
    # Raised once, by run; stopping still released everything.
    assert loop.log[-3:] == ["stop consumer", "stop producer", "close store"]
