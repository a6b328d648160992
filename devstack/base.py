"""What every local server has in common: install, prepare, start, probe, stop."""

from __future__ import annotations

import subprocess
from abc import ABC, abstractmethod
from pathlib import Path
from typing import ClassVar

import psutil

from devstack import proc
from devstack.settings import StackSettings
from qflare.errors import StackError


class Server(ABC):
    """One real server process of the development stack."""

    name: ClassVar[str]
    #: True for servers that refuse to run as root (PostgreSQL, Elasticsearch).
    unprivileged: ClassVar[bool] = False

    def __init__(self, cfg: StackSettings) -> None:
        self.cfg = cfg
        self._account: proc.Account | None = None
        self.last_probe_error = ""

    # -- locations ---------------------------------------------------------
    @property
    def data_dir(self) -> Path:
        return self.cfg.runtime / self.name

    @property
    def log_file(self) -> Path:
        return self.cfg.runtime / "logs" / f"{self.name}.log"

    @property
    def pid_file(self) -> proc.PidFile:
        return proc.PidFile(self.cfg.runtime / "pids" / f"{self.name}.pid")

    @property
    def account(self) -> proc.Account | None:
        if self.unprivileged and self._account is None:
            self._account = proc.ensure_account(self.cfg.service_user)
        return self._account

    # -- what each server defines -----------------------------------------
    @property
    @abstractmethod
    def port(self) -> int: ...

    @property
    @abstractmethod
    def endpoint(self) -> str: ...

    @abstractmethod
    def installed(self) -> bool: ...

    @abstractmethod
    def install(self) -> None: ...

    @abstractmethod
    def prepare(self) -> None:
        """Create or validate the data directory before the first start."""

    @abstractmethod
    def command(self) -> list[str]: ...

    def env(self) -> dict[str, str]:
        return {}

    @abstractmethod
    async def probe(self) -> None:
        """Raise if the server does not answer a real request."""

    async def after_start(self) -> None:  # noqa: B027 - an optional hook, empty by default
        """One-off set-up once healthy (e.g. create the database)."""

    @abstractmethod
    def version(self) -> str: ...

    # -- shared behaviour --------------------------------------------------
    def running(self) -> psutil.Process | None:
        return self.pid_file.process()

    def start(self) -> int:
        if not proc.port_free(self.port):
            raise StackError(
                self.name,
                f"port {self.port} is already in use by {proc.port_owner(self.port)}; "
                f"free it or set another port through QFLARE_{self.name.upper()}_PORT",
                log_file=str(self.log_file),
            )
        self.prepare()
        child = proc.spawn(
            self.command(), log_file=self.log_file, cwd=self.data_dir, env=self.env(), account=self.account
        )
        self.pid_file.write(child.pid)
        return child.pid

    def stop(self) -> bool:
        running = self.running()
        if running is None:
            self.pid_file.clear()
            return False
        proc.terminate(running, self.cfg.stop_timeout_s)
        self.pid_file.clear()
        return True

    def fail(self, cause: str) -> StackError:
        tail = proc.log_tail(self.log_file)
        detail = f"{cause}; last log lines: {tail}" if tail else cause
        return StackError(self.name, detail, log_file=str(self.log_file))

    def run_tool(self, cmd: list[str], what: str, *, redact: tuple[str, ...] = ()) -> str:
        """Run a set-up tool (initdb, the Kafka storage tool) and name it on failure.

        ``redact``: secrets in the command line, written to the log as ``***``.
        """
        if self.account is not None:
            result = subprocess.run(
                cmd,
                capture_output=True,
                text=True,
                cwd=self.data_dir,
                user=self.account.uid,
                group=self.account.gid,
                extra_groups=[],
            )
        else:
            result = subprocess.run(cmd, capture_output=True, text=True, cwd=self.data_dir)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "a") as log:
            shown = " ".join(cmd)
            for secret in redact:
                shown = shown.replace(secret, "***")
            log.write(f"\n=== {what}: {shown}\n{result.stdout}{result.stderr}")
        if result.returncode != 0:
            raise self.fail(f"{what} failed with exit code {result.returncode}")
        return result.stdout
