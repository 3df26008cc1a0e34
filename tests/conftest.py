"""Shared fixtures: real Redis-compatible and NATS servers on free ports, started per session.

Tests that need a server of their own (to kill, pause or restart it) use the ``*_factory``
fixtures, which stop whatever they started when the test ends.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Callable, Iterator

import nats
import nats.aio.client
import pytest
from hypothesis import HealthCheck, settings
from redis.asyncio import Redis

from backbeat.embedded import NatsCluster, NatsServer, RedisClusterServers, RedisServer
from backbeat.service.nats_permissions import ANY_CLUSTER, NatsRole, NatsUser, role_users

# A test that runs into its timeout first prints every thread's and every asyncio task's stack.
pytest_plugins = ["tests.hang_report"]

# Property tests check behaviour, not speed: no per-example deadline (a loaded CI machine or
# tracemalloc would otherwise fail them); a failing example is printed for reproduction.
settings.register_profile(
    "backbeat", deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True
)
settings.load_profile("backbeat")


@pytest.fixture(scope="session")
def redis_servers() -> Iterator[list[RedisServer]]:
    """Three independent Redis masters (no replication), as Redlock wants them."""
    servers = [RedisServer() for _ in range(3)]
    try:
        for server in servers:
            server.start()
        yield servers
    finally:
        for server in servers:
            server.close()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisClusterServers]:
    """A Redis Cluster: three masters with one replica each (``url`` is ``redis+cluster://``).
    Nothing here kills a node, so a node is taken for failed only after 5 s (a loaded machine
    must not set off a failover under a test); tests that kill a master start their own."""
    cluster = RedisClusterServers(masters=3, replicas=1, node_timeout_ms=5000)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def redis_cluster_factory() -> Iterator[Callable[..., RedisClusterServers]]:
    """Start private Redis Clusters (e.g. to kill a master); all are stopped after the test."""
    started: list[RedisClusterServers] = []

    def start(**kwargs: object) -> RedisClusterServers:
        cluster = RedisClusterServers(**kwargs)  # type: ignore[arg-type]
        started.append(cluster)
        cluster.start()
        return cluster

    yield start
    for cluster in started:
        cluster.close()


@pytest.fixture(scope="session")
def redis_server(redis_servers: list[RedisServer]) -> RedisServer:
    return redis_servers[0]


#: The user of the shared NATS server that may do everything: tests use it to set the scene
#: (and to play an attacker); components under test use their role's user
#: (``nats_server.url_as(NatsRole.AGENT)``).
HARNESS_USER = "harness"


def role_test_users(cluster_id: str | None = ANY_CLUSTER) -> list[NatsUser]:
    """The shipped per-role users with fresh passwords, plus the all-powerful harness user."""
    passwords = {role: secrets.token_urlsafe(18) for role in NatsRole}
    harness = NatsUser(HARNESS_USER, secrets.token_urlsafe(18), None)
    return [harness, *role_users(passwords, cluster_id)]


@pytest.fixture(scope="session")
def nats_server() -> Iterator[NatsServer]:
    """NATS with JetStream and the per-role users of every cluster; ``url`` is the harness's."""
    with NatsServer(users=role_test_users()) as server:
        yield server  # type: ignore[misc]


@pytest.fixture
def nats_cluster() -> Iterator[NatsCluster]:
    """Three NATS servers joined by routes, JetStream on each (its own store), with the per-role
    users of every cluster; started when JetStream has a meta leader, stopped after the test
    (which may kill and restart nodes: ``nats_cluster.nodes[i]``). ``url`` names all three."""
    with NatsCluster(3, users=role_test_users()) as cluster:
        yield cluster


@pytest.fixture
def redis_factory() -> Iterator[Callable[..., RedisServer]]:
    """Start private Redis servers (e.g. to kill or restart); all are stopped after the test."""
    started: list[RedisServer] = []

    def start(**kwargs: object) -> RedisServer:
        server = RedisServer(**kwargs)  # type: ignore[arg-type]
        started.append(server)
        server.start()
        return server

    yield start
    for server in started:
        server.close()


@pytest.fixture
def nats_factory() -> Iterator[Callable[..., NatsServer]]:
    """Start private NATS servers with JetStream (``user=``/``password=`` to require auth);
    all are stopped after the test."""
    started: list[NatsServer] = []

    def start(*, user: str | None = None, password: str | None = None) -> NatsServer:
        server = NatsServer(user=user, password=password)
        started.append(server)
        server.start()
        return server

    yield start
    for server in started:
        server.close()


@pytest.fixture
def cluster_id(request: pytest.FixtureRequest) -> str:
    """A cluster id unique to the test, so tests sharing servers never see each other's keys."""
    name = request.node.name.replace("[", "-").replace("]", "").replace("/", "-")
    return f"t-{name}"[:60]


@pytest.fixture
async def redis(redis_server: RedisServer) -> AsyncIterator[Redis]:
    """A client of the session's Redis server."""
    client = Redis.from_url(redis_server.url)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def nc(nats_server: NatsServer) -> AsyncIterator[nats.aio.client.Client]:
    """A connection to the session's NATS server."""
    client = await nats.connect(nats_server.url)
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
def lambda_env(
    cluster_id: str,
    redis_server: RedisServer,
    nats_server: NatsServer,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[None]:
    """The rollup function's environment, as the Lambda runtime gives it, on the session's
    servers; the function's runtime state is reset before and after."""
    from reverb_rollup import process
    from tests.rollup.test_runtimes import function_env

    for name, value in function_env(cluster_id, redis_server, nats_server).items():
        if name.startswith(("BACKBEAT_", "REDIS_", "NATS_", "LOG_")):
            monkeypatch.setenv(name, value)
    process.reset_runtime()
    yield
    process.reset_runtime()
