"""A small stand-in for HashiCorp Vault's HTTP API, for tests (no Vault server runs here).

It follows Vault's documented API for exactly what BACKBEAT uses, with the documented JSON
shapes and status codes:

* ``POST /v1/auth/approle/login``      -> 200 ``{"auth": {"client_token", "accessor",
  "policies", "token_policies", "metadata", "lease_duration", "renewable", ...}}``;
  400 ``{"errors": ["invalid role or secret ID"]}``
* ``GET  /v1/auth/token/lookup-self``  -> 200 ``{"data": {"id", "ttl", "renewable",
  "policies", "expire_time", ...}}``
* ``POST /v1/auth/token/renew-self``   -> 200 ``{"auth": {...}}``; 400 when not renewable
* ``GET  /v1/<mount>/data/<path>[?version=N]`` -> 200 ``{"data": {"data": {...},
  "metadata": {"created_time", "custom_metadata", "deletion_time", "destroyed",
  "version"}}}``; 404 ``{"errors": []}``
* ``POST /v1/<mount>/data/<path>``     -> 200 ``{"data": {<metadata of the new version>}}``;
  400 on a check-and-set mismatch

Every request needs ``X-Vault-Token`` (except login); an unknown, expired or unauthorised
token gets 403 ``{"errors": ["permission denied"]}``; a sealed double answers 503
``{"errors": ["Vault is sealed"]}`` everywhere. Policies are modelled as path prefixes.
"""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from backbeat.core.rfc3339 import format_ns


@dataclass
class Token:
    token: str
    policies: list[str]
    #: Path prefixes (under /v1/) the token may read; write needs ``writable``.
    readable: tuple[str, ...]
    writable: tuple[str, ...] = ()
    ttl_s: float = 0.0  # 0: never expires (like a root token)
    max_ttl_s: float = 0.0  # 0: no maximum
    renewable: bool = True
    issued: float = field(default_factory=time.monotonic)
    created: float = field(default_factory=time.monotonic)
    expires: float | None = None
    accessor: str = field(default_factory=lambda: str(uuid.uuid4()))
    path: str = "auth/token/create"
    metadata: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.ttl_s > 0:
            self.expires = self.issued + self.ttl_s

    def remaining(self) -> int:
        if self.expires is None:
            return 0
        return max(0, int(self.expires - time.monotonic()))

    def alive(self) -> bool:
        return self.expires is None or time.monotonic() < self.expires


@dataclass
class AppRole:
    role_id: str
    secret_ids: set[str]
    readable: tuple[str, ...]
    writable: tuple[str, ...] = ()
    token_ttl_s: float = 60.0
    token_max_ttl_s: float = 0.0
    renewable: bool = True
    name: str = "backbeat"


@dataclass
class Version:
    data: dict[str, Any]
    created_ns: int


