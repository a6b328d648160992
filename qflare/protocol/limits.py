"""Every size bound the decoder enforces, in one place, with the reason for each default."""

from __future__ import annotations

from dataclasses import dataclass

MIB = 1024 * 1024

#: Bytes reserved in a record for everything but the body: the 3309-byte
#: signature, header fields and msgpack framing stay far below this.
ENVELOPE_HEADROOM = 16 * 1024
#: Kafka counts a whole record batch (headers, key, framing) against its size
#: settings, so every Kafka-side limit is the record limit plus this margin.
KAFKA_BATCH_OVERHEAD = 64 * 1024


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds checked before any allocation they would otherwise permit."""

    #: One Kafka record (one envelope). 8 MiB holds the 6.6 MB FedAvg CNN unchunked
    #: and sets the producer/consumer/topic sizes in ``qflare.kafka``.
    max_record_bytes: int = 8 * MIB
    #: One reassembled body; larger models must not be sent at all.
    max_message_bytes: int = 256 * MIB
    #: Nesting of arrays/maps inside a body (tensors sit at depth 3).
    max_depth: int = 16
    max_array_len: int = 100_000
    max_map_len: int = 4096
    #: Any msgpack str (names, ids, reasons); binary data uses ``max_record_bytes``.
    max_str_len: int = 64 * 1024
    #: Chunks per stream: max_message_bytes / chunk size with room to spare.
    max_chunks: int = 4096

    @property
    def chunk_body_bytes(self) -> int:
        """Largest body that still fits one record; bigger bodies are chunked."""
        return self.max_record_bytes - ENVELOPE_HEADROOM

    @property
    def kafka_max_bytes(self) -> int:
        """Value for max.message.bytes / max_request_size / max_partition_fetch_bytes."""
        return self.max_record_bytes + KAFKA_BATCH_OVERHEAD


DEFAULT_LIMITS = Limits()
