"""The one place the hostile suite signs records.

Signatures will soon bind a deployment id and the topic (a channel argument to
``seal``/``Decoder``). Every signed hostile record goes through ``sign`` or
``sign_parts`` here, so that change is a one-line edit in each.
"""

from __future__ import annotations

from collections.abc import Sequence

from qflare.crypto import Signer
from qflare.protocol import Body, seal, wire
from qflare.protocol.envelope import Chunk, seal_parts


def sign(
    body: Body,
    signer: Signer,
    *,
    sender: str,
    topic: str,
    round: int | None = None,
    ts_ms: int | None = None,
) -> bytes:
    """One signed record of ``body`` meant for ``topic``."""
    del topic  # bound into the signature once the protocol takes a channel
    return seal(body, signer, sender=sender, round=round, ts_ms=ts_ms)


def sign_parts(
    type_: str,
    body: Sequence[wire.Buffer],
    signer: Signer,
    *,
    sender: str,
    topic: str,
    chunk: Chunk | None = None,
) -> bytes:
    """A signed record of an already-encoded (possibly malformed) body, or one chunk of a stream."""
    del topic  # as in ``sign``
    return seal_parts(type_, body, signer, sender=sender, chunk=chunk)
