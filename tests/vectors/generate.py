"""Regenerate tests/vectors/envelopes.json: fixed keys and fields -> exact bytes.

Run from the repository root: ``python tests/vectors/generate.py``.

Everything is deterministic except the ML-DSA signatures: signing is hedged
(randomised, as FIPS 204 recommends) and the backend offers no deterministic
mode, so each run records a different valid signature, and so a different
``sig`` and ``envelope``. Everything else must come out byte-identical, which
tests/unit/protocol/test_vectors.py checks against ``build()``.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from qflare.crypto import generate_key, kem_backend  # noqa: E402
from qflare.crypto.base import ML_KEM_768  # noqa: E402
from qflare.crypto.enrolment import (  # noqa: E402
    ROTATION_DOMAIN,
    TOKEN_MAC_DOMAIN,
    binding,
    token_id,
    token_key,
    token_mac,
)
from qflare.protocol import Body, Tensor, wire  # noqa: E402
from qflare.protocol.body import Setting  # noqa: E402
from qflare.protocol.control import AuditEvent, AuditHead, JobCommand  # noqa: E402
from qflare.protocol.devices import Enrollment, EnrollmentResult, Heartbeat  # noqa: E402
from qflare.protocol.envelope import PROTOCOL_VERSION, Chunk, Header, encode_envelope  # noqa: E402
from qflare.protocol.messages import ModelChunk  # noqa: E402
from qflare.protocol.store import StoredModel  # noqa: E402
from qflare.protocol.training import ModelUpdate, RoundComplete, RoundFailure, RoundTask  # noqa: E402
from qflare.types import Scalar  # noqa: E402
from tests.vectors.accepted import acceptances  # noqa: E402
from tests.vectors.cases import CHANNEL, RECEIVER, TS, Cases, build_rejections, fixed_id  # noqa: E402

OUT = Path(__file__).with_name("envelopes.json")
SEED = bytes(range(32))  # 00 01 02 ... 1f
KEM_SEED = bytes(range(64))  # 00 01 ... 3f
DEVICE_SEED = bytes(range(32, 64))
STRANGER_SEED = bytes(range(64, 96))


def view(obj: object) -> object:
    """JSON rendering of a decoded body: bins become {"bin": hex}."""
    if isinstance(obj, bytes | memoryview):
        return {"bin": bytes(obj).hex()}
    if isinstance(obj, list):
        return [view(x) for x in obj]
    if isinstance(obj, dict):
        return {k: view(v) for k, v in obj.items()}
    return obj


def _envelope(name: str, header: Header, body: bytes, signer_key: Any) -> dict[str, Any]:
    signing = header.signing_bytes(CHANNEL)
    sig = signer_key.signer().sign(signing)
    chunk = header.chunk
    limits = wire.WireLimits(1 << 20, 16, 1000, 100, 1000, 1 << 20)
    return {
        "name": name,
        "channel": {"deployment": CHANNEL.deployment, "topic": CHANNEL.topic},
        "header": {
            "v": header.v,
            "type": header.type,
            "id": header.id.hex(),
            "sender": header.sender,
            "key_id": header.key_id.hex(),
            "ts_ms": header.ts_ms,
            "round": header.round,
            "body_digest": header.body_digest.hex(),
            "chunk": None
            if chunk is None
            else {"stream": chunk.stream.hex(), "index": chunk.index, "count": chunk.count},
            "sig_alg": header.sig_alg,
        },
        "body_view": view(wire.unpack(body, limits)),
        "body": body.hex(),
        "signing_bytes": signing.hex(),
        "sig": sig.hex(),
        "envelope": encode_envelope(header, [body], sig).hex(),
    }


def _header(type_: str, n: int, body: bytes, key: Any, sender: str, **kw: Any) -> Header:
    return Header(
        v=PROTOCOL_VERSION,
        type=type_,
        id=fixed_id(TS, n),
        sender=sender,
        key_id=key.key_id,
        ts_ms=TS,
        round=kw.get("round"),
        body_digest=hashlib.sha256(body).digest(),
        chunk=kw.get("chunk"),
        sig_alg="ML-DSA-65",
    )


def _update() -> ModelUpdate:
    tensors = (
        Tensor.of("conv.w", np.array([[0.5, -1.25], [2.0, 0.0]], dtype=np.float32)),
        Tensor.of("conv.b", np.array([1.5], dtype=np.float16)),
        Tensor.bf16("fc.w", np.array([1.0, -2.0, 3.5], dtype=np.float32)),
        Tensor.of("q", np.array([-128, 0, 127], dtype=np.int8)),
        Tensor.of("mask", np.array([[0, 255]], dtype=np.uint8)),
    )
    return ModelUpdate("job-1", 7, "dev-1", 6, 600, tensors, {"loss": 0.125})


def _audit(ref_id: bytes) -> AuditEvent:
    """Every scalar kind, with keys given unsorted: the encoder sorts them by UTF-8 bytes."""
    detail: dict[str, Scalar] = {
        "topic": "qflare.updates",
        "n": 3,
        "ok": True,
        "none": None,
        "ratio": 0.5,
        "two": 2.0,
        "Zeta": "upper case sorts first",
        "\u00e9": "two UTF-8 bytes sort last",
        "min": -(1 << 63),
        "max": (1 << 64) - 1,
    }
    return AuditEvent("message.rejected", "warning", "dev-1", "signature", "dev-9", ref_id, detail)


def _round_task() -> RoundTask:
    """A FedProx round: the leader's fencing token, and the devices' instructions as scalars."""
    config: dict[str, Scalar] = {
        "model": "builtin:2nn",
        "dataset": "mnist",
        "seed": 0,
        "epochs": 1,
        "batch_size": 10,
        "lr": 0.05,
        "proximal_mu": 0.01,
        "evaluate": True,
        "evaluate_global": False,
        "train": True,
    }
    return RoundTask("job-1", 7, 6, "fedprox", ("dev-1", "dev-2"), TS + 60_000, 2, 3, config)


def _stored_model() -> StoredModel:
    """An ONNX import: float32 tensors in graph order, and the graph bytes (opaque here)."""
    tensors = (
        Tensor.of("fc.weight", np.array([[0.5, -1.25, 2.0]], dtype=np.float32)),
        Tensor.of("fc.bias", np.array([-0.0], dtype=np.float32)),
    )
    return StoredModel("mnist-mlp", "1", "onnx", tensors, b"\x08\x09\x12\x04test", {"source": "vectors"})


def _job_command() -> JobCommand:
    """A start command: the job's settings, with the strategy's parameters as the one nested map."""
    config: dict[str, Setting] = {
        "strategy": {"proximal_mu": 0.01, "name": "fedprox"},  # the encoder sorts the inner map too
        "rounds": 3,
        "model": "builtin:2nn",
        "fraction": 1.0,
        "deadline_s": 300.0,
    }
    return JobCommand("job-1", "start", config)


def _round_complete() -> RoundComplete:
    """A robust round's close: the new version's digest, its metrics and each update's anomaly scores."""
    scores = {
        "dev-2": {"norm": 9.75, "cosine": -0.5, "krum_score": 120.5, "selected": 0.0, "flagged": 1.0},
        "dev-1": {"norm": 1.25, "cosine": 0.875, "krum_score": 3.0, "selected": 1.0, "flagged": 0.0},
    }
    return RoundComplete(
        "job-1",
        7,
        "completed",
        7,
        2,
        1200,
        ("dev-1", "dev-2"),
        bytes(range(32)),
        {"participants": 2.0, "flagged_updates": 1.0, "test_accuracy": 0.9375},
        "central",
        scores,
    )


