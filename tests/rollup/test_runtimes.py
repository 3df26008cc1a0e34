"""The function's runtimes over real servers: HTTP CloudEvents (a functions-framework server
process), AWS Lambda (the handler called with a realistic event) and a process killed with
SIGKILL in the middle of a rollup."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import nats.aio.client
import pytest
from redis.asyncio import Redis

from backbeat.core.timeline import Timeline
from backbeat.embedded import NatsServer, RedisServer, free_port
from backbeat.reverb.store import WindowStore
from backbeat.service.nats_permissions import NatsRole
from backbeat.trigger import HttpInvoker, InvokeError
from reverb_rollup import (
    InProcessRollup,
    RollupEvent,
    RollupOutcome,
    RollupSettings,
    aws_lambda,
)
from reverb_rollup.invocation_auth import sign_invocation
from reverb_rollup.record import RecordState, RollupRecords
from tests.rollup.test_exactly_once import stored_reports
from tests.rollup.test_trigger import append, claim, wait_report
from tests.waiting import eventually

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


#: The invocation key the deployed function runtimes of these tests hold.
INVOKE_KEY = "k" * 8 + os.urandom(24).hex()


def function_env(cluster_id: str, redis: RedisServer, nats_server: NatsServer) -> dict[str, str]:
    return os.environ | {
        "BACKBEAT_CLUSTER": cluster_id,
        "REDIS_URL": redis.url,
        "NATS_URL": nats_server.url_as(NatsRole.ROLLUP),
        "BACKBEAT_ENV": "development",
        "LOG_LEVEL": "warn",
        "BACKBEAT_SECRET_ROLLUP_INVOKE_KEY": INVOKE_KEY,
    }


def closed_window(cluster_id: str, from_beat: int, to_beat: int, **kwargs: str) -> RollupEvent:
    """The event the trigger sends for a window whose closing downbeat was a second ago."""
    end_ns = time.time_ns() - 1_000_000_000
    event = RollupEvent.for_window(cluster_id, from_beat, to_beat, **kwargs)
    return dataclasses.replace(event, window_start_ns=end_ns - 2_000_000_000, window_end_ns=end_ns)


def signed_request(event: RollupEvent, key: str = INVOKE_KEY) -> dict[str, object]:
    """A Lambda function URL request carrying ``event``, signed with ``key``."""
    body = json.dumps(event.to_json_dict())
    return {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": "/",
        "headers": {
            "content-type": "application/json",
            "x-backbeat-signature": sign_invocation(key, body.encode(), time.time()),
        },
        "requestContext": {"http": {"method": "POST", "path": "/"}},
        "body": body,
        "isBase64Encoded": False,
    }


@contextlib.contextmanager
def functions_framework_server(env: dict[str, str]) -> Iterator[str]:
    """``functions-framework --target rollup --signature-type cloudevent`` on a free port."""
    port = free_port()
    binary = Path(sys.executable).parent / "functions-framework"
    source = REPO / "functions" / "reverb_rollup" / "main.py"
    argv = [str(binary), "--source", str(source), "--target", "rollup"]
    argv += ["--signature-type", "cloudevent", "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(
        argv,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"functions-framework exited: {proc.stderr.read()!r}")  # type: ignore[union-attr]
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            if time.monotonic() > deadline:
                raise AssertionError("functions-framework did not listen within 30 s")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}/"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()


async def test_http_cloudevents_runtime(
    redis: Redis,
    nc: nats.aio.client.Client,
    cluster_id: str,
    redis_server: RedisServer,
    nats_server: NatsServer,
) -> None:
    tl = Timeline.start(cluster_id, 120, time.time_ns())
    store = WindowStore(redis, cluster_id)
    await append(store, tl, 3, [claim("a1", "t1", 1), claim("a2", "t2", 2, "review", 0)])
    event = closed_window(
        cluster_id, 0, 3, traceparent="00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    )
    with functions_framework_server(function_env(cluster_id, redis_server, nats_server)) as url:
        invoker = HttpInvoker(url, invoke_key=lambda: INVOKE_KEY)
        try:
            for _ in range(3):  # duplicate triggers: still one report
                await invoker.invoke(event)
            with pytest.raises(InvokeError, match="HTTP 400"):
                await invoker.invoke(closed_window("other-cluster", 0, 3))
        finally:
            await invoker.close()
    report = await wait_report(nc, cluster_id, event.window_id)
    assert report.agents_reporting == 2
    assert report.on_time_reviews == 1
    assert list(await stored_reports(nc, cluster_id)) == [event.window_id]
    msg = await nc.jetstream().get_last_msg(
        f"BACKBEAT_{cluster_id.upper().replace('-', '_')}_BARS",
        f"backbeat.{cluster_id}.bar.{event.window_id}",
    )
    assert msg.headers is not None
    # The report continues the event's trace (same trace id; the span is the publisher's when
    # tracing is on in the function, the event's own otherwise).
    assert msg.headers["traceparent"].split("-")[1] == event.traceparent.split("-")[1]


@pytest.mark.usefixtures("lambda_env")
async def test_aws_lambda_handler(
    redis: Redis, nc: nats.aio.client.Client, cluster_id: str
) -> None:
    tl = Timeline.start(cluster_id, 120, time.time_ns())
    store = WindowStore(redis, cluster_id)
    await append(store, tl, 7, [claim("a1", "t1", 4), claim("a1", "t1", 5), claim("a2", "t", 6)])
    event = closed_window(cluster_id, 4, 7)
    # A direct Invoke (the trigger's LambdaInvoker) and a function URL carry the same shape.
    direct = signed_request(event)
    function_url = signed_request(event)
    function_url["headers"]["traceparent"] = (  # type: ignore[index]
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    )
    # The handler is synchronous (as Lambda calls it): run it off the event loop.
    first = await asyncio.to_thread(aws_lambda.handler, direct, None)
    second = await asyncio.to_thread(aws_lambda.handler, function_url, None)
    assert first["outcome"] == RollupOutcome.PUBLISHED.value
    assert second["outcome"] == RollupOutcome.ALREADY_PUBLISHED.value
    assert first["report"] == second["report"]
    assert first["report"]["agents_reporting"] == 2
    assert first["report"]["accepted_claims"] == 3
    assert list(await stored_reports(nc, cluster_id)) == [event.window_id]


CRASHING_FUNCTION = """
import asyncio, os, signal, sys
import nats
from redis.asyncio import Redis
from reverb_rollup import InProcessRollup, RollupEvent, RollupHooks, RollupSettings

