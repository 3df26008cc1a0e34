"""An agent whose claims the reverb refuses (no token, a wrong one) says so at once: an error
in the log and ClaimsRefused from ``report``, not "claims unsent" at close."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from backbeat.embedded import NatsServer, RedisServer
from backbeat.reverb.server import ReverbServer, ReverbSettings
from backbeat.sdk import Agent, AgentSettings, ClaimsRefused
from tests.pulse.cluster import PulseProcess, wait_for_leader

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

REVERB_TOKEN = "reverb-token"


async def _first_refusal(agent: Agent) -> ClaimsRefused:
    """Report until ``report`` raises ClaimsRefused (within a bound)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            await agent.report("task:1", "executing", beat_index=1)
        except ClaimsRefused as refusal:
            return refusal
        await asyncio.sleep(0.05)
    raise AssertionError("no refusal reported")


@pytest.mark.parametrize("token", [None, "not-the-token"], ids=["no-token", "wrong-token"])
async def test_refused_claims_are_an_error_the_caller_sees(
    pulse: PulseProcess,
    redis_servers: list[RedisServer],
    nats_server: NatsServer,
    cluster_id: str,
    caplog: pytest.LogCaptureFixture,
    token: str | None,
) -> None:
    await wait_for_leader([pulse])
    reverb = ReverbServer(
        ReverbSettings(cluster_id=cluster_id, nats_url=nats_server.url,
                       redis_url=redis_servers[0].url, admin_port=-1),
        token=lambda: REVERB_TOKEN,
    )  # fmt: skip
    async with reverb:
        assert reverb.grpc is not None
        settings = AgentSettings(
            cluster_id=cluster_id, agent_id="agent:tokenless", token=token,
            pulse_targets=(pulse.grpc_address,), reverb_target=reverb.grpc.address,
        )  # fmt: skip
        with caplog.at_level(logging.ERROR, logger="backbeat.sdk"):
            async with Agent(settings) as agent:
                refusal = await _first_refusal(agent)
                assert "BACKBEAT_API_TOKEN" in str(refusal) or "not the cluster's" in str(refusal)
                assert not await agent.flush(5.0)
                assert agent.stats.claims_failed >= 1
                assert agent.stats.claims_accepted == 0
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert errors, "the refusal was not logged as an error"
    assert "claims cannot be delivered" in errors[0].getMessage()


def test_from_env_reads_the_api_token_and_still_the_older_name(
    caplog: pytest.LogCaptureFixture,
) -> None:
    base = {"NATS_URL": "nats://127.0.0.1:4222"}
    settings = AgentSettings.from_env("a", env={**base, "BACKBEAT_API_TOKEN": "t1"})
    assert settings.token == "t1"
    with caplog.at_level(logging.WARNING, logger="backbeat.sdk"):
        legacy = AgentSettings.from_env("a", env={**base, "BACKBEAT_TOKEN": "t2"})
    assert legacy.token == "t2"
    assert "name it BACKBEAT_API_TOKEN" in caplog.text
