"""The device runtime: identity, enrolment, heartbeats, deregistration.

A device owns an ML-DSA-65 key (a 0600 file it generates on first start) and
signs everything it sends. All output goes through its :class:`Link`, so a
broker outage only delays messages; the runtime itself never exits because of
one.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field
from pathlib import Path

from edge.app import DeviceApp
from edge.link import Link
from qflare.crypto import KeyFile, Signer, generate_key, read_key, write_key
from qflare.protocol import seal
from qflare.protocol.devices import Deregistration, Enrollment, Heartbeat
from qflare.protocol.topics import Topics


def load_or_create_key(path: Path) -> KeyFile:
    """The device's key pair: read it, or generate and store it (mode 0600) on first start."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_key(path, generate_key())
    return read_key(path)


@dataclass
class DeviceConfig:
    device_id: str
    token: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    heartbeat_interval_s: float = 5.0


class DeviceRuntime:
    def __init__(
        self,
        cfg: DeviceConfig,
        key: KeyFile,
        link: Link,
        topics: Topics,
        app: DeviceApp | None = None,
        *,
        signer: Signer | None = None,
    ) -> None:
        self.cfg = cfg
        self.key = key
        self.signer = signer or key.signer()
        self.link = link
        self.topics = topics
        self.app = app or DeviceApp()
        self.seq = 0
        self.alive = True
        self.paused = False
        self.enrolled_sent = False

    @property
    def device_id(self) -> str:
        return self.cfg.device_id

    def _send(self, topic: str, record: bytes, *, droppable: bool = False) -> None:
        self.link.send(topic, self.device_id.encode(), record, droppable=droppable)

    def enrol(self) -> None:
        body = Enrollment(
            device_id=self.device_id,
            public_key=self.key.public_key,
            token=self.cfg.token,
            labels=self.cfg.labels,
        )
        self._send(self.topics.enrollments.name, seal(body, self.signer, sender=self.device_id))
        self.enrolled_sent = True

    def heartbeat(self, state: str = "idle") -> None:
        self.seq += 1
        body = Heartbeat(self.device_id, self.seq, state)
        # A newer heartbeat supersedes an older one, so these may be dropped from a full spool.
        self._send(
            self.topics.heartbeats.name, seal(body, self.signer, sender=self.device_id), droppable=True
        )

    def deregister(self, reason: str = "device request") -> None:
        body = Deregistration(self.device_id, reason)
        self._send(self.topics.enrollments.name, seal(body, self.signer, sender=self.device_id))
        self.alive = False

    async def run(self, *, rng: random.Random | None = None) -> None:
        """Enrol once, then heartbeat until killed. Paused devices stay silent."""
        rng = rng or random.Random()
        if not self.enrolled_sent:
            self.enrol()
        # Spread the fleet's heartbeats over the interval instead of bursting together.
        await asyncio.sleep(rng.uniform(0, self.cfg.heartbeat_interval_s))
        while self.alive:
            if not self.paused:
                self.heartbeat()
            await asyncio.sleep(self.cfg.heartbeat_interval_s)
