"""The device runtime: identity, enrolment, heartbeats, deregistration.

A device owns an ML-DSA-65 key (a 0600 file it generates on first start) and
signs everything it sends. All output goes through its :class:`Link`, so a
broker outage only delays messages; the runtime itself never exits because of
one. Given an :class:`~edge.enrolment.EnrollmentResults`, it also reads the
registry's answer to its enrolment, and stops with a clear error when refused.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from edge.app import DeviceApp, DeviceContext, Failure
from edge.enrolment import EnrollmentRefused, EnrollmentResults
from edge.link import Link
from qflare.crypto import KeyFile, Signer, generate_key, key_id, read_key, write_key
from qflare.crypto.enrolment import rotation_proof, token_id, token_key, token_mac
from qflare.errors import ConfigError
from qflare.protocol import seal
from qflare.protocol.devices import (
    DECLARED_EXAMPLES_LABEL,
    RESERVED_LABELS,
    Deregistration,
    Enrollment,
    EnrollmentResult,
    Heartbeat,
)
from qflare.protocol.envelope import new_message_id
from qflare.protocol.topics import Topics

log = structlog.get_logger("qflare.edge.runtime")


def load_or_create_key(path: Path) -> KeyFile:
    """The device's key pair: read it, or generate and store it (mode 0600) on first start."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_key(path, generate_key())
    return read_key(path)


def enrolment(
    device_id: str,
    public_key: bytes,
    token: str | None,
    scope: str,
    labels: dict[str, str] | None = None,
    previous: Signer | None = None,
) -> Enrollment:
    """An enrolment body: the token as its id and MAC only, and a rotation proof by ``previous``."""
    kid = key_id(public_key)
    tid = mac = proof = None
    if token:
        mac_key = token_key(token)
        tid, mac = token_id(mac_key), token_mac(mac_key, scope, device_id, kid)
    if previous is not None:
        proof = rotation_proof(previous, scope, device_id, kid)
    return Enrollment(
        device_id=device_id,
        public_key=public_key,
        token_id=tid,
        token_mac=mac,
        rotation_proof=proof,
        labels=dict(labels or {}),
    )


