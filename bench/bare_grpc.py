"""The bare grpc.aio server the gRPC fan-out benchmarks measure the pulse against.

It does only what any server streaming one message to many clients must: one bounded queue
per stream (as the pulse has), a message dropped for a stream whose queue is full, and no
serialisation per stream (the caller hands it bytes).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from multiprocessing.connection import Connection

import grpc


async def start_bare_server(
    port_out: Connection,
) -> tuple[grpc.aio.Server, Callable[[bytes], None]]:
    """Start the server on a free port (sent through ``port_out``); return it and the function
    that sends one message to every open stream."""
    subs: set[asyncio.Queue[bytes]] = set()

    async def stream(request: bytes, context: object) -> AsyncIterator[bytes]:
        queue: asyncio.Queue[bytes] = asyncio.Queue(256)
        subs.add(queue)
        try:
            while True:
                yield await queue.get()
        finally:
            subs.discard(queue)

    def send(data: bytes) -> None:
        for queue in subs:
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(data)

    handler = grpc.unary_stream_rpc_method_handler(stream)  # bytes in, bytes out
    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("backbeat.bench.Bare", {"Stream": handler}),)
    )
    port_out.send(server.add_insecure_port("127.0.0.1:0"))
    await server.start()
    return server, send
