"""Attackers through the real services send what `qflare sim`'s attackers send: one attack code.

A short FedAvg job (2NN, 3 devices, 2 rounds) runs through the real stack with two of the
three devices colluding in IPM: each is an enrolled device signing its crafted update,
and each recomputes the other's honest update in its own worker process. The simulator
then replays the rounds with the devices the scheduler included, the same attackers and
the reference trainer: the global model must be the very same.
"""

from __future__ import annotations

import asyncio

import numpy as np
import torch

from qflare.attacks import parse_attack, select_attackers
from qflare.protocol.training import RoundComplete
from qflare.sim import ReferenceTrainer, Simulation, make_fleet
from qflare.sim.attacks import AttackingTrainer, poisoned_fleet
from qflare_cli.demo import KEYS_DIR, Run
from tests.integration.services.aggregator_harness import global_model
from tests.jobs import small_fedavg_job

DEVICES, ROUNDS, SEED, ATTACKERS = 3, 2, 5, 0.67


def test_ipm_attackers_through_the_services_match_the_simulator() -> None:
    torch.set_num_threads(1)
    attack = parse_attack("ipm", {"epsilon": 2.0})
    bad = select_attackers(DEVICES, ATTACKERS, SEED)
    assert len(bad) == 2
    seen: list[RoundComplete] = []
    job = small_fedavg_job(rounds=ROUNDS, seed=SEED)
    run = Run(
        devices=DEVICES,
        processes=2,
        seed=SEED,
        job=job,
        as_json=False,
        on_round=seen.append,
        attack=attack,
        attackers=ATTACKERS,
    )
    run.execute()
    completed = [rc for rc in seen if rc.status == "completed"]
    assert [rc.model_version for rc in completed] == [1, 2]
    final = asyncio.run(global_model(run.kafka, KEYS_DIR, run.job_id, completed[-1].model_version))
    services = [np.asarray(t.array, dtype=np.float32) for t in final.tensors]

    fleet = poisoned_fleet(make_fleet("mnist", "iid", DEVICES, SEED), attack, bad)
    prefix = f"dev-{run.run_id}-"
    chosen = {rc.round: [fleet.ids[int(d.removeprefix(prefix))] for d in rc.included] for rc in completed}
    assert all(len(devices) == DEVICES for devices in chosen.values())  # colluders: the same in both
    trainer = AttackingTrainer(ReferenceTrainer(fleet), attack, frozenset(bad), SEED)
    sim = Simulation(run.job, fleet.ids, trainer, selection=chosen.__getitem__)
    for rc in completed:
        sim.round(rc.round)
    diff = max(
        float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max())
        for a, b in zip(services, sim.weights, strict=True)
    )
    print(f"\nmax |services - sim| under IPM = {diff:.3g}")
    assert diff <= 1e-5
