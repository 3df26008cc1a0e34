"""The Node.js example (examples/node-client) against a real pulse replica, run with `node`.

Skipped only when `node` is not installed. The first run installs the locked dependencies
with `npm ci` (needs the npm registry once); later runs reuse examples/node-client/node_modules.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from backbeat.embedded import NatsServer, RedisServer, free_port
from backbeat.processes import ComponentProcess
from tests.pulse.cluster import PulseProcess, wait_for_leader
from tests.sdk.pulses import TOKEN

pytestmark = pytest.mark.integration

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "node-client"
NODE = shutil.which("node")


@pytest.fixture(scope="module")
def node_modules() -> Path:
    if NODE is None:
        pytest.skip("`node` is not installed: the Node.js example cannot run (install Node.js 18+)")
    modules = EXAMPLE / "node_modules"
    if not (modules / "@grpc" / "grpc-js").is_dir():
        npm = shutil.which("npm")
        if npm is None:
            pytest.fail("node is installed but npm is not: cannot install the example's deps")
        subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=EXAMPLE, check=True, timeout=300,
        )  # fmt: skip
    return modules


async def test_node_client_streams_beats_and_changes_tempo(
    node_modules: Path, pulse: PulseProcess
) -> None:
    await wait_for_leader([pulse])
    assert NODE is not None
    env = dict(os.environ, PULSE_ADDR=pulse.grpc_address, BACKBEAT_API_TOKEN=TOKEN, BEATS="6")
    env.pop("REVERB_ADDR", None)
    proc = await asyncio.create_subprocess_exec(
        NODE, "client.js", cwd=EXAMPLE, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    stdout = out.decode()
    assert proc.returncode == 0, stdout + err.decode()
    lines = stdout.splitlines()
    assert lines[0].startswith("timeline: 240 BPM")
    beats = [int(line.split()[1]) for line in lines if line.startswith("beat ")]
    assert len(beats) == 6
    assert beats == list(range(beats[0], beats[0] + 6))
    (tempo,) = [line for line in lines if line.startswith("tempo: 240 -> 252 BPM from beat")]
    effective = tempo.split()[-1]
    # The stream was open when the leader accepted the change: it shows it as pending.
    assert f"pending: 252 BPM from beat {effective} (revision 2)" in lines, stdout


async def test_node_client_submits_a_claim_and_prints_its_bar_report(
    node_modules: Path,
    pulse: PulseProcess,
    redis_servers: list[RedisServer],
    nats_server: NatsServer,
    cluster_id: str,
    tmp_path: Path,
) -> None:
    """The whole example: beats, tempo, a claim over gRPC and the report of its bar."""
    await wait_for_leader([pulse])
    assert NODE is not None
    reverb_grpc = free_port()
    common = ["--cluster", cluster_id, "--nats", nats_server.url, "--redis", redis_servers[0].url]
    reverb_admin, trigger_admin = free_port(), free_port()
    reverb = ComponentProcess(
        "reverb", ["reverb", *common, "--node", "r1", "--grpc-port", str(reverb_grpc),
                   "--admin-port", str(reverb_admin)],
        admin_port=reverb_admin, log_dir=tmp_path,
    )  # fmt: skip
    trigger = ComponentProcess(
        "reverb-trigger", ["reverb-trigger", *common, "--admin-port", str(trigger_admin)],
        admin_port=trigger_admin, log_dir=tmp_path,
    )  # fmt: skip
    try:
        reverb.start(timeout=30)
        trigger.start(timeout=30)
        env = dict(
            os.environ, PULSE_ADDR=pulse.grpc_address, REVERB_ADDR=f"127.0.0.1:{reverb_grpc}",
            BACKBEAT_API_TOKEN=TOKEN, BEATS="4",
        )  # fmt: skip
        proc = await asyncio.create_subprocess_exec(
            NODE, "client.js", cwd=EXAMPLE, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), 90)
    finally:
        trigger.close()
        reverb.close()
    stdout = out.decode()
    assert proc.returncode == 0, stdout + err.decode() + reverb.log_path.read_text()[-2000:]
    (claim,) = [line for line in stdout.splitlines() if line.startswith("claim for beat")]
    assert "CLAIM_RESULT_ACCEPTED" in claim
    (report,) = [line for line in stdout.splitlines() if line.startswith("bar report")]
    assert "1 agents, 1 accepted" in report
