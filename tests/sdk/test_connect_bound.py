"""An agent whose NATS is unreachable at start gives up after ``connect_timeout_s`` instead of
waiting for ever (the client alone retries its first connection without end)."""

from __future__ import annotations

import asyncio

import pytest

from backbeat.embedded import free_port
from backbeat.errors import NatsUnreachable
from backbeat.sdk import Agent, AgentSettings


async def test_start_gives_up_on_an_unreachable_nats(cluster_id: str) -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    agent = Agent(
        AgentSettings(cluster_id=cluster_id, agent_id="a1", nats_url=url, connect_timeout_s=0.5)
    )
    with pytest.raises(NatsUnreachable) as caught:
        # The bound of the test itself: generous, only there so a regression fails, not hangs.
        async with asyncio.timeout(60):
            await agent.start()
    assert url in str(caught.value)
    await agent.close()


def test_a_negative_connect_timeout_is_refused(cluster_id: str) -> None:
    with pytest.raises(ValueError, match="connect_timeout_s"):
        AgentSettings(
            cluster_id=cluster_id, agent_id="a1", nats_url="nats://x", connect_timeout_s=-1
        )
