"""The server-rule options of `qflare demo` and `qflare sim`: weighting, quarantine, publication gate."""

from __future__ import annotations

from typing import Any

WEIGHTING_HELP = (
    "declared: an update weighs the training-set size its device declared at enrolment, capped at "
    "--weight-cap x the round's median (a larger claim is refused); equal: every update weighs 1."
)
WEIGHT_CAP_HELP = "k: no update weighs more than k x the median declared size of the round's devices."
QUARANTINE_K_HELP = (
    "Quarantine: suspend (demo) or stop selecting (sim) a device whose update was flagged in k of its "
    "last --quarantine-m scored rounds (robust strategies only; 0: off)."
)
QUARANTINE_M_HELP = "m: the window of rounds --quarantine-k counts in."
GATE_HELP = (
    "Publication gate: hold (do not promote) a new global model whose central test accuracy falls "
    "more than this fraction below the published one's (0.02 = 2 points; needs central evaluation)."
)
QUORUM_HELP = (
    "Share of a round's selected devices whose updates close it; bounded robust rules (Krum, Bulyan) "
    "check their bound against ceil(quorum x round size)."
)


def rules(
    weighting: str,
    weight_cap: float,
    gate_max_drop: float | None,
    quarantine_k: int,
    quarantine_m: int,
) -> dict[str, Any]:
    """The job's server rules as ``JobSpec`` fields (checked when the job is parsed)."""
    out: dict[str, Any] = {
        "weighting": weighting,
        "weight_cap": weight_cap,
        "quarantine_k": quarantine_k,
        "quarantine_m": quarantine_m,
    }
    if gate_max_drop is not None:
        out["gate_max_drop"] = gate_max_drop
    return out
