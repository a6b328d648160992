"""faust-streaming works against the stack's Kafka: agent, table, group commit."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

from aiokafka import TopicPartition
from aiokafka.admin import NewTopic

from devstack.settings import StackSettings
from qflare.kafka import KafkaSettings, make_admin, make_consumer, make_producer

WORKER = Path(__file__).with_name("faust_echo.py")


async def test_faust_agent_consumes_and_commits(stack: StackSettings, unique: str, tmp_path: Path) -> None:
    app_id, src, out = f"echo-{unique}", f"echo.in.{unique}", f"echo.out.{unique}"
    kafka = KafkaSettings(bootstrap=stack.kafka_bootstrap)
    admin = make_admin(kafka)
    await admin.start()
    await admin.create_topics([NewTopic(src, 1, 1), NewTopic(out, 1, 1)])
    env = {
        **os.environ,
        "ECHO_APP": app_id,
        "ECHO_BOOTSTRAP": stack.kafka_bootstrap,
        "ECHO_IN": src,
        "ECHO_OUT": out,
        # The worker runs in its own folder, so it finds the stack's credentials by absolute path.
        "QFLARE_RUNTIME_DIR": str(stack.runtime_dir.resolve()),
    }
    log = open(tmp_path / "worker.log", "wb")  # noqa: SIM115 - closed in finally
    worker = await asyncio.create_subprocess_exec(
        sys.executable, str(WORKER), "worker", "-l", "warn", env=env, cwd=tmp_path, stdout=log, stderr=log
    )
    producer = make_producer(kafka)
    consumer = make_consumer(kafka, out, group_id=None)
    await producer.start()
    await consumer.start()
    try:
        for value in (b"a", b"b", b"c"):
            await producer.send_and_wait(src, value)
        got = [(await asyncio.wait_for(consumer.getone(), timeout=90)).value for _ in range(3)]
        assert got == [b"1:a", b"2:b", b"3:c"]
        worker.send_signal(signal.SIGTERM)
        await asyncio.wait_for(worker.wait(), timeout=60)
        offsets = await admin.list_consumer_group_offsets(app_id)
        assert offsets[TopicPartition(src, 0)].offset == 3
    finally:
        if worker.returncode is None:
            worker.kill()
            await worker.wait()
        log.close()
        await producer.stop()
        await consumer.stop()
        await admin.close()
