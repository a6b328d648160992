"""A minimal faust-streaming worker used by the integration tests.

It reads raw values from ``$ECHO_IN``, counts them in a changelog-backed table,
and writes ``<count>:<value>`` to ``$ECHO_OUT``. Run as
``python tests/integration/faust_echo.py worker -l warn``.
"""

from __future__ import annotations

import os

import faust

from qflare.kafka import KafkaSettings

# The stack's own credentials, as every client of qflare.kafka finds them by default. (This
# script's folder shadows the top-level ``services`` package, so the scheduler's helper is not
# importable here.)
kafka = KafkaSettings(bootstrap=os.environ["ECHO_BOOTSTRAP"])
secret = kafka.password
credentials = (
    None
    if kafka.security_protocol == "PLAINTEXT"
    else faust.SASLCredentials(
        username=kafka.username,
        password=None if secret is None else secret.get_secret_value(),
        ssl_context=kafka.ssl_context(),
        mechanism=kafka.sasl_mechanism,
    )
)
app = faust.App(
    os.environ["ECHO_APP"],
    broker=f"kafka://{os.environ['ECHO_BOOTSTRAP']}",
    broker_credentials=credentials,
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
