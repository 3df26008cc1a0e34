"""The admin HTTP API: bearer tokens on mutating routes (rotatable), TLS when configured."""

from __future__ import annotations

import ssl
from pathlib import Path

import aiohttp
from aiohttp import web

from backbeat.service.admin import AdminServer, json_response
from backbeat.service.tls import TlsSettings
from tests.security.certs import self_signed

GOOD = "t0k-" + "a" * 8 + "b" * 8 + "c" * 8 + "d" * 8


async def _ok(_: web.Request) -> web.Response:
    return json_response({"ok": True})


async def test_mutating_routes_need_the_current_token() -> None:
    token = {"value": GOOD}
    admin = AdminServer(token=lambda: token["value"])
    admin.add_route("POST", "/api/v1/thing", _ok)
    admin.add_route("GET", "/api/v1/thing", _ok)
    async with admin, aiohttp.ClientSession() as http:
        url = f"{admin.url}/api/v1/thing"
        async with http.post(url) as r:
            assert r.status == 401
            assert (await r.json())["error"]["reason"] == "UNAUTHENTICATED"
        async with http.post(url, headers={"Authorization": "Bearer wrong"}) as r:
            assert r.status == 403
        async with http.post(url, headers={"Authorization": f"Bearer {GOOD}"}) as r:
            assert r.status == 200
        async with http.get(url) as r:  # reads stay open
            assert r.status == 200
        token["value"] = GOOD + "-rotated"  # rotation: the old token stops working at once
        async with http.post(url, headers={"Authorization": f"Bearer {GOOD}"}) as r:
            assert r.status == 403
        async with http.post(url, headers={"Authorization": f"Bearer {GOOD}-rotated"}) as r:
            assert r.status == 200


async def test_an_empty_token_source_leaves_development_open() -> None:
    admin = AdminServer(token=lambda: "")
    admin.add_route("POST", "/api/v1/thing", _ok)
    async with (
        admin,
        aiohttp.ClientSession() as http,
        http.post(f"{admin.url}/api/v1/thing") as r,
    ):
        assert r.status == 200


async def test_admin_over_tls(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    tls = TlsSettings(str(cert), str(key))
    admin = AdminServer(ssl_context=tls.server_ssl_context(), token=lambda: GOOD)
    admin.add_route("POST", "/api/v1/thing", _ok)
    trust = ssl.create_default_context(cafile=str(cert))
    async with admin, aiohttp.ClientSession() as http:
        assert admin.url.startswith("https://")
        async with http.get(f"{admin.url}/health", ssl=trust) as r:
            assert r.status == 200
        async with http.post(
            f"{admin.url}/api/v1/thing", ssl=trust, headers={"Authorization": f"Bearer {GOOD}"}
        ) as r:
            assert r.status == 200
        plain = admin.url.replace("https://", "http://")
        try:
            async with http.get(f"{plain}/health") as r:
                refused = r.status >= 400
        except aiohttp.ClientError:
            refused = True
        assert refused
