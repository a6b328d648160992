"""A SCAFFOLD job through the real services, with a device process killed (-9) and restarted between rounds.

The device is a ``qflare-edge run --dataset mnist`` process, as a real host starts it.
After round 1 it is killed and started again over the same state directory: it must
reload its control variate c_i, skip round 1's task (replayed from the start of the
rounds topic, already answered), and take part in every later round with an update
whose ``control`` group the aggregator accepts.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge.simulator.observer import FleetObserver, wait_until
from edge.solver_state import load_state, state_path
from qflare import operator
from qflare.fl import JobSpec
from qflare.fl.registry import STRATEGIES
from qflare.identity import trusted_ring
from qflare.ml.solvers import SolverState
from qflare.protocol.training import RoundComplete
from qflare_cli.demo import KEYS_DIR, Run

pytestmark = pytest.mark.skipif(
    "scaffold" not in STRATEGIES,
    reason="no 'scaffold' strategy is registered yet (qflare/fl/strategies); this test runs once it is",
)


def _job(rounds: int, seed: int) -> JobSpec:
    return JobSpec.parse(
        {
            "model": "builtin:2nn",
            "strategy": {"name": "scaffold"},
            "rounds": rounds,
            "fraction": 1.0,
            "min_clients": 2,
            # Every selected device must answer: the restarted one too, or the round waits for it.
            "quorum": 1.0,
            "deadline_s": 300.0,
            "epochs": 1,
            "batch_size": 10,
            "lr": 0.05,
            "seed": seed,
            "dataset": "mnist",
            "partition": "iid",
        }
    )


class RunWithRestartedDevice(Run):
    """The demo's run, plus one ``qflare-edge`` device that is killed and restarted after round 1."""

    def __init__(self, *, state: Path, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.state = state
        self.edge_id = f"edge-{self.run_id}"
        self.token = ""
        self.edge: subprocess.Popen[str] | None = None
        self.starts = 0
        self.after_kill: SolverState | None = None

    @property
    def solver_file(self) -> Path:
        return state_path(self.state / "app" / self.edge_id, self.job_id)

    def execute(self) -> None:
        try:
            super().execute()
        finally:
            if self.edge is not None and self.edge.poll() is None:
                self.edge.kill()
                self.edge.wait(timeout=30)

    def start_edge(self) -> None:
        env = os.environ | {
            "PYTHONPATH": str(Path.cwd()),
            "QFLARE_KAFKA_TOPIC_PREFIX": self.kafka.topic_prefix,
            "QFLARE_KAFKA_DEPLOYMENT_ID": self.kafka.deployment_id,
            "QFLARE_KAFKA_USERNAME": "device",
            # Already enrolled with its key after the first start: the registry answers "unchanged".
            "QFLARE_DEVICE_TOKEN": self.token,
        }
        cmd = [str(Path(sys.executable).parent / "qflare-edge"), "run", "--device-id", self.edge_id]
        cmd += ["--state-dir", str(self.state), "--heartbeat-s", "1", "--trusted-keys", str(KEYS_DIR)]
        cmd += ["--dataset", "mnist", "--partition", "1", "--num-partitions", "8", "--seed", str(self.seed)]
        self.starts += 1
        # Its log goes to a file: a pipe nobody reads could fill and stall the device.
        with open(self.log(self.starts), "w") as log:
            self.edge = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=log, text=True)

    def log(self, start: int) -> Path:
        return self.state.parent / f"edge-{start}.log"

    def kill_and_restart(self) -> None:
        assert self.edge is not None
        os.kill(self.edge.pid, signal.SIGKILL)
        self.edge.wait(timeout=30)
        self.after_kill = load_state(self.solver_file)
        self.start_edge()

    async def _main(self, began: float) -> None:
        ident = operator.operator_identity(KEYS_DIR)
        [self.token] = await operator.issue_tokens(
            self.kafka, ident, 1, 3600, {"demo": self.run_id}, keys_dir=KEYS_DIR
        )
        self.start_edge()
        observer = FleetObserver(
            self.kafka, trusted_ring(KEYS_DIR), device_prefix="edge-", registry_group="qflare-registry"
        )
        await observer.start()
        try:
            assert await wait_until(lambda c: c["online"] >= 1, observer, 180), observer.counts()
        finally:
            await observer.stop()
        await super()._main(began)


def test_a_scaffold_device_keeps_its_control_variate_across_a_restart(tmp_path: Path) -> None:
    seen: list[RoundComplete] = []

    def on_round(rc: RoundComplete) -> None:
        seen.append(rc)
        assert rc.status == "completed", rc
        if rc.round == 1:
            # Round 2 opens now, with the device selected while it is down and coming back.
            run.kill_and_restart()

    run = RunWithRestartedDevice(
        state=tmp_path / "edge",
        devices=2,
        processes=1,
        seed=9,
        job=_job(3, 9),
        as_json=False,
        on_round=on_round,
    )
    run.execute()

    completed = [rc for rc in seen if rc.status == "completed"]
    assert [rc.round for rc in completed] == [1, 2, 3]
    for rc in completed:
        # The device's update, control group included, passed the aggregator's checks every round.
        assert run.edge_id in rc.included and rc.num_updates == 3, rc
    assert run.starts == 2
    before = run.after_kill
    assert before is not None and before.round == 1 and before.control is not None
    after = load_state(run.solver_file)
    assert after.round == 3 and after.control is not None
    # c_i moved on from the value it had when the device was killed (reloaded, not restarted at 0).
    assert any(not np.array_equal(a, b) for a, b in zip(before.control, after.control, strict=True))
    for start in (1, 2):
        log = run.log(start).read_text()
        assert '"training failed"' not in log and '"task failed"' not in log, log
