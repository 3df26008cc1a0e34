"""The in-process runtime: the function called directly, for tests, the embedded stack and the
trigger's ``inprocess`` invoker. It borrows the caller's Redis and NATS connections."""

from __future__ import annotations

import time
from collections.abc import Mapping
from types import TracebackType

import nats.aio.client
from redis.asyncio import Redis

from backbeat.core.ed25519 import PrivateKeyringProvider, verify_report
from backbeat.reverb.store import StoreSettings, WindowStore
from reverb_rollup.event import RollupEvent
from reverb_rollup.handler import Rollup, RollupHooks, RollupResult, RollupSettings
from reverb_rollup.publisher import BarPublisher, ReportCheck
from reverb_rollup.record import RollupRecords
from reverb_rollup.rotations import RotationLog
from reverb_rollup.source import WindowSource


def default_source(
    redis: Redis, cluster_id: str, *, claim_partitions: int = 1, wait_replicas: int = 0
) -> WindowSource:
    """The reverb ingest's window store (the only reader of the claims in Redis), over the
    ``claim_partitions`` the ingest writes (read concurrently); with ``wait_replicas`` a seal
    counts only once that many replicas confirmed it."""
    settings = StoreSettings(claim_partitions=claim_partitions, wait_replicas=wait_replicas)
    return WindowStore(redis, cluster_id, settings)


def build_rollup(
    cluster_id: str,
    *,
    redis: Redis,
    nats_client: nats.aio.client.Client,
    source: WindowSource | None = None,
    settings: RollupSettings | None = None,
    hooks: RollupHooks | None = None,
    runtime: str = "inprocess",
    report_keys: PrivateKeyringProvider | None = None,
    stream_replicas: int = 1,
    claim_partitions: int = 1,
    wait_replicas: int = 0,
) -> Rollup:
    """The rollup of ``cluster_id``. With ``report_keys`` its reports are signed, and a report
    found on a window's subject that the function did not sign is replaced, never adopted."""
    return Rollup(
        cluster_id=cluster_id,
        source=(
            source
            if source is not None
            else default_source(
                redis, cluster_id, claim_partitions=claim_partitions, wait_replicas=wait_replicas
            )
        ),
        records=RollupRecords(redis, cluster_id),
        publisher=BarPublisher(
            nats_client.jetstream(),
            cluster_id,
            is_genuine=genuine_reports(cluster_id, report_keys) if report_keys else None,
            stream_replicas=stream_replicas,
        ),
        settings=settings or RollupSettings(),
        hooks=hooks or RollupHooks(),
        rotations=RotationLog(redis, cluster_id),
        runtime=runtime,
        report_keys=report_keys,
    )


def genuine_reports(cluster_id: str, keys: PrivateKeyringProvider) -> ReportCheck:
    """A report check with the public half of the function's own keyring."""

    def check(window_id: str, payload: bytes, headers: Mapping[str, str] | None) -> bool:
        public = keys().public()
        return verify_report(
            cluster_id, window_id, payload, headers, public, now_ns=time.time_ns()
        ).ok

    return check


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
        report_keys: PrivateKeyringProvider | None = None,
        stream_replicas: int = 1,
        claim_partitions: int = 1,
        wait_replicas: int = 0,
    ) -> None:
        self._rollup = build_rollup(
            cluster_id,
            redis=redis,
            nats_client=nats_client,
            source=source,
            settings=settings,
            hooks=hooks,
            report_keys=report_keys,
            stream_replicas=stream_replicas,
            claim_partitions=claim_partitions,
            wait_replicas=wait_replicas,
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
