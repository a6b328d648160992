"""Where to resume reading a partition of the updates topic, chunked updates included.

A chunked update spans several records. Committing the position after its
first chunks would lose them on a crash (the reassembly buffer is memory), so
the position to seek to on restart (``resume_offset``) stays at the first
chunk of any update still being reassembled. Records between there and
``next_offset`` were already handled: on restart only the chunks of the
streams still open at the checkpoint are fed again, everything else is
skipped, so nothing is counted or reported twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: (sender, stream id) of a chunked message.
StreamKey = tuple[str, bytes]


@dataclass(slots=True)
class Cursor:
    topic: str
    partition: int
    #: First offset not yet handled.
    next_offset: int = 0
    #: Streams still being reassembled -> (offset of their first chunk here, last activity in ms).
    open_streams: dict[StreamKey, tuple[int, int]] = field(default_factory=dict)
    #: Set on restart to the checkpoint's ``next_offset``: records below it were handled before.
    replay_until: int = 0
    dirty: bool = False

    @property
    def resume_offset(self) -> int:
        return min((first for first, _ in self.open_streams.values()), default=self.next_offset)

    def handled_before(self, offset: int) -> bool:
        """True for records a previous run already handled (re-read only for their open streams)."""
        return offset < self.replay_until

    def advance(self, offset: int) -> None:
        if offset + 1 > self.next_offset:
            self.next_offset = offset + 1
            self.dirty = True

    def resume_at(self, offset: int) -> None:
        """Continue at ``offset`` after a gap: the records before it left the log unread."""
        self.next_offset, self.dirty = offset, True

    def chunk_seen(self, key: StreamKey, offset: int, now_ms: int) -> None:
        first = self.open_streams.get(key, (offset, now_ms))[0]
        self.open_streams[key] = (min(first, offset), now_ms)
        self.dirty = True

    def stream_done(self, key: StreamKey) -> None:
        """The stream completed or failed: its chunks are never needed again."""
        if self.open_streams.pop(key, None) is not None:
            self.dirty = True

    def expire(self, cutoff_ms: int) -> list[StreamKey]:
        """Forget streams idle since before ``cutoff_ms`` (the reassembler evicts them too)."""
        gone = [k for k, (_, last) in self.open_streams.items() if last < cutoff_ms]
        for key in gone:
            self.stream_done(key)
        return gone

    # --- the checkpoint row ----------------------------------------------------------

    def streams_json(self) -> list[list[Any]]:
        return [
            [sender, stream.hex(), first]
            for (sender, stream), (first, _) in sorted(self.open_streams.items())
        ]

    @classmethod
    def restore(cls, topic: str, partition: int, next_offset: int, streams: list[Any], now_ms: int) -> Cursor:
        open_streams = {(str(s), bytes.fromhex(str(h))): (int(first), now_ms) for s, h, first in streams}
        return cls(topic, partition, next_offset, open_streams, replay_until=next_offset)
