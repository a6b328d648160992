"""Ten thousand hostile records on every consumed topic while a real job trains: nothing restarts.

The same small job runs twice against the local stack, clean and then under
attack (see ``tests.hostile``). Under attack every service must keep running,
the job must end with the very model of the clean run, and every record a
service must refuse must be counted as a rejection with a typed reason.
"""

from __future__ import annotations

import pytest

from tests.hostile.attack import AttackConfig
from tests.hostile.kinds import KINDS
from tests.hostile.report import markdown, untyped
from tests.hostile.run import run_once
from tests.jobs import small_fedavg_job

pytestmark = pytest.mark.long

ROUNDS, DEVICES, SEED = 3, 4, 3


def test_a_job_trains_unchanged_through_ten_thousand_hostile_records() -> None:
    job = small_fedavg_job(rounds=ROUNDS, seed=SEED)
    common = {"devices": DEVICES, "seed": SEED, "job": job, "timeout_s": 900.0}
    clean = run_once("clean", attack=None, drain_s=0.0, **common)  # type: ignore[arg-type]
    assert clean.error is None and clean.completed_rounds == ROUNDS

    attack = AttackConfig(total=10_500, rate=250.0, seed=SEED)
    attacked = run_once("attacked", attack=attack, drain_s=180.0, **common)  # type: ignore[arg-type]
    print(markdown(clean, attacked))

    # The attack covered every consumed topic with every kind it has.
    assert sum(attacked.sent.values()) >= 10_000
    assert {role for role, _ in attacked.sent} == {t.role for t in attacked.targets}
    assert {kind for _, kind in attacked.sent} == set(KINDS)
    # Nothing stopped: no service or device worker died, and the job finished.
    assert sum(attacked.restarts.values()) == 0, attacked.supervisor_lines
    assert attacked.error is None and attacked.completed_rounds == ROUNDS
    # Nothing hostile changed the job: every round evaluates exactly as in the clean run.
    assert attacked.trajectory == clean.trajectory
    assert attacked.final_accuracy == clean.final_accuracy
    # Every record a service must refuse was counted, each under a typed reason.
    assert attacked.shortfalls() == []
    assert untyped(attacked.rejections) == []
