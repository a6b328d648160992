"""The token MAC and the rotation proof bind the deployment, the device id and the key id."""

from __future__ import annotations

from edge.runtime import enrolment
from qflare.crypto import generate_key
from qflare.crypto.enrolment import rotation_proof_ok, token_id, token_key, token_mac_ok
from qflare.protocol import wire
from qflare.protocol.devices import Enrollment

LIMITS = wire.WireLimits(1 << 20, 16, 1000, 100, 1000, 1 << 20)


def test_the_token_never_travels_and_its_mac_binds_device_key_and_deployment() -> None:
    key, other = generate_key(), generate_key()
    token = "qft_example-token-not-secret"
    body = enrolment("dev-1", key.public_key, token, "deploy-a.", {"site": "lab"})
    assert token.encode() not in wire.pack(body.to_body())
    mac_key = token_key(token)
    assert body.token_id == token_id(mac_key) and body.token_mac is not None
    assert token_mac_ok(mac_key, "deploy-a.", "dev-1", key.key_id, body.token_mac)
    # The same MAC proves nothing for another device, key or deployment.
    assert not token_mac_ok(mac_key, "deploy-a.", "dev-2", key.key_id, body.token_mac)
    assert not token_mac_ok(mac_key, "deploy-a.", "dev-1", other.key_id, body.token_mac)
    assert not token_mac_ok(mac_key, "deploy-b.", "dev-1", key.key_id, body.token_mac)
    assert Enrollment.from_body(wire.unpack(wire.pack(body.to_body()), LIMITS)) == body


def test_a_rotation_proof_is_the_current_keys_signature_over_the_new_key_id() -> None:
    current, new, stranger = generate_key(), generate_key(), generate_key()
    body = enrolment("dev-1", new.public_key, None, "", previous=current.signer())
    assert body.rotation_proof is not None and body.token_id is None
    assert rotation_proof_ok(current.public_key, "", "dev-1", new.key_id, body.rotation_proof)
    assert not rotation_proof_ok(stranger.public_key, "", "dev-1", new.key_id, body.rotation_proof)
    assert not rotation_proof_ok(current.public_key, "", "dev-1", stranger.key_id, body.rotation_proof)
    forged = enrolment("dev-1", new.public_key, None, "", previous=new.signer())  # self-proved
    assert forged.rotation_proof is not None
    assert not rotation_proof_ok(current.public_key, "", "dev-1", new.key_id, forged.rotation_proof)
