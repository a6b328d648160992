"""kill -9 of the aggregator mid-job: the supervisor restarts it and the demo job completes every round."""

from __future__ import annotations

import os
import signal

from qflare.protocol.training import RoundComplete
from qflare_cli.demo import Run
from tests.jobs import small_fedavg_job


def test_the_supervisor_restarts_a_killed_aggregator_and_the_job_completes() -> None:
    seen: list[RoundComplete] = []
    killed: list[int] = []
    pids_after: list[int | None] = []
    job = small_fedavg_job(rounds=3, seed=5)

    def on_round(rc: RoundComplete) -> None:
        seen.append(rc)
        aggregator = run.services.child("aggregator")
        if rc.status == "completed" and rc.round == 1:
            # Round 2 opens now; its updates reach Kafka while the aggregator is down.
            assert aggregator.pid is not None
            os.kill(aggregator.pid, signal.SIGKILL)
            killed.append(aggregator.pid)
        elif killed:
            pids_after.append(aggregator.pid)

    run = Run(devices=4, processes=2, seed=5, job=job, as_json=False, on_round=on_round)
    run.execute()

    completed = [rc for rc in seen if rc.status == "completed"]
    assert [rc.round for rc in completed] == [1, 2, 3]
    assert [rc.model_version for rc in completed] == [1, 2, 3]
    # Only a new aggregator process could have closed rounds 2 and 3.
    assert len(killed) == 1 and pids_after and killed[0] not in pids_after
    assert run.services.restarts("aggregator") == 1
    died = [e for e in run.services.events if e.kind == "died"]
    assert [e.service for e in died] == ["aggregator"]
    assert died[0].text.startswith(f"aggregator killed by SIGKILL (pid {killed[0]}")
    assert not any(e.kind == "gave_up" for e in run.services.events)
    for rc in completed[1:]:
        assert rc.num_updates == rc.metrics["selected"] >= 2
    assert completed[2].metrics["test_accuracy"] > 0.85
