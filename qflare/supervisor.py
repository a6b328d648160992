"""One process supervisor for `qflare demo`, the fleet simulator and the integration tests.

``Supervisor`` starts children (``qflare.children``: a service run as
``python -m services.<name>``, ready when its ``/healthz`` says so, or a fleet
worker) and waits until they are ready, then watches them: a child that dies is
restarted after an exponential backoff, and every death and restart is said
(``say``) and recorded in ``events``. A child that fails again and again soon
after each start is given up after ``max_restarts`` such failures, with the last
lines of its log, and ``check()`` raises from then on, so the caller stops
instead of waiting for work that will never be done.

The local stack's servers are not run through here (``devstack/proc.py``): they are
daemons that outlive the command that started them, found again through pid files.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from qflare.backoff import Backoff
from qflare.children import Child, describe_exit, log_tail, wait_ready
from qflare.errors import StackError
from qflare.runner import EXIT_NOT_TRANSIENT


class SupervisorSettings(BaseSettings):
    """Restart policy, from ``QFLARE_SUPERVISOR_*`` environment variables."""

    model_config = SettingsConfigDict(env_prefix="QFLARE_SUPERVISOR_", extra="ignore")

    #: Quick failures in a row after which a child is given up (0: never restart).
    max_restarts: int = Field(default=5, ge=0)
    #: A child that ran at least this long before dying starts a fresh count of quick failures.
    stable_after_s: float = Field(default=60.0, gt=0)
    backoff_initial_s: float = Field(default=0.5, gt=0)
    backoff_max_s: float = Field(default=30.0, gt=0)
    ready_timeout_s: float = Field(default=180.0, gt=0)
    #: How long children get to stop on their own before they are killed.
    stop_timeout_s: float = Field(default=20.0, gt=0)
    poll_s: float = Field(default=0.2, gt=0)


@dataclass(frozen=True)
class Event:
    """One thing the supervisor said about a child."""

    service: str
    kind: Literal["died", "restarted", "gave_up"]
    text: str


@dataclass
class _Watched:
    child: Child
    started_at: float
    quick_failures: int = 0
    restarts: int = 0
    gave_up: StackError | None = None
    thread: threading.Thread | None = None


@dataclass
class Supervisor:
    settings: SupervisorSettings = field(default_factory=SupervisorSettings)
    say: Callable[[str], None] = print
    events: list[Event] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._children: dict[str, _Watched] = {}
        self._stopping = threading.Event()
        # Held while a child is (re)spawned, so that stop() never misses a process.
        self._lock = threading.Lock()

    def start(self, child: Child) -> None:
        """Spawn ``child``, wait until it is ready (StackError if it is not), then watch it."""
        with self._lock:
            if self._stopping.is_set():
                raise StackError(child.name, "the supervisor is stopping")
            child.spawn()
            watched = self._children[child.name] = _Watched(child, time.monotonic())
        wait_ready(child, self.settings.ready_timeout_s, poll_s=self.settings.poll_s, abort=self._stopping)
        watched.thread = threading.Thread(target=self._watch, args=(watched,), daemon=True)
        watched.thread.start()

    def child(self, name: str) -> Child:
        return self._children[name].child

    def restarts(self, name: str) -> int:
        return self._children[name].restarts

    def check(self) -> None:
        """Raise the StackError of the first child that was given up, if any."""
        for watched in self._children.values():
            if watched.gave_up is not None:
                raise watched.gave_up

    def stop(self) -> list[str]:
        """Ask every child to stop, kill those still running after ``stop_timeout_s``; their names."""
        self._stopping.set()
        with self._lock:
            children = [w.child for w in self._children.values()]
        for child in children:
            child.request_stop()
        deadline = time.monotonic() + self.settings.stop_timeout_s
        while any(c.returncode() is None for c in children) and time.monotonic() < deadline:
            time.sleep(0.1)
        for child in children:
            child.kill()
            child.close()
        for watched in self._children.values():
            if watched.thread is not None:
                watched.thread.join()
        return [c.name for c in children]

    def _say(self, name: str, kind: Literal["died", "restarted", "gave_up"], text: str) -> None:
        self.events.append(Event(name, kind, text))
        self.say(text)

    def _watch(self, watched: _Watched) -> None:
        child, cfg = watched.child, self.settings
        while not self._stopping.wait(cfg.poll_s):
            code = child.returncode()
            if code is None:
                continue
            up_s = time.monotonic() - watched.started_at
            watched.quick_failures = watched.quick_failures + 1 if up_s < cfg.stable_after_s else 1
            what = f"{child.name} {describe_exit(code)} (pid {child.pid}, up {up_s:.1f} s)"
            # 78 (EX_CONFIG): the service judged its error not transient, so a restart would not help.
            if watched.quick_failures > cfg.max_restarts or code == EXIT_NOT_TRANSIENT:
                watched.gave_up = StackError(
                    child.name,
                    f"{describe_exit(code)}; {watched.quick_failures} failures in a row, not restarted "
                    f"again (QFLARE_SUPERVISOR_MAX_RESTARTS={cfg.max_restarts}; exit status "
                    f"{EXIT_NOT_TRANSIENT} means the error is not transient)",
                    log_file=str(child.log_path),
                )
                self._say(
                    child.name,
                    "gave_up",
                    f"{what}: failed {watched.quick_failures} times in a row, giving up; "
                    f"last lines of {child.log_path}:\n{log_tail(child.log_path)}",
                )
                return
            delay = Backoff(cfg.backoff_initial_s, cfg.backoff_max_s, attempts=watched.quick_failures - 1)
            watched.restarts += 1
            self._say(
                child.name,
                "died",
                f"{what}; restarting in {delay.ceiling_s():.2g} s "
                f"(restart {watched.restarts}, failure {watched.quick_failures} of at most "
                f"{cfg.max_restarts} in a row)",
            )
            if self._stopping.wait(delay.ceiling_s()):
                return
            with self._lock:
                if self._stopping.is_set():
                    return
                child.spawn()
                watched.started_at = time.monotonic()
            try:
                took_s = wait_ready(child, cfg.ready_timeout_s, poll_s=cfg.poll_s, abort=self._stopping)
            except StackError:
                continue  # died or killed while starting: the next turn counts the failure
            self._say(
                child.name,
                "restarted",
                f"{child.name} restarted (pid {child.pid}), ready after {took_s:.1f} s; "
                f"{watched.restarts} restart(s) so far",
            )
