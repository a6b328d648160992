"""Devices run user code through the real services: an app loaded by name, and one that cannot load.

Both run the demo's whole path (stack, registry, scheduler, aggregator, audit, a
simulated fleet in worker processes), with the fleet's devices running a
DeviceApp from ``tests/apps`` named as a user names theirs: ``--app module:attr``.
"""

from __future__ import annotations

import asyncio
import json
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


def test_a_fleet_trains_with_a_user_app_loaded_by_name() -> None:
    seen: list[RoundComplete] = []
    job = small_fedavg_job(rounds=2, seed=5)
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


class RunWithBrokenDevice(Run):
    """The demo's run, plus one device (its own fleet) whose app raises on import."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.broken_id = f"brk-{self.run_id}-000"
        self.broken: FleetProcesses | None = None
        self.broken_stats: dict[int, dict[str, Any]] = {}
        self.view: FleetView | None = None

    def execute(self) -> None:
        try:
            super().execute()
        finally:
            if self.broken is not None:
                self.broken.stop()

    async def _main(self, began: float) -> None:
        # Online before the job starts, so the scheduler selects it with the others.
        ident = operator.operator_identity(KEYS_DIR)
        labels = {"demo": self.run_id}
        [token] = await operator.issue_tokens(self.kafka, ident, 1, 3600, labels, keys_dir=KEYS_DIR)
        self.broken = start_fleet(
            [self.broken_id],
            [token],
            kafka=self.kafka,
            processes=1,
            heartbeat_s=1.0,
            state_dir=Path(".qflare/sim") / self.run_id,
            keys_dir=KEYS_DIR,
            seed=self.seed,
            train={"app": "tests.apps.broken:app", "seed": self.seed},
            say=print,
        )
        observer = FleetObserver(
            self.kafka, trusted_ring(KEYS_DIR), device_prefix="brk-", registry_group="qflare-registry"
        )
        await observer.start()
        try:
            assert await wait_until(lambda c: c["online"] >= 1, observer, 180), observer.counts()
        finally:
            await observer.stop()
        await super()._main(began)
        # The rounds are over, the services still run: what did the broken device do meanwhile?
        self.broken_stats = self.broken.poll_stats()
        self.view = await operator.read_fleet(self.kafka, KEYS_DIR)


def test_a_device_whose_app_cannot_load_heartbeats_while_rounds_complete_without_it() -> None:
    seen: list[RoundComplete] = []
    job = small_fedavg_job(rounds=2, seed=6, deadline_s=15.0)
    run = RunWithBrokenDevice(
        devices=2, processes=1, seed=6, job=job, as_json=False, on_round=seen.append, app=SHIFT_APP
    )
    run.execute()
    good = [f"dev-{run.run_id}-{i:03d}" for i in range(2)]
    completed = [rc for rc in seen if rc.status == "completed"]
    assert [rc.round for rc in completed] == [1, 2]
    for rc in completed:
        # Selected with the others, it sent nothing: the round closed at its deadline without it.
        assert rc.metrics["selected"] == 3, rc.metrics
        assert rc.num_updates == 2 and sorted(rc.included) == good, rc
    # It answered each task with a failed reply carrying the import error, and kept heartbeating.
    [stats] = run.broken_stats.values()
    assert stats["failed"] >= 2, stats
    assert "tests.apps.broken" in stats["last_failure"], stats
    assert "/nonexistent is missing" in stats["last_failure"], stats
    assert run.view is not None
    assert run.view.devices[run.broken_id].status == "active"
    assert run.view.health.get(run.broken_id) == "online", run.view.health
