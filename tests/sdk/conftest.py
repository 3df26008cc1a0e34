from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from backbeat.embedded import NatsServer, RedisServer
from tests.pulse.cluster import PulseProcess
from tests.sdk.pulses import pulse_replicas


@pytest.fixture
def pulse(
    redis_servers: list[RedisServer], nats_server: NatsServer, cluster_id: str, tmp_path: Path
) -> Iterator[PulseProcess]:
    """One real pulse replica (see tests/sdk/pulses.py)."""
    with pulse_replicas(1, redis_servers, nats_server, cluster_id, tmp_path) as (proc,):
        yield proc


@pytest.fixture
def replicas(
    redis_servers: list[RedisServer], nats_server: NatsServer, cluster_id: str, tmp_path: Path
) -> Iterator[list[PulseProcess]]:
    """Two real pulse replicas of one cluster."""
    with pulse_replicas(2, redis_servers, nats_server, cluster_id, tmp_path) as procs:
        yield procs
