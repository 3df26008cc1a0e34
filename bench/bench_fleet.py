"""A fleet on one box: 10,000 simulated agents at 120 BPM against a pulse, a reverb ingest and
a rollup trigger, all on this machine (``--quick``: 2,000 agents).

Two runs of the same fleet (same seed, agents sending every claim on its own beat):

* **watermarks**: the trigger as shipped: after the grace it waits for the ingest replicas'
  low watermarks before sealing (``--max-watermark-wait-ms`` 1,000), so a claim is late only
  if it arrived after its window's deadline;
* **baseline, no wait**: the same with ``--max-watermark-wait-ms 0``: the window is sealed at
  downbeat + grace whatever the ingest still holds, i.e. lateness by processing time.

Figures: claims/s sent, the share of claims counted ``late`` in the bar reports (the agents'
``--verify``: every window of the run reported, ``sent = accepted + duplicate + late +
rejected``) beside the share that reached NATS after their window's deadline (downbeat + grace;
a plain subscriber in this process timestamps every claim), i.e. what the rule says should be
late given when the agents sent them, the agents' beat latency and fan-out p99 (scheduled beat
time -> the SDK callback / the last simulated agent done), and the seal delay: from each
closing downbeat's scheduled time (recorded from the pulse's frames) to the window's
``sealed_ns`` in the claims store. The notes carry the machine's load average: the box is
shared, and with pulse, NATS, the ingest, the trigger and 10,000 agents on two cores every
latency includes waiting for a core.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
import tempfile
import time
import urllib.request
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
from redis.asyncio import Redis

from backbeat.core import keys, subjects
from backbeat.core.messages import BeatFrame
from backbeat.embedded import NatsServer, RedisServer, free_port
from backbeat.errors import CodecError
from backbeat.processes import ComponentProcess
from bench.pulse_cluster import pulse_process, quantile
from bench.result import Result

CLUSTER = "bench-fleet"
TEMPO = 120.0
BAR = 4
GRACE_NS = 100_000_000  # the trigger's default grace
_BEAT = re.compile(rb'"beat_index":\s*(\d+)')
ENV = {"BACKBEAT_ENV": "development"}


@dataclass(frozen=True, slots=True)
class FleetRun:
    summary: dict[str, Any]
    seal_delays_ms: list[float]
    #: (claims that reached NATS after their window's deadline, claims counted)
    arrived_late: tuple[int, int]
    watermark_timeouts: float
    load: tuple[float, float]

    @property
    def late_share(self) -> float:
        reports = self.summary["reports"]
        late = int(reports["late"])
        counted = late + sum(int(reports[k]) for k in ("accepted", "duplicate", "rejected"))
        return 100.0 * late / max(counted, 1)

    def latency(self, name: str, q: str) -> float:
        return float(self.summary[name][q])

    def seal(self, q: float) -> float:
        return float(quantile(self.seal_delays_ms, q))

    @property
    def arrived_late_share(self) -> float:
        late, known = self.arrived_late
        return 100.0 * late / max(known, 1)

    def notes(self) -> str:
        reports = self.summary["reports"]
        return (
            f"{self.summary['agents']} agents, {self.summary['duration_s']:.0f} s, "
            f"{self.summary['claims_sent']} claims sent; reports {reports['windows_reported']}"
            f"/{reports['windows_expected']}, accepted {reports['accepted']}, late "
            f"{reports['late']}, balanced {self.summary.get('balanced')}; "
            f"{self.arrived_late_share:.2f} % reached NATS after their window's deadline; "
            f"watermark timeouts "
            f"{self.watermark_timeouts:.0f}; load {self.load[0]:.1f} -> {self.load[1]:.1f} "
            f"(1-min avg) on {os.cpu_count()} CPUs"
        )


def _counter(admin_port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return 0.0


class Arrivals:
    """Every claim as it reaches NATS (a plain subscriber beside the ingest's queue group):
    its beat and the arrival time, to count the claims that arrived after their window's
    deadline -- what the late rule should count, whatever the ingest does."""

    def __init__(self) -> None:
        self.beats = array("q")
        self.arrived_ns = array("q")

    async def on_claim(self, msg: Any) -> None:
        found = _BEAT.search(msg.data)
        if found is not None:
            self.arrived_ns.append(time.time_ns())
            self.beats.append(int(found[1]))

    def after_deadline(self, scheduled: dict[int, int]) -> tuple[int, int]:
        """(claims arrived after their window's deadline, claims whose deadline is known)."""
        late = known = 0
        for beat, arrived in zip(self.beats, self.arrived_ns, strict=True):
            downbeat = scheduled.get((beat // BAR + 1) * BAR)
            if downbeat is None:
                continue
            known += 1
            late += arrived > downbeat + GRACE_NS
        return late, known


async def _record_downbeats(url: str, scheduled: dict[int, int], arrivals: Arrivals) -> Any:
    nc = await nats.connect(url, pending_size=256 * 1024 * 1024)

    async def on_frame(msg: Any) -> None:
        try:
            frame = BeatFrame.decode(msg.data)
        except (CodecError, ValueError):
            return
        if frame.downbeat and frame.scheduled_ns is not None:
            scheduled.setdefault(frame.beat_index, frame.scheduled_ns)

    await nc.subscribe(subjects.beat(CLUSTER), cb=on_frame)
    await nc.subscribe(
        subjects.claims(CLUSTER),
        cb=arrivals.on_claim,
        pending_msgs_limit=2_000_000,
        pending_bytes_limit=1024 * 1024 * 1024,
    )
    return nc


async def _seal_delays(claims_url: str, scheduled: dict[int, int]) -> list[float]:
    redis: Any = Redis.from_url(claims_url, decode_responses=True)
    try:
        delays = []
        for window in await redis.zrange(keys.windows_index(CLUSTER), 0, -1):
            agg = await redis.hmget(
                keys.window_aggregate(CLUSTER, window), ["sealed_ns", "to_beat"]
            )
            if agg[0] is None or agg[1] is None:
                continue
            downbeat = scheduled.get(int(agg[1]) + 1)
            if downbeat is not None:
                delays.append((int(agg[0]) - downbeat) / 1e6)
        return delays
    finally:
        await redis.aclose()


async def _agents(nats_url: str, agents: int, duration_s: int) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "backbeat.cli", "agent-sim", "--cluster", CLUSTER,
        "--nats", nats_url, "--agents", str(agents), "--duration", str(duration_s),
        "--verify", "--json", "--seed", "1",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), timeout=duration_s + 300)
    if not out.strip():
        raise RuntimeError(f"agent-sim printed nothing: {err.decode()[-2000:]}")
    summary: dict[str, Any] = json.loads(out)
    return summary


def _fleet_run(agents: int, duration_s: int, max_wait_ms: float) -> FleetRun:
    load0 = os.getloadavg()[0]
    log_dir = Path(tempfile.mkdtemp(prefix="bench-fleet-"))
    masters = [RedisServer() for _ in range(3)]
    claims = RedisServer(persistent=True, appendfsync="everysec")
    nats_server = NatsServer()
    processes: list[ComponentProcess] = []
    try:
        for server in [*masters, claims, nats_server]:
            server.start()
        pulse, _ = pulse_process(CLUSTER, "pulse-1", masters, nats_server, log_dir, tempo_bpm=TEMPO)
        reverb_admin, trigger_admin = free_port(), free_port()
        common = ["--cluster", CLUSTER, "--nats", nats_server.url, "--redis", claims.url]
        reverb = ComponentProcess(
            "reverb",
            ["reverb", *common, "--node", "reverb-1", "--grpc-port", "-1",
             "--admin-port", str(reverb_admin), "--log-level", "warn"],
            admin_port=reverb_admin, log_dir=log_dir, env=ENV,
        )  # fmt: skip
        trigger = ComponentProcess(
            "reverb-trigger",
            ["reverb-trigger", *common, "--admin-port", str(trigger_admin),
             "--max-watermark-wait-ms", f"{max_wait_ms:g}", "--log-level", "warn"],
            admin_port=trigger_admin, log_dir=log_dir, env=ENV,
        )  # fmt: skip
        processes = [pulse, reverb, trigger]
        for process in processes:
            process.start(timeout=60)

        async def measure() -> tuple[dict[str, Any], list[float], tuple[int, int]]:
            scheduled: dict[int, int] = {}
            arrivals = Arrivals()
            nc = await _record_downbeats(nats_server.url, scheduled, arrivals)
            try:
                summary = await _agents(nats_server.url, agents, duration_s)
            finally:
                await nc.close()
            delays = await _seal_delays(claims.url, scheduled)
            return summary, delays, arrivals.after_deadline(scheduled)

        summary, delays, arrived_late = asyncio.run(measure())
        timeouts = _counter(trigger_admin, "backbeat_reverb_watermark_timeouts_total")
        return FleetRun(summary, delays, arrived_late, timeouts, (load0, os.getloadavg()[0]))
    finally:
        for process in reversed(processes):
            process.stop()
        for server in [nats_server, claims, *masters]:
            server.close()


def run(quick: bool) -> list[Result]:
    agents, duration = (2_000, 20) if quick else (10_000, 40)
    fleet = _fleet_run(agents, duration, max_wait_ms=1000.0)
    time.sleep(5)  # let the box settle between the runs
    base = _fleet_run(agents, duration, max_wait_ms=0.0)
    offered = agents * TEMPO / 60.0
    no_wait = "no watermark wait (sealed at downbeat + grace)"
    return [
        Result(
            bench="fleet",
            metric=f"claims/s, {agents} agents at {TEMPO:g} BPM",
            value=float(fleet.summary["claims_per_s"]),
            unit="claims/s",
            baseline_name="offered (agents x beats/s)",
            baseline_value=offered,
            better="higher",
            notes=fleet.notes(),
        ),
        Result(
            bench="fleet",
            metric="share of claims late",
            value=fleet.late_share,
            unit="%",
            baseline_name="claims that reached NATS after their window's deadline (same run)",
            baseline_value=fleet.arrived_late_share,
            target="≤ 1 % when agents send on time",
            notes="late by the reports vs late by arrival (downbeat + 100 ms grace), seen by a "
            "NATS subscriber beside the ingest",
        ),
        Result(
            bench="fleet",
            metric="share of claims late, sealed without waiting for the watermarks",
            value=base.late_share,
            unit="%",
            baseline_name="claims that reached NATS after their window's deadline (same run)",
            baseline_value=base.arrived_late_share,
            notes=f"baseline run: {base.notes()}",
        ),
        *(
            Result(
                bench="fleet",
                metric=f"{label} p99",
                value=fleet.latency(name, "p99"),
                unit="ms",
                baseline_name=no_wait,
                baseline_value=base.latency(name, "p99"),
                notes=f"p50 {fleet.latency(name, 'p50'):.1f} ms (baseline "
                f"{base.latency(name, 'p50'):.1f} ms)",
            )
            for name, label in (
                ("beat_latency_ms", "beat latency (scheduled -> SDK callback)"),
                ("fanout_latency_ms", "fan-out (scheduled -> last agent done)"),
            )
        ),
        *(
            Result(
                bench="fleet",
                metric=f"seal delay after the downbeat {name}",
                value=fleet.seal(q),
                unit="ms",
                baseline_name=no_wait,
                baseline_value=base.seal(q),
                notes=f"{len(fleet.seal_delays_ms)} windows; grace 100 ms; max wait 1,000 ms",
            )
            for name, q in (("p50", 0.5), ("p99", 0.99))
        ),
    ]
