"""gRPC fan-out: 500 ``StreamBeats`` streams on one pulse replica and spread over three, each
beside bare grpc.aio servers sending the same bytes in the same run.

The pulse replicas run as their own processes (120 BPM; the first leads, the others follow
over NATS and relay the beats). The receivers are spread over ``WORKERS`` processes; each
opens its share of the streams, one after the other at the next address in turn
(``backbeat.service.targets.spread``, what the SDK does), and parses every message as a
``StreamBeatsResponse``. The baseline is as many bare grpc.aio servers (one process each) as
replicas, each sending, at the same 2 Hz, the very bytes of a beat taken from the pulse (its
times restamped, serialised once per tick, the servers ticking at the same instants) to every
stream through a bounded queue per stream: the floor of the gRPC library on this machine.
Latency is from the frame's ``emitted_time`` (the leader's emission; the bare server's send)
to the receiver's callback, so that the leader's timer jitter is left out; for three replicas
it includes the followers' NATS hop. The bare and the pulse runs alternate (``ROUNDS``), so a
burst of load on the shared machine falls on both alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import time
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event as MpEvent

import grpc

from backbeat.processes import ComponentProcess
from backbeat.service.targets import spread
from backbeat.v1 import pulse_service_pb2 as pb
from bench.bare_grpc import start_bare_server
from bench.pulse_cluster import log_dir, pulse_process, quantile, servers, status
from bench.result import Result, record_series

STREAMS = 500
REPLICAS = (1, 3)
WORKERS = 4
ROUNDS = 2
PERIOD_S = 0.5
PULSE_METHOD = "/backbeat.v1.PulseService/StreamBeats"
BARE_METHOD = "/backbeat.bench.Bare/Stream"


@dataclass(frozen=True, slots=True)
class Spec:
    addresses: tuple[str, ...]
    streams: int
    method: str


def _worker_main(spec: Spec, ready: MpEvent, stop: MpEvent, out: Connection) -> None:
    """Child process: hold ``spec.streams`` streams until ``stop``; send (received ns,
    latency ns) pairs, flat."""
    out.send(asyncio.run(_receive(spec, ready, stop)).tobytes())
    out.close()


async def _receive(spec: Spec, ready: MpEvent, stop: MpEvent) -> array[int]:
    samples: array[int] = array("q")
    channels = {a: grpc.aio.insecure_channel(a) for a in spec.addresses}

    async def stream(address: str) -> None:
        call = channels[address].unary_stream(
            spec.method,
            request_serializer=pb.StreamBeatsRequest.SerializeToString,
            response_deserializer=pb.StreamBeatsResponse.FromString,
        )(pb.StreamBeatsRequest())
        try:
            while True:
                event = await call.read()
                if not isinstance(event, pb.StreamBeatsResponse):
                    return
                if event.WhichOneof("event") == "beat":
                    now = time.time_ns()
                    samples.append(now)
                    samples.append(now - event.beat.emitted_time.ToNanoseconds())
        finally:
            call.cancel()

    tasks = [asyncio.create_task(stream(spread(spec.addresses)[0])) for _ in range(spec.streams)]
    ready.set()
    await asyncio.to_thread(stop.wait)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for channel in channels.values():
        await channel.close(None)
    return samples


def _bare_server_main(template: bytes, port_out: Connection, stop: MpEvent) -> None:
    """Child process: a bare grpc.aio server sending ``template`` (a serialised beat,
    restamped) to every stream at 2 Hz, through one bounded queue per stream."""

    async def main() -> None:
        server, send = await start_bare_server(port_out)
        message = pb.StreamBeatsResponse.FromString(template)
        period_ns = int(PERIOD_S * 1e9)
        while not stop.is_set():
            # On the wall clock's grid: several bare servers send at the same instants, as
            # the pulse replicas do (the followers relay each beat as it comes).
            await asyncio.sleep((period_ns - time.time_ns() % period_ns) / 1e9)
            now = time.time_ns()
            message.beat.beat_index += 1
            message.beat.scheduled_time.FromNanoseconds(now)
            message.beat.emitted_time.FromNanoseconds(now)
            data = message.SerializeToString()
            send(data)
        await server.stop(0)

    asyncio.run(main())


def _measure(addresses: list[str], method: str, window_s: float) -> list[float]:
    """Latencies (ms) of the deliveries received within ``window_s`` after a warm-up."""
    ctx = multiprocessing.get_context("spawn")
    stop = ctx.Event()
    procs, pipes, readies = [], [], []
    for i in range(WORKERS):
        share = STREAMS // WORKERS + (1 if i < STREAMS % WORKERS else 0)
        ready = ctx.Event()
        receiver, sender = ctx.Pipe(duplex=False)
        proc = ctx.Process(
            target=_worker_main,
            args=(Spec(tuple(addresses), share, method), ready, stop, sender),
            daemon=True,
        )
        proc.start()
        procs.append(proc)
        pipes.append(receiver)
        readies.append(ready)
    try:
        for ready in readies:
            ready.wait(60)
        time.sleep(2.0)  # streams open, caches warm
        t0 = time.time_ns()
        time.sleep(window_s)
        t1 = time.time_ns()
        time.sleep(0.5)  # let the last deliveries land
    finally:
        stop.set()
    latencies: list[float] = []
    for pipe, proc in zip(pipes, procs, strict=True):
        if pipe.poll(60):
            flat = array("q")
            flat.frombytes(pipe.recv())
            latencies += [
                flat[i + 1] / 1e6
                for i in range(0, len(flat), 2)
                if t0 <= flat[i] <= t1 + 400_000_000
            ]
        proc.join(10)
    return latencies


@contextlib.contextmanager
def _bare_servers(count: int, template: bytes) -> Iterator[list[str]]:
    ctx = multiprocessing.get_context("spawn")
    stop = ctx.Event()
    procs, addresses = [], []
    try:
        for _ in range(count):
            receiver, sender = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=_bare_server_main, args=(template, sender, stop), daemon=True)
            proc.start()
            procs.append(proc)
            addresses.append(f"127.0.0.1:{receiver.recv()}")
        yield addresses
    finally:
        stop.set()
        for proc in procs:
            proc.join(10)


async def _one_beat(address: str) -> bytes:
    """The serialised ``StreamBeatsResponse`` of the next beat from the pulse at ``address``."""
    async with grpc.aio.insecure_channel(address) as channel:
        call = channel.unary_stream(
            PULSE_METHOD,
            request_serializer=pb.StreamBeatsRequest.SerializeToString,
            response_deserializer=None,
        )(pb.StreamBeatsRequest())
        try:
            while True:
                data = await asyncio.wait_for(call.read(), 30)
                assert isinstance(data, bytes), data
                if pb.StreamBeatsResponse.FromString(data).WhichOneof("event") == "beat":
                    return data
        finally:
            call.cancel()


def _wait_following(procs: list[ComponentProcess], timeout_s: float = 60) -> None:
    """Until every replica has seen a beat (followers relay)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, KeyError):
            if all(status(p).get("last_beat", -1) >= 0 for p in procs):
                return
        time.sleep(0.2)
    raise RuntimeError("the pulse replicas did not all see a beat")


