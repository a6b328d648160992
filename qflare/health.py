"""``/healthz`` next to ``/metrics``: whether a service is ready to work, for whoever supervises it.

Each service serves both paths on its metrics port (``qflare.metrics.serve_metrics``).
A supervisor polls ``/healthz`` instead of looking for a log line: the answer is
``200`` only while the service's consumer loop runs, and ``503`` while it starts,
rebuilds its state from its checkpoint after losing a server, or stops. The body
names the service and its pid, so a prober can tell the process it started from
another one that happens to hold the same port.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal, cast
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

Status = Literal["starting", "ready", "restarting", "stopping"]
PATH = "/healthz"
#: A listening socket handed over by a supervisor (``qflare.supervisor``), which holds the port
#: from before the service starts until after it stops, so that nothing else can take it meanwhile.
FD_ENV = "QFLARE_HEALTH_FD"

# One service per process: the state is the process's own, set by its run loop.
_state: dict[str, str] = {"service": "", "status": "starting"}


def set_status(service: str, status: Status) -> None:
    """Record what the service in this process is doing (``ready`` is the only healthy state)."""
    _state.update(service=service, status=status)


def status() -> Status:
    return cast(Status, _state["status"])


@dataclass(frozen=True)
class Health:
    """One answer of ``/healthz``."""

    service: str
    status: Status
    pid: int

    @property
    def ready(self) -> bool:
        return self.status == "ready"


def start_http_server(port: int, addr: str = "127.0.0.1") -> None:
    """Serve ``/healthz`` and Prometheus ``/metrics`` (every other path) on ``addr``:``port``.

    Serves on the supervisor's socket instead when ``QFLARE_HEALTH_FD`` names one.
    Raises ``OSError`` when the port is taken, as ``prometheus_client.start_http_server`` does.
    """
    inherited = os.environ.get(FD_ENV)
    family = socket.getaddrinfo(addr, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]

    class Server(ThreadingWSGIServer):
        address_family = family

        def server_bind(self) -> None:
            if inherited is None:
                super().server_bind()
                return
            self.socket.close()
            self.socket = socket.socket(fileno=int(inherited))
            host, bound = self.socket.getsockname()[:2]
            self.server_address, self.server_name, self.server_port = (host, bound), host, bound
            self.setup_environ()

    httpd = make_server(addr, port, _app(make_wsgi_app()), Server, handler_class=_Quiet)
    threading.Thread(target=httpd.serve_forever, name="qflare-http", daemon=True).start()


def probe(port: int, host: str = "127.0.0.1", timeout_s: float = 2.0) -> Health | None:
    """Ask ``/healthz`` on ``host``:``port``; None when nothing (or nothing QFLARE) answers."""
    try:
        with urllib.request.urlopen(f"http://{host}:{port}{PATH}", timeout=timeout_s) as resp:
            raw = resp.read()
    except urllib.error.HTTPError as exc:  # 503: alive but not ready; the body says why
        raw = exc.read()
    except (OSError, ValueError):
        return None
    try:
        body = json.loads(raw)
        return Health(str(body["service"]), cast(Status, body["status"]), int(body["pid"]))
    except (ValueError, KeyError, TypeError):
        return None


_StartResponse = Callable[[str, list[tuple[str, str]]], Any]
_Wsgi = Callable[[dict[str, Any], _StartResponse], Iterable[bytes]]


def _app(metrics_app: _Wsgi) -> _Wsgi:
    def app(environ: dict[str, Any], start_response: _StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != PATH:
            return metrics_app(environ, start_response)
        body = json.dumps({**_state, "pid": os.getpid()}).encode()
        code = "200 OK" if _state["status"] == "ready" else "503 Service Unavailable"
        start_response(code, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]

    return app


class _Quiet(WSGIRequestHandler):
    """A probe every fraction of a second must not write a line to the service's log."""

    def log_message(self, format: str, *args: Any) -> None:
        pass
