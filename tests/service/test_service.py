"""The shared service plumbing, exercised over real sockets with real clients."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
from typing import Any

import aiohttp
import grpc
import pytest
from aiohttp import web
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client import CollectorRegistry, Counter

from backbeat.service import AdminServer, BearerAuth, GrpcServer, ShutdownSignal, abort_with_reason
from backbeat.service.rpc import error_reason
from backbeat.service.settings import Environment, masked


async def test_admin_health_ready_metrics_and_auth() -> None:
    registry = CollectorRegistry()
    Counter("backbeat_probe_total", "probe", registry=registry).inc(3)
    ready = {"ok": False}
    admin = AdminServer(
        registry=registry,
        ready=lambda: (ready["ok"], "waiting for leader"),
        token=lambda: "s3cret",
    )

    async def change(request: web.Request) -> web.Response:
        return web.json_response({"changed": await request.json()})

    admin.add_route("POST", "/api/v1/thing", change)
    async with admin, aiohttp.ClientSession() as http:
        assert admin.port != 0
        async with http.get(f"{admin.url}/health") as r:
            assert r.status == 200
        async with http.get(f"{admin.url}/ready") as r:
            assert r.status == 503
            assert (await r.json())["detail"] == "waiting for leader"
        ready["ok"] = True
        async with http.get(f"{admin.url}/ready") as r:
            assert r.status == 200
        async with http.get(f"{admin.url}/metrics") as r:
            assert "backbeat_probe_total 3.0" in await r.text()
        async with http.post(f"{admin.url}/api/v1/thing", json={"a": 1}) as r:
            assert r.status == 401
        headers = {"Authorization": "Bearer wrong"}
        async with http.post(f"{admin.url}/api/v1/thing", json={}, headers=headers) as r:
            assert r.status == 403
            assert (await r.json())["error"]["reason"] == "PERMISSION_DENIED"
        headers = {"Authorization": "Bearer s3cret"}
        async with http.post(f"{admin.url}/api/v1/thing", json={"a": 1}, headers=headers) as r:
            assert r.status == 200
            assert await r.json() == {"changed": {"a": 1}}


def _echo_service(auth: BearerAuth) -> Any:
    async def guarded(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        await auth.require(context)
        if request == b"bad":
            await abort_with_reason(
                context, grpc.StatusCode.INVALID_ARGUMENT, "BAD_ECHO", "bad is bad", {"k": "v"}
            )
        return request

    handler = grpc.method_handlers_generic_handler(
        "test.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(guarded)}
    )

    def add(_: Any, server: grpc.aio.Server) -> None:
        server.add_generic_rpc_handlers((handler,))

    return add


async def test_grpc_server_health_reflection_auth_and_error_info() -> None:
    server = GrpcServer()
    server.register(_echo_service(BearerAuth(lambda: "tok")), None, "test.Echo")
    async with server:
        async with grpc.aio.insecure_channel(server.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            reply = await health.Check(health_pb2.HealthCheckRequest(service="test.Echo"))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING

            reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
            request = reflection_pb2.ServerReflectionRequest(list_services="")
            async for answer in reflect.ServerReflectionInfo(iter([request])):
                names = {s.name for s in answer.list_services_response.service}
                assert {"test.Echo", "grpc.health.v1.Health"} <= names

            echo = channel.unary_unary("/test.Echo/Echo", None, None)
            with pytest.raises(grpc.aio.AioRpcError) as missing:
                await echo(b"hi")
            assert missing.value.code() is grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.aio.AioRpcError) as wrong:
                await echo(b"hi", metadata=(("authorization", "Bearer nope"),))
            assert wrong.value.code() is grpc.StatusCode.PERMISSION_DENIED
            ok = (("authorization", "Bearer tok"),)
            assert await echo(b"hi", metadata=ok) == b"hi"
            with pytest.raises(grpc.aio.AioRpcError) as bad:
                await echo(b"bad", metadata=ok)
            assert bad.value.code() is grpc.StatusCode.INVALID_ARGUMENT
            assert error_reason(bad.value) == "BAD_ECHO"

        await server.set_serving(False)
        async with grpc.aio.insecure_channel(server.address) as channel:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="")
            )
            assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING


async def test_shutdown_signal_catches_sigterm() -> None:
    async with ShutdownSignal() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        assert await stop.wait() is signal.SIGTERM


def test_masked_settings_hide_secrets() -> None:
    @dataclasses.dataclass
    class Settings:
        nats_url: str = "nats://user:pw@host:4222"
        redis: tuple[str, ...] = ("redis://:hunter2@h:6379/0",)
        api_token: str = "tok"
        vault_role_id: str = "role"
        env: Environment = Environment.PRODUCTION

    shown = json.dumps(masked(Settings()))
    assert "pw@" not in shown
    assert "hunter2" not in shown
    assert "tok" not in shown.replace("api_token", "")
    assert '"role"' in shown  # ids are not secrets
    assert "production" in shown


def test_masked_settings_hide_an_approle_secret_id_but_not_other_ids() -> None:
    @dataclasses.dataclass
    class Settings:
        secret_id: str = "s-3cr3t-id"
        vault_secret_id: str = "s-3cr3t-id-2"
        secret_id_file: str = "approle-secret-id"
        role_id: str = "role-1"
        key_id: str = "beat-7"
        node_id: str = "pulse-1"

    shown = masked(Settings())
    assert shown["secret_id"] == "***"
    assert shown["vault_secret_id"] == "***"
    # The name of the file holding the secret id is not a secret; ids are not either.
    assert shown["secret_id_file"] == "approle-secret-id"
    assert (shown["role_id"], shown["key_id"], shown["node_id"]) == ("role-1", "beat-7", "pulse-1")
