"""The in-process runtime: the function called directly, for tests, the embedded stack and the
trigger's ``inprocess`` invoker. It borrows the caller's Redis and NATS connections."""

from __future__ import annotations

from types import TracebackType

import nats.aio.client
from redis.asyncio import Redis

from reverb_rollup.event import RollupEvent
from reverb_rollup.handler import Rollup, RollupHooks, RollupResult, RollupSettings
from reverb_rollup.publisher import BarPublisher
from reverb_rollup.record import RollupRecords
from reverb_rollup.rotations import RotationLog
from reverb_rollup.source import WindowSource


def default_source(redis: Redis, cluster_id: str) -> WindowSource:
    """The reverb ingest's window store (the only reader of the claims in Redis)."""
    import importlib

    module = importlib.import_module("backbeat.reverb.store")
    store: WindowSource = module.WindowStore(redis, cluster_id)
    return store


def build_rollup(
    cluster_id: str,
    *,
    redis: Redis,
    nats_client: nats.aio.client.Client,
    source: WindowSource | None = None,
    settings: RollupSettings | None = None,
    hooks: RollupHooks | None = None,
    runtime: str = "inprocess",
) -> Rollup:
    return Rollup(
        cluster_id=cluster_id,
        source=source if source is not None else default_source(redis, cluster_id),
        records=RollupRecords(redis, cluster_id),
        publisher=BarPublisher(nats_client.jetstream(), cluster_id),
        settings=settings or RollupSettings(),
        hooks=hooks or RollupHooks(),
        rotations=RotationLog(redis, cluster_id),
        runtime=runtime,
    )


class InProcessRollup:
    """``async with InProcessRollup(...) as fn: await fn.invoke(event)``."""

    def __init__(
        self,
        cluster_id: str,
        *,
        redis: Redis,
        nats_client: nats.aio.client.Client,
        source: WindowSource | None = None,
        settings: RollupSettings | None = None,
        hooks: RollupHooks | None = None,
    ) -> None:
        self._rollup = build_rollup(
            cluster_id,
            redis=redis,
            nats_client=nats_client,
            source=source,
            settings=settings,
            hooks=hooks,
        )
        self._started = False

    async def start(self) -> None:
        if not self._started:
            await self._rollup.publisher.ensure_stream()
            self._started = True

    async def close(self) -> None:
        self._started = False  # the connections belong to the caller

    async def invoke(self, event: RollupEvent) -> RollupResult:
        await self.start()
        return await self._rollup(event)

    async def __aenter__(self) -> InProcessRollup:
        await self.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
