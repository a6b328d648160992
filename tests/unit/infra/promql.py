"""Metric and label names used in PromQL expressions, checked against ``qflare.metrics``."""

from __future__ import annotations

import re

from qflare import metrics

#: Series every Python process exports through prometheus_client's default collectors, and Prometheus's own.
BUILTIN = {
    "up",
    "process_cpu_seconds_total",
    "process_resident_memory_bytes",
    "process_virtual_memory_bytes",
    "process_open_fds",
    "process_start_time_seconds",
}
#: Labels Prometheus adds to every scraped series.
TARGET_LABELS = {"job", "instance"}
_NAME = re.compile(r"\b((?:qflare|process)_[a-z0-9_]+)\b")
_SELECTOR = re.compile(r"\b(qflare_[a-z0-9_]+)\s*\{([^}]*)\}")
_MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")


def defined() -> dict[str, tuple[str, ...]]:
    """Every series name qflare.metrics exposes, to its label names (histograms with their suffixes)."""
    out: dict[str, tuple[str, ...]] = {}
    for name, (kind, labels) in metrics.metric_names().items():
        out[name] = labels
        if kind == "histogram":
            for suffix in ("_bucket", "_sum", "_count"):
                out[name + suffix] = (*labels, "le") if suffix == "_bucket" else labels
    return out


def problems(expr: str) -> list[str]:
    """What in ``expr`` names a metric or a label that does not exist."""
    known = defined()
    found: list[str] = []
    names = set(_NAME.findall(expr))
    if not names and "up" not in re.findall(r"\b[a-z_]+\b", expr):
        found.append("names no metric")
    for name in sorted(names):
        if name not in known and name not in BUILTIN:
            found.append(f"unknown metric {name}")
    for name, matchers in _SELECTOR.findall(expr):
        labels = set(known.get(name, ())) | TARGET_LABELS
        for label in _MATCHER.findall(matchers):
            if label not in labels:
                found.append(f"{name} has no label {label}")
    return found
