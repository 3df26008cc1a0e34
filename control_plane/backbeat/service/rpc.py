"""gRPC plumbing: a server with health and reflection, bearer auth, and rich errors.

Errors carry a ``google.rpc.ErrorInfo`` detail (domain ``backbeat.dev``) whose ``reason`` is
a stable UPPER_SNAKE code, so clients in any language can branch on it.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NoReturn

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from grpc_status import rpc_status
from opentelemetry.instrumentation.grpc import aio_server_interceptor, filters

ERROR_DOMAIN = "backbeat.dev"

#: Returns the currently valid API token (rotatable), or None when auth is disabled.
TokenSource = Callable[[], str | None]


def token_matches(presented: str, expected: str | None) -> bool:
    """Constant-time token comparison; no expected token means nothing matches."""
    if not expected:
        return False
    return hmac.compare_digest(presented.encode(), expected.encode())


def error_status(
    code: grpc.StatusCode, reason: str, message: str, metadata: Mapping[str, str] | None = None
) -> grpc.Status:
    """A grpc.Status with a google.rpc.ErrorInfo detail."""
    info = error_details_pb2.ErrorInfo(reason=reason, domain=ERROR_DOMAIN, metadata=metadata or {})
    detail = any_pb2.Any()
    detail.Pack(info)
    status = status_pb2.Status(code=getattr(code_pb2, code.name), message=message, details=[detail])
    return rpc_status.to_status(status)


async def abort_with_reason(
    context: grpc.aio.ServicerContext[Any, Any],
    code: grpc.StatusCode,
    reason: str,
    message: str,
    metadata: Mapping[str, str] | None = None,
) -> NoReturn:
    """Abort the RPC with ``code``, ``message`` and an ErrorInfo(reason) detail."""
    await context.abort_with_status(error_status(code, reason, message, metadata))  # type: ignore[attr-defined]
    raise AssertionError("abort_with_status raises")  # pragma: no cover


def error_info(error: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo | None:
    """The ErrorInfo detail of a failed call, if it carries one (client side)."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    if status is None:
        return None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info
    return None


def error_reason(error: grpc.aio.AioRpcError) -> str | None:
    """The ErrorInfo reason of a failed call, if it carries one (client side)."""
    info = error_info(error)
    return None if info is None else str(info.reason)


class BearerAuth:
    """Checks ``authorization: Bearer <token>`` metadata on mutating calls."""

    def __init__(self, token: TokenSource) -> None:
        self._token = token

    @property
    def enabled(self) -> bool:
        return bool(self._token())

    def current_token(self) -> str:
        """The token calls must carry now ("" when none is configured)."""
        return self._token() or ""

    async def require(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        """Abort with UNAUTHENTICATED / PERMISSION_DENIED unless the call carries the token."""
        expected = self._token()
        if not expected:
            return  # auth disabled (development); production refuses to start like this
        metadata = dict(context.invocation_metadata() or ())
        header = metadata.get("authorization", "")
        if isinstance(header, bytes):
            header = header.decode(errors="replace")
        scheme, _, presented = header.partition(" ")
        if scheme.lower() != "bearer" or not presented:
            await abort_with_reason(
                context, grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED",
                "this call needs metadata 'authorization: Bearer <token>'",
            )  # fmt: skip
        if not token_matches(presented.strip(), expected):
            await abort_with_reason(
                context, grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED",
                "the bearer token is not valid",
            )  # fmt: skip


class GrpcServer:
    """A grpc.aio server with ``grpc.health.v1`` and server reflection.

    ``register`` takes the generated ``add_XServicer_to_server`` function, the servicer and
    the full service name (for health and reflection).
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        interceptors: Iterable[grpc.aio.ServerInterceptor[Any, Any]] = (),
        credentials: grpc.ServerCredentials | None = None,
        options: Iterable[tuple[str, Any]] = (),
        untraced: Iterable[str] = (),
    ) -> None:
        """``untraced``: full method names (``/pkg.Service/Method``) that get no server span,
        e.g. long-lived streams, where one span per stream says little and its wrapper costs
        every message."""
        self.host = host
        self.port = port
        self._credentials = credentials
        # Every server is traced: the OpenTelemetry interceptor continues the caller's trace.
        skip = [filters.full_method_name(name) for name in untraced]
        traced = filters.negate(filters.any_of(*skip)) if skip else None
        self._server = grpc.aio.server(
            interceptors=[aio_server_interceptor(filter_=traced), *interceptors],  # type: ignore[no-untyped-call]
            options=[("grpc.max_receive_message_length", 4 * 1024 * 1024), *options],
        )
        self._health = health_aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        self._services: list[str] = []
        self._started = False

    def register(self, add_to_server: Callable[[Any, grpc.aio.Server], None], servicer: Any,
                 service_name: str) -> None:  # fmt: skip
        add_to_server(servicer, self._server)
        self._services.append(service_name)

    async def start(self) -> None:
        if self._started:
            return
        reflection.enable_server_reflection(
            [*self._services, health.SERVICE_NAME, reflection.SERVICE_NAME], self._server
        )
        address = f"{self.host}:{self.port}"
        if self._credentials is not None:
            self.port = self._server.add_secure_port(address, self._credentials)
        else:
            self.port = self._server.add_insecure_port(address)
        await self._server.start()
        self._started = True
        await self.set_serving(True)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    async def set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", *self._services):
            await self._health.set(name, status)

    async def stop(self, grace: float = 5.0) -> None:
        """Health NOT_SERVING, then stop accepting calls; running calls get ``grace`` seconds."""
        if not self._started:
            return
        self._started = False
        await self._health.enter_graceful_shutdown()
        await self._server.stop(grace)

    async def __aenter__(self) -> GrpcServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
