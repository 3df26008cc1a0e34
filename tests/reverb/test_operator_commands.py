"""``backbeat windows`` and ``backbeat reports`` as real processes against a real reverb:
nothing of what they print is lost (ids, issues), JSON Lines, a closed pipe, id prefixes."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator

import nats
import pytest

from backbeat.core import keys, subjects
from backbeat.core.messages import BarReport, ReportIssue
from backbeat.embedded import NatsServer, RedisServer
from backbeat.reverb.server import ReverbServer, ReverbSettings
from reverb_rollup import InProcessRollup, RollupEvent
from tests.reverb.claim_samples import make_claim
from tests.reverb.ingest_harness import ingest_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

CURRENT = 1235
#: A narrow terminal, as a user's; output that goes to a pipe or a file is laid out for it too.
NARROW = {**os.environ, "COLUMNS": "80", "LINES": "24", "TERM": "xterm"}


@pytest.fixture
async def server(
    redis_server: RedisServer, nats_server: NatsServer, cluster_id: str
) -> AsyncIterator[ReverbServer]:
    settings = ReverbSettings(cluster_id=cluster_id, nats_url=nats_server.url)
    ingest = ingest_for(cluster_id, redis_server.url, nats_server.url, current_beat=CURRENT)
    async with ReverbServer(settings, ingest=ingest) as srv:
        yield srv


def _address(server: ReverbServer) -> str:
    assert server.grpc is not None
    return server.grpc.address


async def backbeat(*words: str) -> tuple[int, str, str]:
    """Run ``backbeat WORDS…`` (the server lives in this event loop: never block it)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "backbeat.cli", *words, env=NARROW,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def _report(cluster_id: str, from_beat: int, window_id: str) -> BarReport:
    return BarReport(
        window_id=window_id,
        from_beat=from_beat,
        to_beat=from_beat + 3,
        agents_reporting=2,
        on_time_reviews=1,
        help_promises_fulfilled=0,
        secret_rotations_ok=True,
        tempo_drift_ms=1.0,
        cluster_id=cluster_id,
        issues=(
            ReportIssue("late_agent", "agent a1 reported late", "warning", 3, ("a1",)),
            ReportIssue("failover", "a new leader took over", "info", 1),
        ),
    )


async def _publish_reports(nats_url: str, cluster_id: str, beats: list[int]) -> list[str]:
    """Publish one report per beat; ids start with a letter, as ``[d0173c5b]`` did."""
    ids = [f"d0173c5b{beat:024x}" for beat in beats]
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        for beat, window_id in zip(beats, ids, strict=True):
            report = _report(cluster_id, beat, window_id)
            await js.publish(subjects.bar(cluster_id, window_id), report.encode())
    finally:
        await nc.close()
    return ids


async def test_reports_keep_ids_and_name_issues(
    server: ReverbServer, nats_server: NatsServer, cluster_id: str
) -> None:
    await _publish_reports(nats_server.url, cluster_id, [100, 104])
    code, out, err = await backbeat("reports", "--reverb", _address(server), "--count", "2")
    assert code == 0, out + err
    lines = out.splitlines()
    assert len(lines) == 2, out  # one line per report: nothing wrapped at 80 columns
    for line, beat in zip(lines, (100, 104), strict=True):
        assert line.startswith(f"bar {beat}–{beat + 3} [d0173c5b]: "), line
        assert "issues: late_agent ×3 (warning), failover (info)" in line, line


async def test_reports_json_is_one_object_per_line(
    server: ReverbServer, nats_server: NatsServer, cluster_id: str
) -> None:
    ids = await _publish_reports(nats_server.url, cluster_id, [100, 104, 108])
    code, out, err = await backbeat(
        "reports", "--reverb", _address(server), "--count", "3", "--json"
    )
    assert code == 0, out + err
    lines = out.splitlines()
    assert [json.loads(line)["window_id"] for line in lines] == ids


