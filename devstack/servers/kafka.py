"""Apache Kafka, one KRaft node acting as broker and controller."""

from __future__ import annotations

import base64
import os
from pathlib import Path

from aiokafka import AIOKafkaClient

from devstack import install
from devstack.base import Server


class Kafka(Server):
    name = "kafka"

    @property
    def port(self) -> int:
        return self.cfg.kafka_port

    @property
    def endpoint(self) -> str:
        return self.cfg.kafka_bootstrap

    @property
    def home(self) -> Path:
        return self.cfg.cache_dir / f"kafka-{self.cfg.kafka_version}"

    @property
    def libs(self) -> Path:
        return self.home / "libs"

    def installed(self) -> bool:
        return (self.libs / f"kafka_2.13-{self.cfg.kafka_version}.jar").is_file()

    def install(self) -> None:
        install.java_home(self.name)
        partial = self.home / "libs.partial"
        install.mvn(
            self.name,
            [
                "-f",
                str(install.INFRA_LOCAL / "kafka-pom.xml"),
                f"-Dkafka.version={self.cfg.kafka_version}",
                "dependency:copy-dependencies",
                "-DincludeScope=runtime",
                f"-DoutputDirectory={partial}",
            ],
            self.log_file,
        )
        partial.rename(self.libs)

    def _properties(self) -> str:
        c = self.cfg
        return "\n".join(
            [
                "process.roles=broker,controller",
                "node.id=1",
                f"listeners=PLAINTEXT://127.0.0.1:{c.kafka_port},CONTROLLER://127.0.0.1:{c.kafka_controller_port}",
                f"advertised.listeners=PLAINTEXT://127.0.0.1:{c.kafka_port}",
                "controller.listener.names=CONTROLLER",
                "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
                f"controller.quorum.bootstrap.servers=127.0.0.1:{c.kafka_controller_port}",
                f"log.dirs={self.data_dir / 'log'}",
                "num.partitions=1",
                "offsets.topic.replication.factor=1",
                "offsets.topic.num.partitions=4",
                "transaction.state.log.replication.factor=1",
                "transaction.state.log.min.isr=1",
                "share.coordinator.state.topic.replication.factor=1",
                "share.coordinator.state.topic.min.isr=1",
                # Tests join groups constantly; the default 3 s delay only slows them.
                "group.initial.rebalance.delay.ms=0",
                f"message.max.bytes={c.kafka_message_max_bytes}",
                f"replica.fetch.max.bytes={c.kafka_message_max_bytes}",
                "auto.create.topics.enable=true",
                "log.retention.hours=168",
                "",
            ]
        )

    def prepare(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        props = self.data_dir / "server.properties"
        props.write_text(self._properties())
        if not (self.data_dir / "log" / "meta.properties").exists():
            cluster_id = base64.urlsafe_b64encode(os.urandom(16)).rstrip(b"=").decode()
            self.run_tool(
                [
                    self._java(),
                    *self._jvm_common(),
                    "kafka.tools.StorageTool",
                    "format",
                    "--standalone",
                    "-t",
                    cluster_id,
                    "-c",
                    str(props),
                ],
                "storage format",
            )

    def _java(self) -> str:
        return str(Path(install.java_home(self.name)) / "bin" / "java")

    def _jvm_common(self) -> list[str]:
        log4j = install.INFRA_LOCAL / "kafka-log4j2.properties"
        return ["-cp", f"{self.libs}/*", f"-Dlog4j2.configurationFile={log4j}"]

    def command(self) -> list[str]:
        heap = f"{self.cfg.kafka_heap_mb}m"
        return [
            self._java(),
            f"-Xmx{heap}",
            f"-Xms{heap}",
            "-XX:+UseG1GC",
            "-Djava.awt.headless=true",
            *self._jvm_common(),
            "kafka.Kafka",
            str(self.data_dir / "server.properties"),
        ]

    async def probe(self) -> None:
        client = AIOKafkaClient(bootstrap_servers=self.endpoint, request_timeout_ms=5000)
        try:
            await client.bootstrap()
            metadata = await client.fetch_all_metadata()
            if not metadata.brokers():
                raise ConnectionError("metadata response lists no broker")
        finally:
            await client.close()

    def version(self) -> str:
        return self.cfg.kafka_version
