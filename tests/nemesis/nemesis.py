"""Faults, schedules and the run loop of the nemesis suite.

``Nemesis`` injects one fault at a time into a running ``Cluster`` and records it in the
history; ``heal()`` undoes everything (links restored, paused processes resumed, stopped
servers and dead replicas started again). A ``Scenario`` is a script of faults; ``run()``
starts the cluster and every recorder, runs the script (with random ``SetTempo`` traffic when
the scenario wants it), heals, lets the system settle, reads back every BarReport and checks
the whole history.

Randomness comes from one ``random.Random(seed)``: the same scenario and seed give the same
schedule of faults (who the leader is at each step is up to the system, so a replay repeats
the schedule, not necessarily every interleaving).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from tests.nemesis.checker import FILTERING, RAW, SDK, CheckResult, check_history
from tests.nemesis.clients import (
    ClaimClient,
    GrpcBeats,
    Loop,
    NatsBeats,
    SdkBeats,
    TempoClient,
    bounded,
    read_reports,
)
from tests.nemesis.harness import Cluster, ClusterSettings, PulseReplica, faketime_problem
from tests.nemesis.history import History

#: How long a run waits for its first leader and frames.
SETUP_WITHIN_S: Final = 45.0
#: A SIGSTOP of a leader lasts longer than its lease (the TTL).
PAUSE_PAST_LEASE: Final = 2.5


class SetupError(RuntimeError):
    """The cluster did not come up (no fault was injected; the run says nothing)."""


class Nemesis:
    """Fault injection into one cluster, each fault recorded in the history."""

    def __init__(self, cluster: Cluster, history: History, rng: random.Random) -> None:
        self.cluster = cluster
        self.history = history
        self.rng = rng
        self.faults: Counter[str] = Counter()
        self.dead: set[int] = set()
        self.stopped_masters: set[int] = set()
        self.paused_masters: set[int] = set()
        self.nats_stopped = False
        self.tempo: TempoClient | None = None

    def record(self, kind: str, target: str = "", **detail: Any) -> None:
        self.faults[kind] += 1
        self.history.record("fault", kind=kind, target=target, detail=detail)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    # -- who --------------------------------------------------------------------------------

    async def leader(self, within_s: float = 15.0) -> PulseReplica | None:
        return await self.cluster.wait_for_leader(within_s)

    async def leader_or_any(self) -> PulseReplica:
        leader = await self.leader(5.0)
        if leader is not None:
            return leader
        running = self.cluster.running_replicas()
        return self.rng.choice(running or self.cluster.replicas)

    def followers_of(self, leader: PulseReplica) -> list[PulseReplica]:
        return [r for r in self.cluster.running_replicas() if r is not leader]

    # -- pulse replicas ---------------------------------------------------------------------

    async def kill(self, replica: PulseReplica, kind: str = "kill_9") -> None:
        self.record(kind, replica.node_id)
        await asyncio.to_thread(replica.kill)
        self.dead.add(replica.index)

    async def sigterm(self, replica: PulseReplica) -> None:
        self.record("sigterm", replica.node_id)
        await asyncio.to_thread(replica.stop, 15.0)
        self.dead.add(replica.index)

    async def pause(self, replica: PulseReplica, seconds: float) -> None:
        self.record("sigstop", replica.node_id, seconds=seconds)
        replica.pause()
        self.cluster.paused.add(replica.index)
        try:
            await asyncio.sleep(seconds)
        finally:
            replica.resume()
            self.cluster.paused.discard(replica.index)

    async def restart(self, replica: PulseReplica) -> None:
        if replica.running:
            return
        await asyncio.to_thread(replica.start, 60.0)
        self.dead.discard(replica.index)

    async def restart_dead(self) -> None:
        await asyncio.gather(*(self.restart(self.cluster.replicas[i]) for i in sorted(self.dead)))

    # -- Redis masters ----------------------------------------------------------------------

    async def masters_restart_empty(self, indexes: Sequence[int]) -> None:
        """Crash (SIGKILL) and start again without persistence: the masters lose everything."""
        names = ",".join(f"M{j + 1}" for j in indexes)
        self.record(f"masters_restart_empty_{len(indexes)}", names)
        masters = [self.cluster.masters[j] for j in indexes]
        await asyncio.gather(*(asyncio.to_thread(m.kill) for m in masters))
        await asyncio.gather(*(asyncio.to_thread(m.start) for m in masters))
        for j in indexes:
            self.stopped_masters.discard(j)
            self.paused_masters.discard(j)

    async def master_stop(self, j: int) -> None:
        self.record("master_stop", f"M{j + 1}")
        await asyncio.to_thread(self.cluster.masters[j].kill)
        self.stopped_masters.add(j)

    def master_pause(self, j: int) -> None:
        self.record("master_pause", f"M{j + 1}")
        self.cluster.masters[j].pause()
        self.paused_masters.add(j)

    def master_resume(self, j: int) -> None:
        self.cluster.masters[j].resume()
        self.paused_masters.discard(j)

    # -- links ------------------------------------------------------------------------------

    def partition(self, replicas: Sequence[PulseReplica], masters: Sequence[int]) -> None:
        """Cut every link between ``replicas``+``masters`` and the rest (both directions: a
        replica on one side reaches only the masters on its side)."""
        inside = {r.index for r in replicas}
        cut = [
            link.name
            for i, row in enumerate(self.cluster.links)
            for j, link in enumerate(row)
            if (i in inside) != (j in masters)
        ]
        side_a = (
            "{"
            + ",".join([*(f"L{i + 1}" for i in sorted(inside)), *(f"M{j + 1}" for j in masters)])
            + "}"
        )
        self.record("partition", side_a, links=cut)
        for i, row in enumerate(self.cluster.links):
            for j, link in enumerate(row):
                if (i in inside) != (j in masters):
                    link.cut()

    def cut_links(self, pairs: Sequence[tuple[int, int]]) -> None:
        self.record("links_cut", ",".join(f"L{i + 1}-M{j + 1}" for i, j in pairs))
        for i, j in pairs:
            self.cluster.links[i][j].cut()

    def delay_link(self, i: int, j: int, seconds: float) -> None:
        self.record("link_delay", f"L{i + 1}-M{j + 1}", seconds=seconds)
        self.cluster.links[i][j].delay(seconds)

    def restore_links(self, *, reset: bool = False) -> None:
        """Heal every link; ``reset`` drops the connections (and bytes) the cut held."""
        for row in self.cluster.links:
            for link in row:
                link.restore(reset=reset)

    # -- NATS and clocks --------------------------------------------------------------------

    async def nats_stop(self) -> None:
        self.record("nats_down")
        assert self.cluster.nats is not None
        await asyncio.to_thread(self.cluster.nats.stop)
        self.nats_stopped = True

    async def nats_start(self) -> None:
        assert self.cluster.nats is not None
        await asyncio.to_thread(self.cluster.nats.start)
        self.nats_stopped = False

    def clock_jump(self, replica: PulseReplica, offset: str) -> None:
        self.record("clock_jump", replica.node_id, offset=offset)
        replica.set_clock(offset)

    # -- tempo ------------------------------------------------------------------------------

    async def set_tempo(self, replica: PulseReplica, tempo: float, *, ramp: bool) -> dict[str, Any]:
        assert self.tempo is not None
        return await self.tempo.call(
            replica.node_id, replica.grpc_address, self.tempo.unique(tempo), ramp=ramp
        )

    # -- healing ----------------------------------------------------------------------------

    async def heal(self) -> None:
        self.restore_links()
        for j in list(self.paused_masters):
            self.master_resume(j)
        for j in list(self.stopped_masters):
            await asyncio.to_thread(self.cluster.masters[j].start)
            self.stopped_masters.discard(j)
        if self.nats_stopped:
            await self.nats_start()
        for replica in self.cluster.replicas:
            if replica.index in self.cluster.paused:
                replica.resume()
                self.cluster.paused.discard(replica.index)
        await self.restart_dead()
        self.history.record("healed")


Script = Callable[[Nemesis], Awaitable[None]]


@dataclass
class Scenario:
    name: str
    script: Script
    settings: ClusterSettings = field(default_factory=ClusterSettings)
    #: Random SetTempo calls in the background until the faults are healed.
    tempo_traffic: bool = True
    #: Healthy time after healing before the recording ends.
    settle_s: float = 9.0
    description: str = ""


@dataclass
class RunOutcome:
    scenario: str
    seed: int
    result: CheckResult
    faults: Counter[str]
    history_path: Path | None
    duration_s: float
    skipped: str | None = None


def cluster_name(scenario: str, seed: int) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "-", f"nm-{scenario}-{seed}")[:60]


async def tempo_traffic(nemesis: Nemesis, beats: NatsBeats, stop: asyncio.Event) -> None:
    """Random steps and ramps against random running replicas, every 1–2.5 s."""
    tempo = nemesis.tempo
    assert tempo is not None
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), nemesis.rng.uniform(1.0, 2.5))
        if stop.is_set():
            return
        running = nemesis.cluster.running_replicas()
        if not running or beats.last is None:
            continue
        replica = nemesis.rng.choice(running)
        if nemesis.rng.random() < 0.25:
            target = tempo.random_target()
            await tempo.call(replica.node_id, replica.grpc_address, target, ramp=True)
        else:
            step = tempo.random_step(beats.last.tempo_bpm)
            await tempo.call(replica.node_id, replica.grpc_address, step, ramp=False)


async def run(
    scenario: Scenario,
    seed: int,
    workdir: Path,
    *,
    script_timeout_s: float = 240.0,
) -> RunOutcome:
    """Run ``scenario`` with ``seed``; the history is written to ``workdir/history.jsonl``."""
    started = time.monotonic()
    history = History()
    rng = random.Random(seed)
    settings = scenario.settings
    if settings.faked_clocks:
        problem = faketime_problem()
        if problem is not None:
            return RunOutcome(scenario.name, seed, CheckResult(), Counter(), None, 0.0, problem)
    cluster_id = cluster_name(scenario.name, seed)
    cluster = Cluster(cluster_id, workdir, settings)
    nemesis = Nemesis(cluster, history, rng)
    loops: list[Loop] = []
    closers: list[Callable[[], Awaitable[None]]] = []
    stop_tempo = asyncio.Event()
    tempo_task: asyncio.Task[None] | None = None
    try:
        await cluster.start()
        assert cluster.nats is not None
        consumers = {"nats": RAW, "sdk": SDK}
        consumers.update({f"grpc:{r.node_id}": FILTERING for r in cluster.replicas})
        history.record(
            "meta",
            cluster_id=cluster_id,
            scenario=scenario.name,
            seed=seed,
            bar_length=settings.bar_length,
            tempo_bpm=settings.tempo_bpm,
            lock_ttl_ms=settings.lock_ttl_ms,
            catch_up_beats=settings.catch_up_beats,
            consumers=consumers,
            report_settle_s=6.0,
            stall_window_s=3.0,
        )
        beats = await NatsBeats(cluster.nats.url, cluster_id, history).start()
        closers.append(beats.close)
        sdk = await SdkBeats(cluster.nats.url, cluster_id, history).start()
        closers.append(sdk.close)
        for replica in cluster.replicas:
            loops.append(GrpcBeats(replica.node_id, replica.grpc_address, history))
        claims = ClaimClient(
            f"127.0.0.1:{cluster.reverb_grpc_port}",
            cluster_id,
            history,
            beats.current_beat,
            60.0 / settings.tempo_bpm,
        )
        loops.append(claims)
        for loop in loops:
            loop.start()
        nemesis.tempo = TempoClient(history, rng, low=200.0, high=300.0)
        await _wait_until_beating(nemesis, beats)
        if scenario.tempo_traffic:
            tempo_task = asyncio.create_task(tempo_traffic(nemesis, beats, stop_tempo))
        await asyncio.wait_for(scenario.script(nemesis), script_timeout_s)
        stop_tempo.set()
        if tempo_task is not None:
            await bounded(tempo_task, 10.0)
        await nemesis.heal()
        await asyncio.sleep(scenario.settle_s)
        history.record("end")
        for loop in loops:
            await loop.stop()
        loops.clear()
        await read_reports(cluster.nats.url, cluster_id, history)
    finally:
        stop_tempo.set()
        if tempo_task is not None and not tempo_task.done():
            tempo_task.cancel()
        for loop in loops:
            await bounded(loop.stop(), 10.0)
        for close in closers:
            await bounded(close(), 10.0)
        await bounded(cluster.close(), 60.0)
        history.write(workdir / "history.jsonl")
    result = check_history(history.events)
    return RunOutcome(
        scenario.name,
        seed,
        result,
        nemesis.faults,
        workdir / "history.jsonl",
        time.monotonic() - started,
    )


async def _wait_until_beating(nemesis: Nemesis, beats: NatsBeats) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + SETUP_WITHIN_S
    while loop.time() < deadline:
        if beats.last is not None and await nemesis.leader(1.0) is not None:
            first = beats.last.beat_index
            while loop.time() < deadline:
                if beats.last.beat_index >= first + 6:
                    return
                await asyncio.sleep(0.05)
        await asyncio.sleep(0.1)
    raise SetupError("no leader emitting beats within the setup time")