async def test_reports_follow_into_a_closed_pipe_exits_quietly(
    server: ReverbServer, nats_server: NatsServer, cluster_id: str
) -> None:
    await _publish_reports(nats_server.url, cluster_id, [100, 104, 108])
    # `backbeat reports --follow --json | head -n 1`, with both exit statuses.
    script = (
        f'"{sys.executable}" -m backbeat.cli reports --follow --json --reverb {_address(server)}'
        ' | head -n 1; echo "status ${PIPESTATUS[0]} ${PIPESTATUS[1]}" >&2'
    )
    proc = await asyncio.create_subprocess_exec(
        "bash", "-c", script, env=NARROW,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    # head exits after the first line; backbeat notices on its next write (the next report).
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert json.loads(out.decode())["from_beat"] == 100
    assert err.decode().strip() == "status 0 0", err.decode()


async def test_reports_new_skips_the_retained_ones(
    server: ReverbServer, nats_server: NatsServer, cluster_id: str
) -> None:
    await _publish_reports(nats_server.url, cluster_id, [100, 104])
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "backbeat.cli", "reports", "--follow", "--new", "--json",
        "--count", "1", "--reverb", _address(server), env=NARROW,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    # Publish until the follower has subscribed and printed one: it must be a new one.
    later = 200
    communicate = asyncio.ensure_future(proc.communicate())
    while not communicate.done() and later < 400:
        await _publish_reports(nats_server.url, cluster_id, [later])
        later += 4
        await asyncio.wait({communicate}, timeout=0.5)
    out, err = await asyncio.wait_for(communicate, 30)
    assert proc.returncode == 0, err.decode()
    assert json.loads(out.decode())["from_beat"] >= 200


async def test_windows_shows_whole_ids_and_takes_a_prefix(server: ReverbServer) -> None:
    timeline = server.ingest.follower.timeline
    assert timeline is not None
    await server.ingest.submit(
        [make_claim("a1", "t1", CURRENT - 4), make_claim("a1", "t1", CURRENT)]
    )
    old, current = timeline.window_id(CURRENT - 4), timeline.window_id(CURRENT)

    code, out, err = await backbeat("windows", "--reverb", _address(server))
    assert code == 0, out + err
    assert old in out, out  # whole ids at 80 columns
    assert current in out, out

    code, out, err = await backbeat("windows", old[:7], "--reverb", _address(server))
    assert code == 0, out + err
    assert out.startswith(f"window {old} beats "), out

    code, out, err = await backbeat("windows", "--json", old[:7], "--reverb", _address(server))
    assert code == 0, out + err
    assert json.loads(out)["summary"]["window_id"] == old

    missing = "z" if not old.startswith("z") else "y"  # never a hex id
    code, out, err = await backbeat("windows", missing, "--reverb", _address(server))
    assert code == 2
    assert f"no buffered window id starts with '{missing}'" in out


def test_an_ambiguous_prefix_is_refused_with_the_candidates() -> None:
    from backbeat.ctl.windows import match_prefix
    from backbeat.errors import PrefixError

    ids = ["ab" + "0" * 30, "ab" + "1" * 30, "cd" + "0" * 30]
    assert match_prefix("ab1", ids) == ids[1]
    with pytest.raises(PrefixError, match=r"ambiguous \(2 windows"):
        match_prefix("ab", ids)


async def test_reports_from_beat_zero_replays_from_the_first_window(
    server: ReverbServer, nats_server: NatsServer, cluster_id: str
) -> None:
    await _publish_reports(nats_server.url, cluster_id, [0, 4, 8])
    reverb = _address(server)
    code, out, err = await backbeat("reports", "--reverb", reverb, "--from-beat", "0", "--json")
    assert code == 0, out + err
    assert [json.loads(line)["from_beat"] for line in out.splitlines()] == [0, 4, 8]
    code, out, err = await backbeat("reports", "--reverb", reverb, "--from-beat", "5", "--json")
    assert code == 0, out + err
    assert [json.loads(line)["from_beat"] for line in out.splitlines()] == [4, 8]


async def test_windows_recompute_replays_a_report_byte_for_byte(
    server: ReverbServer, redis_server: RedisServer, nats_server: NatsServer, cluster_id: str
) -> None:
    timeline = server.ingest.follower.timeline
    assert timeline is not None
    old = timeline.window_id(CURRENT - 4)
    await server.ingest.submit(
        [make_claim("a1", "t1", CURRENT - 4, "review", 1), make_claim("a2", "t2", CURRENT - 3)]
    )
    where = ["--reverb", _address(server), "--redis", redis_server.url]
    code, out, err = await backbeat("windows", old[:8], "--recompute", *where)
    assert code == 2, out + err
    assert "no published report yet" in out

    nc = await nats.connect(nats_server.url)
    try:
        async with InProcessRollup(cluster_id, redis=server.ingest.redis, nats_client=nc) as fn:
            start = timeline.bar_start(CURRENT - 4)
            event = RollupEvent(cluster_id, old, start, start + 3, start + 4)
            published = (await fn.invoke(event)).report
    finally:
        await nc.close()
    code, out, err = await backbeat("windows", old[:8], "--recompute", *where)
    assert code == 0, out + err
    assert f"window {old}: the report recomputed from the stored claims is identical" in out
    code, out, err = await backbeat("windows", old[:8], "--recompute", "--json", *where)
    assert code == 0, out + err
    replayed = json.loads(out)
    assert replayed["identical"] is True
    assert replayed["recomputed"].encode() == published

    # A claim slipped into the log afterwards: the replay shows the difference.
    await server.ingest.redis.xadd(
        keys.window_claims(cluster_id, old), {"m": '["a9","t9",1229,"done",0,null]'}
    )
    code, out, err = await backbeat("windows", old[:8], "--recompute", *where)
    assert code == 1, out + err
    assert "DIFFERS" in out
