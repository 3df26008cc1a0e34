"""How the trigger calls the rollup function: in this process, over HTTP (CloudEvents), or
on AWS Lambda. Each invoker raises InvokeError when the window was not reported."""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import time
from collections.abc import Callable
from typing import Any, Protocol

import aiohttp
import nats.aio.client
from redis.asyncio import Redis

from backbeat.core.ed25519 import PrivateKeyringProvider
from backbeat.errors import InvokeError
from reverb_rollup import (
    CLOUDEVENT_TYPE,
    InProcessRollup,
    RollupEvent,
    RollupOutcome,
    RollupSettings,
)
from reverb_rollup.invocation_auth import SIGNATURE_HEADER, sign_invocation

#: The current invocation key (the ``rollup_invoke_key`` secret, rotated without a restart).
InvokeKey = Callable[[], str]


class Invoker(Protocol):
    name: str

    async def invoke(self, event: RollupEvent) -> bool | None:
        """Have the window reported: True when this call published its report, False when
        the window had its report already, None when the function does not say.

        Raises InvokeError when the function did not report the window (failed, timed out or
        was unreachable); the trigger tries again."""
        ...

    async def close(self) -> None: ...


class InProcessInvoker:
    """Runs the function on this process's connections (tests, embedded stack)."""

    name = "inprocess"

    def __init__(
        self,
        cluster_id: str,
        *,
        redis: Redis,
        nats_client: nats.aio.client.Client,
        settings: RollupSettings | None = None,
        report_keys: PrivateKeyringProvider | None = None,
        stream_replicas: int = 1,
        claim_partitions: int = 1,
        wait_replicas: int = 0,
    ) -> None:
        self._fn = InProcessRollup(
            cluster_id,
            redis=redis,
            nats_client=nats_client,
            settings=settings,
            report_keys=report_keys,
            stream_replicas=stream_replicas,
            claim_partitions=claim_partitions,
            wait_replicas=wait_replicas,
        )

    async def invoke(self, event: RollupEvent) -> bool:
        try:
            result = await self._fn.invoke(event)
        except Exception as exc:  # any failure is retried by the trigger
            raise InvokeError(f"{type(exc).__name__}: {exc}") from exc
        return result.outcome is RollupOutcome.PUBLISHED

    async def close(self) -> None:
        await self._fn.close()


class HttpInvoker:
    """POSTs a binary-mode CloudEvent to a functions-framework / Cloud Run / Knative URL,
    signed with the invocation key (``X-Backbeat-Signature``)."""

    name = "http"

    def __init__(
        self, url: str, *, invoke_key: InvokeKey, timeout_s: float = 10.0, source: str = ""
    ) -> None:
        self.url = url
        self._invoke_key = invoke_key
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._source = source or "//backbeat/reverb-trigger"
        self._session: aiohttp.ClientSession | None = None

    async def invoke(self, event: RollupEvent) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        headers = {
            "content-type": "application/json",
            "ce-specversion": "1.0",
            "ce-type": CLOUDEVENT_TYPE,
            "ce-source": self._source,
            # Unique per attempt: the function de-duplicates by window, not by event id.
            "ce-id": f"{event.window_id}-{os.urandom(4).hex()}",
            "ce-subject": event.window_id,
        }
        if event.traceparent:
            headers["ce-traceparent"] = event.traceparent
        body = json.dumps(event.to_json_dict()).encode()
        headers[SIGNATURE_HEADER] = sign_invocation(self._invoke_key(), body, time.time())
        try:
            async with self._session.post(self.url, data=body, headers=headers) as response:
                if response.status // 100 != 2:
                    text = (await response.text())[:300]
                    raise InvokeError(f"HTTP {response.status} from {self.url}: {text}")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise InvokeError(f"{self.url} unreachable: {type(exc).__name__}: {exc}") from exc

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()


class LambdaInvoker:
    """Synchronous ``Invoke`` of an AWS Lambda function through boto3 (when installed).

    Not exercised against AWS in this project's tests; boto3 is an optional dependency that
    deployments using this invoker install themselves.
    """

    name = "lambda"

    def __init__(
        self, function_name: str, *, invoke_key: InvokeKey, region: str | None = None
    ) -> None:
        self._invoke_key = invoke_key
        try:
            boto3: Any = importlib.import_module("boto3")
        except ImportError as exc:
            raise RuntimeError(
                "the lambda invoker needs boto3: pip install boto3 (or use --invoker http)"
            ) from exc
        self.function_name = function_name
        self._client: Any = boto3.client("lambda", region_name=region)

    def _invoke_sync(self, payload: bytes) -> None:
        response = self._client.invoke(
            FunctionName=self.function_name, InvocationType="RequestResponse", Payload=payload
        )
        if response.get("FunctionError"):
            detail = response["Payload"].read()[:300].decode(errors="replace")
            raise InvokeError(f"lambda {self.function_name}: {response['FunctionError']}: {detail}")

    async def invoke(self, event: RollupEvent) -> None:
        # The shape of a function URL request, so the handler finds body and signature alike.
        body = json.dumps(event.to_json_dict())
        signature = sign_invocation(self._invoke_key(), body.encode(), time.time())
        payload = json.dumps({"headers": {SIGNATURE_HEADER: signature}, "body": body}).encode()
        try:
            await asyncio.to_thread(self._invoke_sync, payload)
        except InvokeError:
            raise
        except Exception as exc:  # botocore errors: throttling, network, permissions
            raise InvokeError(f"lambda {self.function_name}: {exc}") from exc

    async def close(self) -> None:
        return None
