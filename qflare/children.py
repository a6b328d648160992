"""What the supervisor (``qflare.supervisor``) runs: children, a service's process, readiness.

``ServiceProcess`` runs ``python -m services.<name>`` by module name (the library
imports no service), its output appended to a log file, and is ready when its
``/healthz`` (``qflare.health``) answers ``ready`` with that very process's pid.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from qflare import health
from qflare.errors import StackError


class Child(Protocol):
    """A process the supervisor can (re)start, probe, stop and kill."""

    @property
    def name(self) -> str: ...

    @property
    def log_path(self) -> Path | None: ...

    @property
    def pid(self) -> int | None: ...

    def spawn(self) -> None: ...

    def returncode(self) -> int | None:
        """None while the current process runs; negative: killed by that signal."""
        ...

    def is_ready(self) -> bool: ...

    def request_stop(self) -> None: ...

    def kill(self) -> None: ...

    def close(self) -> None:
        """Release what outlives the process (a port), once it is stopped for good."""
        ...


@dataclass
class ServiceProcess:
    """``python -m services.<name>``, its log file, and its /metrics and /healthz port.

    The port (``port`` if free, else any) is bound here and handed to each process
    the service runs as (``qflare.health.FD_ENV``), so it stays the service's own
    across restarts and nothing else can take it in between; ``close()`` frees it.
    """

    name: str
    env: dict[str, str]
    log_path: Path
    port: int = 0
    #: Own session: a Ctrl-C in the terminal reaches the supervisor, which stops services in order.
    own_session: bool = False
    proc: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        self._listener = listen(self.port)
        self.health_port: int = self._listener.getsockname()[1]

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def spawn(self) -> None:
        env = {
            **os.environ,
            **self.env,
            f"QFLARE_{self.name.upper()}_METRICS_PORT": str(self.health_port),
            health.FD_ENV: str(self._listener.fileno()),
        }
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", f"services.{self.name}"],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=self.own_session,
                pass_fds=(self._listener.fileno(),),
            )

    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def is_ready(self) -> bool:
        found = health.probe(self.health_port, timeout_s=1.0)
        return found is not None and found.ready and found.pid == self.pid

    def request_stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        if self.proc is not None:
            self.proc.wait()

    def close(self) -> None:
        """Free the port (once the service has stopped)."""
        self._listener.close()


def listen(preferred: int = 0) -> socket.socket:
    """A socket listening on 127.0.0.1:``preferred`` when that is free, else on a port the system picks."""
    for port in ([preferred] if preferred else []) + [0]:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            sock.close()
            continue
        sock.listen(64)
        return sock
    raise StackError("supervisor", "no free TCP port")


def free_port(preferred: int = 0) -> int:
    """``preferred`` when nothing listens there, else a free port the system picks (free only for now)."""
    with listen(preferred) as sock:
        port: int = sock.getsockname()[1]
    return port


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"


def log_tail(path: Path | None, lines: int = 20) -> str:
    if path is None:
        return "(no log file)"
    try:
        with open(path, "rb") as fh:
            fh.seek(max(0, fh.seek(0, os.SEEK_END) - 64 * 1024))
            text = fh.read().decode(errors="replace")
    except FileNotFoundError:
        return "(no log file)"
    return "\n".join("  " + line for line in text.strip().splitlines()[-lines:])


def wait_ready(
    child: Child, timeout_s: float, *, poll_s: float = 0.2, abort: threading.Event | None = None
) -> float:
    """Seconds until ``child`` was ready; StackError (with its log's tail) if it died or took too long."""
    began = time.monotonic()
    while True:
        code = child.returncode()
        if code is not None:
            tail = log_tail(child.log_path)
            cause = f"{describe_exit(code)} before it was ready; last lines of its log:\n{tail}"
            raise StackError(child.name, cause, log_file=str(child.log_path))
        if child.is_ready():
            return time.monotonic() - began
        if time.monotonic() - began > timeout_s:
            child.kill()
            tail = log_tail(child.log_path)
            cause = f"not ready after {timeout_s:.0f} s; last lines of its log:\n{tail}"
            raise StackError(child.name, cause, log_file=str(child.log_path))
        if abort is not None and abort.is_set():
            raise StackError(child.name, "stopped before it was ready")
        time.sleep(poll_s)
