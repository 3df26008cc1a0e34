"""The rollup function's deployed runtimes take calls only from a holder of the invocation key,
and never for a window that has not closed.

A real functions-framework process serves the CloudEvents runtime; the Lambda handler runs in
this process (as the Lambda runtime calls it). Without the checks, an unsigned POST for the
current window sealed it and published a report with no agents, after which the window's
honest claims came back late.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import nats
import nats.aio.client
import pytest
from redis.asyncio import Redis

from backbeat.core import subjects
from backbeat.core.timeline import Timeline
from backbeat.embedded import NatsServer, RedisServer
from backbeat.reverb.store import Outcome as ClaimOutcome
from backbeat.reverb.store import WindowStore
from backbeat.trigger import HttpInvoker, InvokeError
from reverb_rollup import RollupEvent, WindowNotClosed, aws_lambda
from reverb_rollup.invocation_auth import (
    SIGNATURE_HEADER,
    InvocationRefused,
    sign_invocation,
    verify_invocation,
)
from tests.rollup.test_runtimes import (
    INVOKE_KEY,
    closed_window,
    function_env,
    functions_framework_server,
    signed_request,
)
from tests.rollup.test_trigger import append, claim, wait_report

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


@pytest.fixture
def function_url(
    cluster_id: str, redis_server: RedisServer, nats_server: NatsServer
) -> Iterator[str]:
    with functions_framework_server(function_env(cluster_id, redis_server, nats_server)) as url:
        yield url


def open_window(tl: Timeline, current: int) -> RollupEvent:
    """The event for the window holding beat ``current``, as an attacker would forge it."""
    start = tl.bar_start(current)
    event = RollupEvent.for_window(tl.cluster_id, start, start + tl.bar_length - 1)
    return dataclasses.replace(
        event,
        window_start_ns=tl.beat_time_ns(start),
        window_end_ns=tl.beat_time_ns(start + tl.bar_length),
    )


async def post(url: str, event: RollupEvent, signature: str | None) -> tuple[int, str]:
    """POST ``event`` as the trigger does (binary CloudEvent), with ``signature`` if any."""
    body = json.dumps(event.to_json_dict()).encode()
    headers = {
        "content-type": "application/json",
        "ce-specversion": "1.0",
        "ce-type": "io.backbeat.rollup.v1",
        "ce-source": "//attacker",
        "ce-id": os.urandom(8).hex(),
    }
    if signature is not None:
        headers[SIGNATURE_HEADER] = signature
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session,
        session.post(url, data=body, headers=headers) as response,
    ):
        return response.status, await response.text()


def sign(event: RollupEvent, key: str = INVOKE_KEY, at: float | None = None) -> str:
    body = json.dumps(event.to_json_dict()).encode()
    return sign_invocation(key, body, time.time() if at is None else at)


async def assert_still_open(
    redis: Redis, nc: nats.aio.client.Client, tl: Timeline, current: int, agent: str
) -> None:
    """The window holding ``current`` has no report and takes an honest claim as on time."""
    store = WindowStore(redis, tl.cluster_id)
    assert await append(store, tl, current, [claim(agent, "t", current)]) == ClaimOutcome.ACCEPTED
    with pytest.raises(nats.js.errors.NotFoundError):
        await nc.jetstream().get_last_msg(
            subjects.bar_stream(tl.cluster_id),
            subjects.bar(tl.cluster_id, tl.window_id(current)),
        )


async def test_an_unsigned_call_for_an_open_window_is_refused_and_seals_nothing(
    function_url: str, redis: Redis, nc: nats.aio.client.Client, cluster_id: str
) -> None:
    # A slow tempo: the window stays open for the whole test.
    tl = Timeline.start(cluster_id, 20, time.time_ns(), bar_length=4)
    store = WindowStore(redis, cluster_id)
    await append(store, tl, 1, [claim("a1", "t1", 1)])
    status, text = await post(function_url, open_window(tl, 1), signature=None)
    assert status == 401, text
    assert SIGNATURE_HEADER in text
    await assert_still_open(redis, nc, tl, 2, "a2")


@pytest.mark.parametrize(
    "forgery",
    ["wrong-key", "replayed-an-hour-later", "garbage", "signature-of-another-body"],
)
async def test_a_forged_signature_is_refused(
    function_url: str, redis: Redis, nc: nats.aio.client.Client, cluster_id: str, forgery: str
) -> None:
    tl = Timeline.start(cluster_id, 20, time.time_ns(), bar_length=4)
    event = open_window(tl, 1)
    signature = {
        "wrong-key": sign(event, key="w" * 48),
        "replayed-an-hour-later": sign(event, at=time.time() - 3600),
        "garbage": "t=abc,v1=",
        "signature-of-another-body": sign(closed_window(cluster_id, 0, 3)),
    }[forgery]
    status, text = await post(function_url, event, signature)
    assert status == 401, text
    await assert_still_open(redis, nc, tl, 1, "a1")


async def test_a_signed_call_for_an_open_window_is_too_early(
    function_url: str, redis: Redis, nc: nats.aio.client.Client, cluster_id: str
) -> None:
    """Even the key holder cannot close a window before its downbeat on the function's clock."""
    tl = Timeline.start(cluster_id, 20, time.time_ns(), bar_length=4)
    event = open_window(tl, 1)
    status, text = await post(function_url, event, sign(event))
    assert status == 425, text
    assert "retry after" in text
    await assert_still_open(redis, nc, tl, 1, "a1")


