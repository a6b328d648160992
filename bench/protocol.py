"""Protocol cost for one FedAvg-CNN model update, against a memcpy of the same bytes.

Run from the repository root: ``python bench/protocol.py [--reps N]``.

Everything is measured in this one run on this machine: the baseline is a
plain copy of the update's tensor bytes, and every ratio is against it. The
last line is one JSON object for scripts.

What is measured, per update of 1,663,370 float32 parameters (6.65 MB):
  encode+sign   ``seal``: body framing (one copy of the tensor data), SHA-256 of
                the body, ML-DSA-65 signature over the header.
  verify+decode ``Decoder.decode``: parse, signature check, SHA-256 of the body,
                freshness, replay, body parse (zero-copy tensors), NaN/Inf check.
  signature share  (sign + verify) / (encode+sign + verify+decode).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from qflare.crypto import SignatureBackend, signature_backend, signature_backends  # noqa: E402
from qflare.protocol import KeyRing, Tensor, seal, wire  # noqa: E402
from qflare.protocol.decoder import Decoder, ReplayCache  # noqa: E402
from qflare.protocol.envelope import parse_envelope  # noqa: E402
from qflare.protocol.training import ModelUpdate  # noqa: E402

#: FedAvg-paper MNIST CNN: conv5x5(32), conv5x5(64), fc 3136->512, fc 512->10, with biases.
CNN_SHAPES: list[tuple[str, tuple[int, ...]]] = [
    ("conv1.weight", (32, 1, 5, 5)),
    ("conv1.bias", (32,)),
    ("conv2.weight", (64, 32, 5, 5)),
    ("conv2.bias", (64,)),
    ("fc1.weight", (512, 3136)),
    ("fc1.bias", (512,)),
    ("fc2.weight", (10, 512)),
    ("fc2.bias", (10,)),
]
PARAMS = 1_663_370
SENDER = "dev-bench"


def median_seconds(fn: Callable[[], object], reps: int) -> float:
    fn()  # warm caches and lazy initialisation
    samples = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def backend_ops(backend: SignatureBackend, message: bytes, reps: int) -> tuple[float, float]:
    """(sign/s, verify/s) for one backend over the real header bytes."""
    signer = backend.generate_signer()
    sig = signer.sign(message)

    def sign10() -> None:
        for _ in range(10):
            signer.sign(message)

    def verify10() -> None:
        for _ in range(10):
            backend.verify(signer.public_key, message, sig)

    rounds = max(reps, 20)
    return 10 / median_seconds(sign10, rounds), 10 / median_seconds(verify10, rounds)


def model_update() -> ModelUpdate:
    rng = np.random.default_rng(0)
    tensors = tuple(
        Tensor.of(name, rng.standard_normal(shape).astype(np.float32)) for name, shape in CNN_SHAPES
    )
    total = sum(t.array.size for t in tensors)
    if total != PARAMS:
        raise SystemExit(f"CNN shapes give {total} parameters, expected {PARAMS}")
    return ModelUpdate("job-bench", 1, SENDER, 0, 600, tensors, {"loss": 0.1})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=30, help="timed repetitions per measurement (median)")
    args = parser.parse_args()
    reps: int = args.reps

    update = model_update()
    raw = b"".join(t.array.tobytes() for t in update.tensors)
    nbytes = len(raw)
    signer = signature_backend().generate_signer()
    keys = KeyRing()
    keys.add(SENDER, signer.public_key)
    # No replay memory and no clock limits: the same record is decoded many times.
    decoder = Decoder(keys, max_age_ms=None, max_skew_ms=1 << 62, replay=ReplayCache(max_entries=0))

    record = seal(update, signer, sender=SENDER, round=1)
    body = parse_envelope(record).body
    t_memcpy = median_seconds(lambda: bytearray(raw), reps)
    t_encode = median_seconds(lambda: seal(update, signer, sender=SENDER, round=1), reps)
    t_decode = median_seconds(lambda: decoder.decode(record), reps)
    t_sha = median_seconds(lambda: hashlib.sha256(body).digest(), reps)
    t_pack = median_seconds(lambda: b"".join(wire.pack_parts(update.to_body())), reps)

    def check_finite() -> None:
        for tensor in update.tensors:
            tensor.check_finite()

    t_finite = median_seconds(check_finite, reps)
    header = parse_envelope(record).header.signing_bytes()

    ops = {name: backend_ops(backend, header, reps) for name, backend in signature_backends().items()}

    default = ops["cryptography"]
    t_sig = 1 / default[0] + 1 / default[1]
    memcpy_gbps = nbytes / t_memcpy / 1e9
    enc_gbps = nbytes / t_encode / 1e9
    dec_gbps = nbytes / t_decode / 1e9
    sha_gbps = nbytes / t_sha / 1e9
    # The same pipelines without SHA-256 and signatures: what the framing itself costs.
    enc_framing = t_encode - t_sha - 1 / default[0]
    dec_framing = t_decode - t_sha - 1 / default[1] - t_finite
    share = t_sig / (t_encode + t_decode)
    enc_framing_gbps = nbytes / max(enc_framing, 1e-9) / 1e9
    dec_framing_gbps = nbytes / max(dec_framing, 1e-9) / 1e9

    print(
        f"model update: {PARAMS:,} float32 parameters, {nbytes:,} tensor bytes, record {len(record):,} bytes"
    )
    print(f"memcpy (bytearray copy)    {memcpy_gbps:8.2f} GB/s   {t_memcpy * 1e3:7.3f} ms")
    for label, gbps, seconds in (
        ("encode+sign (seal)", enc_gbps, t_encode),
        ("verify+decode", dec_gbps, t_decode),
    ):
        print(f"{label:<26} {gbps:8.2f} GB/s   {seconds * 1e3:7.3f} ms   {gbps / memcpy_gbps:.3f}x memcpy")
    print(f"  SHA-256 of the body      {sha_gbps:8.2f} GB/s   {t_sha * 1e3:7.3f} ms   (once per side)")
    print(f"  body pack + join         {nbytes / t_pack / 1e9:8.2f} GB/s   {t_pack * 1e3:7.3f} ms")
    print(f"  NaN/Inf check            {nbytes / t_finite / 1e9:8.2f} GB/s   {t_finite * 1e3:7.3f} ms")
    print(
        f"  framing only (no hash, signature, finiteness): encode {enc_framing_gbps:.2f} GB/s "
        f"({enc_framing_gbps / memcpy_gbps:.3f}x memcpy), decode {dec_framing_gbps:.2f} GB/s "
        f"({dec_framing_gbps / memcpy_gbps:.3f}x memcpy)"
    )
    for name, (sign_s, verify_s) in ops.items():
        print(f"ML-DSA-65 [{name}]  sign {sign_s:8.0f}/s   verify {verify_s:8.0f}/s")
    print(f"signature share of per-update cost (sign + verify over encode+decode): {share:.1%}")
    codec = min(enc_gbps, dec_gbps) / memcpy_gbps
    print(
        f"targets: codec >= 0.5x memcpy -> {codec:.3f}x ({'met' if codec >= 0.5 else 'NOT met'}); "
        f"signature share <= 10% -> {share:.1%} ({'met' if share <= 0.10 else 'NOT met'})"
    )
    print(
        json.dumps(
            {
                "params": PARAMS,
                "tensor_bytes": nbytes,
                "memcpy_gbps": round(memcpy_gbps, 3),
                "encode_gbps": round(enc_gbps, 3),
                "decode_gbps": round(dec_gbps, 3),
                "sha256_gbps": round(sha_gbps, 3),
                "codec_vs_memcpy": round(codec, 4),
                "encode_vs_memcpy": round(enc_gbps / memcpy_gbps, 4),
                "decode_vs_memcpy": round(dec_gbps / memcpy_gbps, 4),
                "sha256_vs_memcpy": round(sha_gbps / memcpy_gbps, 4),
                "framing_vs_memcpy": round(min(enc_framing_gbps, dec_framing_gbps) / memcpy_gbps, 4),
                "signature_share": round(share, 4),
                "sign_per_s": round(default[0], 1),
                "verify_per_s": round(default[1], 1),
                "backends": {
                    n: {"sign_per_s": round(a, 1), "verify_per_s": round(b, 1)} for n, (a, b) in ops.items()
                },
            }
        )
    )


if __name__ == "__main__":
    main()
