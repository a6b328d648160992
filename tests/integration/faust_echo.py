"""A minimal faust-streaming worker used by the integration tests.

It reads raw values from ``$ECHO_IN``, counts them in a changelog-backed table,
and writes ``<count>:<value>`` to ``$ECHO_OUT``. Run as
``python tests/integration/faust_echo.py worker -l warn``.
"""

from __future__ import annotations

import os

import faust

app = faust.App(
    os.environ["ECHO_APP"],
    broker=f"kafka://{os.environ['ECHO_BOOTSTRAP']}",
    store="memory://",
    topic_partitions=1,
    web_enabled=False,
    broker_commit_every=1,
)
source = app.topic(os.environ["ECHO_IN"], value_serializer="raw", partitions=1)
sink = app.topic(os.environ["ECHO_OUT"], value_serializer="raw", partitions=1)
counts = app.Table("counts", default=int, partitions=1)


# Concurrency 1: higher values can lose messages (faust-streaming issue #606).
@app.agent(source, concurrency=1)
async def echo(stream: faust.StreamT[bytes]) -> None:
    async for value in stream:
        counts["seen"] += 1
        await sink.send(value=f"{counts['seen']}:".encode() + value)


if __name__ == "__main__":
    app.main()
