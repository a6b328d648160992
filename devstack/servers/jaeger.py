"""Jaeger v2 (an OpenTelemetry collector distribution) with in-memory storage.

Built once from its Go module through the module proxy (``infra/local/jaeger``)
into the cache dir. Jaeger tags each v2.x release also as v1.(x+63), because
its module path has no ``/v2`` suffix and Go only accepts the v1 tag.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
import urllib.request
from pathlib import Path

from devstack import install
from devstack.base import Server

#: The Go module that pins the Jaeger release (its go.mod holds the matching v1.x tag).
MODULE_DIR = Path(__file__).resolve().parents[2] / "infra" / "local" / "jaeger"
#: A cold build (module download and compile) takes minutes; never let it hang `stack up`.
BUILD_TIMEOUT_S = 1200


class Jaeger(Server):
    name = "jaeger"

    @property
    def port(self) -> int:
        return self.cfg.jaeger_port

    @property
    def endpoint(self) -> str:
        return self.cfg.jaeger_url

    @property
    def binary(self) -> Path:
        return self.cfg.cache_dir / f"jaeger-{self.cfg.jaeger_version}" / "jaeger"

    def installed(self) -> bool:
        return self.binary.is_file()

    def install(self) -> None:
        go = install.require_tool(self.name, "go", "golang (Go >= 1.24)")
        self.binary.parent.mkdir(parents=True, exist_ok=True)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        partial = self.binary.with_suffix(".partial")
        began = time.monotonic()
        env = {**os.environ, "PATH": f"{Path(go).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
        cmd = ["bash", str(MODULE_DIR / "build.sh"), str(partial)]
        with open(self.log_file, "a") as log:
            log.write(f"\n=== building jaeger {self.cfg.jaeger_version}: {' '.join(cmd)}\n")
            log.flush()
            try:
                result = subprocess.run(
                    cmd, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=BUILD_TIMEOUT_S
                )
            except subprocess.TimeoutExpired as exc:
                raise self.fail(f"go build did not finish within {BUILD_TIMEOUT_S}s") from exc
            log.write(f"=== go build exited {result.returncode} after {time.monotonic() - began:.0f}s\n")
        if result.returncode != 0:
            raise self.fail(f"go build of jaeger failed with exit code {result.returncode}")
        partial.replace(self.binary)  # atomic: a half-written binary is never "installed"

    @property
    def config_file(self) -> Path:
        return self.data_dir / "config.yaml"

    def prepare(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        c = self.cfg
        config = {
            "service": {
                "extensions": ["jaeger_storage", "jaeger_query"],
                "pipelines": {
                    "traces": {
                        "receivers": ["otlp"],
                        "processors": ["batch"],
                        "exporters": ["jaeger_storage_exporter"],
                    }
                },
                # No internal metrics endpoint: it would need one more port.
                "telemetry": {"metrics": {"level": "none"}, "logs": {"level": "info"}},
            },
            "extensions": {
                "jaeger_query": {
                    "storage": {"traces": "memstore"},
                    "http": {"endpoint": f"127.0.0.1:{c.jaeger_port}"},
                    "grpc": {"endpoint": f"127.0.0.1:{c.jaeger_grpc_port}"},
                },
                "jaeger_storage": {"backends": {"memstore": {"memory": {"max_traces": c.jaeger_max_traces}}}},
            },
            "receivers": {
                "otlp": {
                    "protocols": {
                        "grpc": {"endpoint": f"127.0.0.1:{c.jaeger_otlp_grpc_port}"},
                        "http": {"endpoint": f"127.0.0.1:{c.jaeger_otlp_http_port}"},
                    }
                }
            },
            "processors": {"batch": {}},
            "exporters": {"jaeger_storage_exporter": {"trace_storage": "memstore"}},
        }
        # JSON is YAML: no YAML writer needed, and no quoting surprises.
        self.config_file.write_text(json.dumps(config, indent=2) + "\n")

    def command(self) -> list[str]:
        return [str(self.binary), "--config", str(self.config_file)]

    def _services(self) -> list[str]:
        with urllib.request.urlopen(f"{self.endpoint}/api/services", timeout=5) as resp:
            data = json.load(resp).get("data") or []
        return [str(s) for s in data]

    async def probe(self) -> None:
        await asyncio.to_thread(self._services)

    def version(self) -> str:
        return self.cfg.jaeger_version
