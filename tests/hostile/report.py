"""Counting what the services did with the hostile records, and the markdown tables of a run pair."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

from qflare.reasons import Reason
from tests.hostile.kinds import KINDS
from tests.hostile.targets import Target, metric_label

#: (service, topic label, reason) -> rejections counted.
Rejections = dict[tuple[str, str, str], float]
_REJECTED = "qflare_rejected_messages"


def scrape(port: int, timeout_s: float = 3.0) -> Rejections | None:
    """The rejection counters one service exports on 127.0.0.1, or None when it does not answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout_s) as resp:
            text = resp.read().decode()
    except (urllib.error.URLError, OSError):
        return None
    out: Rejections = {}
    for family in text_string_to_metric_families(text):
        if family.name != _REJECTED:
            continue
        for sample in family.samples:
            if sample.name.endswith("_total") and sample.value:
                labels = sample.labels
                out[(labels["service"], labels["topic"], labels["reason"])] = sample.value
    return out


@dataclass
class Scraper:
    """Keeps the latest answer of each service, so a service that later dies still has its counts."""

    ports: dict[str, int]
    latest: dict[str, Rejections] = field(default_factory=dict)

    def poll(self) -> None:
        for service, port in self.ports.items():
            found = scrape(port)
            if found is not None:
                self.latest[service] = found

    def rejections(self) -> Rejections:
        out: Rejections = {}
        for found in self.latest.values():
            out.update(found)
        return out


def counted(rejections: Rejections, service: str, label: str) -> float:
    """Rejections ``service`` counted under the ``topic`` label ``label``, over every reason."""
    return sum(v for (s, t, _), v in rejections.items() if s == service and t == label)


def untyped(rejections: Rejections) -> list[str]:
    """Reasons that are not members of ``Reason`` (every rejection must carry a typed reason)."""
    known = {r.value for r in Reason}
    return sorted({reason for (_, _, reason) in rejections if reason not in known})


@dataclass
class Outcome:
    """One run of the job: its rounds, what stopped it (if anything), restarts, and the attack's counts."""

    label: str
    completed_rounds: int = 0
    final_accuracy: float | None = None
    #: Every completed round's evaluation metrics (test loss, accuracy, examples), in order. The
    #: two runs' job ids differ (the aggregator's database outlives a run), and the model bytes
    #: carry the job id, so the runs are compared on what the model does: the same evaluation,
    #: round by round, to the last digit.
    trajectory: list[tuple[int, dict[str, float]]] = field(default_factory=list)
    error: str | None = None
    restarts: Counter[str] = field(default_factory=Counter)
    supervisor_lines: list[str] = field(default_factory=list)
    seconds: float = 0.0
    sent: Counter[tuple[str, str]] = field(default_factory=Counter)
    failed: Counter[tuple[str, str]] = field(default_factory=Counter)
    expected: Counter[tuple[str, str]] = field(default_factory=Counter)
    rejections: Rejections = field(default_factory=dict)
    targets: list[Target] = field(default_factory=list)

    def judged(self) -> list[tuple[str, str, int, float]]:
        """(service, topic label, records it must refuse, rejections it counted), by label.

        Topics a service counts under one label (the scheduler's control stream) are summed.
        """
        want: Counter[tuple[str, str]] = Counter()
        roles: dict[tuple[str, str], list[str]] = {}
        for (service, role), n in self.expected.items():
            target = next(t for t in self.targets if t.role == role)
            key = (service, metric_label(service, target))
            want[key] += n
            roles.setdefault(key, []).append(role)
        return [
            (service, "+".join(sorted(roles[(service, label)])), n, counted(self.rejections, service, label))
            for (service, label), n in sorted(want.items())
        ]

    def shortfalls(self) -> list[str]:
        """Each (service, topic) that counted fewer rejections than hostile records it must refuse."""
        return [f"{s} on {roles}: {got:.0f} of {n} counted" for s, roles, n, got in self.judged() if got < n]


def markdown(clean: Outcome, attacked: Outcome) -> str:
    return "\n\n".join([_summary(clean, attacked), _sent(attacked), _judged(attacked), _reasons(attacked)])


def _acc(o: Outcome) -> str:
    return "-" if o.final_accuracy is None else f"{o.final_accuracy:.4f}"


def _summary(clean: Outcome, attacked: Outcome) -> str:
    same = bool(clean.trajectory) and clean.trajectory == attacked.trajectory
    rows = [
        "| | clean run | under attack |",
        "|---|---|---|",
        f"| rounds completed | {clean.completed_rounds} | {attacked.completed_rounds} |",
        f"| final test accuracy | {_acc(clean)} | {_acc(attacked)} |",
        f"| every round's metrics equal | | {'yes' if same else 'NO'} |",
        f"| service restarts and stops | {_restarts(clean)} | {_restarts(attacked)} |",
        f"| stopped by | {clean.error or '-'} | {attacked.error or '-'} |",
        f"| wall time | {clean.seconds:.0f} s | {attacked.seconds:.0f} s |",
        f"| hostile records sent | | {sum(attacked.sent.values())} "
        f"({sum(attacked.failed.values())} refused by the broker) |",
    ]
    return "\n".join(rows)


def _restarts(o: Outcome) -> str:
    total = sum(o.restarts.values())
    if not total:
        return "0"
    return f"{total} (" + ", ".join(f"{s} {n}" for s, n in sorted(o.restarts.items())) + ")"


def _sent(o: Outcome) -> str:
    kinds = [k for k in KINDS if any(kind == k for _, kind in o.sent)]
    head = "| topic | " + " | ".join(kinds) + " | total |"
    rows = [head, "|---" * (len(kinds) + 2) + "|"]
    for t in o.targets:
        cells = [o.sent.get((t.role, k), 0) for k in kinds]
        rows.append(f"| {t.role} | " + " | ".join(str(c) for c in cells) + f" | {sum(cells)} |")
    totals = [sum(n for (_, k), n in o.sent.items() if k == kind) for kind in kinds]
    rows.append("| **all** | " + " | ".join(str(c) for c in totals) + f" | {sum(totals)} |")
    return "Records sent, by topic and kind\n\n" + "\n".join(rows)


def _judged(o: Outcome) -> str:
    rows = ["| service | topic | must refuse | counted | |", "|---|---|---|---|---|"]
    for service, role, want, got in o.judged():
        rows.append(f"| {service} | {role} | {want} | {got:.0f} | {'ok' if got >= want else 'SHORT'} |")
    return "Rejections counted against the hostile records each service must refuse\n\n" + "\n".join(rows)


def _reasons(o: Outcome) -> str:
    rows = ["| service | topic | reason | count |", "|---|---|---|---|"]
    for (service, topic, reason), n in sorted(o.rejections.items()):
        rows.append(f"| {service} | {topic} | {reason} | {n:.0f} |")
    return "Rejections by reason (the services' /metrics)\n\n" + "\n".join(rows)
