"""The BACKBEAT agent SDK: follow the cluster's beat, act on it, report status claims.

Quick start (see docs/sdk.md)::

    from backbeat.sdk import Agent, AgentSettings

    settings = AgentSettings(cluster_id="demo", agent_id="agent:1", nats_url="nats://127.0.0.1:4222")
    async with Agent(settings) as agent:
        async for beat in agent.beats():
            await agent.report("task:1", "executing", beat_index=beat.beat_index, progress=0.5)

The agent keeps a local copy of the timeline, so beats keep coming on the grid between frames
and while frames are missing (``AgentStatus.DEGRADED``).
"""

from backbeat.errors import ClaimBufferFull, ClaimsRefused
from backbeat.sdk._agent import Agent, BeatStream
from backbeat.sdk._clock import Clock, SystemClock, VirtualClock
from backbeat.sdk._metrics import AgentCollector, register_metrics
from backbeat.sdk._settings import AgentSettings, FrameKeys
from backbeat.sdk._slo import SdkSloRecorder, register_slo_metrics
from backbeat.sdk._types import AgentStats, AgentStatus, Beat, BeatSource, FrameDrop, TempoChange

__all__ = [
    "Agent",
    "AgentCollector",
    "AgentSettings",
    "AgentStats",
    "AgentStatus",
    "Beat",
    "BeatSource",
    "BeatStream",
    "ClaimBufferFull",
    "ClaimsRefused",
    "Clock",
    "FrameDrop",
    "FrameKeys",
    "SdkSloRecorder",
    "SystemClock",
    "TempoChange",
    "VirtualClock",
    "register_metrics",
    "register_slo_metrics",
]
