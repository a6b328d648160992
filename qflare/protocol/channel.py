"""Where a record belongs: the deployment and the full topic name it is produced to.

Both are covered by every signature (protocol version 2) but neither travels in
the record: the producer signs for the channel it writes to, and the receiver
verifies against its own deployment id and the topic it read the record from.
A record copied to another topic, or to another deployment's broker, then no
longer verifies, so a command signed for one deployment cannot act on another.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from qflare.errors import ConfigError
from qflare.protocol.body import ID_PATTERN

#: Kafka's own rule for topic names.
TOPIC_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,249}")
DEFAULT_DEPLOYMENT = "qflare-dev"


def check_deployment(value: str) -> str:
    """``value`` if it is a valid deployment id (the id syntax of ``sender``), else ``ConfigError``."""
    if not ID_PATTERN.fullmatch(value):
        raise ConfigError(
            f"deployment id {value!r} must match {ID_PATTERN.pattern}", field="QFLARE_KAFKA_DEPLOYMENT_ID"
        )
    return value


@dataclass(frozen=True, slots=True)
class Channel:
    """The deployment id and full topic name a signature is bound to."""

    deployment: str
    topic: str

    def __post_init__(self) -> None:
        check_deployment(self.deployment)
        if not TOPIC_PATTERN.fullmatch(self.topic):
            raise ConfigError(f"{self.topic!r} is not a Kafka topic name", field="topic")
