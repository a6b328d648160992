"""Apache Kafka, one KRaft node acting as broker and controller.

Clients connect over SASL_SSL with SCRAM-SHA-512, against the certificate of
the stack's own CA (``devstack.auth``); the credentials of every principal are
bootstrapped into the metadata log when the storage is formatted, and the ACLs
of the unprefixed deployment (``qflare.kafka_acls``) are granted once healthy.
The controller listener stays on loopback with SASL PLAIN for the broker's own
login: with PLAINTEXT its anonymous principal would have to be a super user.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

from aiokafka import AIOKafkaClient
from aiokafka.helpers import create_ssl_context

from devstack import auth, install
from devstack.base import Server
from qflare import localstack
from qflare.kafka import KafkaSettings, make_admin
from qflare.kafka_acls import grant

_MECHANISM = "SCRAM-SHA-512"


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

    @property
    def secrets(self) -> dict[str, str]:
        return auth.ensure(self.cfg.runtime)["kafka"]

    def _properties(self) -> str:
        c = self.cfg
        pw = self.secrets
        keys = localstack.auth_dir(c.runtime)
        plain = "org.apache.kafka.common.security.plain.PlainLoginModule"
        scram = "org.apache.kafka.common.security.scram.ScramLoginModule"
        return "\n".join(
            [
                "process.roles=broker,controller",
                "node.id=1",
                f"listeners=SASL_SSL://127.0.0.1:{c.kafka_port},CONTROLLER://127.0.0.1:{c.kafka_controller_port}",
                f"advertised.listeners=SASL_SSL://127.0.0.1:{c.kafka_port}",
                "controller.listener.names=CONTROLLER",
                "listener.security.protocol.map=SASL_SSL:SASL_SSL,CONTROLLER:SASL_PLAINTEXT",
                "inter.broker.listener.name=SASL_SSL",
                f"sasl.mechanism.inter.broker.protocol={_MECHANISM}",
                "sasl.mechanism.controller.protocol=PLAIN",
                f"listener.name.sasl_ssl.sasl.enabled.mechanisms={_MECHANISM}",
                f"listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config={scram} required "
                f'username="admin" password="{pw["admin"]}";',
                "listener.name.controller.sasl.enabled.mechanisms=PLAIN",
                f'listener.name.controller.plain.sasl.jaas.config={plain} required username="controller" '
                f'password="{pw["controller"]}" user_controller="{pw["controller"]}";',
                "ssl.keystore.type=PEM",
                f"ssl.keystore.location={keys / 'broker.pem'}",
                "ssl.truststore.type=PEM",
                f"ssl.truststore.location={keys / 'ca.pem'}",
                "ssl.client.auth=none",
                "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer",
                "super.users=User:admin;User:controller",
                "allow.everyone.if.no.acl.found=false",
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
        # The file holds the broker's own passwords.
        props.touch(mode=0o600)
        os.chmod(props, 0o600)
        props.write_text(self._properties())
        marker = self.data_dir / "scram-users"
        formatted = (self.data_dir / "log" / "meta.properties").exists()
        if formatted and not marker.exists():
            raise self.fail(
                f"{self.data_dir / 'log'} was formatted without SCRAM users (a stack from before "
                "authentication); remove that directory to format it afresh"
            )
        if not formatted:
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
                    *self._scram_users(),
                ],
                "storage format",
                redact=tuple(self.secrets.values()),
            )
            marker.write_text("\n".join(u for u in self.secrets if u != "controller") + "\n")

    def _scram_users(self) -> list[str]:
        """``--add-scram`` for every principal: KRaft takes SCRAM credentials at format time."""
        args = []
        for user, secret in self.secrets.items():
            if user != "controller":
                args += ["--add-scram", f"{_MECHANISM}=[name={user},password={secret}]"]
        return args

    def _admin_settings(self) -> KafkaSettings:
        return KafkaSettings(
            bootstrap=self.endpoint,
            security_protocol="SASL_SSL",
            username="admin",
            password=self.secrets["admin"],
            ca_file=localstack.ca_file(self.cfg.runtime),
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
        client = AIOKafkaClient(
            bootstrap_servers=self.endpoint,
            request_timeout_ms=5000,
            security_protocol="SASL_SSL",
            sasl_mechanism=_MECHANISM,
            sasl_plain_username="admin",
            sasl_plain_password=self.secrets["admin"],
            ssl_context=create_ssl_context(cafile=str(localstack.ca_file(self.cfg.runtime))),
        )
        try:
            await client.bootstrap()
            metadata = await client.fetch_all_metadata()
            if not metadata.brokers():
                raise ConnectionError("metadata response lists no broker")
        finally:
            await client.close()

    async def after_start(self) -> None:
        admin = make_admin(self._admin_settings())
        await admin.start()
        try:
            await grant(admin)
        finally:
            await admin.close()

    def version(self) -> str:
        return self.cfg.kafka_version
