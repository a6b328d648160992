"""Every reason a QFLARE error or rejection can give: one vocabulary for metrics, audit and docs.

A reason is the short label a refusal carries: the ``reason`` label of
``qflare_rejected_messages_total``, the ``reason`` of an audit event, the
``rejected_<reason>`` count of a round. It is a ``StrEnum``, so it travels and
compares as the plain string it always was, and a typo is a type error
instead of a new label nobody graphs. ``docs/rejections.md`` is generated from
this list (``make docs``) and a unit test keeps the two equal.

Each member carries who gives it (``source``) and a one-line ``meaning``.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Self

#: The ``source`` of a reason any receiver's protocol decoder gives.
DECODER = "decoder"


class Reason(StrEnum):
    source: str
    meaning: str

    def __new__(cls, value: str, source: str, meaning: str) -> Self:
        member = str.__new__(cls, value)
        member._value_ = value
        member.source = source
        member.meaning = meaning
        return member

    # -- the envelope and body, checked by every receiver's decoder --------------
    PROTOCOL = "protocol", DECODER, "The message was refused for a protocol reason with no finer label."
    LIMIT = "limit", DECODER, "A size, length, depth or count limit was exceeded (checked before allocating)."
    SCHEMA = (
        "schema",
        "decoder, aggregator, registry, audit",
        "A field is missing, has the wrong type or value, or is not expected here (e.g. an empty record).",
    )
    TENSOR = "tensor", DECODER, "A tensor's dtype, shape and byte length do not agree."
    NON_FINITE = "non_finite", "decoder, device", "A tensor or metric holds NaN or infinity."
    VERSION = "version", DECODER, "The envelope declares a protocol version this receiver does not speak."
    SIGNATURE = "signature", DECODER, "The signature does not verify, or its algorithm is not supported."
    DIGEST = "digest", DECODER, "The body does not hash to the signed body_digest: it was altered."
    KEY_MISMATCH = (
        "key_mismatch",
        "decoder, registry",
        "The signing key belongs to someone other than the sender, or the device is pinned to another key.",
    )
    UNKNOWN_KEY = "unknown_key", DECODER, "No public key is known (yet) for the message's key_id."
    STALE = "stale", DECODER, "ts_ms lies outside the accepted freshness window (too old or in the future)."
    REPLAY = (
        "replay",
        "decoder, aggregator",
        "This exact message (sender, id) was already accepted or included.",
    )
    CHUNK = "chunk", DECODER, "Chunks of one stream disagree with each other or with the reassembled body."
    CHUNK_TIMEOUT = (
        "chunk_timeout",
        DECODER,
        "A chunk stream was evicted before all its chunks arrived (idle too long, or past its lifetime).",
    )
    QUOTA = (
        "quota",
        "decoder, aggregator",
        "The sender's share of the chunk-reassembly memory is used up by its other open streams.",
    )

    # -- the poison-record policy (every consumer) ------------------------------------
    UNHANDLED = (
        "unhandled",
        "every consumer",
        "Handling the record raised an error with no finer label; the record was skipped, not retried.",
    )
    STORE_REFUSED = (
        "store_refused",
        "every consumer with a store",
        "The database refused for good to store what the record holds; the record was skipped.",
    )

    # -- who may send what ---------------------------------------------------------
    SENDER_MISMATCH = (
        "sender_mismatch",
        "aggregator, registry",
        "The body names another device than the one that signed it.",
    )
    SENDER_NOT_ALLOWED = (
        "sender_not_allowed",
        "aggregator, registry, scheduler, audit, device",
        "The sender may not send this message type or command (see `qflare.authority.ALLOWED`).",
    )
    COMMAND_EXPIRED = (
        "command_expired",
        "aggregator, registry, scheduler",
        "An operator or job command is older than the receiver's `command_max_age_s`.",
    )
    COMMAND_REPLAY = (
        "command_replay",
        "aggregator, registry, scheduler",
        "A command with this (sender, id) was already applied, before a restart or at another offset.",
    )
    STATE_INVALID = (
        "state_invalid",
        "scheduler",
        "A row of the scheduler's state table is not a record it signed for that key: dropped on recovery.",
    )
    REVOKED = (
        "revoked",
        "aggregator, registry",
        "Signed with the key of a device that is revoked or deregistered.",
    )
    UNKNOWN_DEVICE = "unknown_device", "registry", "A command names a device the registry does not know."
    NOT_SUSPENDED = (
        "not_suspended",
        "registry",
        "A reinstate command names a device that is not suspended (only a suspension can be lifted).",
    )
    RESERVED_EVENT = (
        "reserved_event",
        "audit",
        "An audit event uses a name reserved for the audit chain's own entries (audit.*).",
    )
    CHAIN_MISMATCH = (
        "chain_mismatch",
        "audit",
        "The audit chain in PostgreSQL is shorter than, or differs from, its latest signed head.",
    )

    # -- enrolment (registry) ----------------------------------------------------------
    TOKEN_MISSING = "token_missing", "registry", "A new device tried to enrol without an enrolment token."
    TOKEN_UNKNOWN = "token_unknown", "registry", "The enrolment token is not one the operator issued."
    TOKEN_REUSED = "token_reused", "registry", "The enrolment token was already used by another enrolment."
    TOKEN_EXPIRED = "token_expired", "registry", "The enrolment token has expired."
    TOKEN_MAC = (
        "token_mac",
        "registry",
        "The enrolment's token MAC does not match its deployment, device id and key id.",
    )
    ROTATION_UNPROVEN = (
        "rotation_unproven",
        "registry",
        "A key rotation carries no valid proof by the device's current key, and the operator's "
        "rotate command named no key id or another one.",
    )

    # -- state topics (every consumer of device records) -------------------------------
    TOMBSTONE = (
        "tombstone",
        "aggregator, audit, scheduler, cli, edge",
        "A null-value record on a state topic; it changes nothing, as only a signed deletion removes state.",
    )
    STALE_REVISION = (
        "stale_revision",
        "aggregator, audit, scheduler, cli, edge",
        "A device record whose revision is not above the highest already applied for that device.",
    )

    # -- jobs and rounds (aggregator control topics) ----------------------------------
    UNKNOWN_JOB = "unknown_job", "aggregator", "A command or round task names a job that was never started."
    JOB_STOPPED = "job_stopped", "aggregator", "A command for a job that is already stopped."
    JOB_CONFLICT = "job_conflict", "aggregator", "A start command reuses a job id with another config."
    JOB_NOT_RUNNING = "job_not_running", "aggregator", "A round task for a paused or stopped job."
    STRATEGY_MISMATCH = "strategy_mismatch", "aggregator", "A round task names another strategy than its job."
    ROUND_OPEN = "round_open", "aggregator", "A round task while another round of the job is still open."
    STALE_FENCING_TOKEN = (
        "stale_fencing_token",
        "aggregator",
        "A round task from a deposed scheduler leader (its fencing token is below the job's highest).",
    )
    UNKNOWN_MODEL = (
        "unknown_model",
        "aggregator",
        "A start command names a model this aggregator does not have.",
    )
    MODEL_CONFLICT = (
        "model_conflict",
        "aggregator",
        "An imported model reuses a name and version the model store holds with other content.",
    )
    NO_EVALUATOR = (
        "no_evaluator",
        "aggregator",
        "A start command asks for central evaluation of a model with no evaluation entry point here.",
    )

    # -- model updates (aggregator) -------------------------------------------------
    WRONG_ROUND = (
        "wrong_round",
        "aggregator",
        "The round is not open (closed, unknown, or not after the last one), or envelope and body disagree.",
    )
    UNSELECTED = "unselected", "aggregator", "The device was not selected for the round it answers."
    WRONG_VERSION = (
        "wrong_version",
        "aggregator",
        "The update or round task is based on another model version than the round's (or the job's latest).",
    )
    DUPLICATE = "duplicate", "aggregator", "The device already has another update included in this round."
    NUM_EXAMPLES = "num_examples", "aggregator", "num_examples is outside [1, the fixed-point capacity]."
    SHAPE = (
        "shape",
        "aggregator, device",
        "The tensors' names, order, groups, dtypes or shapes differ from what the job's strategy expects.",
    )
    OUT_OF_RANGE = (
        "out_of_range",
        "aggregator",
        "A value's magnitude exceeds the strategy's range, or the round's total weight would overflow.",
    )
    OVER_CLAIM = (
        "over_claim",
        "aggregator",
        "num_examples is above the dataset size the device declared at enrolment (the approved size). "
        "The refusal is also the device's answer to the round and spends one of a robust rule's f.",
    )
    UNDECLARED = (
        "undeclared",
        "aggregator",
        "The job weights by declared dataset size and the device declared none at enrolment.",
    )
    SUSPENDED = (
        "suspended",
        "aggregator, registry",
        "The device is suspended (quarantined after repeated anomaly flags) until an operator reinstates it. "
        "In a round it was selected for, the refusal is its answer and spends one of a robust rule's f.",
    )
    DECLARED_EXAMPLES = (
        "declared_examples",
        "registry",
        "An enrolment's declared dataset size (label qflare.num_examples) is malformed or above the size "
        "the operator approved for its token (qflare.max_examples) or the registry's limit.",
    )
    METRIC = (
        "metric",
        "aggregator",
        "A metric the job's strategy requires (e.g. local_steps) is missing, out of its range or not whole.",
    )

    # -- errors that are not about a received message ---------------------------------
    ERROR = "error", "library", "An error with no finer label (the root's default; not raised on purpose)."
    CONFIG = "config", "library", "A setting is missing or invalid; the message names the QFLARE_* key."
    ENROLLMENT_REFUSED = (
        "enrollment_refused",
        "edge",
        "The registry refused this device's enrolment; the error carries the registry's own reason.",
    )
    ENROLLMENT_TIMEOUT = "enrollment_timeout", "edge", "No enrolment result arrived in time."
    STACK = "stack", "devstack", "A local infrastructure server could not be installed, started or stopped."
    TOPIC_SETUP = (
        "topic_setup",
        "library",
        "A Kafka topic could not be created with its declared configuration.",
    )
    CRYPTO = "crypto", "library", "A cryptographic operation failed for a reason other than a bad signature."
    BACKEND_UNAVAILABLE = (
        "backend_unavailable",
        "library",
        "A crypto backend is not installed, or cannot do what was asked of it.",
    )
    KEY_FORMAT = "key_format", "library", "Key material has the wrong algorithm, length or form."
    KEY_FILE = "key_file", "library", "A key file is unreadable, corrupt or too permissive."
    KEY_EXISTS = "key_exists", "library", "Refused to overwrite an existing key file."
    DATASET = (
        "dataset",
        "library",
        "A dataset file is missing or malformed, or a request to load one is invalid.",
    )
    AGGREGATION = "aggregation", "library", "Aggregation state is corrupt or inconsistent."
    MODEL_FORMAT = (
        "model_format",
        "library",
        "A model file is not safetensors, a state_dict or ONNX, holds a tensor that is not float32, "
        "or is over the size limit.",
    )
    INVALID_UPDATE = "invalid_update", "library", "An update cannot be aggregated (wrong tensors or values)."
    UNCONFIRMED = "unconfirmed", "cli", "The registry did not confirm an operator command in time."
    HANDLER_MISSING = "handler_missing", "device", "No @app.train or @app.evaluate handler is registered."
    APP_LOAD = (
        "app_load",
        "device",
        "The device app named by --app could not be loaded: no such module or attribute, not a DeviceApp, "
        "or its module raised on import.",
    )


def table() -> str:
    """``docs/rejections.md``: every reason with who gives it and what it means."""
    lines = [
        "# Rejection and error reasons",
        "",
        "Generated from `qflare.reasons.Reason` by `make docs`; a unit test fails when this page",
        "and the enum differ.",
        "",
        "A reason is the `reason` label of `qflare_rejected_messages_total`, the `reason` of an",
        "`update.rejected` or `message.rejected` audit event, and the `rejected_<reason>` count in a",
        "round's results. The field a rejection is about is in the audit event's `detail.field`.",
        "",
        "| reason | given by | meaning |",
        "|---|---|---|",
    ]
    lines += [f"| `{r.value}` | {r.source} | {r.meaning} |" for r in Reason]
    return "\n".join(lines) + "\n"
