"""Signed state rows: they read back only under their own table, key and signer."""

from __future__ import annotations

import json

import pytest

from qflare.crypto import generate_key
from qflare.errors import ProtocolError
from qflare.protocol.state import open_state, seal_state

VALUE = {"job_id": "j", "config": {"rounds": 2, "strategy": {"name": "fedavg"}}, "history": [{"round": 1}]}


def test_round_trip() -> None:
    key = generate_key()
    raw = seal_state(key.signer(), table="t", key="j", value=VALUE)
    assert open_state(raw, key.public_key, table="t", key="j") == VALUE


@pytest.mark.parametrize("where", ["key", "table", "signer", "flip", "json", "garbage"])
def test_anything_else_is_refused(where: str) -> None:
    key, other = generate_key(), generate_key()
    raw = seal_state(key.signer(), table="t", key="j", value=VALUE)
    table, row, public = "t", "j", key.public_key
    if where == "key":
        row = "k"
    elif where == "table":
        table = "u"
    elif where == "signer":
        public = other.public_key
    elif where == "flip":
        raw = raw[:20] + bytes([raw[20] ^ 1]) + raw[21:]
    elif where == "json":
        raw = json.dumps(VALUE).encode()
    else:
        raw = b"\x00\xff" * 40
    with pytest.raises(ProtocolError):
        open_state(raw, public, table=table, key=row)
