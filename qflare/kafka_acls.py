"""Who may do what on the broker: the ACLs of one deployment, and granting them.

Each service has its own principal, all devices share one, and an operator
(``admin``) is the only super user. Write access follows the data flow of
docs/architecture.md: only the registry writes ``qflare.devices``, only the
scheduler writes round tasks and its faust changelogs, devices write only
enrolments, heartbeats and updates. Nobody but the super user holds DELETE or
ALTER on a topic, so records and topics cannot be deleted and configs (a
compacted topic's cleanup policy) cannot be changed by a service or device.

Topic names carry the deployment's prefix, so the bindings are made per
prefix: ``stack up`` grants the unprefixed deployment, and a harness or
``qflare demo`` that runs on its own prefix grants that one (as the admin).
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from enum import IntEnum

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import for_code
from aiokafka.protocol.admin import CreateAclsRequest

from qflare.errors import TopicSetupError
from qflare.kafka import KafkaSettings, make_admin
from qflare.protocol.channel import DEFAULT_DEPLOYMENT
from qflare.protocol.topics import topics


class Resource(IntEnum):
    TOPIC = 2
    GROUP = 3
    CLUSTER = 4


class Pattern(IntEnum):
    LITERAL = 3
    PREFIXED = 4


class Op(IntEnum):
    READ = 3
    WRITE = 4
    CREATE = 5
    DESCRIBE = 8


_ALLOW = 3
#: The broker has no authorizer (a stack from before authentication): nothing to grant.
_SECURITY_DISABLED = 54
SERVICES = ("registry", "scheduler", "aggregator", "audit")
#: Base topic field -> (writers, readers); "audit" reads every topic to chain it.
FLOWS: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    "enrollments": (frozenset({"device"}), frozenset({"registry"})),
    "enrollment_results": (frozenset({"registry"}), frozenset({"device"})),
    "heartbeats": (frozenset({"device"}), frozenset({"registry"})),
    # The registry reads its own records back, answering a forged or stale one with the current.
    "devices": (frozenset({"registry"}), frozenset({"registry", "scheduler", "aggregator", "device"})),
    "health": (frozenset({"registry"}), frozenset({"scheduler", "device"})),
    "rounds": (frozenset({"scheduler"}), frozenset({"aggregator", "device"})),
    "models": (frozenset({"aggregator"}), frozenset({"device", "scheduler"})),
    "updates": (frozenset({"device"}), frozenset({"aggregator"})),
    "rounds_complete": (frozenset({"aggregator"}), frozenset({"scheduler", "device"})),
    "audit": (frozenset(SERVICES), frozenset()),
    # Signed chain heads: only the audit service vouches for its chain (verify reads as admin).
    "audit_heads": (frozenset({"audit"}), frozenset({"audit"})),
    # The scheduler re-queues "resume" for its own jobs; operators write through ``admin``.
    "jobs": (frozenset({"scheduler"}), frozenset({"scheduler", "aggregator"})),
    # Operators write through ``admin``; the aggregator sends its quarantine ``suspend`` here.
    "registry_control": (frozenset({"aggregator"}), frozenset({"registry"})),
    # Operators import models through ``admin``; only the aggregator keeps a model store.
    "model_store": (frozenset(), frozenset({"aggregator"})),
}


@dataclass(frozen=True, slots=True)
class Binding:
    principal: str
    resource: Resource
    name: str
    pattern: Pattern
    op: Op

    def request(self) -> CreateAclsRequest:
        return CreateAclsRequest(
            int(self.resource),
            self.name,
            int(self.pattern),
            f"User:{self.principal}",
            "*",
            int(self.op),
            _ALLOW,
        )


def bindings(
    prefix: str = "", *, registry_group: str = "qflare-registry", scheduler_app: str = "qflare-scheduler"
) -> list[Binding]:
    """Every ALLOW binding of the deployment whose topics carry ``prefix``."""
    # Only the names matter here; ACLs follow the prefix, whatever the deployment id.
    t = topics(prefix, deployment=DEFAULT_DEPLOYMENT)
    out: list[Binding] = []
    for field, (writers, readers) in FLOWS.items():
        name = getattr(t, field).name
        for who in writers:
            out.append(Binding(who, Resource.TOPIC, name, Pattern.LITERAL, Op.WRITE))
        for who in readers | {"audit"}:
            out.append(Binding(who, Resource.TOPIC, name, Pattern.LITERAL, Op.READ))
        # Services create missing topics of their deployment at start; devices never do, so a
        # device cannot pre-create a state topic with the wrong cleanup policy.
        for who in SERVICES:
            out.append(Binding(who, Resource.TOPIC, name, Pattern.LITERAL, Op.CREATE))
    out.append(Binding("registry", Resource.GROUP, registry_group, Pattern.LITERAL, Op.READ))
    # faust names its group, changelog and leader topics after the app id (which carries the prefix).
    app = f"{scheduler_app}{prefix}".rstrip(".")
    out.append(Binding("scheduler", Resource.GROUP, app, Pattern.LITERAL, Op.READ))
    for op in (Op.READ, Op.WRITE, Op.CREATE, Op.DESCRIBE):
        out.append(Binding("scheduler", Resource.TOPIC, f"{app}-", Pattern.PREFIXED, op))
    return out


async def grant(admin: AIOKafkaAdminClient, prefix: str = "", **names: str) -> int:
    """Create the deployment's bindings (idempotent) with a started super-user admin; returns how many."""
    wanted = bindings(prefix, **names)
    await admin._client.bootstrap()
    node = admin._client.get_random_node()
    for binding in wanted:
        response = await admin._send_request_to_node(node, binding.request())
        for code, message in response.creation_responses:
            if code == _SECURITY_DISABLED:
                return 0
            if code != 0:
                error = for_code(code)
                raise TopicSetupError(
                    f"{error.__name__}: {message}", field=binding.name, retriable=error.retriable
                )
    return len(wanted)


async def grant_deployment(settings: KafkaSettings | None = None, prefix: str = "", **names: str) -> int:
    """``grant`` with an admin client of its own (``settings`` must log in as the super user)."""
    admin = make_admin(settings)
    await admin.start()
    try:
        return await grant(admin, prefix, **names)
    finally:
        await admin.close()


def grant_now(settings: KafkaSettings | None = None, prefix: str = "", **names: str) -> int:
    """``grant_deployment`` from synchronous code, even inside a running event loop (its own thread)."""
    result: list[int] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            result.append(asyncio.run(grant_deployment(settings, prefix, **names)))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread, re-raised there
            errors.append(exc)

    worker = threading.Thread(target=run, name="kafka-acls")
    worker.start()
    worker.join()
    if errors:
        raise errors[0]
    return result[0]
