"""Process plumbing for the local stack: users, ports, pid files, spawn and stop.

`stack down` must stop exactly what `stack up` started, so every process is
recorded in a pid file together with its start time; a pid that was reused by
an unrelated process after a reboot is never signalled.

This is not ``qflare.supervisor`` on purpose: these servers are daemons that
outlive the command that started them (found again through pid files, run as
another user), whereas the supervisor's children live and die with it and are
restarted while it watches.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from qflare.errors import StackError


@dataclass(frozen=True)
class Account:
    name: str
    uid: int
    gid: int
    home: str


def ensure_account(name: str) -> Account:
    """Return the unprivileged account the servers run as, creating it if needed."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        if os.geteuid() != 0:
            raise StackError(name, f"user {name!r} does not exist and only root can create it") from None
        useradd = shutil.which("useradd")
        if useradd is None:
            raise StackError(name, "useradd is missing; create the service user by hand") from None
        subprocess.run(
            [useradd, "--system", "--user-group", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
            check=True,
        )
        entry = pwd.getpwnam(name)
    return Account(entry.pw_name, entry.pw_uid, entry.pw_gid, entry.pw_dir)


def make_owned_dir(path: Path, account: Account | None) -> None:
    """Create ``path`` and, when an account is given, hand it over recursively."""
    path.mkdir(parents=True, exist_ok=True)
    if account is None or os.geteuid() != 0:
        return
    for root, dirs, files in os.walk(path):
        os.chown(root, account.uid, account.gid)
        for entry in dirs + files:
            with contextlib.suppress(FileNotFoundError):
                os.chown(os.path.join(root, entry), account.uid, account.gid, follow_symlinks=False)


def ensure_traversable(path: Path) -> None:
    """Let the service user reach ``path``: add search (x, not read) bits on parents.

    A checkout under a private home such as /root is otherwise unreachable for
    the unprivileged PostgreSQL and Elasticsearch processes.
    """
    for parent in path.resolve().parents:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            os.chmod(parent, mode | stat.S_IXOTH)


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def port_owner(port: int) -> str:
    """Best effort description of who listens on ``port``, for error messages."""
    with contextlib.suppress(psutil.Error):
        for conn in psutil.net_connections(kind="tcp"):
            if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN and conn.pid:
                with contextlib.suppress(psutil.Error):
                    proc = psutil.Process(conn.pid)
                    return f"pid {conn.pid} ({proc.name()})"
    return "another process"


class PidFile:
    """``<pid> <create_time>`` of one started server."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, pid: int) -> None:
        created = psutil.Process(pid).create_time()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(f"{pid} {created:.3f}\n")

    def process(self) -> psutil.Process | None:
        """The live process this file names, or None (stale files are removed)."""
        try:
            pid_text, created_text = self.path.read_text().split()
            proc = psutil.Process(int(pid_text))
            # Not a reused pid: the start time matches. Within 2 s, because the kernel's boot time
            # (which psutil adds the start ticks to) can move by a whole second between reads.
            if abs(proc.create_time() - float(created_text)) > 2.0 or proc.status() == psutil.STATUS_ZOMBIE:
                raise psutil.NoSuchProcess(int(pid_text))
        except FileNotFoundError:
            return None
        except (ValueError, psutil.Error):
            self.path.unlink(missing_ok=True)
            return None
        return proc

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


def spawn(
    cmd: list[str], *, log_file: Path, cwd: Path, env: dict[str, str], account: Account | None
) -> subprocess.Popen[bytes]:
    """Start ``cmd`` detached in its own session, stdout and stderr appended to ``log_file``."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as log:
        log.write(f"\n=== {time.strftime('%Y-%m-%dT%H:%M:%S')} starting: {' '.join(cmd)}\n".encode())
        log.flush()
        full_env = {**os.environ, **env}
        if account is not None:
            full_env.update(HOME=str(cwd), USER=account.name, LOGNAME=account.name)
            os.chown(log_file, account.uid, account.gid)
        return subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=full_env,
            start_new_session=True,
            user=account.uid if account else None,
            group=account.gid if account else None,
            extra_groups=[] if account else None,
        )


def terminate(proc: psutil.Process, timeout_s: float) -> None:
    """SIGTERM the process group, then SIGKILL whatever is left after ``timeout_s``."""
    try:
        pgid = os.getpgid(proc.pid)
    except ProcessLookupError:
        return
    members = [proc]
    with contextlib.suppress(psutil.Error):
        members += proc.children(recursive=True)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    _, alive = psutil.wait_procs(members, timeout=timeout_s)
    if alive:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        psutil.wait_procs(alive, timeout=5)


def log_tail(path: Path, lines: int = 5) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except FileNotFoundError:
        return ""
    return " | ".join(line.strip() for line in text[-lines:])
