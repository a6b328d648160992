"""Golden vectors (tests/vectors/envelopes.json): exact bytes, valid signatures, expected rejections."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest

from qflare.crypto import kem_backend, key_id, signature_backends
from qflare.crypto.keys import parse_key
from qflare.errors import KeyFormatError, ProtocolError
from qflare.protocol import Channel, Decoder, KeyRing, Reassembler, wire
from qflare.protocol.envelope import Chunk, Header, encode_envelope, parse_envelope
from qflare.protocol.messages import BODY_TYPES

VECTORS = Path(__file__).resolve().parents[2] / "vectors"
DATA: dict[str, Any] = json.loads((VECTORS / "envelopes.json").read_text())
TS = DATA["envelopes"][0]["header"]["ts_ms"]
LIMITS = wire.WireLimits(1 << 20, 16, 1000, 100, 1000, 1 << 20)
#: Where every vector was signed for; the receiver reads every record from there.
DEPLOYMENT, TOPIC = DATA["receiver"]["deployment"], DATA["receiver"]["topic"]
CHANNEL = Channel(DEPLOYMENT, TOPIC)


def _header(fields: dict[str, Any]) -> Header:
    chunk = fields["chunk"]
    return Header(
        v=fields["v"],
        type=fields["type"],
        id=bytes.fromhex(fields["id"]),
        sender=fields["sender"],
        key_id=bytes.fromhex(fields["key_id"]),
        ts_ms=fields["ts_ms"],
        round=fields["round"],
        body_digest=bytes.fromhex(fields["body_digest"]),
        chunk=None
        if chunk is None
        else Chunk(bytes.fromhex(chunk["stream"]), chunk["index"], chunk["count"]),
        sig_alg=fields["sig_alg"],
    )


def _decoder() -> Decoder:
    """The receiver every rejection and acceptance case assumes (the vectors' ``receiver``)."""
    spec = DATA["receiver"]
    keys = KeyRing()
    for known in spec["known_keys"]:
        keys.add(known["owner"], bytes.fromhex(DATA[known["key"]]["public_key"]))
    return Decoder(
        keys,
        clock=lambda: spec["now_ms"],
        max_age_ms=spec["max_age_ms"],
        max_skew_ms=spec["max_skew_ms"],
        self_signed=spec["self_signed"],
        check_finite=spec["check_finite"],
        deployment=spec["deployment"],
    )


def test_keys_derive_from_their_seeds() -> None:
    sk = DATA["signing_key"]
    public = bytes.fromhex(sk["public_key"])
    for backend in signature_backends().values():
        try:
            signer = backend.signer_from_seed(bytes.fromhex(sk["seed"]))
        except KeyFormatError:
            continue  # liboqs cannot import ML-DSA seeds (documented limitation)
        assert signer.public_key == public
    assert key_id(public).hex() == sk["key_id"] == hashlib.sha256(public).hexdigest()[:32]
    assert parse_key(sk["key_file"]).public_key == public
    kem = DATA["kem_key"]
    seed = bytes.fromhex(kem["seed"])
    assert kem_backend().public_key_from_seed(seed).hex() == kem["public_key"]
    assert kem_backend().decapsulate(seed, bytes.fromhex(kem["ciphertext"])).hex() == kem["shared_secret"]


@pytest.mark.parametrize("vector", DATA["envelopes"], ids=[v["name"] for v in DATA["envelopes"]])
def test_envelope_bytes_are_exact_and_signature_verifies(vector: dict[str, Any]) -> None:
    header = _header(vector["header"])
    body = bytes.fromhex(vector["body"])
    sig = bytes.fromhex(vector["sig"])
    # The body re-encodes to the same bytes through its typed class.
    typed = BODY_TYPES[header.type].from_body(wire.unpack(body, LIMITS))
    assert wire.pack(typed.to_body()) == body
    assert hashlib.sha256(body).digest() == header.body_digest
    channel = Channel(**vector["channel"])
    assert channel == CHANNEL
    assert header.signing_bytes(channel).hex() == vector["signing_bytes"]
    assert encode_envelope(header, [body], sig).hex() == vector["envelope"]
    parsed = parse_envelope(bytes.fromhex(vector["envelope"]))
    assert parsed.header == header
    public = bytes.fromhex(DATA["device_key" if header.type == "enrollment" else "signing_key"]["public_key"])
    for backend in signature_backends().values():
        assert backend.verify(public, header.signing_bytes(channel), sig)


def test_vectors_decode_and_the_chunks_reassemble() -> None:
    decoder = _decoder()
    reassembler = Reassembler(decoder)
    out = {}
    for vector in DATA["envelopes"]:
        message = reassembler.feed(decoder.decode(bytes.fromhex(vector["envelope"]), TOPIC))
        out[vector["name"]] = message
    assert out["model_chunk_0"] is None
    whole = out["model_chunk_1"]
    single = out["model_update"]
    assert whole is not None and single is not None
    assert whole.body == single.body
    assert whole.header.id == bytes.fromhex(DATA["envelopes"][2]["header"]["chunk"]["stream"])


VECTORS_BY_NAME = {v["name"]: v for v in DATA["envelopes"]}


@pytest.mark.parametrize("case", DATA["rejections"], ids=[c["name"] for c in DATA["rejections"]])
def test_rejection_vectors(case: dict[str, Any]) -> None:
    decoder = _decoder()
    reassembler = Reassembler(decoder)
    for name in case.get("preceded_by", []):  # accepted; a first chunk is held
        reassembler.feed(decoder.decode(bytes.fromhex(VECTORS_BY_NAME[name]["envelope"]), TOPIC))
    with pytest.raises(ProtocolError) as info:
        reassembler.feed(decoder.decode(bytes.fromhex(case["envelope"]), TOPIC))
    assert (info.value.reason, info.value.field) == (case["reason"], case["field"]), info.value


@pytest.mark.parametrize("case", DATA["accepted"], ids=[c["name"] for c in DATA["accepted"]])
def test_acceptance_vectors(case: dict[str, Any]) -> None:
    decoder = _decoder()
    reassembler = Reassembler(decoder)
    *held, last = [reassembler.feed(decoder.decode(bytes.fromhex(r), TOPIC)) for r in case["records"]]
    assert held == [None] * len(held)
    assert last is not None
    expect = case["expect"]
    assert (last.header.type, last.header.ts_ms) == (expect["type"], expect["ts_ms"])
    if "id" in expect:
        assert last.header.id.hex() == expect["id"]
    assert wire.pack(last.body.to_body()).hex() == expect["canonical_body"]


def test_rejections_cover_every_reason() -> None:
    reasons = {case["reason"] for case in DATA["rejections"]}
    assert reasons >= {
        "schema",
        "limit",
        "version",
        "unknown_key",
        "key_mismatch",
        "signature",
        "digest",
        "stale",
        "replay",
        "tensor",
        "non_finite",
        "chunk",
    }


def _strip_random(doc: dict[str, Any]) -> dict[str, Any]:
    """Drop what depends on signing or encapsulation randomness."""
    doc = json.loads(json.dumps(doc))
    for vector in doc["envelopes"]:
        del vector["sig"], vector["envelope"]
    for case in doc["rejections"]:
        del case["envelope"]
    for case in doc["accepted"]:
        del case["records"]
    del doc["kem_key"]["ciphertext"], doc["kem_key"]["shared_secret"]
    return doc


def test_generator_reproduces_every_deterministic_byte() -> None:
    spec = importlib.util.spec_from_file_location("qflare_vector_generator", VECTORS / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert _strip_random(module.build()) == _strip_random(DATA)
