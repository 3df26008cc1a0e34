"""Beat delivery to 1,000 / 5,000 simulated agents (scheduled time → each agent's callback),
next to raw NATS latency (scheduled time → a plain subscription's callback) in the same run.

One SDK Agent holds the only subscription; every simulated agent is an ``on_beat`` callback
on it, as in ``backbeat agent-sim``. Target: p99 ≤ 5 ms at 1,000 agents.
"""

from __future__ import annotations

import asyncio
import time

import nats
from nats.aio.msg import Msg

from backbeat.core import subjects
from backbeat.core.messages import BeatFrame
from backbeat.core.timeline import Timeline
from backbeat.embedded import NatsServer
from backbeat.sdk import Agent, AgentSettings, Beat, BeatSource
from bench.result import Result, record_series
from bench.sdk_support import GridPublisher

TEMPO = 240.0


def _pct(samples: list[int], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1e6


async def _measure(agents: int, seconds: float) -> tuple[list[int], list[int], int]:
    with NatsServer() as server:
        cluster = f"bench-delivery-{agents}"
        timeline = Timeline.start(cluster, TEMPO, time.time_ns() - 10_000_000_000)
        raw: list[int] = []
        delivered: list[int] = []
        local = 0
        nc = await nats.connect(server.url)

        async def on_raw(msg: Msg) -> None:
            arrived = time.time_ns()
            frame = BeatFrame.decode(msg.data)
            assert frame.scheduled_ns is not None
            raw.append(arrived - frame.scheduled_ns)

        await nc.subscribe(subjects.beat(cluster), cb=on_raw)
        settings = AgentSettings(cluster_id=cluster, agent_id="fleet", nats_url=server.url)
        publisher = GridPublisher(server.url, timeline)
        async with Agent(settings) as sdk:
            for _ in range(agents):
                sdk.on_beat(lambda beat: delivered.append(time.time_ns() - beat.scheduled_ns))

            def count_local(beat: Beat) -> None:
                nonlocal local
                local += beat.source is BeatSource.LOCAL

            sdk.on_beat(count_local)
            await publisher.start()
            await asyncio.sleep(1.0)  # warm-up
            raw.clear()
            delivered.clear()
            await asyncio.sleep(seconds)
            await publisher.stop()
        await nc.close()
        return delivered, raw, local


def run(quick: bool) -> list[Result]:
    seconds = 6.0 if quick else 60.0
    results = []
    for agents in (1000, 5000):
        delivered, raw, local = asyncio.run(_measure(agents, seconds))
        beats = len(raw)
        record_series("delivery", f"SDK callback, {agents:,} agents", "ms", list(delivered))
        record_series("delivery", f"raw NATS ({agents:,} agents run)", "ms", list(raw))
        note = f"{beats} beats at {TEMPO:g} BPM, {local} from the local timeline; one subscription"
        for q, name in ((0.5, "p50"), (0.99, "p99")):
            results.append(
                Result(
                    bench="sdk_delivery",
                    metric=f"beat delivery {name}, {agents:,} agents",
                    value=_pct(delivered, q),
                    unit="ms",
                    baseline_name=f"raw NATS {name}",
                    baseline_value=_pct(raw, q),
                    target="p99 ≤ 5 ms at 1,000 agents" if name == "p99" else "",
                    notes=note,
                )
            )
    return results
