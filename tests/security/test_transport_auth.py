"""NATS and Redis authentication: components take the credentials from the secret source
(env backend here) and put them into their connection URLs."""

from __future__ import annotations

from collections.abc import Callable

import nats
import nats.errors
import pytest
from nats.aio.client import Client as NatsClient
from redis.asyncio import Redis
from redis.exceptions import AuthenticationError, ResponseError

from backbeat.embedded import NatsServer, RedisServer
from backbeat.secrets import SecretsSettings, open_component_secrets
from backbeat.trigger import ReverbTrigger, TriggerSettings

pytestmark = pytest.mark.integration

NATS_PASSWORD = "n4ts-" + "p" * 20
REDIS_PASSWORD = "r3dis-" + "q" * 20


async def test_trigger_connects_with_credentials_from_secrets(
    nats_factory: Callable[..., NatsServer],
    redis_factory: Callable[..., RedisServer],
    monkeypatch: pytest.MonkeyPatch,
    cluster_id: str,
) -> None:
    nats_server = nats_factory(user="backbeat", password=NATS_PASSWORD)
    redis_server = redis_factory(password=REDIS_PASSWORD)
    bare_redis = f"redis://127.0.0.1:{redis_server.port}/0"
    # Without credentials both refuse.
    refused = NatsClient()
    with pytest.raises((nats.errors.NoServersError, nats.errors.Error, OSError)):
        await refused.connect(nats_server.bare_url, allow_reconnect=False, connect_timeout=2)
    await refused.close()  # a refused client still holds its socket until closed
    client = Redis.from_url(bare_redis)
    with pytest.raises((AuthenticationError, ResponseError)):
        await client.ping()
    await client.aclose()

    monkeypatch.setenv("BACKBEAT_SECRET_NATS_CREDENTIALS", f"backbeat:{NATS_PASSWORD}")
    monkeypatch.setenv("BACKBEAT_SECRET_REDIS_PASSWORD", REDIS_PASSWORD)
    secrets = await open_component_secrets("reverb-trigger", settings=SecretsSettings.from_env({}))
    try:
        settings = TriggerSettings(
            cluster_id,
            nats_url=secrets.nats_url(nats_server.bare_url),
            redis_url=secrets.redis_url(bare_redis),
            durable=f"auth-{cluster_id}"[:60],
        )
        async with ReverbTrigger(settings) as trigger:
            assert trigger.ready()[0], trigger.ready()
            assert trigger._redis is not None
            assert await trigger._redis.ping()
    finally:
        await secrets.close()