@dataclass
class DeviceConfig:
    device_id: str
    #: The operator's enrolment token. It never leaves the process: the enrolment
    #: carries only its id and a MAC bound to ``scope``, the device id and the key id.
    token: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    heartbeat_interval_s: float = 5.0
    #: The deployment the MAC binds: ``KafkaSettings.deployment_id``.
    scope: str = ""
    #: The dataset size this device declares at enrolment (label ``qflare.num_examples``): the
    #: most its updates may claim, and what the server weights them by. None: not declared.
    num_examples: int | None = None

    def enrolment_labels(self) -> dict[str, str]:
        """The labels the enrolment carries: ``labels``, and the declared size when set."""
        labels = dict(self.labels)
        reserved = sorted(RESERVED_LABELS & set(labels))
        if reserved:
            raise ConfigError(
                f"label {reserved[0]} is set by the operator on enrolment tokens, not by a device",
                field=f"labels.{reserved[0]}",
            )
        if self.num_examples is not None:
            declared = labels.get(DECLARED_EXAMPLES_LABEL)
            if declared is not None and declared != str(self.num_examples):
                raise ConfigError(
                    f"label {DECLARED_EXAMPLES_LABEL}={declared} contradicts num_examples "
                    f"{self.num_examples}",
                    field=f"labels.{DECLARED_EXAMPLES_LABEL}",
                )
            labels[DECLARED_EXAMPLES_LABEL] = str(self.num_examples)
        return labels


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
        #: What the app's handlers see of this device (partition and state directory set by its host).
        self.context = DeviceContext(cfg.device_id)
        #: Failed replies so far, and the last one: a device that cannot train still runs, and says so.
        self.failures = 0
        self.last_failure: Failure | None = None
        self.seq = 0
        self.alive = True
        self.paused = False
        self.enrolled_sent = False
        #: Message id of the last enrolment sent: the registry's answer names it.
        self.enrollment_id = b""
        #: The registry's answer, once read (see ``wait_enrolled``).
        self.enrollment: EnrollmentResult | None = None

    @property
    def device_id(self) -> str:
        return self.cfg.device_id

    def _send(self, topic: str, record: bytes, *, droppable: bool = False) -> None:
        self.link.send(topic, self.device_id.encode(), record, droppable=droppable)

    def enrol(self, *, previous: Signer | None = None) -> None:
        """Ask to join; ``previous`` (the current key, when rotating to this one) signs the proof."""
        body = enrolment(
            self.device_id,
            self.key.public_key,
            self.cfg.token,
            self.cfg.scope,
            self.cfg.enrolment_labels(),
            previous,
        )
        self.enrollment_id = new_message_id()
        record = seal(
            body,
            self.signer,
            self.topics.enrollments.channel,
            sender=self.device_id,
            msg_id=self.enrollment_id,
        )
        self._send(self.topics.enrollments.name, record)
        self.enrolled_sent = True

    async def wait_enrolled(
        self, results: EnrollmentResults, timeout_s: float | None = None
    ) -> EnrollmentResult:
        """The registry's acceptance of the last enrolment sent; raises ``EnrollmentRefused``
        (reason and field as the registry gave them) or, after ``timeout_s``, ``EnrollmentTimeout``.
        Start ``results`` before calling ``enrol`` so the answer cannot be missed."""
        try:
            self.enrollment = await results.wait(self.device_id, self.enrollment_id, timeout_s)
        except EnrollmentRefused as exc:
            self.enrollment = exc.result
            raise
        return self.enrollment

    def failed(self, kind: str, failure: Failure, *, job_id: str, round: int) -> None:
        """Count and log a failed reply (the caller sends it as a ``round_failure``)."""
        self.failures += 1
        self.last_failure = failure
        log.warning(
            f"{kind} failed",
            device=self.device_id,
            job_id=job_id,
            round=round,
            reason=str(failure.reason),
            error=failure.message,
        )

    def heartbeat(self, state: str = "idle") -> None:
        self.seq += 1
        body = Heartbeat(self.device_id, self.seq, state)
        # A newer heartbeat supersedes an older one, so these may be dropped from a full spool.
        self._send(
            self.topics.heartbeats.name,
            seal(body, self.signer, self.topics.heartbeats.channel, sender=self.device_id),
            droppable=True,
        )

    def deregister(self, reason: str = "device request") -> None:
        body = Deregistration(self.device_id, reason)
        self._send(
            self.topics.enrollments.name,
            seal(body, self.signer, self.topics.enrollments.channel, sender=self.device_id),
        )
        self.alive = False

    async def run(
        self, *, rng: random.Random | None = None, results: EnrollmentResults | None = None
    ) -> None:
        """Enrol once, then heartbeat until killed. Paused devices stay silent.

        With ``results``, the registry's answer is awaited alongside the heartbeats: a
        refusal is logged as an error naming the registry's reason, and the device stops.
        """
        rng = rng or random.Random()
        if not self.enrolled_sent:
            self.enrol()
        watch = asyncio.create_task(self._watch(results)) if results is not None else None
        try:
            # Spread the fleet's heartbeats over the interval instead of bursting together.
            await asyncio.sleep(rng.uniform(0, self.cfg.heartbeat_interval_s))
            while self.alive:
                if not self.paused:
                    self.heartbeat()
                await asyncio.sleep(self.cfg.heartbeat_interval_s)
        finally:
            if watch is not None:
                watch.cancel()

    async def _watch(self, results: EnrollmentResults) -> None:
        try:
            result = await self.wait_enrolled(results)
        except EnrollmentRefused as exc:
            log.error(
                "enrolment refused",
                device=self.device_id,
                reason=exc.registry_reason,
                field=exc.field,
                error=str(exc),
            )
            self.alive = False
            return
        log.info("enrolled", device=self.device_id, outcome=result.reason)
