"""Elasticsearch 8 from its integ-test zip on Maven Central, single node, non-root."""

from __future__ import annotations

import asyncio
import json
import shutil
import urllib.request
from pathlib import Path

from devstack import install, proc
from devstack.base import Server


class Elasticsearch(Server):
    name = "elasticsearch"
    unprivileged = True

    @property
    def port(self) -> int:
        return self.cfg.elasticsearch_port

    @property
    def endpoint(self) -> str:
        return self.cfg.elasticsearch_url

    @property
    def home(self) -> Path:
        return self.cfg.cache_dir / f"elasticsearch-{self.cfg.elasticsearch_version}"

    def installed(self) -> bool:
        return (self.home / "bin" / "elasticsearch").is_file()

    def install(self) -> None:
        install.java_home(self.name)
        version = self.cfg.elasticsearch_version
        downloads = self.cfg.cache_dir / "downloads"
        archive = downloads / f"elasticsearch-{version}.zip"
        if not archive.is_file():
            install.mvn(
                self.name,
                [
                    "dependency:copy",
                    f"-Dartifact=org.elasticsearch.distribution.integ-test-zip:elasticsearch:{version}:zip",
                    f"-DoutputDirectory={downloads}",
                ],
                self.log_file,
            )
        install.unzip(archive, self.home)

    @property
    def conf_dir(self) -> Path:
        return self.data_dir / "config"

    def prepare(self) -> None:
        proc.ensure_traversable(self.data_dir)
        if not self.conf_dir.exists():
            shutil.copytree(self.home / "config", self.conf_dir)
        c = self.cfg
        (self.conf_dir / "elasticsearch.yml").write_text(
            "\n".join(
                [
                    "cluster.name: qflare-local",
                    "node.name: qflare-es-1",
                    "discovery.type: single-node",
                    "network.host: 127.0.0.1",
                    f"http.port: {c.elasticsearch_port}",
                    f"transport.port: {c.elasticsearch_transport_port}",
                    f"path.data: {self.data_dir / 'data'}",
                    f"path.logs: {self.data_dir / 'logs'}",
                    "xpack.security.enabled: false",
                    # A dev machine's disk may be fuller than production watermarks allow.
                    "cluster.routing.allocation.disk.threshold_enabled: false",
                    # Avoid depending on the host's vm.max_map_count.
                    "node.store.allow_mmap: false",
                    "action.destructive_requires_name: false",
                    "",
                ]
            )
        )
        for sub in ("data", "logs", "tmp"):
            (self.data_dir / sub).mkdir(parents=True, exist_ok=True)
        proc.make_owned_dir(self.data_dir, self.account)

    def env(self) -> dict[str, str]:
        heap = f"{self.cfg.elasticsearch_heap_mb}m"
        return {
            "ES_JAVA_HOME": install.java_home(self.name),
            "ES_PATH_CONF": str(self.conf_dir),
            "ES_JAVA_OPTS": f"-Xms{heap} -Xmx{heap}",
            "ES_TMPDIR": str(self.data_dir / "tmp"),
        }

    def command(self) -> list[str]:
        return [str(self.home / "bin" / "elasticsearch")]

    def _health(self) -> str:
        url = f"{self.endpoint}/_cluster/health?timeout=2s"
        with urllib.request.urlopen(url, timeout=5) as resp:
            status: str = json.load(resp)["status"]
        return status

    async def probe(self) -> None:
        status = await asyncio.to_thread(self._health)
        if status not in ("yellow", "green"):
            raise ConnectionError(f"cluster health is {status}")

    def version(self) -> str:
        return self.cfg.elasticsearch_version
