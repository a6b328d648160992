"""Installing what the stack needs: Debian packages, Maven artifacts, unpacked archives."""

from __future__ import annotations

import os
import shutil
import subprocess
import zipfile
from pathlib import Path

from qflare.errors import StackError

#: The repository root: infra/local/ holds the poms and config templates.
REPO_ROOT = Path(__file__).resolve().parents[1]
INFRA_LOCAL = REPO_ROOT / "infra" / "local"

_apt_updated = False


def apt_install(server: str, packages: list[str]) -> None:
    """Install Debian packages, running ``apt-get update`` once per process."""
    global _apt_updated
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise StackError(server, f"needs the Debian packages {' '.join(packages)}; install them as root")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if not _apt_updated:
        subprocess.run(["apt-get", "update", "-qq"], check=False, env=env, capture_output=True)
        _apt_updated = True
    result = subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages],
        env=env,
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        last = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
        raise StackError(server, f"apt-get install {' '.join(packages)} failed: {last[0]}")


def require_tool(server: str, tool: str, package_hint: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise StackError(server, f"{tool} is not installed (Debian package {package_hint}); run `make setup`")
    return path


def java_home(server: str) -> str:
    java = require_tool(server, "java", "openjdk-17-jre-headless")
    return str(Path(java).resolve().parent.parent)


def mvn(server: str, args: list[str], log_file: Path) -> None:
    """Run Maven in batch mode; its output goes to the server's log file."""
    binary = require_tool(server, "mvn", "maven")
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "a") as log:
        log.write(f"\n=== mvn {' '.join(args)}\n")
        log.flush()
        result = subprocess.run([binary, "-B", "-q", *args], stdout=log, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        raise StackError(
            server, f"mvn exited with {result.returncode} while fetching artifacts", log_file=str(log_file)
        )


def unzip(archive: Path, dest: Path) -> None:
    """Unpack into a temporary sibling first so an interrupted unzip never looks installed."""
    tmp = dest.with_name(dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            extracted = Path(zf.extract(info, tmp))
            mode = (info.external_attr >> 16) & 0o777
            if mode:
                extracted.chmod(mode)
    # The zip holds one top-level folder; move its contents to ``dest``.
    (inner,) = list(tmp.iterdir())
    shutil.rmtree(dest, ignore_errors=True)
    inner.rename(dest)
    shutil.rmtree(tmp, ignore_errors=True)
