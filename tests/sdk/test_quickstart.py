"""The README's agent quick start really runs: against a real NATS server and live frames."""

from __future__ import annotations

import asyncio
import os
import re
import sys
import time
from pathlib import Path

import nats
import pytest
from nats.aio.msg import Msg

from backbeat.core import subjects
from backbeat.core.messages import StatusClaim
from backbeat.core.timeline import Timeline
from backbeat.embedded import NatsServer
from tests.sdk.leader import FrameLeader

pytestmark = pytest.mark.integration

README = Path(__file__).resolve().parents[2] / "README.md"


def quickstart_code() -> str:
    text = README.read_text()
    section = text.split("## Agent quick start", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "no python block in the README's agent quick start"
    return match.group(1)


def test_quickstart_is_short() -> None:
    lines = [line for line in quickstart_code().splitlines() if line.strip()]
    assert len(lines) <= 15, len(lines)


async def test_quickstart_runs(nats_server: NatsServer, cluster_id: str) -> None:
    claims: list[StatusClaim] = []
    nc = await nats.connect(nats_server.url)

    async def on_claim(msg: Msg) -> None:
        claims.append(StatusClaim.decode(msg.data))

    await nc.subscribe(subjects.claims(cluster_id), cb=on_claim)
    await nc.flush()
    grid = Timeline.start(cluster_id, 300.0, time.time_ns() - 10_000_000_000)
    leader = FrameLeader(nats_server.url, grid)
    await leader.start(grid.next_beat_after(time.time_ns()) + 1)
    env = dict(os.environ, NATS_URL=nats_server.url, BACKBEAT_CLUSTER=cluster_id)
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            quickstart_code(),
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        await leader.stop()
    assert proc.returncode == 0, err.decode()
    printed = [line.split() for line in out.decode().splitlines()]
    assert printed, "the quick start printed no beats"
    assert int(printed[-1][0]) % 8 == 7
    deadline = time.monotonic() + 10
    while len(claims) < len(printed):
        assert time.monotonic() < deadline, f"{len(claims)} claims for {len(printed)} beats"
        await asyncio.sleep(0.02)
    await nc.close()
    assert {c.agent_id for c in claims} == {"agent:quickstart"}
