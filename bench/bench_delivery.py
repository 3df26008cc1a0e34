"""Delivery latency, scheduled beat time -> received, for 1,000 NATS subscribers and 500
gRPC StreamBeats streams, next to raw nats-py publish -> receive in the same run.

A pulse leader runs as its own process (120 BPM). The subscribers live in this process: 1,000
subscriptions spread over 4 NATS connections and 500 streams over 4 gRPC channels — one
Python process on a 2-core machine, so the figures include its own queueing.
"""

from __future__ import annotations

import asyncio
import struct
import time

import grpc
import nats
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from backbeat.core import subjects
from backbeat.core.messages import BeatFrame
from backbeat.v1 import pulse_service_pb2 as pb
from backbeat.v1 import pulse_service_pb2_grpc as pb_grpc
from bench.pulse_cluster import log_dir, pulse_process, quantile, servers
from bench.result import Result

NATS_SUBSCRIBERS = 1000
GRPC_STREAMS = 500
CONNECTIONS = 4


async def _nats_subscribers(
    url: str, subject: str, latencies: list[float], decode: bool
) -> list[NatsClient]:
    conns = [await nats.connect(url, pending_size=64 * 1024 * 1024) for _ in range(CONNECTIONS)]

    async def on_msg(msg: Msg) -> None:
        now = time.time_ns()
        if decode:
            frame = BeatFrame.decode(msg.data)
            latencies.append((now - (frame.scheduled_ns or now)) / 1e6)
        else:
            (sent,) = struct.unpack(">q", msg.data[:8])
            latencies.append((now - sent) / 1e6)

    for i in range(NATS_SUBSCRIBERS):
        await conns[i % CONNECTIONS].subscribe(subject, cb=on_msg)
    for nc in conns:
        await nc.flush()
    return conns


async def _raw_baseline(url: str, beats: int) -> list[float]:
    latencies: list[float] = []
    subject = f"bench.raw.{time.time_ns()}"
    conns = await _nats_subscribers(url, subject, latencies, decode=False)
    publisher = await nats.connect(url)
    try:
        for _ in range(beats):
            await publisher.publish(subject, struct.pack(">q", time.time_ns()) + b"x" * 300)
            await asyncio.sleep(0.5)
        await asyncio.sleep(1.0)
    finally:
        await publisher.close()
        for nc in conns:
            await nc.close()
    return latencies


async def _stream(channel: grpc.aio.Channel, latencies: list[float], stop: asyncio.Event) -> None:
    call = pb_grpc.PulseServiceStub(channel).StreamBeats(pb.StreamBeatsRequest())
    try:
        while not stop.is_set():
            event = await call.read()
            if not isinstance(event, pb.StreamBeatsResponse):
                return
            if event.WhichOneof("event") == "beat":
                now = time.time_ns()
                scheduled = event.beat.scheduled_time.ToNanoseconds()
                latencies.append((now - scheduled) / 1e6)
    finally:
        call.cancel()


async def _pulse_run(
    nats_url: str, grpc_port: int, cluster: str, beats: int
) -> tuple[list[float], list[float]]:
    nats_lat: list[float] = []
    grpc_lat: list[float] = []
    conns = await _nats_subscribers(nats_url, subjects.beat(cluster), nats_lat, decode=True)
    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") for _ in range(CONNECTIONS)]
    stop = asyncio.Event()
    tasks = [
        asyncio.create_task(_stream(channels[i % CONNECTIONS], grpc_lat, stop))
        for i in range(GRPC_STREAMS)
    ]
    try:
        await asyncio.sleep(2.0)  # streams connected, subscriptions registered
        nats_lat.clear()
        grpc_lat.clear()
        await asyncio.sleep(beats * 0.5 + 0.5)
    finally:
        stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for channel in channels:
            await channel.close(None)
        for nc in conns:
            await nc.close()
    return nats_lat, grpc_lat


def run(quick: bool) -> list[Result]:
    beats = 10 if quick else 240
    cluster = f"bench-delivery-{time.time_ns() % 10**9}"
    with servers() as (redis, nats_server):
        proc, grpc_port = pulse_process(cluster, "p1", redis, nats_server, log_dir())
        proc.start(timeout=60)
        try:
            baseline = asyncio.run(_raw_baseline(nats_server.url, beats))
            nats_lat, grpc_lat = asyncio.run(_pulse_run(nats_server.url, grpc_port, cluster, beats))
        finally:
            proc.close()
    results = []
    for name, values, count in (
        (f"NATS, {NATS_SUBSCRIBERS} subscribers", nats_lat, NATS_SUBSCRIBERS),
        (f"gRPC, {GRPC_STREAMS} streams", grpc_lat, GRPC_STREAMS),
    ):
        for label, q in (("p50", 0.5), ("p99", 0.99)):
            results.append(
                Result(
                    bench="delivery",
                    metric=f"scheduled -> received {label}, {name}",
                    value=quantile(values, q),
                    unit="ms",
                    baseline_name=f"raw nats-py publish -> receive ({NATS_SUBSCRIBERS} subs)",
                    baseline_value=quantile(baseline, q),
                    target="p99 ≤ 5 ms" if label == "p99" else "",
                    notes=f"{len(values)} deliveries (~{len(values) // max(count, 1)} beats)",
                )
            )
    return results
