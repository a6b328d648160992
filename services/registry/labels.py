"""Which labels a new device's record gets: its own, its token's, and the declared-size rule.

A device declares its dataset size in its enrolment labels (``qflare.num_examples``);
that size is what the aggregator weights its updates by, so it is approved here, once,
at enrolment: it must be a whole number no larger than the size the operator approved
for the token it enrols with (token label ``qflare.max_examples``) and the registry's own
limit. Labels in ``RESERVED_LABELS`` are the operator's: a device declaring one is
refused, and the token's value is the one kept.
"""

from __future__ import annotations

from qflare.errors import Rejected, SchemaError
from qflare.protocol.devices import (
    DECLARED_EXAMPLES_LABEL,
    MAX_EXAMPLES_LABEL,
    RESERVED_LABELS,
    declared_examples,
)
from qflare.reasons import Reason

_DECLARED_FIELD = f"body.labels.{DECLARED_EXAMPLES_LABEL}"


class DeclaredExamplesRejected(Rejected):
    """An enrolment whose labels break the declared-size rule (``declared_examples``)."""

    reason = Reason.DECLARED_EXAMPLES

    def __init__(self, message: str, *, field: str = _DECLARED_FIELD) -> None:
        super().__init__(Reason.DECLARED_EXAMPLES, message, field=field)


def check_device_labels(labels: dict[str, str]) -> None:
    """Refuse a device's own labels that name a reserved label."""
    reserved = sorted(RESERVED_LABELS & set(labels))
    if reserved:
        raise DeclaredExamplesRejected(
            f"label {reserved[0]} is reserved: only the operator sets it, on enrolment tokens",
            field=f"body.labels.{reserved[0]}",
        )


def token_max(token_labels: dict[str, str]) -> int | None:
    """The largest size the token approves (None: the token sets no limit of its own)."""
    try:
        return declared_examples(token_labels, key=MAX_EXAMPLES_LABEL)
    except SchemaError as exc:
        raise DeclaredExamplesRejected(
            f"the enrolment token's {MAX_EXAMPLES_LABEL} is malformed: {exc}",
            field=f"token.labels.{MAX_EXAMPLES_LABEL}",
        ) from exc


def admitted_labels(device: dict[str, str], token: dict[str, str], *, limit: int) -> dict[str, str]:
    """The new device record's labels: the token's, then the device's own over them, and the
    token's reserved ones last; ``DeclaredExamplesRejected`` if the declared size is malformed or
    above the token's ``qflare.max_examples`` or ``limit`` (the registry's setting)."""
    check_device_labels(device)
    merged = {**token, **device, **{k: v for k, v in token.items() if k in RESERVED_LABELS}}
    try:
        declared = declared_examples(merged)
    except SchemaError as exc:
        raise DeclaredExamplesRejected(str(exc)) from exc
    if declared is None:
        return merged  # no declaration: the job's weighting policy decides what that means
    approved = token_max(token)
    if approved is not None and declared > approved:
        raise DeclaredExamplesRejected(
            f"declared {declared} examples; the enrolment token approves at most {approved}"
        )
    if declared > limit:
        raise DeclaredExamplesRejected(
            f"declared {declared} examples; the registry accepts at most {limit} "
            "(QFLARE_REGISTRY_MAX_DECLARED_EXAMPLES)"
        )
    # Normalised, so every reader parses the same text (e.g. no leading zeros).
    merged[DECLARED_EXAMPLES_LABEL] = str(declared)
    return merged
