"""/healthz: 503 until the service says it is ready, and it names the process that answers."""

from __future__ import annotations

import os
import urllib.error
import urllib.request

import pytest

from qflare import health, metrics
from qflare.children import free_port, listen


def _code(port: int, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_healthz_says_ready_only_while_the_loop_runs_and_metrics_stay_on_the_same_port() -> None:
    port = free_port()
    assert metrics.serve_metrics(port)
    try:
        for status in ("starting", "ready", "restarting", "stopping"):
            health.set_status("unit", status)
            assert health.probe(port) == health.Health("unit", status, os.getpid())
            assert _code(port, "/healthz") == (200 if status == "ready" else 503)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            assert b"qflare_rejected_messages_total" in resp.read()
    finally:
        health.set_status("unit", "starting")


def test_nothing_listening_is_no_answer() -> None:
    assert health.probe(free_port()) is None


def test_a_taken_port_raises_like_prometheus_does() -> None:
    port = free_port()
    health.start_http_server(port)
    with pytest.raises(OSError):
        health.start_http_server(port)
    assert free_port(port) != port  # and the supervisor then picks another one


def test_a_socket_handed_over_by_the_supervisor_is_served_instead_of_binding(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with listen() as held:  # the supervisor's: the port stays taken while no service runs
        port = held.getsockname()[1]
        # A process of its own would inherit the descriptor; here the server gets a copy to own,
        # so that closing ``held`` cannot free a number the server still accepts on.
        monkeypatch.setenv(health.FD_ENV, str(os.dup(held.fileno())))
    health.start_http_server(1)  # the port asked for is not bound
    health.set_status("unit", "ready")
    try:
        assert health.probe(port) == health.Health("unit", "ready", os.getpid())
    finally:
        health.set_status("unit", "starting")
