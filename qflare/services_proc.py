"""Start and stop the four services as local processes (for `qflare demo` and the benchmarks)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from qflare.errors import StackError

#: A line each service logs once it is ready to work.
READY = {
    "registry": '"registry started"',
    "aggregator": '"aggregator started"',
    "scheduler": '"leadership acquired"',
    "audit": '"audit started"',
}


@dataclass
class ServiceProcesses:
    log_dir: Path
    env: dict[str, str]
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self, name: str, extra_env: dict[str, str] | None = None) -> None:
        log_path = self.log_dir / f"{name}.log"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        offset = log_path.stat().st_size if log_path.exists() else 0
        with open(log_path, "ab") as log:
            self.procs[name] = subprocess.Popen(
                [sys.executable, "-m", f"services.{name}"],
                env={**os.environ, **self.env, **(extra_env or {})},
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        self._wait_ready(name, log_path, offset)

    def _wait_ready(self, name: str, log_path: Path, offset: int, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with open(log_path, "rb") as fh:
                fh.seek(offset)
                if READY[name].encode() in fh.read():
                    return
            if self.procs[name].poll() is not None:
                raise StackError(
                    name, f"exited with {self.procs[name].returncode} at start", log_file=str(log_path)
                )
            time.sleep(0.2)
        raise StackError(name, f"not ready after {timeout_s:.0f} s", log_file=str(log_path))

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
