"""The BarReport's ``secret_rotations_ok`` reflects the rotations due in the window's time span
(read from the rotation audit stream) and the claims that failed verification."""

from __future__ import annotations

import time
from dataclasses import replace

import nats
import nats.aio.client
import pytest
from redis.asyncio import Redis

from backbeat.core import keys
from backbeat.core.messages import BarReport, BeatFrame
from backbeat.secrets import RotationEvent
from reverb_rollup import InProcessRollup, RollupEvent
from tests.rollup.conftest import CannedWindows

pytestmark = pytest.mark.integration

S = 1_000_000_000


@pytest.fixture
def canned(cluster_id: str) -> CannedWindows:
    return CannedWindows(cluster_id)


def downbeat(cluster_id: str, beat: int, at_ns: int) -> BeatFrame:
    return BeatFrame(
        cluster_id=cluster_id,
        beat_index=beat,
        downbeat=True,
        phase="plan",
        hlc="7ffd:0001:beef",
        deadline_ns=at_ns + S // 2,
        tempo_bpm=120.0,
        window_id="0" * 32,
        term=1,
        scheduled_ns=at_ns,
    )


async def record(redis: Redis, cluster_id: str, event: RotationEvent) -> None:
    await redis.xadd(keys.rotations(cluster_id), event.fields())  # type: ignore[arg-type]


def test_the_event_from_a_downbeat_carries_the_windows_time_span() -> None:
    end = 1_705_314_600 * S
    event = RollupEvent.from_downbeat(downbeat("c1", 8, end), 4)
    # Four beats of 500 ms before the downbeat.
    assert (event.window_start_ns, event.window_end_ns) == (end - 2 * S, end)
    decoded = RollupEvent.decode(event.to_json_dict())
    assert decoded == event


async def test_rotations_due_in_the_window_fill_the_report(
    redis: Redis, nc: nats.aio.client.Client, cluster_id: str, canned: CannedWindows
) -> None:
    now = time.time_ns() - 60 * S
    fn = InProcessRollup(cluster_id, redis=redis, nats_client=nc, source=canned)
    # Window 0-3: one rotation due in it, which failed first and then succeeded late.
    # Window 4-7: one rotation that succeeded. Window 8-11: nothing due (one just after it).
    spans = {0: (now, now + 2 * S), 4: (now + 2 * S, now + 4 * S), 8: (now + 4 * S, now + 6 * S)}
    await record(redis, cluster_id, RotationEvent(now + S, now + S, "", False, "Vault sealed"))
    await record(redis, cluster_id, RotationEvent(now + 9 * S, now + S, "beat-2", True))
    await record(redis, cluster_id, RotationEvent(now + 3 * S, now + 3 * S, "beat-3", True))
    await record(redis, cluster_id, RotationEvent(now + 6 * S, now + 6 * S, "beat-4", True))
    reports: dict[int, BarReport] = {}
    async with fn:
        for start, (from_ns, until_ns) in spans.items():
            canned.add(start)
            event = replace(
                RollupEvent.for_window(cluster_id, start, start + 3),
                window_start_ns=from_ns,
                window_end_ns=until_ns,
            )
            reports[start] = (await fn.invoke(event)).decoded()
    assert reports[0].secret_rotations_ok is False
    assert any(i.code == "secret_rotation_failed" for i in reports[0].issues)
    assert reports[4].secret_rotations_ok is True
    assert reports[8].secret_rotations_ok is True


async def test_a_claim_that_failed_verification_fails_the_window(
    redis: Redis, nc: nats.aio.client.Client, cluster_id: str, canned: CannedWindows
) -> None:
    agg = canned.add(0)
    canned.aggregates[agg.window_id] = replace(
        agg, rejected_by_reason={"bad_signature": 1}, signature_failures=1
    )
    async with InProcessRollup(cluster_id, redis=redis, nats_client=nc, source=canned) as fn:
        report = (await fn.invoke(RollupEvent.for_window(cluster_id, 0, 3))).decoded()
    assert report.secret_rotations_ok is False