def run(quick: bool) -> list[Result]:
    window_s = (10 if quick else 60) * PERIOD_S
    rounds = 1 if quick else ROUNDS
    cluster = f"bench-fanout-{time.time_ns() % 10**9}"
    load_before = os.getloadavg()[0]
    ours: dict[int, list[float]] = {n: [] for n in REPLICAS}
    bare: dict[int, list[float]] = {n: [] for n in REPLICAS}
    with servers() as (redis, nats_server):
        logs = log_dir()
        replicas: list[tuple[ComponentProcess, int]] = []
        try:
            for count in REPLICAS:
                while len(replicas) < count:
                    proc, port = pulse_process(
                        cluster, f"p{len(replicas) + 1}", redis, nats_server, logs
                    )
                    proc.start(timeout=60)
                    replicas.append((proc, port))
                _wait_following([p for p, _ in replicas])
                addresses = [f"127.0.0.1:{port}" for _, port in replicas[:count]]
                template = asyncio.run(_one_beat(addresses[0]))
                for _ in range(rounds):
                    with _bare_servers(count, template) as bare_addresses:
                        bare[count] += _measure(bare_addresses, BARE_METHOD, window_s)
                    ours[count] += _measure(addresses, PULSE_METHOD, window_s)
        finally:
            for proc, _ in replicas:
                proc.close()
    load = f"1-min load {load_before:.1f} → {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    results = []
    for count in REPLICAS:
        where = "one replica" if count == 1 else f"{count} replicas"
        name = f"gRPC, {STREAMS} streams on {where}"
        base_name = f"bare grpc.aio {'server' if count == 1 else f'servers ×{count}'}, same bytes"
        record_series("fanout", name, "ms", ours[count])
        record_series("fanout", base_name, "ms", bare[count])
        for label, q in (("p50", 0.5), ("p99", 0.99)):
            results.append(
                Result(
                    bench="fanout",
                    metric=f"emitted -> received {label}, {name}",
                    value=quantile(ours[count], q),
                    unit="ms",
                    baseline_name=base_name,
                    baseline_value=quantile(bare[count], q),
                    target="≤ 1.1 × bare" if count == 1 else "",
                    notes=(
                        f"{len(ours[count])} deliveries (bare {len(bare[count])}), {rounds} "
                        f"alternating round(s) of {window_s:g} s, receivers in {WORKERS} "
                        f"processes; {load}"
                    ),
                )
            )
    return results
