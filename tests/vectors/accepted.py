"""Acceptance cases of the golden vectors (docs/protocol.md §13).

Each is a list of records that a receiver configured as ``RECEIVER`` must all
accept although no conforming encoder writes them that way, and what the last
one completes.
"""

from __future__ import annotations

import hashlib
import struct
from typing import Any

from qflare.protocol import wire
from qflare.protocol.devices import Heartbeat
from qflare.protocol.envelope import Chunk
from qflare.protocol.messages import ModelChunk
from tests.vectors.cases import PARSE, TS, Cases, fixed_id, hb_body


def _lenient_envelope(c: Cases) -> bytes:
    """A heartbeat whose envelope keys are reversed and whose ints are not in shortest form."""
    raw = wire.unpack(c.seal("heartbeat", wire.pack(hb_body(seq=7))), PARSE)
    assert isinstance(raw, dict)
    out = bytearray(wire.map_header(12))
    for key in reversed(list(raw)):
        out += wire.pack(key)
        value = raw[key]
        if key == "v":
            out += b"\xcc" + bytes([value])  # uint8 form of a fixint
        elif key == "ts_ms":
            out += b"\xd3" + struct.pack(">q", value)
        else:
            out += wire.pack(value)
    return bytes(out)


def acceptances(c: Cases) -> list[dict[str, Any]]:
    # Body keys in reverse order, metrics unsorted as int, float32 and float64, seq as uint16.
    lenient = (
        b"\x84\xa7metrics\x83\xa3mem\xca" + struct.pack(">f", 0.25) + b"\xa3cpu\x01\xa3gpu\xcb"
        + struct.pack(">d", 0.5) + b"\xa5state\xa4idle\xa3seq\xcd\x00\x2a\xa9device_id\xa5dev-1"
    )  # fmt: skip
    canonical = wire.pack(Heartbeat("dev-1", 42, "idle", {"cpu": 1.0, "gpu": 0.5, "mem": 0.25}).to_body())
    whole, stream = c.whole, fixed_id(TS, 102)
    digest = hashlib.sha256(whole).digest()
    cuts = [0, 7, 107, len(whole)]

    def piece(index: int, ts: int, stream_: bytes = stream) -> bytes:
        body = ModelChunk(
            "model_update", len(whole), cuts[index], digest, whole[cuts[index] : cuts[index + 1]]
        )
        return c.seal(
            "model_chunk", wire.pack(body.to_body()), round=7, ts_ms=ts, chunk=Chunk(stream_, index, 3)
        )

    resent = fixed_id(TS, 103)

    lenient_record = c.seal("heartbeat", lenient)
    envelope = _lenient_envelope(c)
    return [
        {
            "name": "lenient body",
            "records": [lenient_record.hex()],
            "expect": {"type": "heartbeat", "ts_ms": TS, "canonical_body": canonical.hex()},
        },
        {
            "name": "lenient envelope",
            "records": [envelope.hex()],
            "expect": {"type": "heartbeat", "ts_ms": TS, "canonical_body": wire.pack(hb_body(seq=7)).hex()},
        },
        {
            "name": "unequal slices, out of order, a re-sent index, differing ts_ms",
            "records": [
                r.hex() for r in (piece(2, TS + 1000), piece(2, TS + 2000), piece(0, TS), piece(1, TS - 1000))
            ],
            "expect": {
                "type": "model_update",
                "id": stream.hex(),
                "ts_ms": TS,
                "canonical_body": whole.hex(),
            },
        },
        {
            # "The header of chunk 0" is that of the first copy received of the chunk with index 0.
            "name": "index 0 re-sent with another ts_ms: the first copy's header stands",
            "records": [
                r.hex()
                for r in (
                    piece(1, TS + 3000, resent),
                    piece(0, TS + 1000, resent),
                    piece(0, TS + 2000, resent),
                    piece(2, TS + 4000, resent),
                )
            ],
            "expect": {
                "type": "model_update",
                "id": resent.hex(),
                "ts_ms": TS + 1000,
                "canonical_body": whole.hex(),
            },
        },
    ]