async def test_the_key_rotates_without_refusing_honest_calls(
    cluster_id: str,
    redis_server: RedisServer,
    nats_server: NatsServer,
    nc: nats.aio.client.Client,
    tmp_path: Path,
) -> None:
    """The function reads the key from a file; the file is replaced while it runs. Calls
    signed with the new key (the trigger rotated first) and with the old one (the trigger has
    not refreshed yet) both work; a key never configured does not."""
    key_file = tmp_path / "rollup_invoke_key"
    old, new = "o" * 8 + os.urandom(24).hex(), "n" * 8 + os.urandom(24).hex()
    key_file.write_text(old + "\n")
    env = function_env(cluster_id, redis_server, nats_server)
    del env["BACKBEAT_SECRET_ROLLUP_INVOKE_KEY"]
    env["BACKBEAT_SECRET_ROLLUP_INVOKE_KEY_FILE"] = str(key_file)
    with functions_framework_server(env) as url:
        first = closed_window(cluster_id, 0, 3)
        assert (await post(url, first, sign(first, key=old)))[0] == 200
        key_file.write_text(new + "\n")
        second, third = closed_window(cluster_id, 4, 7), closed_window(cluster_id, 8, 11)
        assert (await post(url, second, sign(second, key=new)))[0] == 200
        assert (await post(url, third, sign(third, key=old)))[0] == 200
        fourth = closed_window(cluster_id, 12, 15)
        assert (await post(url, fourth, sign(fourth, key="x" * 48)))[0] == 401
    for event in (first, second, third):
        await wait_report(nc, cluster_id, event.window_id)


async def test_the_trigger_invoker_signs_its_calls(function_url: str, cluster_id: str) -> None:
    honest = HttpInvoker(function_url, invoke_key=lambda: INVOKE_KEY)
    stale = HttpInvoker(function_url, invoke_key=lambda: "s" * 48)
    try:
        await honest.invoke(closed_window(cluster_id, 0, 3))
        with pytest.raises(InvokeError, match="HTTP 401"):
            await stale.invoke(closed_window(cluster_id, 4, 7))
    finally:
        await honest.close()
        await stale.close()


@pytest.mark.usefixtures("lambda_env")
async def test_the_lambda_handler_refuses_unsigned_and_open_windows(
    redis: Redis, nc: nats.aio.client.Client, cluster_id: str
) -> None:
    tl = Timeline.start(cluster_id, 20, time.time_ns(), bar_length=4)
    event = open_window(tl, 1)
    with pytest.raises(InvocationRefused, match="unsigned"):
        await asyncio.to_thread(aws_lambda.handler, event.to_json_dict(), None)
    with pytest.raises(InvocationRefused, match="matches no invocation key"):
        await asyncio.to_thread(aws_lambda.handler, signed_request(event, key="w" * 48), None)
    with pytest.raises(WindowNotClosed):
        await asyncio.to_thread(aws_lambda.handler, signed_request(event), None)
    await assert_still_open(redis, nc, tl, 1, "a1")


def test_a_remote_invoker_will_not_start_without_the_key(tmp_path: Path) -> None:
    """`reverb-trigger --invoker http` refuses to start unsigned (exit 2, names the secret)."""
    import subprocess

    env = {k: v for k, v in os.environ.items() if not k.startswith("BACKBEAT_SECRET_")}
    done = subprocess.run(
        [sys.executable, "-m", "backbeat.cli", "reverb-trigger", "--invoker", "http",
         "--function-url", "http://127.0.0.1:9/", "--nats", "nats://127.0.0.1:9"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "BACKBEAT_SECRET_ROLLUP_INVOKE_KEY" in done.stderr


def test_verification_is_constant_shape() -> None:
    """Unit checks of the scheme: both keys of a rotation verify; nothing verifies with none."""
    body = b'{"window_id": "x"}'
    now = 1_700_000_000.0
    signature = sign_invocation("a" * 40, body, now)
    verify_invocation(["b" * 40, "a" * 40], body, signature, now + 10)
    with pytest.raises(InvocationRefused, match="no invocation key"):
        verify_invocation(["", ""], body, signature, now)
    with pytest.raises(InvocationRefused, match="from this function's clock"):
        verify_invocation(["a" * 40], body, signature, now + 301)
