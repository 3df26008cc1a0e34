from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from backbeat.embedded import NatsServer, RedisServer
from tests.pulse.cluster import Pulses


@pytest.fixture
async def pulses(
    redis_servers: list[RedisServer], nats_server: NatsServer, cluster_id: str
) -> AsyncIterator[Pulses]:
    """Pulse nodes and servers in this process; every one is stopped after the test."""
    replicas = Pulses(cluster_id, [s.url for s in redis_servers], nats_server.url)
    yield replicas
    await replicas.close()
