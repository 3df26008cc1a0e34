"""Redis reachability decided over a window: slow answers under load do not lower it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from backbeat.embedded import NatsServer, RedisServer
from backbeat.pulse import PulseSettings, Role
from backbeat.pulse.reachability import DEFAULT_WINDOW_S, ReachabilityWindow
from backbeat.pulse.server import PulseServer
from tests.waiting import eventually


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_slow_answer_does_not_lower_it_a_silent_master_does() -> None:
    clock = FakeClock()
    window = ReachabilityWindow(window_s=5.0, clock=clock)
    assert window.value == 0
    for answered in (3, 2, 3, 2, 2, 3):  # one master misses the timeout now and then
        window.observe(answered)
        clock.now += 0.5
        assert window.value == 3
    for _ in range(9):  # then it stays silent: 4.5 s, still within the window
        window.observe(2)
        clock.now += 0.5
    assert window.value == 3
    clock.now += 0.6
    window.observe(2)
    assert window.value == 2  # silent for the whole window: not reachable
    window.observe(3)
    assert window.value == 3  # back at once


def test_without_recent_writes_the_latest_count_stands() -> None:
    clock = FakeClock()
    window = ReachabilityWindow(window_s=1.0, clock=clock)
    window.observe(3)
    window.observe(1)
    clock.now += 60
    assert window.value == 1


def test_the_window_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        ReachabilityWindow(window_s=0)


@pytest.mark.integration
@pytest.mark.timeout(120)
async def test_a_master_slow_for_a_moment_stays_reachable_one_gone_does_not(
    redis_factory: Callable[..., RedisServer], nats_server: NatsServer, cluster_id: str
) -> None:
    """A real pulse leader over three masters; one is paused (SIGSTOP: it misses every write's
    timeout, as a master on a loaded machine may for a moment)."""
    masters = [redis_factory() for _ in range(3)]
    settings = PulseSettings(
        cluster_id=cluster_id, node_id="reach", redis_urls=tuple(m.url for m in masters),
        nats_url=nats_server.url, tempo_bpm=240.0,
    )  # fmt: skip
    async with PulseServer(settings) as server:
        node = server.node
        await eventually(
            lambda: node.role is Role.LEADER and node.redis_reachable == 3, within_s=20
        )
        seen: list[int] = []
        masters[2].pause()
        try:
            pause_ends = time.monotonic() + 1.5  # six beats: six writes answered by two only
            while time.monotonic() < pause_ends:
                seen.append(node.status().redis_reachable)
                await asyncio.sleep(0.02)
            assert set(seen) == {3}, seen
            # Silent for longer than the window: no longer counted.
            await eventually(
                lambda: node.status().redis_reachable == 2, within_s=DEFAULT_WINDOW_S + 15
            )
            await eventually(lambda: _gauge(server) == 2, within_s=5)  # set at the next write
        finally:
            masters[2].resume()
        await eventually(lambda: node.status().redis_reachable == 3, within_s=15)
        await eventually(lambda: _gauge(server) == 3, within_s=5)


def _gauge(server: PulseServer) -> float | None:
    return server.node.metrics.registry.get_sample_value("backbeat_pulse_redis_reachable")
