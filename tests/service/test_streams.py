"""The JetStream streams are defined once: whoever creates one, it has the same configuration,
and only its owner brings an existing one in line (against a real nats-server)."""

from __future__ import annotations

import asyncio

import nats
import nats.aio.client
import pytest
from nats.js.api import StreamConfig

from backbeat.core import subjects
from backbeat.embedded import NatsCluster, NatsServer
from backbeat.pulse.publisher import BeatPublisher
from backbeat.service import streams
from backbeat.service.nats_connect import TRANSIENT_JETSTREAM_ERRORS
from backbeat.service.nats_permissions import NatsRole
from reverb_rollup.publisher import BarPublisher
from tests.waiting import eventually

pytestmark = pytest.mark.integration


def test_replicas_are_checked() -> None:
    assert streams.replicas_from_env({}) == 1
    assert streams.replicas_from_env({streams.REPLICAS_ENV: "3"}) == 3
    for bad in ("0", "6", "three"):
        with pytest.raises(ValueError, match=streams.REPLICAS_ENV if bad == "three" else "1-5"):
            streams.replicas_from_env({streams.REPLICAS_ENV: bad})


async def test_pulse_and_trigger_create_the_same_downbeat_stream(
    nc: nats.aio.client.Client, nats_server: NatsServer, cluster_id: str
) -> None:
    """Created by the trigger's side first (the rollup role), the pulse finds nothing to align;
    created by the pulse first, the trigger finds nothing different either."""
    js = nc.jetstream()
    wanted = streams.downbeat_stream_config(cluster_id)
    await streams.ensure_stream(js, wanted)
    info = await js.stream_info(subjects.downbeat_stream(cluster_id))
    assert streams.differences(info.config, wanted) == {}
    created = info.created

    publisher = BeatPublisher(nats_server.url_as(NatsRole.PULSE), cluster_id)
    await publisher.start()
    try:
        info = await js.stream_info(subjects.downbeat_stream(cluster_id))
        assert info.created == created
        assert streams.differences(info.config, wanted) == {}
        assert info.config.duplicate_window == streams.DOWNBEAT_DUPLICATE_WINDOW_S
        assert info.config.max_age == streams.DOWNBEAT_MAX_AGE_S
    finally:
        await publisher.close()


async def test_the_owner_aligns_a_stream_others_leave_it(
    nc: nats.aio.client.Client, nats_server: NatsServer, cluster_id: str
) -> None:
    js = nc.jetstream()
    name = subjects.downbeat_stream(cluster_id)
    # A downbeat stream as an older version defined it (another duplicate window and age).
    await js.add_stream(
        StreamConfig(
            name=name,
            subjects=[subjects.downbeat(cluster_id)],
            duplicate_window=120.0,
            max_age=24 * 3600.0,
        )
    )
    wanted = streams.downbeat_stream_config(cluster_id)
    await streams.ensure_stream(js, wanted)  # not the owner: used as it is
    info = await js.stream_info(name)
    assert set(streams.differences(info.config, wanted)) >= {"duplicate_window", "max_age"}

    publisher = BeatPublisher(nats_server.url_as(NatsRole.PULSE), cluster_id)
    await publisher.start()  # the owner, with the pulse role's permissions
    try:
        info = await js.stream_info(name)
        assert streams.differences(info.config, wanted) == {}
    finally:
        await publisher.close()


async def test_the_bar_stream_is_the_same_from_the_function_and_the_ingest(
    nc: nats.aio.client.Client, cluster_id: str
) -> None:
    js = nc.jetstream()
    await BarPublisher(js, cluster_id).ensure_stream()
    info = await js.stream_info(subjects.bar_stream(cluster_id))
    assert streams.differences(info.config, streams.bar_stream_config(cluster_id)) == {}
    assert info.config.max_msgs_per_subject == 1


async def test_a_replica_count_larger_than_the_servers_is_refused(
    nc: nats.aio.client.Client, cluster_id: str
) -> None:
    """One server cannot keep three replicas: JetStream says so instead of storing less."""
    js = nc.jetstream()
    with pytest.raises(nats.js.errors.APIError):
        await streams.ensure_stream(js, streams.timeline_stream_config(cluster_id, replicas=3))


async def test_the_timeline_stream_is_in_line_as_created(
    nc: nats.aio.client.Client, cluster_id: str
) -> None:
    """It asks for no duplicate window of its own (0: the server's default): the stream the
    server creates is in line with it, so its owner has nothing to align at every start."""
    js = nc.jetstream()
    wanted = streams.timeline_stream_config(cluster_id)
    await streams.ensure_stream(js, wanted, owner=True)
    info = await js.stream_info(subjects.timeline_stream(cluster_id))
    assert info.config.duplicate_window  # the server filled in its default
    assert streams.differences(info.config, wanted) == {}


@pytest.mark.fault
@pytest.mark.timeout(120)
async def test_a_stream_is_created_once_jetstream_answers_again(
    nats_cluster: NatsCluster, cluster_id: str
) -> None:
    """Two nodes of three down: JetStream has no meta leader and creates nothing. Creating the
    timeline stream (three replicas) is tried again until ``within_s``, then the error is
    raised; tried again while the nodes come back, it is created."""
    alive, *down = nats_cluster.nodes
    for node in down:
        node.kill()
    client = await nats.connect(alive.url_as(NatsRole.PULSE), connect_timeout=5)
    try:
        js = client.jetstream(timeout=1)
        wanted = streams.timeline_stream_config(cluster_id, replicas=3)
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(TRANSIENT_JETSTREAM_ERRORS):
            await streams.ensure_stream(js, wanted, owner=True, within_s=2)
        assert loop.time() - started >= 1.5  # tried again, not given up at the first error
        ensuring = asyncio.create_task(streams.ensure_stream(js, wanted, owner=True, within_s=60))
        for node in down:
            await asyncio.to_thread(node.start)
        await asyncio.wait_for(ensuring, 90)

        async def in_line() -> bool:
            try:
                info = await js.stream_info(wanted.name or "")
            except TRANSIENT_JETSTREAM_ERRORS:
                return False  # the new stream may still be electing its leader
            return streams.differences(info.config, wanted) == {}

        await eventually(in_line, within_s=60, what="the stream to answer, in line")
    finally:
        await client.close()
