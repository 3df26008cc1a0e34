"""A forged downbeat cannot stall the rollup (real Redis, NATS JetStream, the trigger and the
in-process rollup): one ``scheduled_at`` 100 years ahead is refused and terminated, counted,
and the following windows are reported — also after the trigger restarts."""

from __future__ import annotations

import time
from dataclasses import replace
from datetime import timedelta

import nats
import nats.aio.client
import pytest
from prometheus_client import generate_latest
from redis.asyncio import Redis

from backbeat.core import subjects
from backbeat.core.ed25519 import PrivateKey, PrivateKeyring, sign_frame
from backbeat.core.messages import BeatFrame
from backbeat.core.timeline import Timeline
from backbeat.embedded import NatsServer
from backbeat.trigger import ReverbTrigger, TriggerSettings
from tests.rollup.frames import downbeat
from tests.rollup.test_trigger import wait_report
from tests.waiting import eventually

pytestmark = pytest.mark.integration

S = 1_000_000_000
CENTURY_NS = 100 * 365 * 86400 * S
FRAME_KEYS = PrivateKeyring([PrivateKey("frame-1", b"p" * 32, activates_ns=0)])


async def publish(nc: nats.aio.client.Client, frame: BeatFrame) -> None:
    await nc.jetstream().publish(
        subjects.downbeat(frame.cluster_id),
        frame.encode(),
        headers={"Nats-Msg-Id": f"{frame.cluster_id}-{frame.beat_index}-{time.time_ns()}"},
    )


def refused(trigger: ReverbTrigger, reason: str) -> float:
    text = generate_latest(trigger.metrics.registry).decode()
    line = f'backbeat_frames_refused_total{{component="reverb-trigger",reason="{reason}"}}'
    return next(float(x.split()[-1]) for x in text.splitlines() if x.startswith(line))


def settings(cluster_id: str, **overrides: object) -> TriggerSettings:
    base: dict[str, object] = {
        "grace": timedelta(milliseconds=20),
        "backoff": timedelta(milliseconds=10),
        "backoff_max": timedelta(milliseconds=100),
    }
    return TriggerSettings(cluster_id, **(base | overrides))  # type: ignore[arg-type]


async def test_a_downbeat_a_century_ahead_neither_stalls_nor_survives_a_restart(
    redis: Redis, nc: nats.aio.client.Client, nats_server: NatsServer, cluster_id: str
) -> None:
    tl = Timeline.start(cluster_id, 120.0, time.time_ns())
    # Each trigger process has its own connection: a restart drops it (and its pull requests).
    first = await nats.connect(nats_server.url)
    async with ReverbTrigger(settings(cluster_id), redis=redis, nats_client=first) as trigger:
        await publish(nc, downbeat(tl, 4, scheduled_ns=time.time_ns() + CENTURY_NS))
        await publish(nc, downbeat(tl, 8))
        report = await wait_report(nc, cluster_id, tl.window_id(4))
        assert (report.from_beat, report.to_beat) == (4, 7)
        assert refused(trigger, "out_of_bounds") == 1
    await first.close()

    async def no_pull_request_left() -> bool:  # the server saw the old process go away
        info = await nc.jetstream().consumer_info(
            subjects.downbeat_stream(cluster_id), settings(cluster_id).durable
        )
        return not info.num_waiting

    await eventually(no_pull_request_left, within_s=10.0)
    # Another forgery waits for the next trigger; a restarted one refuses it as well.
    await publish(nc, downbeat(tl, 12, scheduled_ns=time.time_ns() + CENTURY_NS))
    second = await nats.connect(nats_server.url)
    async with ReverbTrigger(settings(cluster_id), redis=redis, nats_client=second) as trigger:
        await publish(nc, downbeat(tl, 16))
        report = await wait_report(nc, cluster_id, tl.window_id(12))
        assert (report.from_beat, report.to_beat) == (12, 15)
        assert refused(trigger, "out_of_bounds") == 1
        assert trigger.ready()[0]
    await second.close()


async def test_with_signatures_required_only_the_pulses_downbeats_are_acted_on(
    redis: Redis, nc: nats.aio.client.Client, cluster_id: str
) -> None:
    tl = Timeline.start(cluster_id, 120.0, time.time_ns())
    async with ReverbTrigger(
        settings(cluster_id, require_signed_frames=True),
        redis=redis,
        nats_client=nc,
        frame_keys=FRAME_KEYS.public,
    ) as trigger:
        stranger = PrivateKeyring([PrivateKey("frame-1", b"x" * 32, activates_ns=0)])
        await publish(nc, downbeat(tl, 4))  # unsigned
        await publish(nc, sign_frame(downbeat(tl, 8), stranger))  # not the pulse's key
        genuine = sign_frame(downbeat(tl, 12), FRAME_KEYS)
        await publish(nc, replace(genuine, term=2))  # tampered after signing
        await publish(nc, sign_frame(downbeat(tl, 16), FRAME_KEYS))
        report = await wait_report(nc, cluster_id, tl.window_id(12))
        assert (report.from_beat, report.to_beat) == (12, 15)
        assert refused(trigger, "unsigned") == 1
        assert refused(trigger, "bad_signature") == 2
        for beat in (0, 4, 8):  # no downbeat the pulse signed closed these windows
            js = nc.jetstream()
            with pytest.raises(nats.js.errors.NotFoundError):
                await js.get_last_msg(
                    subjects.bar_stream(cluster_id), subjects.bar(cluster_id, tl.window_id(beat))
                )
