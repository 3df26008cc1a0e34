"""The scripted schedules (one per failure the fault model must survive) and the random
schedule of ``make chaos``.

Times are short on purpose: 240 BPM (250 ms beats, 1 s bars) and a 1 s lock TTL, so a
failover, a ramp step or a catch-up horizon of a few bars fits in seconds.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace

from tests.nemesis.harness import ClusterSettings
from tests.nemesis.nemesis import PAUSE_PAST_LEASE, Nemesis, Scenario

SCENARIOS: dict[str, Scenario] = {}


def scenario(
    *, tempo_traffic: bool = True, settle_s: float = 9.0, **settings: object
) -> Callable[[Callable[[Nemesis], object]], Callable[[Nemesis], object]]:
    def register(script: Callable[[Nemesis], object]) -> Callable[[Nemesis], object]:
        name = script.__name__
        SCENARIOS[name] = Scenario(
            name,
            script,  # type: ignore[arg-type]
            replace(ClusterSettings(), **settings),  # type: ignore[arg-type]
            tempo_traffic=tempo_traffic,
            settle_s=settle_s,
            description=(script.__doc__ or "").strip(),
        )
        return script

    return register


# -- the eight failures the issue lists, and the faults the fault model names ---------------


@scenario()
async def all_masters_empty_with_leader_kill(n: Nemesis) -> None:
    """Every Redis master crashes and comes back empty while the leader is killed -9."""
    await n.sleep(3)
    leader = await n.leader_or_any()
    await asyncio.gather(n.kill(leader), n.masters_restart_empty([0, 1, 2]))
    await n.sleep(6)


@scenario()
async def two_masters_empty_third_slow(n: Nemesis) -> None:
    """Two masters come back empty and the third is paused while the leader is killed."""
    await n.sleep(3)
    leader = await n.leader_or_any()
    n.master_pause(2)
    await asyncio.gather(n.kill(leader), n.masters_restart_empty([0, 1]))
    await n.sleep(4)
    n.master_resume(2)
    await n.sleep(4)


@scenario(tempo_traffic=False, settle_s=10.0)
async def leader_killed_mid_ramp(n: Nemesis) -> None:
    """A ramp 240 → 300 BPM is acknowledged, then its leader is killed -9 before it ends."""
    await n.sleep(2)
    leader = await n.leader_or_any()
    await n.set_tempo(leader, 300.0, ramp=True)
    await n.sleep(1.2)
    await n.kill(leader)
    await n.sleep(4)
    await n.restart(leader)
    await n.sleep(2)


@scenario(tempo_traffic=False)
async def refused_change_comes_back(n: Nemesis) -> None:
    """{L1, A} | {L2, L3, B, C}: a SetTempo on the cut-off leader is refused (it reached A
    only); after healing, the next leader is elected on {A, B} and reads A."""
    await n.sleep(2)
    leader = await n.leader_or_any()
    n.partition([leader], [0])
    await n.set_tempo(leader, 252.0, ramp=False)
    await n.sleep(4)
    n.restore_links()
    await n.sleep(1)
    second = await n.leader_or_any()
    n.cut_links([(i, 2) for i in range(3)])
    await n.kill(second)
    await n.sleep(4)
    n.restore_links()
    await n.sleep(2)


@scenario(tempo_traffic=False, settle_s=10.0)
async def quorum_lost_during_ramp(n: Nemesis) -> None:
    """A ramp 240 → 300 BPM (three steps) is under way when every replica loses two of the
    three masters for 4 s; when they return M1 goes, and while the degraded leader is paused
    another replica takes over on M2 + M3."""
    await n.sleep(2)
    leader = await n.leader_or_any()
    await n.set_tempo(leader, 300.0, ramp=True)
    await n.sleep(1.2)
    n.partition(n.cluster.replicas, [0])
    await n.sleep(4)
    # M2 and M3 return (M1, the one master the degraded leader still wrote to, goes) while
    # the degraded leader is paused: another replica wins on the majority it never reached
    # (the connections that held its writes to M2 and M3 were reset).
    n.restore_links(reset=True)
    n.partition(n.cluster.replicas, [1, 2])
    await n.pause(leader, PAUSE_PAST_LEASE)
    await n.sleep(2)
    n.restore_links()
    await n.sleep(2)


@scenario()
async def majority_empty_then_handoff(n: Nemesis) -> None:
    """Two masters come back empty, then the leader hands over (SIGTERM): the SDK agent and
    the ingest follow the frames with the same ordering rule as the replicas."""
    await n.sleep(3)
    leader = await n.leader_or_any()
    await n.masters_restart_empty([1, 2])
    await n.sigterm(leader)
    await n.sleep(5)


@scenario()
async def cut_off_leader_keeps_beating(n: Nemesis) -> None:
    """{L1, A} | {L2, L3, B, C} for 5 s: the cut-off leader loses its quorum while the
    others elect a successor; no beat index may be published under two terms."""
    await n.sleep(3)
    leader = await n.leader_or_any()
    n.partition([leader], [0])
    await n.sleep(5)
    n.restore_links()
    await n.sleep(2)


@scenario(catch_up_beats=8)
async def nats_down_past_catch_up_horizon(n: Nemesis) -> None:
    """NATS is down for 6 s (24 beats, 3× the trigger's 8-beat catch-up horizon) while the
    leader and then its successor are killed; claims keep arriving over gRPC."""
    await n.sleep(3)
    leader = await n.leader_or_any()
    await n.nats_stop()
    await n.kill(leader)
    await n.sleep(3)
    # Its successor dies too before NATS returns: the downbeats both buffered are gone.
    await n.kill(await n.leader_or_any())
    await n.sleep(3)
    await n.nats_start()
    await n.sleep(2)


@scenario(faked_clocks=(2,), clock_offset="-10s", tempo_traffic=False)
async def term_on_two_masters_one_restarts_empty(n: Nemesis) -> None:
    """A term and an acknowledged tempo change reach exactly two masters (M1 cut off), one of
    them (M2) restarts empty, and the next leader — pulse-3, whose clock is 10 s behind so the
    wall-clock floor of the term cannot help — is elected on {M1, M2}: both must still be on a
    majority."""
    await n.sleep(3)
    slow = n.cluster.replicas[2]
    leader = await n.leader_or_any()
    if leader is slow:  # pulse-3 must lead last: hand over first
        await n.sigterm(leader)
        await n.restart(leader)
        leader = await n.leader_or_any()
    n.cut_links([(i, 0) for i in range(3)])
    slow.pause()
    n.cluster.paused.add(slow.index)
    await n.kill(leader)
    await n.sleep(2.5)  # the remaining fast replica wins on M2 + M3
    second = await n.leader_or_any()
    slow.resume()
    n.cluster.paused.discard(slow.index)
    await n.set_tempo(second, 252.0, ramp=False)  # acknowledged: stored on M2 + M3 only
    await n.masters_restart_empty([1])
    # M1 returns without what the cut held (a long partition), M3 goes.
    n.restore_links(reset=True)
    n.cut_links([(i, 2) for i in range(3)])
    if second is not slow:
        await n.kill(second)
    await n.sleep(5)
    n.restore_links()
    await n.sleep(2)
    # Its beats come 10 s late: hand over to a replica with a true clock before the end.
    if await n.leader(5.0) is slow:
        await n.restart_dead()
        await n.sigterm(slow)


@scenario()
async def paused_leader_and_paused_master(n: Nemesis) -> None:
    """SIGSTOP of the leader past its lease, then of one master, then a graceful handoff."""
    await n.sleep(2)
    await n.pause(await n.leader_or_any(), PAUSE_PAST_LEASE)
    await n.sleep(2)
    n.master_pause(1)
    await n.sleep(3)
    n.master_resume(1)
    await n.sigterm(await n.leader_or_any())
    await n.sleep(3)


@scenario(faked_clocks=(0, 1, 2))
async def clock_jumps_and_slow_links(n: Nemesis) -> None:
    """The leader's clock jumps 1.5 s ahead; a link to a master gets 300 ms slower; a
    follower's clock runs 200 ms ahead."""
    await n.sleep(2)
    leader = await n.leader_or_any()
    n.clock_jump(leader, "+1.5s")
    await n.sleep(4)
    follower = next(r for r in n.cluster.replicas if r is not leader)
    n.clock_jump(follower, "+0.2s")
    n.delay_link(leader.index, 1, 0.3)
    await n.sleep(4)


# -- the random schedule --------------------------------------------------------------------


async def random_schedule(n: Nemesis, faults: int = 6) -> None:
    """``faults`` faults drawn from the whole menu, each healed or left for the final heal."""
    rng = n.rng
    for _ in range(faults):
        await n.sleep(rng.uniform(1.0, 3.0))
        choice = rng.choice(MENU)
        await choice(n)
        if rng.random() < 0.5:
            await n.heal()


async def _kill_leader(n: Nemesis) -> None:
    await n.kill(await n.leader_or_any())


async def _kill_follower(n: Nemesis) -> None:
    leader = await n.leader_or_any()
    followers = n.followers_of(leader)
    if followers:
        await n.kill(n.rng.choice(followers))


async def _sigterm_leader(n: Nemesis) -> None:
    await n.sigterm(await n.leader_or_any())


async def _pause_leader(n: Nemesis) -> None:
    await n.pause(await n.leader_or_any(), n.rng.uniform(1.5, 3.5))


async def _masters_empty(n: Nemesis) -> None:
    count = n.rng.choice((1, 2, 3))
    indexes = n.rng.sample(range(3), count)
    if n.rng.random() < 0.5:
        leader = await n.leader_or_any()
        await asyncio.gather(n.kill(leader), n.masters_restart_empty(indexes))
    else:
        await n.masters_restart_empty(indexes)


async def _master_stop(n: Nemesis) -> None:
    await n.master_stop(n.rng.randrange(3))
    await n.sleep(n.rng.uniform(1.0, 4.0))


async def _master_pause(n: Nemesis) -> None:
    j = n.rng.randrange(3)
    n.master_pause(j)
    await n.sleep(n.rng.uniform(1.0, 4.0))
    n.master_resume(j)


async def _partition(n: Nemesis) -> None:
    replicas = n.rng.sample(n.cluster.replicas, n.rng.choice((1, 2)))
    masters = n.rng.sample(range(3), n.rng.choice((1, 2)))
    n.partition(replicas, masters)
    await n.sleep(n.rng.uniform(2.0, 5.0))
    n.restore_links(reset=n.rng.random() < 0.5)


async def _slow_link(n: Nemesis) -> None:
    n.delay_link(n.rng.randrange(3), n.rng.randrange(3), n.rng.uniform(0.05, 0.6))
    await n.sleep(n.rng.uniform(2.0, 5.0))
    n.restore_links()


async def _nats_down(n: Nemesis) -> None:
    await n.nats_stop()
    if n.rng.random() < 0.5:
        await _kill_leader(n)
    await n.sleep(n.rng.uniform(2.0, 8.0))
    await n.nats_start()


async def _clock_jump(n: Nemesis) -> None:
    faked = [r for r in n.cluster.replicas if r.clock_file is not None]
    if not faked:
        n.record("clock_jump_skipped", detail="no replica runs under libfaketime")
        return
    # Forward only: libfaketime moves the monotonic clock too, and it never goes back.
    replica = n.rng.choice(faked)
    n.clock_jump(replica, f"{replica.clock_offset_s + n.rng.uniform(0.1, 2.0):+.2f}s")


async def _tempo_ramp(n: Nemesis) -> None:
    leader = await n.leader_or_any()
    assert n.tempo is not None
    await n.set_tempo(leader, n.tempo.random_target(), ramp=True)


MENU = (
    _kill_leader,
    _kill_follower,
    _sigterm_leader,
    _pause_leader,
    _masters_empty,
    _master_stop,
    _master_pause,
    _partition,
    _slow_link,
    _nats_down,
    _clock_jump,
    _tempo_ramp,
)


def chaos_scenario(faults: int, *, faked_clocks: bool) -> Scenario:
    async def script(n: Nemesis) -> None:
        await random_schedule(n, faults)

    settings = ClusterSettings(faked_clocks=(2,) if faked_clocks else (), catch_up_beats=16)
    return Scenario("chaos", script, settings, tempo_traffic=True, settle_s=10.0)


@scenario(tempo_traffic=True, settle_s=6.0)
async def smoke(n: Nemesis) -> None:
    """No fault: the recorders and the checker on a healthy cluster."""
    await n.sleep(5)