class VaultDouble:
    """State plus an aiohttp app. Start with ``await double.start()``; ``url`` is then set."""

    def __init__(self) -> None:
        self.tokens: dict[str, Token] = {}
        self.approles: dict[str, AppRole] = {}
        self.kv: dict[tuple[str, str], list[Version]] = {}
        self.sealed = False
        self.requests: list[tuple[str, str]] = []
        self._runner: web.AppRunner | None = None
        self.url = ""
        app = web.Application()
        app.router.add_post("/v1/auth/{mount}/login", self._login)
        app.router.add_get("/v1/auth/token/lookup-self", self._lookup_self)
        app.router.add_post("/v1/auth/token/renew-self", self._renew_self)
        app.router.add_route("*", "/v1/{mount}/data/{path:.+}", self._kv)
        self._app = app

    # -- setup ----------------------------------------------------------------------------------

    def add_token(
        self,
        token: str = "",
        *,
        readable: tuple[str, ...] = ("",),
        writable: tuple[str, ...] = (),
        ttl_s: float = 0.0,
        max_ttl_s: float = 0.0,
        renewable: bool = True,
        policies: list[str] | None = None,
    ) -> Token:
        value = token or "hvs." + os.urandom(18).hex()
        entry = Token(
            value,
            policies or ["default", "backbeat"],
            readable,
            writable,
            ttl_s=ttl_s,
            max_ttl_s=max_ttl_s,
            renewable=renewable,
        )
        self.tokens[value] = entry
        return entry

    def add_approle(self, role_id: str, secret_id: str, **kwargs: Any) -> AppRole:
        role = AppRole(role_id, {secret_id}, **kwargs)
        self.approles[role_id] = role
        return role

    def write(self, mount: str, path: str, data: dict[str, Any]) -> int:
        """Store a new version directly (as an operator would); returns its number."""
        versions = self.kv.setdefault((mount, path), [])
        versions.append(Version(dict(data), time.time_ns()))
        return len(versions)

    def count(self, method: str, path: str) -> int:
        return sum(1 for m, p in self.requests if m == method and p == path)

    async def start(self) -> None:
        self._runner = web.AppRunner(self._app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- helpers -------------------------------------------------------------------------------

    @staticmethod
    def _error(status: int, *errors: str) -> web.Response:
        return web.json_response({"errors": list(errors)}, status=status)

    def _envelope(self, **parts: Any) -> dict[str, Any]:
        body: dict[str, Any] = {
            "request_id": str(uuid.uuid4()),
            "lease_id": "",
            "renewable": False,
            "lease_duration": 0,
            "data": None,
            "wrap_info": None,
            "warnings": None,
            "auth": None,
            "mount_type": "",
        }
        body.update(parts)
        return body

    def _caller(self, request: web.Request) -> Token | None:
        token = self.tokens.get(request.headers.get("X-Vault-Token", ""))
        if token is None or not token.alive():
            return None
        return token

    def _auth_block(self, token: Token) -> dict[str, Any]:
        return {
            "client_token": token.token,
            "accessor": token.accessor,
            "policies": token.policies,
            "token_policies": token.policies,
            "metadata": token.metadata,
            "lease_duration": int(token.ttl_s),
            "renewable": token.renewable,
            "entity_id": "",
            "token_type": "service",
            "orphan": True,
        }

    # -- handlers ------------------------------------------------------------------------------

    async def _login(self, request: web.Request) -> web.Response:
        self.requests.append(("POST", request.path))
        if self.sealed:
            return self._error(503, "Vault is sealed")
        if request.match_info["mount"] != "approle":
            return self._error(404, f"no handler for route '{request.path[4:]}'")
        body = await request.json()
        role = self.approles.get(body.get("role_id", ""))
        if role is None or body.get("secret_id") not in role.secret_ids:
            return self._error(400, "invalid role or secret ID")
        token = self.add_token(
            readable=role.readable,
            writable=role.writable,
            ttl_s=role.token_ttl_s,
            max_ttl_s=role.token_max_ttl_s,
            renewable=role.renewable,
        )
        token.path = "auth/approle/login"
        token.metadata = {"role_name": role.name}
        return web.json_response(self._envelope(auth=self._auth_block(token)))

    async def _lookup_self(self, request: web.Request) -> web.Response:
        self.requests.append(("GET", request.path))
        if self.sealed:
            return self._error(503, "Vault is sealed")
        token = self._caller(request)
        if token is None:
            return self._error(403, "permission denied")
        expire = (
            format_ns(time.time_ns() + token.remaining() * 1_000_000_000)
            if token.expires is not None
            else None
        )
        data = {
            "accessor": token.accessor,
            "creation_time": int(time.time()),
            "creation_ttl": int(token.ttl_s),
            "display_name": "token",
            "entity_id": "",
            "expire_time": expire,
            "explicit_max_ttl": int(token.max_ttl_s),
            "id": token.token,
            "issue_time": format_ns(time.time_ns()),
            "meta": token.metadata or None,
            "num_uses": 0,
            "orphan": True,
            "path": token.path,
            "policies": token.policies,
            "renewable": token.renewable,
            "ttl": token.remaining(),
            "type": "service",
        }
        return web.json_response(self._envelope(data=data))

    async def _renew_self(self, request: web.Request) -> web.Response:
        self.requests.append(("POST", request.path))
        if self.sealed:
            return self._error(503, "Vault is sealed")
        token = self._caller(request)
        if token is None:
            return self._error(403, "permission denied")
        if not token.renewable or token.expires is None:
            return self._error(400, "lease is not renewable")
        now = time.monotonic()
        ttl = token.ttl_s
        if token.max_ttl_s > 0:
            ttl = max(0.0, min(ttl, token.created + token.max_ttl_s - now))
        token.issued, token.expires = now, now + ttl
        block = self._auth_block(token)
        block["lease_duration"] = int(ttl)
        return web.json_response(self._envelope(auth=block))

    async def _kv(self, request: web.Request) -> web.Response:
        self.requests.append((request.method, request.path))
        if self.sealed:
            return self._error(503, "Vault is sealed")
        token = self._caller(request)
        mount, path = request.match_info["mount"], request.match_info["path"]
        full = f"{mount}/data/{path}"
        if request.method == "GET":
            if token is None or not any(full.startswith(p) for p in token.readable):
                return self._error(403, "permission denied")
            versions = self.kv.get((mount, path))
            if not versions:
                return self._error(404)
            raw_version = request.query.get("version", "0")
            number = int(raw_version) if raw_version.isdigit() else 0
            number = number or len(versions)
            if number > len(versions):
                return self._error(404)
            version = versions[number - 1]
            return web.json_response(
                self._envelope(
                    data={"data": version.data, "metadata": self._metadata(version, number)}
                )
            )
        if request.method in ("POST", "PUT"):
            if token is None or not any(full.startswith(p) for p in token.writable):
                return self._error(403, "permission denied")
            body = await request.json()
            versions = self.kv.setdefault((mount, path), [])
            cas = (body.get("options") or {}).get("cas")
            if cas is not None and cas != len(versions):
                return self._error(400, "check-and-set parameter did not match the current version")
            versions.append(Version(dict(body.get("data") or {}), time.time_ns()))
            number = len(versions)
            return web.json_response(self._envelope(data=self._metadata(versions[-1], number)))
        return self._error(405)

    @staticmethod
    def _metadata(version: Version, number: int) -> dict[str, Any]:
        return {
            "created_time": format_ns(version.created_ns),
            "custom_metadata": None,
            "deletion_time": "",
            "destroyed": False,
            "version": number,
        }
