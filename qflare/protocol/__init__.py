"""The wire protocol: signed msgpack envelopes, typed bodies, tensors, chunking, topics.

Sending::

    spec = topics(prefix, deployment="prod-eu").updates
    record = seal(body, signer, spec.channel, sender="dev-1", round=3)          # one record
    records = seal_chunked(update, signer, spec.channel, sender="dev-1", round=3) # one or more

Receiving::

    decoder = Decoder(key_ring, deployment="prod-eu", allowed_types=spec.types, max_age_ms=spec.max_age_ms)
    reassembler = Reassembler(decoder)
    message = reassembler.feed(decoder.decode(record.value, record.topic))  # None until complete

Typed bodies live in ``devices``, ``training``, ``control`` and ``messages``.
"""

from qflare.protocol.body import Body
from qflare.protocol.channel import Channel
from qflare.protocol.chunks import Reassembler, seal_chunked
from qflare.protocol.decoder import Decoder, KeyRing, Message
from qflare.protocol.envelope import seal
from qflare.protocol.limits import Limits
from qflare.protocol.tensors import Tensor
from qflare.protocol.topics import TopicSpec, topics

__all__ = [
    "Body",
    "Channel",
    "Decoder",
    "KeyRing",
    "Limits",
    "Message",
    "Reassembler",
    "Tensor",
    "TopicSpec",
    "seal",
    "seal_chunked",
    "topics",
]
