"""Each device's flag history per job, and the suspend command it leads to.

The history (``aggregator.flag_history``, migration 012) has one row per scored
update: the round, whether it was flagged and by which rules. It is written in
the transaction that closes the round, with the round's ``update.scored`` events,
so a close retried after a crash writes it once or not at all.

A device flagged in ``quarantine_k`` of its last ``quarantine_m`` scored rounds
(``qflare.fl.anomaly.quarantine_due``) is due for quarantine. The aggregator
cannot suspend a device itself (only the registry writes device records): it
queues a ``RegistryCommand("suspend", device)`` signed with its own identity on
the registry control topic, through its outbox in the same transaction, and an
audit event ``device.quarantine_requested``. The request is made once per job and
device (``aggregator.quarantine_requests``): an operator who reinstates the device
has overruled the job's policy, and the job does not ask again.
"""

from __future__ import annotations

from collections.abc import Mapping

import psycopg
from psycopg.rows import TupleRow

from qflare.clock import now_ms
from qflare.errors import ConfigError
from qflare.fl import JobSpec, Strategy
from qflare.fl.anomaly import quarantine_due
from qflare.protocol import seal
from qflare.protocol.control import RegistryCommand
from qflare.protocol.envelope import new_message_id
from qflare.types import Scalar
from services.aggregator.publisher import Publisher

Conn = psycopg.AsyncConnection[TupleRow]


def check_job(spec: JobSpec, strategy: Strategy) -> None:
    """Refuse quarantine for a streaming strategy: scores need every update of a round, which a
    streaming round never holds (``ConfigError`` naming ``quarantine_k``)."""
    if spec.quarantine_k > 0 and strategy.mode != "buffered":
        raise ConfigError(
            f"quarantine_k {spec.quarantine_k} needs per-update anomaly scores, which only a buffered "
            f"strategy has; {strategy.name} streams (use a robust rule, or quarantine_k 0)",
            field="body.config.quarantine_k",
        )


async def note_round(
    conn: Conn,
    out: Publisher,
    job_id: str,
    round_: int,
    flags: Mapping[str, tuple[str, ...]],
    *,
    k: int,
    m: int,
) -> list[str]:
    """Record each scored device's flags of ``round_`` and queue the quarantine requests now due
    (in the caller's transaction); returns the devices requested."""
    async with conn.cursor() as cur:
        await cur.executemany(
            "INSERT INTO aggregator.flag_history (job_id, device_id, round, flagged, flags) "
            "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (job_id, device_id, round) DO NOTHING",
            [(job_id, d, round_, bool(f), ",".join(f)) for d, f in sorted(flags.items())],
        )
    if k <= 0:
        return []
    requested = []
    # Only a device flagged now can have become due: an unflagged round adds nothing to its count.
    for device in sorted(d for d, f in flags.items() if f):
        cur = await conn.execute(
            "SELECT round, flagged FROM aggregator.flag_history WHERE job_id = %s AND device_id = %s "
            "ORDER BY round DESC LIMIT %s",
            (job_id, device, m),
        )
        window = sorted((int(r), bool(f)) for r, f in await cur.fetchall())  # oldest first
        if not quarantine_due([f for _, f in window], k=k, m=m):
            continue
        rounds = [r for r, f in window if f]
        if await _request(conn, out, job_id, device, round_, rounds, m):
            requested.append(device)
    return requested


async def _request(
    conn: Conn, out: Publisher, job_id: str, device: str, round_: int, rounds: list[int], m: int
) -> bool:
    """Queue one suspend command and its audit event, unless this job asked for ``device`` before."""
    labels = {
        "job_id": job_id,
        "rounds": ",".join(str(r) for r in rounds),
        "reason": f"flagged {len(rounds)} of {m} rounds",
    }
    msg_id = new_message_id(now_ms())
    cur = await conn.execute(
        "INSERT INTO aggregator.quarantine_requests (job_id, device_id, round, rounds, reason, message_id) "
        "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (job_id, device_id) DO NOTHING RETURNING device_id",
        (job_id, device, round_, labels["rounds"], labels["reason"], msg_id),
    )
    if await cur.fetchone() is None:
        return False
    command = RegistryCommand("suspend", device, labels=labels)
    control = out.topics.registry_control
    record = seal(command, out.identity.signer, control.channel, sender=out.identity.name, msg_id=msg_id)
    await out.store.outbox.queue(control.name, command.command.encode(), record)
    detail: dict[str, Scalar] = {**labels, "round": round_, "command_id": msg_id.hex()}
    await out.queue_audit(
        "device.quarantine_requested",
        "warning",
        reason=labels["reason"],
        subject=device,
        ref_id=msg_id,
        detail=detail,
    )
    return True