async def main() -> None:
    redis_url, nats_url, cluster, start, end = sys.argv[1:6]
    redis = Redis.from_url(redis_url)
    nc = await nats.connect(nats_url)

    async def die(_event: RollupEvent) -> None:
        print("sealed", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)

    fn = InProcessRollup(cluster, redis=redis, nats_client=nc,
                         settings=RollupSettings(lease_ms=400), hooks=RollupHooks(after_seal=die))
    await fn.invoke(RollupEvent.for_window(cluster, int(start), int(end)))

asyncio.run(main())
"""


@pytest.mark.fault
async def test_function_process_killed_mid_rollup(
    redis: Redis,
    nc: nats.aio.client.Client,
    cluster_id: str,
    redis_server: RedisServer,
    nats_server: NatsServer,
) -> None:
    tl = Timeline.start(cluster_id, 120, time.time_ns())
    store = WindowStore(redis, cluster_id)
    await append(store, tl, 11, [claim(f"a{i}", "t", 8 + i % 4) for i in range(10)])
    event = RollupEvent.for_window(cluster_id, 8, 11)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CRASHING_FUNCTION,
        redis_server.url,
        nats_server.url,
        cluster_id,
        "8",
        "11",
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    assert out.strip() == b"sealed"
    killed_at = time.monotonic()
    view = await RollupRecords(redis, cluster_id).state(event.window_id)
    assert view is not None
    assert view.state is RecordState.IN_PROGRESS  # the dead attempt's lease, not yet expired

    # The retry (as the trigger sends it) takes over once the lease expires.
    async with InProcessRollup(
        cluster_id, redis=redis, nats_client=nc, settings=RollupSettings(lease_ms=400)
    ) as fn:
        result = await fn.invoke(event)
    recovered_s = time.monotonic() - killed_at
    assert result.outcome is RollupOutcome.PUBLISHED
    assert result.decoded().agents_reporting == 10
    assert list(await stored_reports(nc, cluster_id)) == [event.window_id]

    async def published() -> bool:
        view = await RollupRecords(redis, cluster_id).state(event.window_id)
        return view is not None and view.state is RecordState.PUBLISHED

    await eventually(published, within_s=10.0)
    # For the record (not asserted: wall-clock figures depend on the machine's load).
    print(f"recovered {recovered_s * 1000:.0f} ms after the kill (lease 400 ms, beat 500 ms)")
