"""The simulator against a real NATS server and a stand-in leader: every claim goes out."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time

import nats
import pytest
from nats.aio.msg import Msg

from backbeat.agentsim import Behaviour, SimSettings, Simulation
from backbeat.core import subjects
from backbeat.core.claims import ClaimLimits, validate_claim
from backbeat.core.timeline import Timeline
from backbeat.embedded import NatsServer
from tests.sdk.leader import FrameLeader

pytestmark = pytest.mark.integration


async def test_a_thousand_agents_with_faults(nats_server: NatsServer, cluster_id: str) -> None:
    received: list[bytes] = []
    nc = await nats.connect(nats_server.url)

    async def on_claim(msg: Msg) -> None:
        received.append(msg.data)

    await nc.subscribe(subjects.claims(cluster_id), cb=on_claim, pending_msgs_limit=1_000_000)
    await nc.flush()
    grid = Timeline.start(cluster_id, 240.0, time.time_ns() - 10_000_000_000)
    leader = FrameLeader(nats_server.url, grid)
    await leader.start(grid.next_beat_after(time.time_ns()) + 1)
    settings = SimSettings(
        cluster_id=cluster_id,
        nats_url=nats_server.url,
        agents=1000,
        duration_s=3.0,
        late_rate=0.02,
        duplicate_rate=0.02,
        malformed_rate=0.02,
        behaviour=Behaviour(crash_rate=0.01),
    )
    try:
        result = await Simulation(settings).run()
        deadline = time.monotonic() + 20
        while len(received) < result.claims_sent:
            assert time.monotonic() < deadline, f"{len(received)} of {result.claims_sent}"
            await asyncio.sleep(0.05)
    finally:
        await leader.stop()
        await nc.close()
    assert result.beats >= 8
    assert len(received) == result.claims_sent == sum(result.claims_by_kind.values())
    assert all(result.claims_by_kind[k] > 0 for k in ("normal", "late", "duplicate", "malformed"))
    assert result.crashes > 0
    assert result.beat_latency_ms["p99"] < 1000
    lenient = ClaimLimits(max_age_beats=10**10, max_future_beats=10**10)
    invalid = sum(not validate_claim(p, current_beat=10**9, limits=lenient).ok for p in received)
    malformed = result.claims_by_kind["malformed"]
    # A malformed claim may also be duplicated.
    assert malformed <= invalid <= malformed + result.claims_by_kind["duplicate"]


def test_cli_prints_a_json_summary(nats_server: NatsServer, cluster_id: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "backbeat.cli", "agent-sim", "--cluster", cluster_id,
         "--nats", nats_server.url, "--agents", "10", "--duration", "1", "--json"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["agents"] == 10
    assert summary["beats"] == 0  # no leader: no beats, nothing sent
    assert summary["claims_sent"] == 0
