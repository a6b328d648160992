"""A device installs `qflare[edge]` from its lock into a clean venv, without server-side packages, and runs.

The venv is built from `requirements/edge.lock` with hashes (uv links the wheels from
its cache, so this costs seconds after `make setup`), the project is installed as a
wheel, not in editable mode, and the device runs from outside the checkout, so
nothing from the development venv or the source tree can leak in.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from qflare import localstack, operator
from qflare.identity import Identity
from qflare.kafka import KafkaSettings
from tests.integration.services.harness import RegistryProcess

REPO = Path(__file__).resolve().parents[3]
SERVER_SIDE = ("faust-streaming", "psycopg", "psycopg-binary", "redis", "elasticsearch")


def _uv(*args: str) -> str:
    uv = Path(sys.executable).parent / "uv"
    done = subprocess.run([str(uv), *args], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"uv {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def edge_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    venv = tmp_path_factory.mktemp("edge") / "venv"
    _uv("venv", "-q", "--python", "python3.11", str(venv))
    py = str(venv / "bin" / "python")
    _uv("pip", "sync", "-q", "--python", py, "--require-hashes", "requirements/edge.lock")
    # setuptools comes with the edge lock, so the wheel builds without fetching anything.
    _uv("pip", "install", "-q", "--python", py, "--no-deps", "--no-build-isolation", ".")
    return venv


def test_edge_install_has_no_server_side_packages(edge_venv: Path) -> None:
    frozen = _uv("pip", "freeze", "--python", str(edge_venv / "bin" / "python"))
    names = {line.split("==")[0].split(" @ ")[0].lower() for line in frozen.splitlines() if line}
    print("qflare[edge] installed:", ", ".join(sorted(names)))
    assert "qflare" in names and "torch" in names and "aiokafka" in names
    assert not names & set(SERVER_SIDE), names & set(SERVER_SIDE)
    # Nor can the installed device code reach them by accident (a stray import would fail here).
    probe = (
        "import edge.__main__, edge.simulator.worker, edge.training, qflare.ml, qflare.protocol; print('ok')"
    )
    done = subprocess.run(
        [str(edge_venv / "bin" / "python"), "-c", probe], cwd=edge_venv, capture_output=True, text=True
    )
    assert done.stdout.strip() == "ok", done.stderr


async def test_edge_only_device_enrols_and_heartbeats(
    edge_venv: Path,
    kafka: KafkaSettings,
    keys_dir: Path,
    operator_id: Identity,
    registry: RegistryProcess,
    tmp_path: Path,
    unique: str,
) -> None:
    [token] = await operator.issue_tokens(kafka, operator_id, 1, 600, {"site": "edge"}, keys_dir=keys_dir)
    device_id = f"edge-{unique}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "QFLARE_"))} | {
        "QFLARE_KAFKA_BOOTSTRAP": kafka.bootstrap,
        "QFLARE_KAFKA_TOPIC_PREFIX": kafka.topic_prefix,
        "QFLARE_KAFKA_DEPLOYMENT_ID": kafka.deployment_id,
        "QFLARE_DEVICE_TOKEN": token,
    }
    # Configured like a real device: the device principal's login and the CA, nothing found on disk.
    secret = localstack.password("kafka", "device")
    if secret is not None:
        env |= {
            "QFLARE_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "QFLARE_KAFKA_USERNAME": "device",
            "QFLARE_KAFKA_PASSWORD": secret,
            "QFLARE_KAFKA_CA_FILE": str(localstack.ca_file()),
        }
    cmd = [str(edge_venv / "bin" / "qflare-edge"), "run", "--device-id", device_id, "--heartbeat-s", "1"]
    cmd += ["--state-dir", str(tmp_path / "device"), "--duration-s", "300", "--label", "site=edge"]
    device = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        for _ in range(240):
            view = await operator.read_fleet(kafka, keys_dir)
            got = view.devices.get(device_id)
            if got is not None and got.status == "active" and view.health.get(device_id) == "online":
                break
            assert device.poll() is None, device.communicate()
            await asyncio.sleep(0.5)
        else:
            raise AssertionError(f"device never became active and online: {view}")
        assert got.labels["site"] == "edge"
    finally:
        device.terminate()
        out, err = device.communicate(timeout=30)
    assert f"device {device_id}" in out.decode(), err.decode()
