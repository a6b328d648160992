"""The five servers of the local stack, in start order."""

from devstack.base import Server
from devstack.servers.elasticsearch import Elasticsearch
from devstack.servers.jaeger import Jaeger
from devstack.servers.kafka import Kafka
from devstack.servers.postgres import Postgres
from devstack.servers.redis import Redis
from devstack.settings import StackSettings

__all__ = ["Elasticsearch", "Jaeger", "Kafka", "Postgres", "Redis", "all_servers"]


def all_servers(cfg: StackSettings) -> list[Server]:
    return [Kafka(cfg), Postgres(cfg), Redis(cfg), Elasticsearch(cfg), Jaeger(cfg)]
