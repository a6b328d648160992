"""Bounded-time fuzz run over the decoder: every input must end in a typed error or a valid message.

Run from the repository root: ``python bench/fuzz_decoder.py [--cases N] [--seconds S] [--seed K]``.

Inputs are random bytes, random envelope-shaped maps, and mutations of valid
records (bit flips, truncations, insertions/deletions, wrong-typed fields,
huge declared lengths, header/body splices), plus correctly signed records
with random bodies or timestamps. Outcomes are counted by error type; any
exception that is not a ``QflareError`` is a bug, is printed, and makes the
exit status 1. The last line is a one-line summary.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import msgpack
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from qflare.crypto import generate_key, signature_backend  # noqa: E402
from qflare.errors import ProtocolError, QflareError  # noqa: E402
from qflare.protocol import Channel, KeyRing, Reassembler, Tensor, seal, seal_chunked, wire  # noqa: E402
from qflare.protocol.control import AuditEvent  # noqa: E402
from qflare.protocol.decoder import Decoder, ReplayCache  # noqa: E402
from qflare.protocol.devices import Enrollment, Heartbeat  # noqa: E402
from qflare.protocol.envelope import FIELDS, PROTOCOL_VERSION, Header, encode_envelope, new_message_id  # noqa: E402
from qflare.protocol.messages import BODY_TYPES  # noqa: E402
from qflare.protocol.training import ModelUpdate, RoundTask  # noqa: E402

NOW = 1_750_000_000_000
SENDER = "dev-1"
SIGNER = signature_backend().signer_from_seed(bytes(range(32)))
#: Every case is signed for, and decoded from, this one channel.
CHANNEL = Channel("bench", "bench.fuzz")
Case = Callable[[random.Random], bytes]


def corpus() -> list[bytes]:
    rng = np.random.default_rng(0)
    tensors = (
        Tensor.of("w", rng.standard_normal((4, 4)).astype(np.float32)),
        Tensor.of("b", np.ones(4, dtype=np.float16)),
        Tensor.bf16("e", np.ones(3, dtype=np.float32)),
    )
    update = ModelUpdate("job-1", 3, SENDER, 2, 10, tensors, {"loss": 0.5})
    device = generate_key(seed=bytes(range(32, 64)))
    records = [
        seal(Heartbeat(SENDER, 1, "idle", {"cpu": 0.5}), SIGNER, CHANNEL, sender=SENDER, round=3, ts_ms=NOW),
        seal(update, SIGNER, CHANNEL, sender=SENDER, round=3, ts_ms=NOW),
        seal(
            RoundTask("job-1", 3, 2, "fedavg", ("dev-1",), NOW, 1, 1, {"lr": 0.1}),
            SIGNER,
            CHANNEL,
            sender=SENDER,
            ts_ms=NOW,
        ),
        seal(
            AuditEvent("message.rejected", "warning", "svc", "x", None, None, {}),
            SIGNER,
            CHANNEL,
            sender=SENDER,
            ts_ms=NOW,
        ),
        seal(Enrollment("dev-2", device.public_key), device.signer(), CHANNEL, sender="dev-2", ts_ms=NOW),
    ]
    return records + seal_chunked(update, SIGNER, CHANNEL, sender=SENDER, round=3, ts_ms=NOW, chunk_bytes=100)


CORPUS = corpus()
WRONG: list[object] = [
    None,
    True,
    -1,
    0,
    1 << 63,
    2.5,
    "",
    "x" * 70_000,
    b"",
    b"\x00" * 16,
    [],
    {},
    [None],
    {"a": 1},
]
HUGE = [b"\xdb\xff\xff\xff\xff", b"\xc6\xff\xff\xff\xff", b"\xdd\xff\xff\xff\xff", b"\xdf\xff\xff\xff\xff"]


def random_value(rng: random.Random, depth: int = 0) -> object:
    kind = rng.randrange(9 if depth < 3 else 7)
    if kind == 0:
        return None
    if kind == 1:
        return rng.random() < 0.5
    if kind == 2:
        return rng.randrange(-(1 << 63), 1 << 64)
    if kind == 3:
        return rng.uniform(-1e30, 1e30)
    if kind == 4:
        return "".join(chr(rng.randrange(32, 0x2FF)) for _ in range(rng.randrange(20)))
    if kind == 5:
        return rng.randbytes(rng.choice([0, 16, 32, 3309, rng.randrange(100)]))
    if kind == 6:
        return rng.randrange(1 << 16)
    if kind == 7:
        return [random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {
        rng.choice([*FIELDS, "name", "data", "x"]): random_value(rng, depth + 1)
        for _ in range(rng.randrange(5))
    }


def random_bytes(rng: random.Random) -> bytes:
    return rng.randbytes(rng.randrange(4096))


def random_envelope(rng: random.Random) -> bytes:
    doc = {f: random_value(rng) for f in FIELDS if rng.random() < 0.9}
    doc["v"] = 1
    return bytes(msgpack.packb(doc))


def flip(rng: random.Random) -> bytes:
    data = bytearray(rng.choice(CORPUS))
    for _ in range(rng.randrange(1, 5)):
        data[rng.randrange(len(data))] ^= rng.randrange(1, 256)
    return bytes(data)


def truncate(rng: random.Random) -> bytes:
    data = rng.choice(CORPUS)
    return data[: rng.randrange(len(data))]


def indel(rng: random.Random) -> bytes:
    data = bytearray(rng.choice(CORPUS))
    for _ in range(rng.randrange(1, 4)):
        i = rng.randrange(len(data))
        if rng.random() < 0.5:
            data[i:i] = rng.randbytes(rng.randrange(1, 8))
        else:
            del data[i : i + rng.randrange(1, 8)]
    return bytes(data)


def wrong_field(rng: random.Random) -> bytes:
    original = rng.choice(CORPUS)
    while True:
        doc = msgpack.unpackb(original)
        doc[rng.choice(FIELDS)] = rng.choice(WRONG) if rng.random() < 0.7 else random_value(rng)
        out: bytes = msgpack.packb(doc)
        if out != original:  # replacing nil by nil is not a mutation
            return out


def huge_length(rng: random.Random) -> bytes:
    data = bytearray(rng.choice(CORPUS))
    i = rng.randrange(len(data))
    data[i : i + 5] = rng.choice(HUGE)
    return bytes(data)


def splice(rng: random.Random) -> bytes:
    while True:
        original, donor = rng.choice(CORPUS), rng.choice(CORPUS)
        a, b = msgpack.unpackb(original), msgpack.unpackb(donor)
        key = rng.choice(["body", "sig", "body_digest", "chunk", "id", "key_id"])
        if a[key] != b[key]:
            a[key] = b[key]
            out: bytes = msgpack.packb(a)
            return out


def signed_garbage(rng: random.Random) -> bytes:
    """A correctly signed record whose body is random: only the body checks stand in the way."""
    type_ = rng.choice(sorted(BODY_TYPES))
    body = wire.pack(
        {k: random_value(rng) for k in ("device_id", "seq", "state", "metrics", "tensors", "job_id")}
    )
    digest = hashlib.sha256(body).digest()
    header = Header(
        PROTOCOL_VERSION,
        type_,
        new_message_id(NOW),
        SENDER,
        SIGNER.key_id,
        NOW,
        None,
        digest,
        None,
        SIGNER.alg,
    )
    return encode_envelope(header, [body], SIGNER.sign(header.signing_bytes(CHANNEL)))


def _signed(type_: str, body: bytes) -> bytes:
    digest = hashlib.sha256(body).digest()
    header = Header(
        PROTOCOL_VERSION, type_, new_message_id(NOW), SENDER, SIGNER.key_id, NOW, 3, digest, None, SIGNER.alg
    )
    return encode_envelope(header, [body], SIGNER.sign(header.signing_bytes(CHANNEL)))


def signed_tensors(rng: random.Random) -> bytes:
    """A signed model update whose tensors disagree with themselves (dtype, shape, bytes, NaN)."""
    tag = rng.choice(["<f4", "<f2", "bf16", "|i1", "|u1", ">f4", "<f8", "f4"])
    shape = [rng.randrange(0, 6) for _ in range(rng.randrange(0, 4))]
    size = {"<f4": 4, "<f2": 2, "bf16": 2}.get(tag, 1) * int(np.prod(shape))
    data = bytearray(rng.randbytes(max(0, size + rng.choice([0, 0, 0, -1, 1, 4]))))
    if tag == "<f4" and len(data) >= 4 and rng.random() < 0.5:
        data[0:4] = np.array([rng.choice([np.nan, np.inf, -np.inf])], dtype="<f4").tobytes()
    tensor = {"name": "w", "dtype": tag, "shape": shape, "data": bytes(data)}
    update = ModelUpdate("job-1", 3, SENDER, 2, 10, ()).to_body()
    update["tensors"] = [tensor]
    return _signed("model_update", wire.pack(update))


def signed_time(rng: random.Random) -> bytes:
    ts = NOW + rng.choice([-1, 1]) * rng.randrange(0, 3_600_000)
    return seal(Heartbeat(SENDER, 1), SIGNER, CHANNEL, sender=SENDER, ts_ms=ts)


GENERATORS: list[tuple[Case, int]] = [
    (random_bytes, 15),
    (random_envelope, 10),
    (flip, 25),
    (truncate, 10),
    (indel, 10),
    (wrong_field, 10),
    (huge_length, 8),
    (splice, 6),
    (signed_garbage, 2),
    (signed_tensors, 2),
    (signed_time, 1),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=200_000)
    parser.add_argument("--seconds", type=float, default=600.0, help="stop early after this long")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    keys = KeyRing()
    keys.add(SENDER, SIGNER.public_key)
    decoder = Decoder(
        keys, deployment=CHANNEL.deployment, clock=lambda: NOW, self_signed={"enrollment"}, max_age_ms=600_000
    )
    reassembler = Reassembler(decoder, max_streams=8, max_bytes_in_flight=1 << 20)
    gens, weights = zip(*GENERATORS, strict=True)
    outcomes: Counter[str] = Counter()
    unexpected: list[str] = []
    start = time.perf_counter()
    done = 0
    while done < args.cases and time.perf_counter() - start < args.seconds:
        gen = rng.choices(gens, weights)[0]
        data = gen(rng)
        decoder.replay = ReplayCache(ttl_ms=None)  # each case on its own; replays are tested elsewhere
        try:
            reassembler.feed(decoder.decode(data, CHANNEL.topic))
        except ProtocolError as exc:
            outcomes[type(exc).__name__] += 1
        except QflareError as exc:
            outcomes[f"other:{type(exc).__name__}"] += 1
        except Exception as exc:  # noqa: BLE001 - the point of a fuzzer: record, report, fail at the end
            outcomes[f"UNEXPECTED:{type(exc).__name__}"] += 1
            if len(unexpected) < 10:
                unexpected.append(f"{gen.__name__}: {type(exc).__name__}: {exc!r} input={data[:64].hex()}...")
        else:
            outcomes["accepted"] += 1
        done += 1
    elapsed = time.perf_counter() - start
    bad = sum(n for k, n in outcomes.items() if k.startswith("UNEXPECTED:"))
    for name, n in outcomes.most_common():
        print(f"{name:<28} {n:>9}")
    for line in unexpected:
        print("UNEXPECTED", line)
    summary = ", ".join(f"{k}={v}" for k, v in sorted(outcomes.items()))
    print(
        f"fuzz_decoder: {done} cases in {elapsed:.1f}s ({done / elapsed:.0f}/s), seed {args.seed}, "
        f"untyped exceptions: {bad}; outcomes: {summary}"
    )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
