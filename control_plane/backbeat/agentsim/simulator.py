"""The simulation: one SDK Agent follows the beat and fans each beat out to N simulated agents.

One NATS subscription serves the whole fleet (10,000 agents in one process would otherwise
be 10,000 subscriptions receiving the same frame). Each beat, every running agent advances its
state machine and reports one claim through the SDK's batched, back-pressured reporter. Fault
knobs turn some claims late, duplicated or malformed, and crash agents for a while.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from nats.aio.msg import Msg

from backbeat.agentsim.model import Behaviour, SimAgent, make_fleet
from backbeat.core import subjects
from backbeat.core.messages import BarReport, StatusClaim
from backbeat.errors import CodecError
from backbeat.sdk import Agent, AgentSettings, Beat
from backbeat.service.nats_connect import connect_nats


@dataclass(frozen=True, slots=True)
class SimSettings:
    cluster_id: str
    nats_url: str
    agents: int = 50
    #: Claims per agent per beat, in (0, 1]: 0.5 means each agent reports every other beat.
    rate: float = 1.0
    #: Stop after this many seconds (None: until cancelled).
    duration_s: float | None = None
    late_rate: float = 0.0
    duplicate_rate: float = 0.0
    malformed_rate: float = 0.0
    behaviour: Behaviour = field(default_factory=Behaviour)
    seed: int = 1
    #: After the run, wait for the bar reports and check that they account for every claim.
    verify: bool = False
    report_wait_s: float = 30.0

    def __post_init__(self) -> None:
        if self.agents < 1:
            raise ValueError("agents must be at least 1")
        if not 0 < self.rate <= 1:
            raise ValueError("rate must be in (0, 1] claims per agent per beat")
        for name in ("late_rate", "duplicate_rate", "malformed_rate"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1]")


@dataclass(slots=True)
class SimResult:
    agents: int
    duration_s: float = 0.0
    beats: int = 0
    local_beats: int = 0
    #: Scheduled beat time → the SDK callback (one subscription), milliseconds.
    beat_latency_ms: dict[str, float] = field(default_factory=dict)
    #: Scheduled beat time → the last simulated agent's turn in the fan-out, milliseconds.
    fanout_latency_ms: dict[str, float] = field(default_factory=dict)
    claims_sent: int = 0
    claims_by_kind: dict[str, int] = field(default_factory=dict)
    claims_per_s: float = 0.0
    claims_failed: int = 0
    crashes: int = 0
    tasks_done: int = 0
    task_failures: int = 0
    #: Filled by --verify: what the bar reports say about the windows of the run.
    reports: dict[str, Any] | None = None
    balanced: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _percentiles(samples_ns: list[int]) -> dict[str, float]:
    if not samples_ns:
        return {}
    ordered = sorted(samples_ns)

    def pick(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1e6

    return {
        "p50": pick(0.50),
        "p99": pick(0.99),
        "max": ordered[-1] / 1e6,
        "mean": statistics.fmean(ordered) / 1e6,
    }


#: How a malformed claim is broken (each is rejected with its own reason by the ingest).
_BREAKAGES: tuple[Callable[[StatusClaim], StatusClaim], ...] = (
    lambda c: replace(c, state="dancing"),  # unknown_state
    lambda c: replace(c, progress=1.5),  # out_of_range
    lambda c: replace(c, task_id=""),  # malformed
)


class Simulation:
    def __init__(self, settings: SimSettings) -> None:
        self.settings = settings
        self.fleet: list[SimAgent] = make_fleet(
            settings.agents, settings.behaviour, seed=settings.seed
        )
        self._rng = random.Random(settings.seed)
        self.result = SimResult(agents=settings.agents)
        self.latencies_ns: list[int] = []
        self.fanout_ns: list[int] = []
        self.by_kind: dict[str, int] = {"normal": 0, "late": 0, "duplicate": 0, "malformed": 0}
        self.first_beat: int | None = None
        self.last_beat: int | None = None
        self.started = time.monotonic()
        self.sdk: Agent | None = None
        self._reports: dict[str, BarReport] = {}
        self._stopping = False
        self._report_arrived = asyncio.Event()

    # -- one beat ---------------------------------------------------------------------------

    async def on_beat(self, beat: Beat) -> None:
        if self._stopping:
            return
        self.latencies_ns.append(time.time_ns() - beat.scheduled_ns)
        if self.first_beat is None:
            self.first_beat = beat.beat_index
        self.last_beat = beat.beat_index
        sdk = self.sdk
        assert sdk is not None
        s = self.settings
        rng = self._rng
        bar = sdk.timeline.bar_length if sdk.timeline is not None else 4
        for agent in self.fleet:
            report = agent.step()
            if report is None or (s.rate < 1 and rng.random() >= s.rate):
                continue
            claim = sdk.claim(
                report.task_id,
                report.state,
                beat_index=beat.beat_index,
                beats_left=report.beats_left,
                progress=report.progress,
                notes=report.notes,
                agent_id=report.agent_id,
            )
            kind = "normal"
            roll = rng.random()
            if roll < s.malformed_rate:
                claim = rng.choice(_BREAKAGES)(claim)
                kind = "malformed"
            elif roll < s.malformed_rate + s.late_rate and beat.beat_index > bar:
                # A claim for the previous bar, sent after that bar closed.
                claim = replace(claim, beat_index=beat.bar_start_beat - 1)
                kind = "late"
            await sdk.report_claim(claim)
            self.by_kind[kind] += 1
            if s.duplicate_rate and rng.random() < s.duplicate_rate:
                await sdk.report_claim(claim)
                self.by_kind["duplicate"] += 1
        self.fanout_ns.append(time.time_ns() - beat.scheduled_ns)

    # -- bar reports --------------------------------------------------------------------------

    async def _on_report(self, msg: Msg) -> None:
        with contextlib.suppress(CodecError, ValueError):
            report = BarReport.decode(msg.data)
            self._reports[report.window_id] = report
            self._report_arrived.set()

    async def _verify(self) -> None:
        sdk = self.sdk
        assert sdk is not None
        timeline = sdk.timeline
        if timeline is None or self.first_beat is None:
            return
        # Every window from the run's first bar to the bar in progress once all claims are out
        # (rejected and late claims count in the window open when they arrive).
        end_beat = timeline.beat_at(time.time_ns()) + 1
        starts = range(
            timeline.bar_start(self.first_beat),
            timeline.bar_start(end_beat) + 1,
            timeline.bar_length,
        )
        wanted = {timeline.window_id(b) for b in starts}
        deadline = (
            time.monotonic()
            + self.settings.report_wait_s
            + timeline.period_ns * timeline.bar_length / 1e9
        )
        while not wanted <= set(self._reports) and time.monotonic() < deadline:
            self._report_arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._report_arrived.wait(), 0.5)
        got = [self._reports[w] for w in wanted if w in self._reports]
        accepted = sum(r.accepted_claims for r in got)
        duplicate = sum(r.duplicate_claims for r in got)
        late = sum(r.late_claims for r in got)
        rejected_by: dict[str, int] = {}
        for r in got:
            for reason, count in r.rejected_by_reason.items():
                rejected_by[reason] = rejected_by.get(reason, 0) + count
        rejected = sum(rejected_by.values())
        accounted = accepted + duplicate + late + rejected
        self.result.reports = {
            "windows_expected": len(wanted),
            "windows_reported": len(got),
            "accepted": accepted,
            "duplicate": duplicate,
            "late": late,
            "rejected": rejected,
            "rejected_by_reason": rejected_by,
            "accounted": accounted,
        }
        self.result.balanced = len(got) == len(wanted) and accounted == self.result.claims_sent

    # -- the run --------------------------------------------------------------------------------

    def snapshot(self) -> SimResult:
        """The figures so far (also used by the live display)."""
        r = self.result
        r.duration_s = time.monotonic() - self.started
        r.beats = len(self.latencies_ns)
        r.beat_latency_ms = _percentiles(self.latencies_ns[-10_000:])
        r.fanout_latency_ms = _percentiles(self.fanout_ns[-10_000:])
        r.claims_by_kind = dict(self.by_kind)
        if self.sdk is not None:
            r.claims_sent = self.sdk.stats.claims_sent
            r.claims_failed = self.sdk.stats.claims_failed
            r.local_beats = self.sdk.stats.beats_local
        r.claims_per_s = r.claims_sent / r.duration_s if r.duration_s > 0 else 0.0
        r.crashes = sum(a.crashes for a in self.fleet)
        r.tasks_done = sum(a.finished_tasks for a in self.fleet)
        r.task_failures = sum(a.failures for a in self.fleet)
        return r

    async def run(self, stop: asyncio.Event | None = None) -> SimResult:
        s = self.settings
        agent_settings = AgentSettings(
            cluster_id=s.cluster_id,
            agent_id=f"agent-sim-{s.seed}",
            nats_url=s.nats_url,
            claim_buffer=max(10_000, 4 * s.agents),
            claim_batch=1000,
        )
        reports_nc = None
        if s.verify:
            reports_nc = await connect_nats(
                s.nats_url, name="agent-sim-reports", max_reconnect_attempts=-1
            )
            await reports_nc.subscribe(subjects.bars_wildcard(s.cluster_id), cb=self._on_report)
        try:
            async with Agent(agent_settings) as sdk:
                self.sdk = sdk
                sdk.on_beat(self.on_beat)
                self.started = time.monotonic()
                stop = stop or asyncio.Event()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), s.duration_s)
                self._stopping = True  # stop producing; what is queued still goes out
                await sdk.flush(30)
                self.snapshot()
                if s.verify:
                    await self._verify()
        finally:
            if reports_nc is not None:
                await reports_nc.close()
        return self.result
