"""Per-process connections for the deployed runtimes (Lambda, functions-framework).

Both runtimes call the function synchronously, possibly from several threads. One event loop
runs in a daemon thread for the life of the process and owns the Redis and NATS connections,
created on the first invocation and reused while the process stays warm. Nothing else lives
between invocations: every window's state is in Redis and JetStream.

Every invocation must be signed with the invocation key (``invocation_auth``; the secret
``rollup_invoke_key``, re-read while the process runs so it rotates without a restart) and
must not name a window whose closing downbeat is still ahead on this function's clock. Without a
configured key every invocation is refused: these runtimes listen on a network.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Coroutine, Mapping
from dataclasses import replace
from typing import Any, TypeVar

from backbeat.secrets import ComponentSecrets, RotatingSecret, SecretName
from backbeat.service.logs import configure_logging
from backbeat.service.nats_connect import connect_nats
from backbeat.service.redis_connect import redis_client
from backbeat.service.tracing import configure_tracing, force_flush
from reverb_rollup.event import RollupEvent
from reverb_rollup.handler import Rollup, RollupSettings, refuse_open_window
from reverb_rollup.inprocess import build_rollup
from reverb_rollup.invocation_auth import InvocationRefused, verify_invocation
from reverb_rollup.settings import FunctionSettings

log = logging.getLogger("reverb_rollup")
_T = TypeVar("_T")

#: An invocation that takes longer than this is abandoned (the trigger retries the window).
INVOKE_TIMEOUT_S = 30.0
#: Bound of every Redis command of the function (seconds).
REDIS_TIMEOUT_S = 5.0
#: The first NATS connection of a runtime is waited for this long (an invocation is bounded).
NATS_CONNECT_TIMEOUT_S = 10.0


class ProcessRuntime:
    def __init__(self, settings: FunctionSettings) -> None:
        self.settings = settings
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="reverb-rollup-loop", daemon=True
        )
        self._thread.start()
        self._rollup: Rollup | None = None
        self._connections: list[Any] = []
        self._connect_lock = asyncio.Lock()
        self._secrets: ComponentSecrets | None = None
        self._invoke_key: RotatingSecret | None = None

    def _run(self, coro: Coroutine[Any, Any, _T]) -> _T:
        running = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return running.result(INVOKE_TIMEOUT_S)
        except TimeoutError:
            running.cancel()  # an invocation given up must not go on in the background
            raise

    async def _open_secrets(self) -> RotatingSecret:
        """The secret source stays open (and refreshing) for the life of the process."""
        if self._invoke_key is None:
            # In production an unsafe configuration is refused here, before any connection.
            from backbeat.secrets import open_component_secrets

            s = self.settings
            self._secrets = await open_component_secrets(
                "reverb-rollup",
                urls=[s.nats_url, s.redis_url],
                required=(
                    SecretName.REDIS_PASSWORD,
                    SecretName.NATS_CREDENTIALS,
                    SecretName.ROLLUP_INVOKE_KEY,
                ),
                optional_keyrings=(SecretName.REPORT_SIGNING_KEYS,),
            )
            key = RotatingSecret(self._secrets.source, SecretName.ROLLUP_INVOKE_KEY)
            await key.start()
            self._invoke_key = key
        return self._invoke_key

    async def _authenticate(self, body: bytes, signature: str | None) -> None:
        """Raise InvocationRefused unless ``signature`` signs ``body`` (see the module doc)."""
        async with self._connect_lock:
            key = await self._open_secrets()
        try:
            verify_invocation(key.accepted(), body, signature, time.time())
        except InvocationRefused:
            # The caller may hold a key rotated in since our last refresh: look once more.
            if not await key.refresh():
                raise
            verify_invocation(key.accepted(), body, signature, time.time())

    async def _get_rollup(self) -> Rollup:
        async with self._connect_lock:
            if self._rollup is None:
                s = self.settings
                await self._open_secrets()
                secrets = self._secrets
                assert secrets is not None
                redis_url, nats_url = secrets.redis_url(s.redis_url), secrets.nats_url(s.nats_url)
                # Every command bounded: an invocation never waits on Redis for ever.
                redis = redis_client(
                    redis_url,
                    socket_timeout=REDIS_TIMEOUT_S,
                    socket_connect_timeout=REDIS_TIMEOUT_S,
                )
                # Several URLs (a NATS cluster) comma-separated; reconnects across them.
                nc = await connect_nats(
                    nats_url,
                    connect_timeout_s=NATS_CONNECT_TIMEOUT_S,
                    name=f"reverb-rollup-{s.cluster_id}",
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=0.25,
                )
                self._connections += [nc, redis]
                rollup = build_rollup(
                    s.cluster_id,
                    redis=redis,
                    nats_client=nc,
                    settings=RollupSettings(lease_ms=s.lease_ms),
                    stream_replicas=s.stream_replicas,
                    claim_partitions=s.claim_partitions,
                    wait_replicas=s.wait_replicas,
                    report_keys=(
                        self._secrets.private_keys(SecretName.REPORT_SIGNING_KEYS)
                        if self._secrets is not None
                        else None
                    ),
                )
                await rollup.publisher.ensure_stream()
                self._rollup = rollup
                log.info("reverb rollup connected: %s", s.masked())
            return self._rollup

    async def _invoke(self, event: RollupEvent, via: str) -> dict[str, Any]:
        rollup = await self._get_rollup()
        if via:
            rollup = replace(rollup, runtime=via)
        return (await rollup(event)).to_json_dict()

    def invoke(
        self,
        body: bytes,
        *,
        signature: str | None,
        data: bytes | str | Mapping[str, Any] | None = None,
        traceparent: str = "",
        via: str = "",
    ) -> dict[str, Any]:
        """Roll up the window named by the request ``body`` (the event's JSON form, or
        ``data`` when the runtime unwrapped it, e.g. from a CloudEvent); return the result.

        ``signature`` is the request's ``X-Backbeat-Signature`` over ``body``; ``via`` names the
        runtime (``cloudevents``, ``lambda``) on the ``reverb.rollup`` span. Raises
        ``InvocationRefused`` (not signed with the invocation key), ``CodecError`` (not an
        event) and ``WindowNotClosed`` before anything is read.
        """
        self._run(self._authenticate(body, signature))
        event = RollupEvent.decode(body if data is None else data, traceparent=traceparent)
        # Events of the trigger's catch-up carry no time span (their windows are long closed).
        refuse_open_window(event, time.time_ns())
        try:
            return self._run(self._invoke(event, via))
        finally:
            # The runtime may freeze or end the process right after the answer: export now.
            force_flush()

    def shutdown(self) -> None:
        """Close the connections and stop the loop (tests; a real process just exits)."""

        async def close_all() -> None:
            for conn in self._connections:
                await (conn.close() if hasattr(conn, "is_connected") else conn.aclose())
            self._connections.clear()
            self._rollup = None
            if self._secrets is not None:
                await self._secrets.close()
            self._secrets, self._invoke_key = None, None

        self._run(close_all())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()


_runtime: ProcessRuntime | None = None
_runtime_lock = threading.Lock()


def reset_runtime() -> None:
    """Forget the process-wide runtime (tests that change the environment)."""
    global _runtime  # noqa: PLW0603
    with _runtime_lock:
        if _runtime is not None:
            _runtime.shutdown()
        _runtime = None


def runtime() -> ProcessRuntime:
    """The process-wide runtime, built from the environment on first use."""
    global _runtime  # noqa: PLW0603 - one per process by design (warm reuse)
    with _runtime_lock:
        if _runtime is None:
            settings = FunctionSettings.from_env()
            configure_logging(settings.log_level)
            configure_tracing("reverb-rollup", cluster_id=settings.cluster_id)
            _runtime = ProcessRuntime(settings)
        return _runtime
