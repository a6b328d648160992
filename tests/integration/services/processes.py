"""Services run as real processes for the integration tests: start, wait, kill -9, stop."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import ClassVar


class ManagedService:
    """Mixin for a ``python -m services.<service>`` process whose readiness shows in its log.

    Subclasses are dataclasses that declare ``log_path``, ``proc`` and ``starts`` and
    build the process environment in ``env()``.
    """

    service: ClassVar[str]
    #: A line the service logs once it is ready (counted, so restarts wait for a new one).
    ready: ClassVar[str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None
    starts: int

    def env(self) -> dict[str, str]:
        raise NotImplementedError

    def start(self, *, wait_s: float = 90) -> None:
        self.starts += 1
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", f"services.{self.service}"], env=self.env(), stdout=log, stderr=log
            )
        deadline = time.monotonic() + wait_s
        while self.log_path.read_text(errors="replace").count(self.ready) < self.starts:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"{self.service} did not start: {self.log_path.read_text()[-3000:]}")
            time.sleep(0.1)

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def scrape(port: int, name: str, **labels: str) -> float:
    """One sample from a service's /metrics on ``port`` (0.0 when absent)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        head, _, value = line.rpartition(" ")
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            return float(value)
    return 0.0
