"""Beat delivery to 1,000 NATS subscribers on a three-node NATS cluster, next to the same on a
single NATS server in the same run.

A pulse leader runs as its own process (120 BPM) and publishes each beat once. The 1,000
subscribers sit in ``WORKERS`` receiving processes, as in ``bench_delivery`` (one connection
and one subscription each, a decoded frame handed to 250 in-process subscribers). On the
cluster the pulse is given the three servers and the streams are kept by all three
(``--stream-replicas 3``); the receiving processes are spread over the nodes (worker *i* on
node *i* mod 3), so most beats cross a route between two nodes, as they do for agents connected
anywhere in a cluster. The single-server run is the baseline; both use the same Redis masters
and receivers. On a shared, loaded machine the load drifts within minutes, so the two are
measured in alternating rounds (``ROUNDS``, a fresh pulse each) and each figure pools its
rounds: a burst of load falls on both alike.
"""

from __future__ import annotations

import asyncio
import os
import time

from backbeat.core import subjects
from backbeat.embedded import NatsCluster, NatsServer, RedisServer
from bench.bench_delivery import NATS_SUBSCRIBERS, PERIOD_S, WORKERS, Samples, WorkerSpec
from bench.bench_delivery import _run_workers as run_workers
from bench.bench_delivery import _split as split
from bench.pulse_cluster import log_dir, pulse_process, quantile
from bench.result import Result, record_series

ROUNDS = 3


def _deliveries(
    cluster: str, redis: list[RedisServer], nats: NatsServer | NatsCluster, window_s: float
) -> Samples:
    """scheduled/emitted -> received samples of ``NATS_SUBSCRIBERS`` subscribers."""
    clustered = isinstance(nats, NatsCluster)
    extra = ["--stream-replicas", "3"] if clustered else []
    proc, _ = pulse_process(cluster, "p1", redis, nats, log_dir(), extra_args=extra)
    proc.start(timeout=60)
    try:
        urls = [node.url for node in nats.nodes] if isinstance(nats, NatsCluster) else [nats.url]
        specs = [
            WorkerSpec(urls[i % len(urls)], subjects.beat(cluster), n, "frame")
            for i, n in enumerate(split(NATS_SUBSCRIBERS, WORKERS))
        ]
        nats_samples, _ = asyncio.run(run_workers(specs, window_s, publish=False))
        return nats_samples
    finally:
        proc.close()


def run(quick: bool) -> list[Result]:
    rounds = 1 if quick else ROUNDS
    beats = 10 if quick else 120 // ROUNDS
    window_s = beats * PERIOD_S
    stamp = time.time_ns() % 10**9
    load_before = os.getloadavg()[0]
    redis = [RedisServer() for _ in range(3)]
    try:
        for server in redis:
            server.start()
        baseline: Samples = []
        on_cluster: Samples = []
        with NatsServer() as single, NatsCluster(3) as cluster:
            assert isinstance(single, NatsServer)
            for r in range(rounds):
                baseline += _deliveries(f"bench-single-{stamp}-{r}", redis, single, window_s)
                on_cluster += _deliveries(f"bench-cluster-{stamp}-{r}", redis, cluster, window_s)
    finally:
        for server in redis:
            server.close()
    load = f"load {load_before:.1f} → {os.getloadavg()[0]:.1f} (1-min avg) on {os.cpu_count()} CPUs"
    name = f"NATS 3-node cluster, {NATS_SUBSCRIBERS} subscribers"
    base_name = f"single NATS server, {NATS_SUBSCRIBERS} subscribers (same run)"
    results = []
    for since, start in ((1, "scheduled"), (2, "emitted")):
        values = [sample[since] / 1e6 for sample in on_cluster]
        base = [sample[since] / 1e6 for sample in baseline]
        if since == 1:
            record_series("delivery", name, "ms", values)
            record_series("delivery", base_name, "ms", base)
        for label, q in (("p50", 0.5), ("p99", 0.99)):
            results.append(
                Result(
                    bench="nats_cluster",
                    metric=f"{start} -> received {label}, {name}",
                    value=quantile(values, q),
                    unit="ms",
                    baseline_name=base_name,
                    baseline_value=quantile(base, q),
                    target="p99 ≤ 5 ms" if label == "p99" and since == 1 else "",
                    notes=(
                        f"{len(values)} deliveries on the cluster, {len(base)} on one server "
                        f"(~{len(values) // NATS_SUBSCRIBERS} beats), receivers in {WORKERS} "
                        f"processes spread over the nodes; {rounds} alternating rounds; {load}"
                    ),
                )
            )
    return results
