"""The supervisor's restart policy, on real child processes (small Python scripts)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from qflare.children import describe_exit
from qflare.errors import StackError
from qflare.supervisor import Supervisor, SupervisorSettings

UP = "import time; print('up', flush=True); time.sleep(120)"
BROKEN = "import sys; print('bad setting: batch_max_records', flush=True); sys.exit(3)"


@dataclass
class Script:
    """A child that runs ``scripts[n]`` on its n-th spawn (the last one again after that)."""

    log_path: Path
    scripts: list[str]
    name: str = "script"
    proc: subprocess.Popen[bytes] | None = None
    spawns: int = 0
    pids: list[int] = field(default_factory=list)

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def spawn(self) -> None:
        code = self.scripts[min(self.spawns, len(self.scripts) - 1)]
        self.spawns += 1
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-c", code], stdout=log, stderr=subprocess.STDOUT)
        self.pids.append(self.proc.pid)

    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def is_ready(self) -> bool:
        return self.returncode() is None and "up" in self.log_path.read_text()

    def request_stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()

    def kill(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait()

    def close(self) -> None:
        pass


def _until(cond: Callable[[], bool], what: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached in {timeout_s} s")
        time.sleep(0.05)


def _fast(**overrides: float) -> SupervisorSettings:
    return SupervisorSettings(backoff_initial_s=0.05, poll_s=0.05, **overrides)  # type: ignore[arg-type]


def test_exits_are_described_by_code_or_signal() -> None:
    assert describe_exit(3) == "exited with code 3"
    assert describe_exit(-signal.SIGKILL) == "killed by SIGKILL"


def test_max_restarts_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QFLARE_SUPERVISOR_MAX_RESTARTS", "2")
    assert SupervisorSettings().max_restarts == 2


def test_a_child_that_keeps_crashing_is_given_up_with_the_tail_of_its_log(tmp_path: Path) -> None:
    said: list[str] = []
    child = Script(tmp_path / "script.log", [UP, BROKEN])
    sup = Supervisor(_fast(max_restarts=2), say=said.append)
    sup.start(child)
    try:
        os.kill(child.pids[0], signal.SIGKILL)
        _until(lambda: any(e.kind == "gave_up" for e in sup.events), "giving up")
        kinds = [e.kind for e in sup.events if e.kind != "restarted"]
        assert kinds == ["died", "died", "gave_up"]
        assert child.spawns == 3 and sup.restarts("script") == 2
        first, second, last = (e.text for e in sup.events if e.kind != "restarted")
        assert "killed by SIGKILL" in first and "restart 1," in first and "in 0.05 s" in first
        assert "exited with code 3" in second and "restart 2," in second and "in 0.1 s" in second
        assert "giving up" in last and "bad setting: batch_max_records" in last
        assert said == [e.text for e in sup.events]
        with pytest.raises(StackError, match="QFLARE_SUPERVISOR_MAX_RESTARTS=2"):
            sup.check()
    finally:
        sup.stop()


def test_a_child_that_ran_long_enough_starts_a_fresh_count(tmp_path: Path) -> None:
    child = Script(tmp_path / "script.log", [UP])
    # Every run counts as stable: each death is failure 1 again, so one allowed failure never runs out.
    sup = Supervisor(_fast(max_restarts=1, stable_after_s=1e-3), say=lambda _: None)
    sup.start(child)
    try:

        def restarted() -> int:
            return sum(e.kind == "restarted" for e in sup.events)

        for n in range(1, 4):
            os.kill(child.pids[-1], signal.SIGKILL)
            _until(lambda: restarted() == n, f"restart {n}")  # noqa: B023 (used at once)
        assert sup.restarts("script") == 3 and child.returncode() is None
        assert all("failure 1 of at most 1" in e.text for e in sup.events if e.kind == "died")
        sup.check()
    finally:
        stopped = sup.stop()
    assert stopped == ["script"] and child.returncode() is not None
    assert [e.kind for e in sup.events].count("died") == 3  # stopping is not a death


def test_a_child_that_dies_before_it_is_ready_fails_the_start(tmp_path: Path) -> None:
    sup = Supervisor(_fast(), say=lambda _: None)
    with pytest.raises(StackError, match="exited with code 3 before it was ready") as info:
        sup.start(Script(tmp_path / "script.log", [BROKEN]))
    assert "bad setting" in str(info.value)
    sup.stop()
