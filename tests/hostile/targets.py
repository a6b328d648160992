"""Which topics each process consumes, and under which ``topic`` label it counts rejections.

The suite attacks every topic in this table. ``COUNTERS`` are the services that
count rejections in ``qflare_rejected_messages_total``; the device runtime (edge)
and the scheduler's table recovery read topics too, but export no counter, so
what they receive is judged by restarts and by the job's result only.
"""

from __future__ import annotations

from dataclasses import dataclass

from qflare.protocol.topics import Topics
from services.scheduler.config import SchedulerSettings

#: The services that run under the supervisor and export rejection counters.
COUNTERS = ("registry", "scheduler", "aggregator", "audit")
#: The scheduler's faust tables (each has a ``<app id>-<table>-changelog`` topic).
TABLES = ("device-health", "device-status", "round-progress")


@dataclass(frozen=True, slots=True)
class Target:
    """One attacked topic: its name, partitions, whether it is compacted, and who reads it."""

    name: str
    #: The ``Topics`` field (``devices``, ``updates``, ...) or ``changelog:<table>``.
    role: str
    partitions: int
    compacted: bool
    #: Services (of ``COUNTERS``) that consume it live and count its rejections.
    counted_by: frozenset[str]
    #: Other readers: ``edge`` (device runtimes) or ``scheduler-recovery`` (table restore).
    also_read_by: frozenset[str]


_COUNTED: dict[str, frozenset[str]] = {
    "enrollments": frozenset({"registry", "audit"}),
    "enrollment_results": frozenset({"audit"}),
    "heartbeats": frozenset({"registry"}),
    "devices": frozenset({"scheduler", "aggregator", "audit"}),
    "health": frozenset({"scheduler", "audit"}),
    "rounds": frozenset({"aggregator", "audit"}),
    "models": frozenset({"audit"}),
    "updates": frozenset({"aggregator"}),
    "rounds_complete": frozenset({"scheduler", "audit"}),
    "audit": frozenset({"audit"}),
    "jobs": frozenset({"scheduler", "aggregator", "audit"}),
    "registry_control": frozenset({"registry", "audit"}),
}
_EDGE = frozenset({"rounds", "models", "enrollment_results"})


def changelog_topic(table: str, topic_prefix: str) -> str:
    """The name faust gives a scheduler table's changelog for this deployment."""
    app_id = f"{SchedulerSettings().app_id}{topic_prefix}".rstrip(".")
    return f"{app_id}-{table}-changelog"


def targets(t: Topics, topic_prefix: str) -> list[Target]:
    """Every topic any service or device consumes, the scheduler's changelogs included."""
    out = []
    for role, readers in _COUNTED.items():
        spec = getattr(t, role)
        extra = frozenset({"edge"}) if role in _EDGE else frozenset()
        out.append(Target(spec.name, role, spec.partitions, spec.compacted, readers, extra))
    sizes = {"device-health": t.health.partitions, "device-status": t.devices.partitions, "round-progress": 1}
    for table in TABLES:
        out.append(
            Target(
                changelog_topic(table, topic_prefix),
                f"changelog:{table}",
                sizes[table],
                True,
                frozenset(),
                frozenset({"scheduler-recovery"}),
            )
        )
    return out


def metric_label(service: str, target: Target) -> str:
    """The ``topic`` label under which ``service`` counts rejections of ``target``'s records."""
    # The scheduler's one agent reads job commands and round completions as one stream.
    if service == "scheduler" and target.role in ("jobs", "rounds_complete"):
        return "control"
    return target.name
