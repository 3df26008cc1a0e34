"""Delivery latency, scheduled beat time -> subscriber callback, for 1,000 NATS subscribers and
500 gRPC StreamBeats streams, next to raw nats-py publish -> callback in the same setup.

A pulse leader runs as its own process (120 BPM). The receivers are spread over ``WORKERS``
processes (a 2-core machine cannot serve them from one Python process): each holds one NATS
connection with one subscription, decodes each message once and calls its in-process
subscribers (1,000 in all) with the frame, as an agent host running the SDK does, and holds
its share of the 500 gRPC streams (one protobuf parse per stream and message: the streams are
independent). Baselines, same workers, same run: raw nats-py messages (an 8-byte send time
plus padding to a beat frame's size) published by this process at 2 Hz; and for gRPC a bare
grpc.aio server (its own process) sending the same pre-serialised bytes to 500 streams at
2 Hz — the floor of the gRPC library on this machine. The gRPC figure is repeated for fewer
streams (``SWEEP_STREAMS``, shorter runs, same baseline per count): how many streams one replica
serves within the target on this host, for sizing a deployment (followers relay beats, so
streams spread over replicas).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import struct
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event as MpEvent

import grpc
import nats
from nats.aio.msg import Msg

from backbeat.core import subjects
from backbeat.core.messages import BeatFrame
from backbeat.v1 import pulse_service_pb2 as pb
from backbeat.v1 import pulse_service_pb2_grpc as pb_grpc
from bench.bare_grpc import start_bare_server
from bench.pulse_cluster import log_dir, pulse_process, quantile, servers
from bench.result import Result, record_series

NATS_SUBSCRIBERS = 1000
GRPC_STREAMS = 500
#: Fewer streams per replica, for the capacity of one replica on this host.
SWEEP_STREAMS = (25, 50, 100)
WORKERS = 4
PERIOD_S = 0.5
#: A raw baseline message is padded to about the size of a beat frame.
RAW_SIZE = 440
#: ... and a bare gRPC message to about the size of a serialised StreamBeatsResponse.
BARE_SIZE = 160

#: (received_ns, since scheduled ns, since emitted ns) per delivery; for raw messages both
#: latencies are measured from the send time.
Samples = list[tuple[int, int, int]]


class Recorder:
    """Samples of one receiving process, kept flat in an int64 array until the run ends.

    A tuple per delivery would leave hundreds of thousands of tracked objects in a receiver,
    and the garbage collector's full passes over them would stall whole beats — a cost of the
    measurement, not of what is measured.
    """

    __slots__ = ("_data",)

    def __init__(self) -> None:
        self._data = array("q")

    def add(self, received_ns: int, since_scheduled_ns: int, since_emitted_ns: int) -> None:
        data = self._data
        data.append(received_ns)
        data.append(since_scheduled_ns)
        data.append(since_emitted_ns)

    def samples(self) -> Samples:
        data = self._data
        return [(data[i], data[i + 1], data[i + 2]) for i in range(0, len(data), 3)]


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    nats_url: str
    subject: str
    subscribers: int
    #: "frame": decode BeatFrame JSON; "raw": an 8-byte big-endian send time up front.
    payload: str
    grpc_address: str = ""
    streams: int = 0
    #: "frame": StreamBeats of a pulse replica; "raw": the bare server (send time up front).
    grpc_payload: str = "frame"


def _worker_main(spec: WorkerSpec, ready: MpEvent, stop: MpEvent, out: Connection) -> None:
    """Child process: receive until ``stop``, then send (nats samples, grpc samples)."""
    out.send(asyncio.run(_receive(spec, ready, stop)))
    out.close()


async def _receive(spec: WorkerSpec, ready: MpEvent, stop: MpEvent) -> tuple[Samples, Samples]:
    nats_samples = Recorder()
    grpc_samples = Recorder()

    def subscriber(frame: BeatFrame) -> None:
        now = time.time_ns()
        nats_samples.add(now, now - (frame.scheduled_ns or now), now - (frame.emitted_ns or now))

    def raw_subscriber(sent: int) -> None:
        now = time.time_ns()
        nats_samples.add(now, now - sent, now - sent)

    frame_subscribers: list[Callable[[BeatFrame], None]] = [subscriber] * spec.subscribers
    raw_subscribers: list[Callable[[int], None]] = [raw_subscriber] * spec.subscribers

    async def on_msg(msg: Msg) -> None:
        # Decoded once per message and process, then handed to every in-process subscriber.
        if spec.payload == "raw":
            (sent,) = struct.unpack_from(">q", msg.data)
            for raw_cb in raw_subscribers:
                raw_cb(sent)
        else:
            frame = BeatFrame.decode(msg.data)
            for frame_cb in frame_subscribers:
                frame_cb(frame)

    nc = await nats.connect(spec.nats_url)
    await nc.subscribe(spec.subject, cb=on_msg)
    await nc.flush()
    channel = grpc.aio.insecure_channel(spec.grpc_address) if spec.streams else None
    stream = _raw_stream if spec.grpc_payload == "raw" else _stream
    tasks = [
        asyncio.create_task(stream(channel, grpc_samples))
        for _ in range(spec.streams)
        if channel is not None
    ]
    ready.set()
    await asyncio.to_thread(stop.wait)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    if channel is not None:
        await channel.close(None)
    await nc.close()
    return nats_samples.samples(), grpc_samples.samples()


async def _stream(channel: grpc.aio.Channel, samples: Recorder) -> None:
    call = pb_grpc.PulseServiceStub(channel).StreamBeats(pb.StreamBeatsRequest())
    try:
        while True:
            event = await call.read()
            if not isinstance(event, pb.StreamBeatsResponse):
                return
            if event.WhichOneof("event") == "beat":
                now = time.time_ns()
                beat = event.beat
                samples.add(
                    now,
                    now - beat.scheduled_time.ToNanoseconds(),
                    now - beat.emitted_time.ToNanoseconds(),
                )
    finally:
        call.cancel()


BARE_METHOD = "/backbeat.bench.Bare/Stream"


async def _raw_stream(channel: grpc.aio.Channel, samples: Recorder) -> None:
    call = channel.unary_stream(BARE_METHOD, None, None)(b"")
    try:
        while True:
            data = await call.read()
            if not isinstance(data, bytes):
                return
            now = time.time_ns()
            (sent,) = struct.unpack_from(">q", data)
            samples.add(now, now - sent, now - sent)
    finally:
        call.cancel()


def _bare_server_main(port_out: Connection, stop: MpEvent) -> None:
    """Child process: a bare grpc.aio server streaming the send time to every stream at 2 Hz
    (one pre-serialised message per tick, one bounded queue per stream, as the pulse has)."""

    async def main() -> None:
        server, send = await start_bare_server(port_out)
        next_at = time.monotonic()
        while not stop.is_set():
            next_at += PERIOD_S
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            message = struct.pack(">q", time.time_ns()) + b"x" * (BARE_SIZE - 8)
            send(message)
        await server.stop(0)

    asyncio.run(main())


async def _run_workers(specs: list[WorkerSpec], window_s: float, publish: bool) -> list[Samples]:
    """Start the workers, warm up, measure for ``window_s`` (publishing raw messages when
    ``publish``), and return [nats samples, grpc samples] of that window from all workers."""
    ctx = multiprocessing.get_context("spawn")
    procs, pipes, readies = [], [], []
    stop = ctx.Event()
    for spec in specs:
        ready = ctx.Event()
        receiver, sender = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_worker_main, args=(spec, ready, stop, sender), daemon=True)
        proc.start()
        procs.append(proc)
        pipes.append(receiver)
        readies.append(ready)
    publisher = await nats.connect(specs[0].nats_url) if publish else None
    try:
        for ready in readies:
            await asyncio.to_thread(ready.wait, 60)
        await asyncio.sleep(2.0)  # streams connected, subscriptions registered, caches warm
        t0 = time.time_ns()
        if publisher is not None:
            next_at = time.monotonic()
            while time.time_ns() - t0 < window_s * 1e9:
                payload = struct.pack(">q", time.time_ns())
                await publisher.publish(specs[0].subject, payload + b"x" * (RAW_SIZE - 8))
                next_at += PERIOD_S
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        else:
            await asyncio.sleep(window_s)
        t1 = time.time_ns()
        await asyncio.sleep(0.5)  # let the last deliveries land
    finally:
        stop.set()
        if publisher is not None:
            await publisher.close()
    nats_all: Samples = []
    grpc_all: Samples = []
    for pipe, proc in zip(pipes, procs, strict=True):
        if await asyncio.to_thread(pipe.poll, 60):
            nats_part, grpc_part = pipe.recv()
            nats_all += nats_part
            grpc_all += grpc_part
        proc.join(10)
    return [
        [s for s in nats_all if t0 <= s[0] <= t1 + 400_000_000],
        [s for s in grpc_all if t0 <= s[0] <= t1 + 400_000_000],
    ]


async def _bare_grpc_run(nats_url: str, window_s: float, streams: int) -> list[Samples]:
    ctx = multiprocessing.get_context("spawn")
    stop = ctx.Event()
    receiver, sender = ctx.Pipe(duplex=False)
    server = ctx.Process(target=_bare_server_main, args=(sender, stop), daemon=True)
    server.start()
    try:
        port = await asyncio.to_thread(receiver.recv)
        return await _run_workers(
            [
                WorkerSpec(nats_url, "bench.none", 0, "raw", f"127.0.0.1:{port}", n, "raw")
                for n in _split(streams, WORKERS)
            ],
            window_s,
            publish=False,
        )
    finally:
        stop.set()
        await asyncio.to_thread(server.join, 10)


def _split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def _grpc_run(nats_url: str, subject: str, port: int, window_s: float, streams: int) -> Samples:
    _, samples = asyncio.run(
        _run_workers(
            [
                WorkerSpec(nats_url, subject, 0, "frame", f"127.0.0.1:{port}", n)
                for n in _split(streams, WORKERS)
            ],
            window_s,
            publish=False,
        )
    )
    return samples


def run(quick: bool) -> list[Result]:
    beats = 10 if quick else 240
    window_s = beats * PERIOD_S
    sweep_window_s = (10 if quick else 60) * PERIOD_S
    cluster = f"bench-delivery-{time.time_ns() % 10**9}"
    load_before = os.getloadavg()[0]
    sweep: dict[int, Samples] = {}
    sweep_bare: dict[int, Samples] = {}
    with servers() as (redis, nats_server):
        proc, grpc_port = pulse_process(cluster, "p1", redis, nats_server, log_dir())
        proc.start(timeout=60)
        try:
            raw_subject = f"bench.raw.{time.time_ns()}"
            baseline, _ = asyncio.run(
                _run_workers(
                    [
                        WorkerSpec(nats_server.url, raw_subject, n, "raw")
                        for n in _split(NATS_SUBSCRIBERS, WORKERS)
                    ],
                    window_s,
                    publish=True,
                )
            )
            # NATS and gRPC receivers are measured one after the other, so that neither
            # figure includes the other's work in the same receiving processes.
            nats_lat, _ = asyncio.run(
                _run_workers(
                    [
                        WorkerSpec(nats_server.url, subjects.beat(cluster), n, "frame")
                        for n in _split(NATS_SUBSCRIBERS, WORKERS)
                    ],
                    window_s,
                    publish=False,
                )
            )
            beat_subject = subjects.beat(cluster)
            grpc_lat = _grpc_run(nats_server.url, beat_subject, grpc_port, window_s, GRPC_STREAMS)
            for streams in SWEEP_STREAMS:
                sweep[streams] = _grpc_run(
                    nats_server.url, beat_subject, grpc_port, sweep_window_s, streams
                )
        finally:
            proc.close()
        _, bare_grpc = asyncio.run(_bare_grpc_run(nats_server.url, window_s, GRPC_STREAMS))
        for streams in SWEEP_STREAMS:
            _, sweep_bare[streams] = asyncio.run(
                _bare_grpc_run(nats_server.url, sweep_window_s, streams)
            )
    load = f"load {load_before:.1f} → {os.getloadavg()[0]:.1f} (1-min avg)"
    results = []
    raw_nats = (f"raw nats-py publish -> callback ({NATS_SUBSCRIBERS} subs)", baseline)
    raw_grpc = (f"bare grpc.aio server, pre-serialised bytes ({GRPC_STREAMS} streams)", bare_grpc)
    for name, samples, count, since, (base_name, base) in (
        (f"NATS, {NATS_SUBSCRIBERS} subscribers", nats_lat, NATS_SUBSCRIBERS, 1, raw_nats),
        (f"gRPC, {GRPC_STREAMS} streams", grpc_lat, GRPC_STREAMS, 1, raw_grpc),
        # From the leader's emission on (its jitter left out): like for like with the baseline.
        (f"NATS, {NATS_SUBSCRIBERS} subscribers", nats_lat, NATS_SUBSCRIBERS, 2, raw_nats),
        (f"gRPC, {GRPC_STREAMS} streams", grpc_lat, GRPC_STREAMS, 2, raw_grpc),
    ):
        values = [sample[since] / 1e6 for sample in samples]
        base_ms = [sample[1] / 1e6 for sample in base]
        start = "scheduled" if since == 1 else "emitted"
        if since == 1:
            record_series("delivery", name, "ms", values)
            record_series("delivery", base_name, "ms", base_ms)
        for label, q in (("p50", 0.5), ("p99", 0.99)):
            results.append(
                Result(
                    bench="delivery",
                    metric=f"{start} -> received {label}, {name}",
                    value=quantile(values, q),
                    unit="ms",
                    baseline_name=base_name,
                    baseline_value=quantile(base_ms, q),
                    target="p99 ≤ 5 ms" if label == "p99" and since == 1 else "",
                    notes=(
                        f"{len(values)} deliveries (~{len(values) // max(count, 1)} beats), "
                        f"receivers in {WORKERS} processes; {load}"
                    ),
                )
            )
    # How many streams one replica serves within the target on this host (capacity planning).
    for streams, ours in sorted(sweep.items()):
        values = [sample[1] / 1e6 for sample in ours]
        bare = sweep_bare[streams]
        results.append(
            Result(
                bench="delivery",
                metric=f"scheduled -> received p99, gRPC, {streams} streams on one replica",
                value=quantile(values, 0.99),
                unit="ms",
                baseline_name=f"bare grpc.aio server ({streams} streams)",
                baseline_value=quantile([sample[1] / 1e6 for sample in bare], 0.99),
                notes=(
                    f"{len(values)} deliveries (~{len(values) // streams} beats), "
                    f"receivers in {WORKERS} processes; p50 {quantile(values, 0.5):.2f} ms"
                ),
            )
        )
    return results
