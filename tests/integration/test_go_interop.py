"""Interoperability with an independent Go client written from docs/protocol.md alone.

``interop/go`` re-encodes every golden vector byte for byte, verifies its signature and
rejects every rejection vector with the stated reason and field (``go test``); its
``qflare-verify sign`` command signs fresh envelopes in Go with the vector keys, and here
the Python decoder must accept every one of them and re-encode each body to the same bytes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from qflare.crypto.enrolment import rotation_proof_ok, token_id, token_key, token_mac_ok
from qflare.errors import ProtocolError
from qflare.protocol import Decoder, KeyRing, Message, Reassembler, wire
from qflare.protocol.control import AuditEvent
from qflare.protocol.devices import Enrollment, EnrollmentResult, Heartbeat, declared_examples
from qflare.protocol.training import ModelUpdate

ROOT = Path(__file__).resolve().parents[2]
GO_DIR = ROOT / "interop" / "go"
VECTORS = ROOT / "tests" / "vectors" / "envelopes.json"
GO_TIMEOUT_S = 300


@pytest.fixture(scope="module")
def go() -> str:
    found = shutil.which("go") or next(
        (p for p in ("/usr/local/go/bin/go", "/usr/lib/go/bin/go") if os.access(p, os.X_OK)), None
    )
    if found is None:
        pytest.fail("the Go toolchain (`go`) is not installed or not on PATH; the Go interop test needs it")
    return found


def _go_env() -> dict[str, str]:
    env = dict(os.environ)
    # Fetch modules through the proxy as go.mod/go.sum pin them; no VCS stamping of the build.
    env["GOFLAGS"] = "-mod=mod -buildvcs=false"
    return env


def _run_go(go: str, *args: str) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            [go, *args],
            cwd=GO_DIR,
            env=_go_env(),
            capture_output=True,
            text=True,
            timeout=GO_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"`go {' '.join(args)}` ran past {GO_TIMEOUT_S} s:\n{exc.stdout!r}\n{exc.stderr!r}")


def test_go_client_reproduces_the_golden_vectors(go: str) -> None:
    result = _run_go(go, "test", "-count=1", "./...")
    if result.returncode != 0:
        pytest.fail(f"go test failed (exit {result.returncode}):\n{result.stdout}\n{result.stderr}")
    assert "ok" in result.stdout


@pytest.fixture(scope="module")
def go_signed(go: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("go-interop") / "signed.json"
    result = _run_go(go, "run", "./cmd/qflare-verify", "sign", "-vectors", str(VECTORS), "-out", str(out))
    if result.returncode != 0:
        pytest.fail(f"the Go signer failed (exit {result.returncode}):\n{result.stdout}\n{result.stderr}")
    doc: dict[str, Any] = json.loads(out.read_text())
    return doc


def _decoder(doc: dict[str, Any], deployment: str | None = None) -> Decoder:
    ring = KeyRing()
    ring.add(doc["signer"]["owner"], bytes.fromhex(doc["signer"]["public_key"]))
    return Decoder(ring, deployment=deployment or doc["channel"]["deployment"], self_signed=("enrollment",))


def _topic(doc: dict[str, Any]) -> str:
    """The topic the Go signer bound every record to: read them as from there."""
    topic: str = doc["channel"]["topic"]
    return topic


def _records(doc: dict[str, Any]) -> dict[str, bytes]:
    return {e["name"]: bytes.fromhex(e["envelope"]) for e in doc["envelopes"]}


def _check_update(update: ModelUpdate, owner: str) -> None:
    assert (update.job_id, update.round, update.device_id) == ("job-go", 3, owner)
    assert (update.base_version, update.num_examples) == (2, 70000)
    assert update.metrics == {"loss": 0.0625, "acc": 0.875}
    tensors = {t.name: t for t in update.tensors}
    assert [(t.name, t.dtype) for t in update.tensors] == [
        ("w", "<f4"),
        ("b", "<f2"),
        ("e", "bf16"),
        ("q", "|i1"),
        ("m", "|u1"),
        ("s", "<f4"),
    ]
    np.testing.assert_array_equal(tensors["w"].array, np.array([[0.5, -1.25], [2.0, 0.0]], np.float32))
    np.testing.assert_array_equal(tensors["b"].array, np.array([1.5], np.float16))
    # bfloat16 is held as its <u2 bit patterns: 1.0, -2.0, 3.5.
    np.testing.assert_array_equal(tensors["e"].array, np.array([0x3F80, 0xC000, 0x4060], np.uint16))
    np.testing.assert_array_equal(tensors["q"].array, np.array([-128, 0, 127], np.int8))
    np.testing.assert_array_equal(tensors["m"].array, np.array([[0, 255]], np.uint8))
    assert tensors["s"].array.shape == ()
    assert float(tensors["s"].array) == 1.0


def test_python_accepts_envelopes_signed_in_go(go_signed: dict[str, Any]) -> None:
    decoder = _decoder(go_signed)
    records = _records(go_signed)
    owner = go_signed["signer"]["owner"]
    ids = {e["name"]: bytes.fromhex(e["id"]) for e in go_signed["envelopes"]}

    hb = decoder.decode(records["heartbeat"], _topic(go_signed))
    assert (hb.header.type, hb.header.sender, hb.header.id) == ("heartbeat", owner, ids["heartbeat"])
    assert hb.header.key_id == bytes.fromhex(go_signed["signer"]["key_id"])
    assert isinstance(hb.body, Heartbeat)
    assert (hb.body.device_id, hb.body.seq, hb.body.state) == (owner, 300, "uploading")
    assert hb.body.metrics == {"cpu": 0.75, "mem": 1.0}

    mu = decoder.decode(records["model_update"], _topic(go_signed))
    assert mu.header.round == 3
    assert isinstance(mu.body, ModelUpdate)
    _check_update(mu.body, owner)

    en = decoder.decode(records["enrollment"], _topic(go_signed))
    device = go_signed["device"]
    assert (en.header.sender, en.header.key_id) == (device["owner"], bytes.fromhex(device["key_id"]))
    assert isinstance(en.body, Enrollment)
    assert en.body.device_id == device["owner"]
    assert en.body.public_key == bytes.fromhex(device["public_key"])
    # Go's token MAC and rotation proof verify here: the token itself is not in the body.
    mac_key, kid = token_key("go-token"), bytes.fromhex(device["key_id"])
    assert en.body.token_id == token_id(mac_key) and en.body.token_mac is not None
    assert token_mac_ok(mac_key, "go.", device["owner"], kid, en.body.token_mac)
    assert en.body.rotation_proof is not None
    signer_public_key = bytes.fromhex(go_signed["signer"]["public_key"])
    assert rotation_proof_ok(signer_public_key, "go.", device["owner"], kid, en.body.rotation_proof)
    assert en.body.labels == {"qflare.num_examples": "70000", "site": "go"}
    assert declared_examples(en.body.labels) == 70000

    au = decoder.decode(records["audit_event"], _topic(go_signed))
    assert isinstance(au.body, AuditEvent)
    assert au.body.ref_id == ids["heartbeat"]
    assert au.body.detail == {"n": 3, "ok": True, "none": None, "ratio": 0.5, "lang": "go"}

    er = decoder.decode(records["enrollment_result"], _topic(go_signed))
    assert isinstance(er.body, EnrollmentResult)
    assert (er.body.device_id, er.body.enrollment_id) == (device["owner"], ids["enrollment"])
    assert er.body.key_id == bytes.fromhex(device["key_id"])
    assert (er.body.status, er.body.reason, er.body.field) == ("accepted", "new", None)


def test_go_writes_every_body_in_the_canonical_form(go_signed: dict[str, Any]) -> None:
    """Keys in listed order, free-form maps sorted, floats as float64: Python re-encodes the same bytes."""
    decoder = _decoder(go_signed)
    for e in go_signed["envelopes"]:
        if e["type"] == "model_chunk":
            continue
        message = decoder.decode(bytes.fromhex(e["envelope"]), _topic(go_signed))
        assert wire.pack(message.body.to_body()).hex() == e["body"], e["name"]


def test_python_reassembles_a_stream_chunked_in_go(go_signed: dict[str, Any]) -> None:
    decoder = _decoder(go_signed)
    reassembler = Reassembler(decoder)
    records = _records(go_signed)
    chunks = sorted(name for name in records if name.startswith("model_chunk_"))
    assert len(chunks) == 2
    done: list[Message] = []
    for name in reversed(chunks):  # any order is accepted (§9)
        message = reassembler.feed(decoder.decode(records[name], _topic(go_signed)))
        if message is not None:
            done.append(message)
    assert len(done) == 1
    assert done[0].header.id == bytes.fromhex(go_signed["stream"])
    assert isinstance(done[0].body, ModelUpdate)
    _check_update(done[0].body, go_signed["signer"]["owner"])


@pytest.mark.parametrize(
    ("offset_from_end", "reason"),
    [(1, "signature"), (3309 // 2, "signature")],
)
def test_python_rejects_a_go_envelope_with_a_flipped_signature_byte(
    go_signed: dict[str, Any], offset_from_end: int, reason: str
) -> None:
    record = bytearray(_records(go_signed)["heartbeat"])
    record[-offset_from_end] ^= 0x01  # the record ends with the 3309 signature bytes
    with pytest.raises(ProtocolError) as caught:
        _decoder(go_signed).decode(bytes(record), _topic(go_signed))
    assert caught.value.reason == reason
    assert caught.value.field == "sig"


def test_go_signatures_bind_the_deployment_and_topic(
    go: str, go_signed: dict[str, Any], tmp_path: Path
) -> None:
    """A Go-signed record read from another topic, or by another deployment, does not verify in Python,
    and the Go receiver refuses the same records when told they came from elsewhere."""
    record = _records(go_signed)["heartbeat"]
    with pytest.raises(ProtocolError) as caught:
        _decoder(go_signed).decode(record, _topic(go_signed) + ".copy")
    assert (caught.value.reason, caught.value.field) == ("signature", "sig")
    with pytest.raises(ProtocolError) as caught:
        _decoder(go_signed, deployment="another-deployment").decode(record, _topic(go_signed))
    assert (caught.value.reason, caught.value.field) == ("signature", "sig")
    signed = tmp_path / "signed.json"
    signed.write_text(json.dumps(go_signed))
    same = _run_go(go, "run", "./cmd/qflare-verify", "verify", "-vectors", str(VECTORS), str(signed))
    assert same.returncode == 0, same.stdout + same.stderr
    moved = _run_go(
        go,
        "run",
        "./cmd/qflare-verify",
        "verify",
        "-vectors",
        str(VECTORS),
        "-topic",
        "elsewhere",
        str(signed),
    )
    assert moved.returncode != 0
    assert "REJECTED signature at sig" in moved.stdout, moved.stdout
