"""A scaling attacker through the real services is flagged, quarantined by the registry, and audited.

Five enrolled devices train a median job (2NN, every device each round); one of them is a
model-replacement attacker that signs its scaled update like any device. The aggregator
scores each update at round close and, the attacker being flagged in 2 of its last 3
rounds, sends the registry a signed suspend command. The registry suspends the device,
audits it, and publishes the record; the scheduler then stops selecting it (lifting a
quarantine is the registry's integration test).
"""

from __future__ import annotations

import asyncio

from qflare import operator
from qflare.attacks import parse_attack, select_attackers
from qflare.fl import JobSpec
from qflare.protocol.control import AuditEvent
from qflare.protocol.training import RoundComplete
from qflare_cli.demo import KEYS_DIR, Run
from tests.integration.services.harness import audit_events

DEVICES, ROUNDS, SEED = 5, 4, 3


def _job() -> JobSpec:
    return JobSpec.parse(
        {
            "model": "builtin:2nn",
            "strategy": {"name": "median", "num_byzantine": 1},
            "rounds": ROUNDS,
            "fraction": 1.0,
            "min_clients": 3,
            "quorum": 0.8,
            "deadline_s": 300.0,
            "epochs": 1,
            "batch_size": 10,
            "lr": 0.05,
            "seed": SEED,
            "quarantine_k": 2,
            "quarantine_m": 3,
        }
    )


def test_a_scaling_attacker_is_quarantined_and_the_quarantine_is_audited() -> None:
    seen: list[RoundComplete] = []
    run = Run(
        devices=DEVICES,
        processes=2,
        seed=SEED,
        job=_job(),
        as_json=False,
        on_round=seen.append,
        attack=parse_attack("scaling", {"factor": 20.0}),
        attackers=0.2,
    )
    run.execute()
    ids = [f"dev-{run.run_id}-{i:03d}" for i in range(DEVICES)]
    (bad,) = [ids[i] for i in select_attackers(DEVICES, 0.2, SEED)]
    completed = [rc for rc in seen if rc.status == "completed"]
    assert len(completed) == ROUNDS
    # Flagged in 2 of its last 3 rounds: suspended, and then never included again.
    assert all(bad not in rc.included for rc in completed[-1:])
    assert completed[0].metrics["flagged_updates"] >= 1

    def done(events: list[AuditEvent]) -> bool:
        return any(e.event == "device.suspended" and e.subject == bad for e in events)

    events = asyncio.run(audit_events(run.kafka, KEYS_DIR, done, timeout_s=60))
    scored = [e for e in events if e.event == "update.scored"]
    flagged = {(e.subject, e.detail["round"]) for e in scored if e.detail.get("flagged")}
    assert len({r for s, r in flagged if s == bad}) >= 2
    assert not {s for s, _ in flagged} - {bad}, f"honest devices flagged: {flagged}"
    requested = [e for e in events if e.event == "device.quarantine_requested" and e.subject == bad]
    suspended = [e for e in events if e.event == "device.suspended" and e.subject == bad]
    assert len(requested) == 1 and len(suspended) == 1
    print(f"\nquarantine audit records: {requested[0]}\n{suspended[0]}")

    fleet = asyncio.run(operator.read_fleet(run.kafka, KEYS_DIR))
    assert fleet.devices[bad].status == "suspended"
    assert {fleet.devices[d].status for d in ids if d != bad} == {"active"}
