"""agent-sim with 1,000 agents against the real stack (pulse, reverb ingest, trigger + rollup)
for 30 s: the bar reports account for every claim sent."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from backbeat.agentsim import Behaviour, SimSettings, Simulation
from backbeat.embedded import NatsServer, RedisServer, free_port
from backbeat.processes import ComponentProcess
from backbeat.service.nats_permissions import NatsRole
from tests.pulse.cluster import PulseProcess, wait_for_leader

pytestmark = [pytest.mark.integration]


@pytest.fixture
def stack(
    redis_servers: list[RedisServer], nats_server: NatsServer, cluster_id: str, tmp_path: Path
) -> Iterator[PulseProcess]:
    redis = [s.url for s in redis_servers]
    # Each component connects as its own NATS role, with the shipped permissions.
    pulse = PulseProcess(
        cluster_id, "p0", redis, nats_server.url_as(NatsRole.PULSE), log_dir=tmp_path
    )
    common = ["--cluster", cluster_id, "--redis", redis[0]]
    reverb_admin, trigger_admin = free_port(), free_port()
    reverb = ComponentProcess(
        "reverb",
        [
            "reverb",
            *common,
            "--nats",
            nats_server.url_as(NatsRole.INGEST),
            "--node",
            "r1",
            "--grpc-port",
            "-1",
            "--admin-port",
            str(reverb_admin),
        ],
        admin_port=reverb_admin,
        log_dir=tmp_path,
    )
    trigger = ComponentProcess(
        "reverb-trigger",
        [
            "reverb-trigger",
            *common,
            "--nats",
            nats_server.url_as(NatsRole.ROLLUP),
            "--admin-port",
            str(trigger_admin),
        ],
        admin_port=trigger_admin,
        log_dir=tmp_path,
    )
    procs = [pulse, reverb, trigger]
    try:
        for proc in procs:
            proc.start(timeout=30)
        yield pulse
    finally:
        for proc in procs:
            proc.close()


@pytest.mark.timeout(180)
async def test_reports_account_for_every_claim(
    stack: PulseProcess, nats_server: NatsServer, cluster_id: str
) -> None:
    await wait_for_leader([stack])
    settings = SimSettings(
        cluster_id=cluster_id,
        nats_url=nats_server.url_as(NatsRole.AGENT),
        agents=1000,
        duration_s=30.0,
        late_rate=0.01,
        duplicate_rate=0.01,
        malformed_rate=0.01,
        behaviour=Behaviour(crash_rate=0.002),
        verify=True,
        report_wait_s=30.0,
    )
    result = await Simulation(settings).run()
    assert result.reports is not None
    assert result.claims_sent > 30_000
    assert result.reports["windows_reported"] == result.reports["windows_expected"], result.reports
    assert result.reports["accounted"] == result.claims_sent, result.reports
    assert result.balanced