VECTOR_TOKEN = "qft_vector-token-0123456789"
VECTOR_SCOPE = "vectors."


def build() -> dict[str, Any]:
    key = generate_key(seed=SEED)
    device = generate_key(seed=DEVICE_SEED)
    kem_public = kem_backend().public_key_from_seed(KEM_SEED)
    # Encapsulation randomness is internal to the backend: the ciphertext is one
    # recorded output, and decapsulating it with the seed is deterministic.
    encap = kem_backend().encapsulate(kem_public)
    envelopes: list[dict[str, Any]] = []

    def add(name: str, type_: str, body: Body | bytes, signer: Any, sender: str, **kw: Any) -> None:
        raw = body if isinstance(body, bytes) else wire.pack(body.to_body())
        header = _header(type_, len(envelopes), raw, signer, sender, **kw)
        envelopes.append(_envelope(name, header, raw, signer))

    add("heartbeat", "heartbeat", Heartbeat("dev-1", 42, "training", {"cpu": 0.5}), key, "dev-1")
    add("model_update", "model_update", _update(), key, "dev-1", round=7)
    whole = wire.pack(_update().to_body())
    digest = hashlib.sha256(whole).digest()
    stream = fixed_id(TS, 100)
    half = (len(whole) + 1) // 2
    for index in range(2):
        piece = ModelChunk(
            "model_update", len(whole), index * half, digest, whole[index * half : (index + 1) * half]
        )
        add(
            f"model_chunk_{index}", "model_chunk", piece, key, "dev-1", round=7, chunk=Chunk(stream, index, 2)
        )
    mac_key = token_key(VECTOR_TOKEN)
    enrol = Enrollment(
        "dev-2",
        device.public_key,
        kem_public_key=kem_public,
        token_id=token_id(mac_key),
        token_mac=token_mac(mac_key, VECTOR_SCOPE, "dev-2", device.key_id),
        labels={"site": "lab"},
    )
    add("enrollment_self_signed", "enrollment", enrol, device, "dev-2")
    enrol_id = bytes.fromhex(envelopes[-1]["header"]["id"])
    add("audit_event", "audit_event", _audit(bytes.fromhex(envelopes[0]["header"]["id"])), key, "dev-1")
    add("round_task", "round_task", _round_task(), key, "dev-1", round=7)
    add("job_command", "job_command", _job_command(), key, "dev-1")
    # The registry's answer to that enrolment (signed here, like the rest, by signing_key as dev-1).
    answer = EnrollmentResult(
        "dev-2",
        enrol_id,
        device.key_id,
        "rejected",
        "token_reused",
        "body.token_id",
        "enrolment token was already used",
    )
    add("enrollment_result", "enrollment_result", answer, key, "dev-1")
    add("audit_head", "audit_head", AuditHead("demo-1.", 42, bytes(range(32)), TS), key, "dev-1")
    add("stored_model", "stored_model", _stored_model(), key, "dev-1")
    failure = RoundFailure("job-1", 7, "dev-1", 6, "ValueError", "the train handler raised: no data")
    add("round_failure", "round_failure", failure, key, "dev-1", round=7)
    add("round_complete", "round_complete", _round_complete(), key, "dev-1", round=7)

    stranger = generate_key(seed=STRANGER_SEED)
    cases = Cases(key, device, stranger, {e["name"]: e for e in envelopes}, whole)
    return {
        "description": (
            f"QFLARE protocol v{PROTOCOL_VERSION} golden vectors. Every envelope is signed for its "
            "'channel' (deployment id and topic, not on the wire) and received as 'receiver' says. "
            "Hex strings are raw bytes. See docs/protocol.md §13. "
            "Signatures are hedged ML-DSA-65 and differ on every regeneration: verify 'sig' over "
            "'signing_bytes' with the key whose key_id the header names; every other byte must match."
        ),
        "protocol_version": PROTOCOL_VERSION,
        "signing_key": {
            "alg": key.alg,
            "seed": SEED.hex(),
            "public_key": key.public_key.hex(),
            "key_id": key.key_id.hex(),
            "key_file": {k: v for k, v in key.to_json().items() if k != "created_ms"} | {"created_ms": 0},
        },
        "device_key": {
            "alg": device.alg,
            "seed": DEVICE_SEED.hex(),
            "public_key": device.public_key.hex(),
            "key_id": device.key_id.hex(),
        },
        "kem_key": {
            "alg": ML_KEM_768,
            "seed": KEM_SEED.hex(),
            "public_key": kem_public.hex(),
            "ciphertext": encap.ciphertext.hex(),
            "shared_secret": encap.shared_secret.hex(),
        },
        # The enrolment above proves this token without sending it (docs/protocol.md, "Enrolment").
        "enrolment_token": {
            "token": VECTOR_TOKEN,
            "scope": VECTOR_SCOPE,
            "device_id": "dev-2",
            "key_id": device.key_id.hex(),
            "mac_key": mac_key.hex(),
            "token_id": token_id(mac_key).hex(),
            "token_mac": token_mac(mac_key, VECTOR_SCOPE, "dev-2", device.key_id).hex(),
            "mac_input": binding(TOKEN_MAC_DOMAIN, VECTOR_SCOPE, "dev-2", device.key_id).hex(),
            # What a rotation proof signs: the current key's signature over these bytes.
            "rotation_input": binding(ROTATION_DOMAIN, VECTOR_SCOPE, "dev-2", device.key_id).hex(),
        },
        "envelopes": envelopes,
        "receiver": RECEIVER,
        "rejections": build_rejections(cases),
        "accepted": acceptances(cases),
    }


def main() -> None:
    OUT.write_text(json.dumps(build(), indent=1) + "\n")
    print(f"wrote {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
