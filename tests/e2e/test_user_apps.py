"""Devices run user code through the real services: an app loaded by name, and one that cannot load.

Both run the demo's whole path (stack, registry, scheduler, aggregator, audit, a
simulated fleet in worker processes), with the fleet's devices running a
DeviceApp from ``tests/apps`` named as a user names theirs: ``--app module:attr``.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from edge.simulator.fleet import FleetProcesses, start_fleet
from edge.simulator.observer import FleetObserver, wait_until
from qflare import operator
from qflare.identity import trusted_ring
from qflare.ml import tensor_names
from qflare.operator import FleetView
from qflare.protocol.training import RoundComplete
from qflare_cli.demo import KEYS_DIR, Run
from tests.apps.shift import SHIFT
from tests.integration.services.aggregator_harness import global_model
from tests.jobs import small_fedavg_job

#: Named as a user names theirs: ``package.module:attribute``, importable from the current directory.
SHIFT_APP = "tests.apps.shift:app"
BROKEN_APP = "tests.apps.broken:app"


def test_a_fleet_trains_with_a_user_app_loaded_by_name() -> None:
    seen: list[RoundComplete] = []
    job = small_fedavg_job(rounds=2, seed=5, weighting="equal")  # an app declares no size
    run = Run(devices=3, processes=1, seed=5, job=job, as_json=False, on_round=seen.append, app=SHIFT_APP)
    run.execute()
    ids = [f"dev-{run.run_id}-{i:03d}" for i in range(3)]
    completed = [rc for rc in seen if rc.status == "completed"]
    assert [rc.round for rc in completed] == [1, 2]
    for rc in completed:
        assert rc.num_updates == 3 and sorted(rc.included) == ids, rc
    # Every device added the constant to the global model it was given: so did their average.
    v0, v2 = (asyncio.run(global_model(run.kafka, KEYS_DIR, run.job_id, v)) for v in (0, 2))
    for before, after in zip(v0.tensors, v2.tensors, strict=True):
        assert before.name == after.name
        assert np.allclose(after.array, before.array + 2 * SHIFT, atol=1e-6), before.name
    # Each device saw its own partition of the fleet, the fleet's size and the model's names,
    # and kept them in a state directory of its own.
    for index, device in enumerate(ids):
        state = Path(".qflare/sim") / run.run_id / "app" / device
        for round in (1, 2):
            got = json.loads((state / f"round-{round}.json").read_text())
            assert got == {
                "device_id": device,
                "partition": index,
                "num_partitions": 3,
                "names": tensor_names("2nn"),
                "round": round,
            }


class RunWithBrokenDevices(Run):
    """The demo's run, plus two devices whose app raises on import: a simulated one (a fleet of
    its own) and a ``qflare-edge run --app`` process, as a real device host starts it."""

    def __init__(self, *, state: Path, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.state = state
        self.broken_id = f"brk-{self.run_id}-000"
        self.edge_id = f"brk-{self.run_id}-edge"
        self.broken: FleetProcesses | None = None
        self.edge: subprocess.Popen[str] | None = None
        self.broken_stats: dict[int, dict[str, Any]] = {}
        self.view: FleetView | None = None

    def execute(self) -> None:
        try:
            super().execute()
        finally:
            if self.broken is not None:
                self.broken.stop()
            if self.edge is not None and self.edge.poll() is None:
                self.edge.kill()

    def _start_edge(self, token: str) -> subprocess.Popen[str]:
        env = os.environ | {
            "PYTHONPATH": str(Path.cwd()),
            "QFLARE_KAFKA_TOPIC_PREFIX": self.kafka.topic_prefix,
            "QFLARE_KAFKA_DEPLOYMENT_ID": self.kafka.deployment_id,
            "QFLARE_KAFKA_USERNAME": "device",
            "QFLARE_DEVICE_TOKEN": token,
        }
        cmd = [str(Path(sys.executable).parent / "qflare-edge"), "run", "--device-id", self.edge_id]
        cmd += ["--state-dir", str(self.state), "--heartbeat-s", "1", "--trusted-keys", str(KEYS_DIR)]
        cmd += ["--app", BROKEN_APP, "--partition", "1", "--num-partitions", "2"]
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def stop_edge(self) -> tuple[str, str]:
        assert self.edge is not None
        self.edge.terminate()
        return self.edge.communicate(timeout=60)

    async def _main(self, began: float) -> None:
        # Online before the job starts, so the scheduler selects them with the others.
        ident = operator.operator_identity(KEYS_DIR)
        labels = {"demo": self.run_id}
        tokens = await operator.issue_tokens(self.kafka, ident, 2, 3600, labels, keys_dir=KEYS_DIR)
        self.edge = self._start_edge(tokens[1])
        self.broken = start_fleet(
            [self.broken_id],
            tokens[:1],
            kafka=self.kafka,
            processes=1,
            heartbeat_s=1.0,
            # Its own directory: two fleets' worker 0 must not share one spool file.
            state_dir=Path(".qflare/sim") / f"{self.run_id}-broken",
            keys_dir=KEYS_DIR,
            seed=self.seed,
            train={"app": BROKEN_APP, "seed": self.seed},
            say=print,
        )
        observer = FleetObserver(
            self.kafka, trusted_ring(KEYS_DIR), device_prefix="brk-", registry_group="qflare-registry"
        )
        await observer.start()
        try:
            assert await wait_until(lambda c: c["online"] >= 2, observer, 180), observer.counts()
        finally:
            await observer.stop()
        await super()._main(began)
        # The rounds are over, the services still run: what did the broken device do meanwhile?
        self.broken_stats = self.broken.poll_stats()
        self.view = await operator.read_fleet(self.kafka, KEYS_DIR)


def test_devices_whose_app_cannot_load_heartbeat_while_rounds_complete_without_them(tmp_path: Path) -> None:
    seen: list[RoundComplete] = []

    def on_round(rc: RoundComplete) -> None:
        seen.append(rc)
        # The demo waits for completed rounds; a round that fails ends the run here instead.
        assert rc.status == "completed", rc

    # Two of the four selected devices send updates, the other two failed replies: a quorum of half
    # is met, and everyone answered, so each round closes without waiting for its deadline.
    job = small_fedavg_job(rounds=2, seed=6, deadline_s=15.0, quorum=0.5, weighting="equal")
    run = RunWithBrokenDevices(
        state=tmp_path / "edge",
        devices=2,
        processes=1,
        seed=6,
        job=job,
        as_json=False,
        on_round=on_round,
        app=SHIFT_APP,
    )
    run.execute()
    out, err = run.stop_edge()
    good = [f"dev-{run.run_id}-{i:03d}" for i in range(2)]
    completed = [rc for rc in seen if rc.status == "completed"]
    assert [rc.round for rc in completed] == [1, 2]
    for rc in completed:
        # Selected with the others, they answered with failed replies: counted, not included.
        assert rc.metrics["selected"] == 4, rc.metrics
        assert rc.metrics["failed_devices"] == 2, rc.metrics
        assert rc.num_updates == 2 and sorted(rc.included) == good, rc
    # It answered each task with a failed reply carrying the import error, and kept heartbeating.
    [stats] = run.broken_stats.values()
    assert stats["failed"] >= 2, stats
    assert "tests.apps.broken" in stats["last_failure"], stats
    assert "/nonexistent is missing" in stats["last_failure"], stats
    assert run.view is not None
    for device in (run.broken_id, run.edge_id):
        assert run.view.devices[device].status == "active"
        assert run.view.health.get(device) == "online", run.view.health
    # The device process: the import error in its log, once for each task it was given.
    failures = [json.loads(line) for line in err.splitlines() if '"training failed"' in line]
    assert len(failures) >= 2, err
    for failure in failures:
        assert failure["reason"] == "app_load" and "/nonexistent is missing" in failure["error"], failure
    assert f"device {run.edge_id} (" in out, out
