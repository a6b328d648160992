"""``python -m services.scheduler``: wait for the leadership lease, then run the faust worker."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading

import faust
import redis.asyncio as aioredis
import structlog

from qflare import metrics
from qflare.identity import load_identity
from qflare.kafka import KafkaSettings, prepare_topics
from qflare.telemetry import configure_logging
from services.scheduler.config import SchedulerSettings
from services.scheduler.gaps import audit_gaps
from services.scheduler.leader import Lease
from services.scheduler.service import Scheduler, app_id

log = structlog.get_logger("qflare.scheduler")


def _keep_lease(cfg: SchedulerSettings, key: str, token: str, fence: int) -> None:
    async def renew_forever() -> None:
        client = aioredis.Redis.from_url(cfg.redis_url)
        lease = Lease(client, key, cfg.lease_s)
        lease.token = token
        while await lease.renew():
            await asyncio.sleep(cfg.lease_s / 3)

    asyncio.run(renew_forever())
    log.error("leadership lost; exiting so the new leader alone schedules", fence=fence)
    logging.shutdown()
    os._exit(3)


def main() -> None:
    configure_logging("scheduler")
    cfg = SchedulerSettings()
    kafka = KafkaSettings()
    identity = load_identity(cfg.identity, cfg.keys_dir)
    lease_key = f"qflare:{kafka.topic_prefix}scheduler:leader"

    # A standby blocks here, outside the consumer group, until the leader's lease lapses.
    lease_probe = Lease(aioredis.Redis.from_url(cfg.redis_url), lease_key, cfg.lease_s)
    fence = asyncio.run(lease_probe.acquire())
    token = lease_probe.token
    # Renewal runs in its own thread, started at once: creating topics and the faust app
    # can take longer than the lease on a busy machine, and faust's loop can be busy for
    # a while (joining the group, recovering tables); the lease must not lapse meanwhile.
    threading.Thread(target=_keep_lease, args=(cfg, lease_key, token, fence), daemon=True).start()
    # faust tables must be co-partitioned with their source topics: create them with
    # the partition counts of qflare.protocol.topics before faust can auto-create any.
    asyncio.run(prepare_topics(kafka))
    log.info("leadership acquired", fence=fence)
    # Before faust joins the group: it would reset a position that left the log without a word.
    asyncio.run(audit_gaps(kafka, app_id(cfg, kafka), identity))
    metrics.serve_metrics(cfg.metrics_port)
    scheduler = Scheduler(cfg, kafka, identity, fence)

    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    worker = faust.Worker(scheduler.app, loglevel="WARNING", quiet=True)
    sys.exit(worker.execute_from_commandline())


if __name__ == "__main__":
    main()
