"""Shared test data: fixed keys, one valid body of every type, raw record builders."""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from qflare.crypto import Signer, signature_backend
from qflare.crypto.base import MLDSA65_SIGNATURE_BYTES, MLKEM768_PUBLIC_KEY_BYTES
from qflare.protocol import Body, Channel, Decoder, KeyRing, Tensor
from qflare.protocol.control import AuditEvent, AuditHead, JobCommand, RegistryCommand
from qflare.protocol.devices import (
    Deregistration,
    Device,
    DeviceHealth,
    Enrollment,
    EnrollmentResult,
    Heartbeat,
)
from qflare.protocol.envelope import PROTOCOL_VERSION, Chunk, Header, encode_envelope, new_message_id
from qflare.protocol.messages import ModelChunk
from qflare.protocol.store import StoredModel
from qflare.protocol.training import GlobalModel, ModelUpdate, RoundComplete, RoundFailure, RoundTask

NOW = 1_750_000_000_000
SENDER = "dev-1"
SIGNER: Signer = signature_backend().signer_from_seed(bytes(range(32)))
OTHER: Signer = signature_backend().signer_from_seed(bytes(range(1, 33)))
#: Where the test records are signed for and read from.
DEPLOYMENT = "test-deploy"
TOPIC = "test.qflare.device.heartbeats"
CHANNEL = Channel(DEPLOYMENT, TOPIC)


def ring() -> KeyRing:
    keys = KeyRing()
    keys.add(SENDER, SIGNER.public_key)
    keys.add("dev-2", OTHER.public_key)
    return keys


def decoder(**options: Any) -> Decoder:
    options.setdefault("clock", lambda: NOW)
    options.setdefault("deployment", DEPLOYMENT)
    return Decoder(ring(), **options)


def small_tensors() -> tuple[Tensor, ...]:
    return (
        Tensor.of("w", np.arange(6, dtype=np.float32).reshape(2, 3)),
        Tensor.of("b", np.array([0.5, -1.0], dtype=np.float16)),
        Tensor.of("q", np.array([-3, 7], dtype=np.int8)),
    )


def sample_bodies() -> list[Body]:
    """One valid instance of every body type."""
    pk = SIGNER.public_key
    return [
        Enrollment(
            "dev-1",
            pk,
            kem_public_key=b"\x01" * MLKEM768_PUBLIC_KEY_BYTES,
            token_id=b"\x0a" * 16,
            token_mac=b"\x0b" * 32,
            rotation_proof=b"\x0c" * MLDSA65_SIGNATURE_BYTES,
            labels={"a": "b"},
        ),
        EnrollmentResult(
            "dev-1", b"\x08" * 16, b"\x09" * 16, "rejected", "token_reused", "body.token_id", "used"
        ),
        Heartbeat("dev-1", 7, "training", {"cpu": 0.5}),
        Device(
            "dev-1", "active", pk, enrolled_ms=NOW - 10, updated_ms=NOW, revision=3, labels={"zone": "eu"}
        ),
        DeviceHealth("dev-1", "online", NOW),
        Deregistration("dev-1", "retired"),
        RoundTask("job-1", 3, 2, "fedavg", ("dev-1", "dev-2"), NOW + 60_000, 1, 4, {"lr": 0.01, "epochs": 1}),
        GlobalModel("job-1", 2, small_tensors(), round=2, metadata={"arch": "cnn"}),
        ModelUpdate("job-1", 3, "dev-1", 2, 600, small_tensors(), {"loss": 0.25}),
        RoundFailure("job-1", 3, "dev-2", 2, "ValueError", "the handler raised: no data in /data"),
        RoundComplete(
            "job-1",
            3,
            "completed",
            3,
            2,
            1200,
            ("dev-1",),
            b"\x02" * 32,
            {"acc": 0.9},
            scores={"dev-1": {"norm": 1.5, "cosine": 0.9, "flagged": 0.0}},
        ),
        AuditEvent("message.rejected", "warning", "aggregator", "signature", "dev-9", b"\x03" * 16, {"n": 1}),
        AuditHead("demo-1.", 42, b"\x08" * 32, NOW),
        JobCommand("job-1", "start", {"rounds": 10, "strategy": {"name": "fedprox", "proximal_mu": 0.01}}),
        RegistryCommand("issue_tokens", None, (b"\x06" * 32, b"\x07" * 32), NOW + 3_600_000, {"site": "lab"}),
        RegistryCommand("rotate_key", "dev-1", (), NOW + 600_000, {}, b"\x0d" * 16),
        ModelChunk("model_update", 100, 0, b"\x04" * 32, b"\x05" * 10),
        StoredModel(
            "mnist-mlp",
            "1",
            "onnx",
            (Tensor.of("fc.weight", np.array([[0.5, -1.0]], dtype=np.float32)),),
            graph=b"\x08\x07",
            metadata={"source": "test"},
        ),
    ]


def raw_record(
    body: bytes,
    *,
    type_: str = "heartbeat",
    signer: Signer = SIGNER,
    sender: str = SENDER,
    ts_ms: int = NOW,
    round_: int | None = None,
    chunk: Chunk | None = None,
    msg_id: bytes | None = None,
    digest: bytes | None = None,
) -> bytes:
    """A correctly signed record around arbitrary body bytes (the body need not be valid)."""
    header = Header(
        v=PROTOCOL_VERSION,
        type=type_,
        id=msg_id or new_message_id(ts_ms),
        sender=sender,
        key_id=signer.key_id,
        ts_ms=ts_ms,
        round=round_,
        body_digest=digest or hashlib.sha256(body).digest(),
        chunk=chunk,
        sig_alg=signer.alg,
    )
    return encode_envelope(header, [body], signer.sign(header.signing_bytes(CHANNEL)))
