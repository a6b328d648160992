"""Rejection cases of the golden vectors (docs/protocol.md §13).

Each rejection is a record (plus, for state-dependent checks, the vectors fed
first) and the exact ``reason`` and ``field`` a receiver configured as
``RECEIVER`` must report.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from typing import Any

from qflare.protocol import Channel, wire
from qflare.protocol.devices import Enrollment, Heartbeat
from qflare.protocol.envelope import PROTOCOL_VERSION, Chunk, Header, encode_envelope
from qflare.protocol.messages import ModelChunk

TS = 1_750_000_000_000
#: Every vector is signed for this deployment and topic, and received from there.
CHANNEL = Channel("qflare-vectors", "vectors.qflare.records")
#: How every rejection and acceptance case is received.
RECEIVER = {
    "deployment": CHANNEL.deployment,
    "topic": CHANNEL.topic,
    "now_ms": TS,
    "max_age_ms": 600_000,
    "max_skew_ms": 60_000,
    "known_keys": [{"owner": "dev-1", "key": "signing_key"}],
    "self_signed": ["enrollment"],
    "check_finite": True,
    "types": "all",
}
PARSE = wire.WireLimits(1 << 20, 16, 1000, 100, 1000, 1 << 20)


def fixed_id(ts_ms: int, n: int) -> bytes:
    """A UUIDv7 with fixed 'random' bits, so ids are reproducible."""
    rand = int.from_bytes(hashlib.sha256(b"qflare-vector-%d" % n).digest()[:10], "big")
    value = ts_ms << 80 | 0x7 << 76 | (rand >> 68 & 0xFFF) << 64 | 0b10 << 62 | rand & ((1 << 62) - 1)
    return value.to_bytes(16, "big")


@dataclass
class Cases:
    key: Any  # signing_key: known as dev-1
    device: Any  # device_key: self-signed enrolment
    stranger: Any  # a key no receiver knows
    vectors: dict[str, dict[str, Any]]
    whole: bytes  # the model_update body, also carried by the two-chunk stream
    n: int = 200

    def seal(self, type_: str, body: bytes, *, key: Any = None, **kw: Any) -> bytes:
        key = key or self.key
        ts = kw.get("ts_ms", TS)
        self.n += 1
        header = Header(
            v=kw.get("v", PROTOCOL_VERSION),
            type=type_,
            id=kw.get("msg_id") or fixed_id(ts, self.n),
            sender=kw.get("sender", "dev-1"),
            key_id=key.key_id,
            ts_ms=ts,
            round=kw.get("round"),
            body_digest=hashlib.sha256(body).digest(),
            chunk=kw.get("chunk"),
            sig_alg="ML-DSA-65",
        )
        signing = header.signing_bytes(kw.get("channel", CHANNEL))
        return encode_envelope(header, [body], key.signer().sign(signing))

    def record(self, name: str) -> bytes:
        return bytes.fromhex(self.vectors[name]["envelope"])

    def raw(self, name: str) -> dict[str, Any]:
        out = wire.unpack(self.record(name), PARSE)
        assert isinstance(out, dict)
        return out

    def stream(self, name: str = "model_chunk_0") -> bytes:
        return bytes.fromhex(self.vectors[name]["header"]["chunk"]["stream"])


def hb_body(**change: Any) -> dict[str, Any]:
    return Heartbeat("dev-1", 42, "training", {"cpu": 0.5}).to_body() | change


def _f4(*values: float) -> memoryview:
    return memoryview(struct.pack(f"<{len(values)}f", *values))


def _nested(levels: int) -> object:
    inner: object = []
    for _ in range(levels - 1):
        inner = [inner]
    return inner


def _rej(name: str, record: bytes, reason: str, field: str, after: tuple[str, ...] = ()) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name, "envelope": record.hex(), "reason": reason, "field": field}
    if after:
        out["preceded_by"] = list(after)
    return out


def envelope_rejections(c: Cases) -> list[dict[str, Any]]:
    base = c.record("heartbeat")
    hb = wire.pack(hb_body())
    sig_flipped, v2, body_flipped = bytearray(base), bytearray(base), bytearray(base)
    sig_flipped[-1] ^= 0x01
    v2[v2.index(b"\xa1v\x02") + 2] = 0x03  # the next version, not yet spoken
    body_flipped[body_flipped.index(hb)] ^= 0x01  # a map header becomes another map size
    extra = c.raw("heartbeat") | {"zz": 1, "aa": 2}
    misspelt = {("sendr" if k == "sender" else k): v for k, v in c.raw("heartbeat").items()}
    short_sig = c.raw("heartbeat") | {"sig": c.raw("heartbeat")["sig"][:-1]}
    as_array = c.raw("heartbeat") | {"chunk": [0]}
    bad_id = bytearray(fixed_id(TS, 1))
    bad_id[6] = 0x40 | bad_id[6] & 0x0F
    chunk0 = bytes.fromhex(c.vectors["model_chunk_0"]["body"])
    raw_chunk = c.raw("model_chunk_0")
    chunk_extra = raw_chunk | {"chunk": raw_chunk["chunk"] | {"zz": 1}}
    chunk_short = raw_chunk | {"chunk": {k: v for k, v in raw_chunk["chunk"].items() if k != "count"}}
    # A 13th entry whose str16 key is longer than the envelope's 256-byte str limit: the key
    # is not known yet, so the error names the map that holds it (the root).
    long_key = b"\x8d" + base[1:] + b"\xda\x01\x01" + b"k" * 257 + b"\x01"
    return [
        _rej("signature bit flipped", bytes(sig_flipped), "signature", "sig"),
        _rej("version 3", bytes(v2), "version", "v"),
        _rej("body altered", bytes(body_flipped), "digest", "body"),
        _rej("record cut short by one byte", base[:-1], "schema", "sig"),
        _rej(
            "body bin longer than the record limit",
            base.replace(b"\xa4body\xc4\x3b", b"\xa4body\xc6" + b"\xff" * 4, 1),
            "limit",
            "body",
        ),
        _rej("sender of 257 bytes", c.seal("heartbeat", hb, sender="d" * 257), "limit", "sender"),
        _rej("an array in the envelope", wire.pack(as_array), "limit", "chunk"),
        _rej("duplicate envelope key", b"\x8d" + base[1:] + b"\xa6sender\xa5dev-1", "schema", "sender"),
        _rej("two unexpected keys", wire.pack(extra), "schema", "zz"),
        _rej("misspelt key", wire.pack(misspelt), "schema", "sendr"),
        _rej("sig of 3308 bytes", wire.pack(short_sig), "schema", "sig"),
        _rej("id not a UUIDv7", c.seal("heartbeat", hb, msg_id=bytes(bad_id)), "schema", "id"),
        _rej("round above 2^63-1", c.seal("heartbeat", hb, round=1 << 63), "schema", "round"),
        _rej(
            "chunk count 4097",
            c.seal("model_chunk", chunk0, round=7, chunk=Chunk(c.stream(), 0, 4097)),
            "schema",
            "chunk.count",
        ),
        _rej(
            "chunk on a heartbeat", c.seal("heartbeat", hb, chunk=Chunk(c.stream(), 0, 1)), "schema", "chunk"
        ),
        _rej("unknown type", c.seal("telemetry", hb), "schema", "type"),
        _rej("envelope map key of 257 bytes", long_key, "limit", "$"),
        _rej("unknown key inside chunk", wire.pack(chunk_extra), "schema", "chunk.zz"),
        _rej("chunk without count", wire.pack(chunk_short), "schema", "chunk.count"),
    ]


def key_and_time_rejections(c: Cases) -> list[dict[str, Any]]:
    hb = wire.pack(hb_body())
    pub = c.device.public_key
    other_device = wire.pack(Enrollment("dev-3", pub, labels={"site": "lab"}).to_body())
    other_key = wire.pack(Enrollment("dev-2", c.key.public_key).to_body())
    hb_id = bytes.fromhex(c.vectors["heartbeat"]["header"]["id"])
    return [
        _rej("unknown key", c.seal("heartbeat", hb, key=c.stranger), "unknown_key", "key_id"),
        _rej("key of another sender", c.seal("heartbeat", hb, sender="dev-2"), "key_mismatch", "sender"),
        _rej(
            "self-signed enrolment for another device",
            c.seal("enrollment", other_device, key=c.device, sender="dev-2"),
            "key_mismatch",
            "sender",
        ),
        _rej(
            "self-signed enrolment carrying another key",
            c.seal("enrollment", other_key, key=c.device, sender="dev-2"),
            "key_mismatch",
            "key_id",
        ),
        _rej("older than max_age", c.seal("heartbeat", hb, ts_ms=TS - 600_001), "stale", "ts_ms"),
        _rej("further ahead than max_skew", c.seal("heartbeat", hb, ts_ms=TS + 60_001), "stale", "ts_ms"),
        _rej("the same record twice", c.record("heartbeat"), "replay", "id", ("heartbeat",)),
        _rej(
            "a known id with another body",
            c.seal("heartbeat", wire.pack(hb_body(seq=43)), msg_id=hb_id),
            "replay",
            "id",
            ("heartbeat",),
        ),
    ]


def body_rejections(c: Cases) -> list[dict[str, Any]]:
    def hb(body: dict[str, Any]) -> bytes:
        return c.seal("heartbeat", wire.pack(body))

    def mu(*changes: tuple[int, str, object]) -> bytes:
        body = wire.unpack(c.whole, PARSE)
        assert isinstance(body, dict)
        for index, key, value in changes:
            body["tensors"][index][key] = value
        return c.seal("model_update", wire.pack(body), round=7)

    def mu_metrics(metrics: dict[str, float], *changes: tuple[int, str, object]) -> bytes:
        body = wire.unpack(c.whole, PARSE)
        assert isinstance(body, dict)
        for index, key, value in changes:
            body["tensors"][index][key] = value
        body["metrics"] = metrics
        return c.seal("model_update", wire.pack(body), round=7)

    missing = hb_body()
    del missing["metrics"]
    packed = wire.pack(hb_body())
    key_cut = packed[: packed.index(b"\xa3cpu") + 3]  # ends inside the metrics key "cpu"
    not_utf8 = packed.replace(b"\xa3seq", b"\xa3\xff\xfe\xfd", 1)
    nan = _f4(float("nan"), 0.0, 0.0, 0.0)
    depth = "body.metrics.x" + "[0]" * 14

    def sm(change: dict[str, Any], dtype: str = "<f4") -> bytes:
        data = _f4(0.5, 1.0)[: 2 * (4 if dtype == "<f4" else 2)]
        tensor = {"name": "w", "dtype": dtype, "shape": [2], "data": data}
        body: dict[str, Any] = {"name": "m", "version": "1", "format": "torch", "tensors": [tensor]}
        body |= {"graph": None, "metadata": {}}
        return c.seal("stored_model", wire.pack(body | change))

    return [
        _rej("stored model of float16", sm({}, "<f2"), "tensor", "body.tensors[0].dtype"),
        _rej("stored model without tensors", sm({"tensors": []}), "schema", "body.tensors"),
        _rej("ONNX import without its graph", sm({"format": "onnx"}), "schema", "body.graph"),
        _rej("stored model version with a space", sm({"version": "v 1"}), "schema", "body.version"),
        _rej("two unexpected body keys", hb(hb_body(zeta=1, alpha=2)), "schema", "body.zeta"),
        _rej("missing body key", hb(missing), "schema", "body.metrics"),
        _rej("two bad values", hb(hb_body(seq=-1, state="sleeping")), "schema", "body.seq"),
        _rej("infinite metric", hb(hb_body(metrics={"cpu": float("inf")})), "non_finite", "body.metrics.cpu"),
        _rej("body cut short", c.seal("heartbeat", wire.pack(hb_body())[:-1]), "schema", "body.metrics.cpu"),
        _rej("nesting depth 17", hb(hb_body(metrics={"x": _nested(15)})), "limit", depth),
        _rej("nesting depth 16 parses", hb(hb_body(metrics={"x": _nested(14)})), "schema", "body.metrics.x"),
        _rej("NaN in float32", mu((0, "data", nan)), "non_finite", "body.tensors[0].data"),
        _rej("+inf in float16", mu((1, "data", b"\x00\x7c")), "non_finite", "body.tensors[1].data"),
        _rej(
            "NaN, then a bad dtype",
            mu((0, "data", nan), (1, "dtype", ">f2")),
            "tensor",
            "body.tensors[1].dtype",
        ),
        _rej("nine dimensions", mu((1, "shape", [1] * 9)), "tensor", "body.tensors[1].shape"),
        _rej("dimension of 2^31", mu((4, "shape", [1, 1 << 31])), "tensor", "body.tensors[4].shape[1]"),
        _rej("dimension not an int", mu((0, "shape", [2, 2.0])), "schema", "body.tensors[0].shape[1]"),
        _rej("shape does not match data", mu((0, "shape", [2, 3])), "tensor", "body.tensors[0].data"),
        _rej("duplicate tensor name", mu((3, "name", "conv.w")), "tensor", "body.tensors[3].name"),
        _rej("body map key cut short", c.seal("heartbeat", key_cut), "schema", "body.metrics"),
        _rej("body map key not UTF-8", c.seal("heartbeat", not_utf8), "schema", "body"),
        _rej(
            "NaN tensor and infinite metric",
            mu_metrics({"loss": float("inf")}, (0, "data", nan)),
            "non_finite",
            "body.metrics.loss",
        ),
        _rej(
            "infinite metric, then a bad dtype",
            mu_metrics({"loss": float("inf")}, (1, "dtype", ">f2")),
            "tensor",
            "body.tensors[1].dtype",
        ),
    ]


def chunk_rejections(c: Cases) -> list[dict[str, Any]]:
    whole, stream = c.whole, c.stream()
    size, half, digest = len(whole), (len(whole) + 1) // 2, hashlib.sha256(whole).digest()

    def chunk(
        body: ModelChunk, index: int, count: int = 2, stream_: bytes = stream, round_: int = 7
    ) -> bytes:
        return c.seal(
            "model_chunk", wire.pack(body.to_body()), round=round_, chunk=Chunk(stream_, index, count)
        )

    fresh = fixed_id(TS, 101)
    second = ModelChunk("model_update", size, half, digest, whole[half:])
    after = ("model_chunk_0",)
    return [
        _rej(
            "slice past the end",
            chunk(ModelChunk("model_update", size, size - 5, digest, whole[:10]), 0, stream_=fresh),
            "chunk",
            "body.offset",
        ),
        _rej(
            "slices that do not tile",
            chunk(ModelChunk("model_update", size, half + 1, digest, whole[half + 1 :]), 1),
            "chunk",
            "body.offset",
            after,
        ),
        _rej(
            "slices tile but stop short of size",
            chunk(ModelChunk("model_update", size, half, digest, whole[half:-1]), 1),
            "chunk",
            "body.digest",
            after,
        ),
        _rej("count differs", chunk(second, 1, count=3), "chunk", "chunk.count", after),
        _rej("round differs", chunk(second, 1, round_=8), "chunk", "round", after),
        _rej(
            "size differs",
            chunk(ModelChunk("model_update", size + 1, half, digest, whole[half:]), 1),
            "chunk",
            "body.size",
            after,
        ),
        _rej(
            "digest mismatch",
            chunk(ModelChunk("model_update", size, 0, hashlib.sha256(b"x").digest(), whole), 0, 1, fresh),
            "chunk",
            "body.digest",
        ),
        _rej(
            "a chunk of a chunk",
            chunk(ModelChunk("model_chunk", size, 0, digest, whole), 0, 1, fresh),
            "schema",
            "body.inner_type",
        ),
    ]


def settings_rejections(c: Cases) -> list[dict[str, Any]]:
    """A job's settings nest one level (§7 "settings"); a round task carries its fencing token."""

    # Ids of their own (900 on), and the shared counter left as it was: the cases generated
    # after these (the acceptances) keep their ids.
    counter = c.n

    def seal(n: int, type_: str, body: object, **kw: Any) -> bytes:
        return c.seal(type_, wire.pack(body), msg_id=fixed_id(TS, 900 + n), **kw)

    def job(n: int, strategy: dict[str, Any]) -> bytes:
        body = {"job_id": "job-1", "command": "start", "config": {"rounds": 3, "strategy": strategy}}
        return seal(n, "job_command", body)

    task = wire.unpack(bytes.fromhex(c.vectors["round_task"]["body"]), PARSE)
    assert isinstance(task, dict)
    del task["fencing_token"]
    nan_mu = {"name": "fedprox", "proximal_mu": float("nan")}
    out = [
        _rej("NaN strategy parameter", job(0, nan_mu), "non_finite", "body.config.strategy.proximal_mu"),
        _rej("settings nested twice", job(1, {"name": {"x": 1}}), "schema", "body.config.strategy.name"),
        _rej(
            "round task without fencing token",
            seal(2, "round_task", task, round=7),
            "schema",
            "body.fencing_token",
        ),
    ]
    c.n = counter
    return out


def channel_rejections(c: Cases) -> list[dict[str, Any]]:
    """Records that are valid in every byte but were signed for somewhere else."""
    hb = wire.pack(hb_body())
    elsewhere = [
        ("signed for another topic", Channel(CHANNEL.deployment, "vectors.qflare.updates")),
        ("signed for the same topic under another prefix", Channel(CHANNEL.deployment, "x" + CHANNEL.topic)),
        ("signed for another deployment", Channel("qflare-elsewhere", CHANNEL.topic)),
    ]
    out = [_rej(name, c.seal("heartbeat", hb, channel=ch), "signature", "sig") for name, ch in elsewhere]
    # Version 1 signed no channel: its records are refused before any signature check.
    out.append(_rej("protocol version 1", c.seal("heartbeat", hb, v=1), "version", "v"))
    return out


def build_rejections(c: Cases) -> list[dict[str, Any]]:
    # Settings and channel cases come last, so the ids of the earlier cases stay what they were.
    return (
        envelope_rejections(c)
        + key_and_time_rejections(c)
        + body_rejections(c)
        + chunk_rejections(c)
        + settings_rejections(c)
        + channel_rejections(c)
    )
