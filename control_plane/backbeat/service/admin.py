"""The HTTP admin server of a component: /health, /ready, /metrics and its own /api/v1 routes.

Mutating routes (POST/PUT/DELETE) require ``Authorization: Bearer <token>`` when the server
has a token source; the comparison is constant-time.
"""

from __future__ import annotations

import asyncio
import json
import math
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

from backbeat.errors import MalformedBody
from backbeat.service.rpc import TokenSource, token_matches

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
ReadyCheck = Callable[[], tuple[bool, str]]


def json_response(payload: Any, status: int = 200) -> web.Response:
    return web.Response(
        text=json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n",
        status=status,
        content_type="application/json",
    )


def error_response(status: int, reason: str, message: str) -> web.Response:
    return json_response({"error": {"reason": reason, "message": message}}, status=status)


async def read_json_object(request: web.Request) -> dict[str, Any]:
    """The body as a JSON object. Raises MalformedBody for anything else, including bodies
    the parser gives up on (nesting deeper than the interpreter's recursion limit, integers
    longer than Python converts)."""
    try:
        body = await request.json()
    except (ValueError, RecursionError) as exc:
        raise MalformedBody("the body must be a JSON object") from exc
    if not isinstance(body, dict):
        raise MalformedBody("the body must be a JSON object")
    return body


def finite_number(value: object) -> float | None:
    """``value`` as a finite float, or None when it is no number or none a float can hold
    (booleans, a 400-digit integer)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


#: A connection must deliver a request's headers within this many seconds of opening (or of
#: its previous response): a client trickling header bytes (slowloris) is cut off.
HEADER_TIMEOUT_S = 10.0
#: A request, body included, must be handled within this many seconds, else 408.
REQUEST_TIMEOUT_S = 30.0


class AdminServer:
    """aiohttp server bound to ``host:port`` (port 0 picks a free port; see ``.port``).

    Bounded against slow clients: headers within ``header_timeout_s`` (aiohttp's keep-alive
    timer, which runs from the moment a connection opens and between requests), the whole
    request including its body within ``request_timeout_s`` (408), bodies of 64 KiB at most.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        registry: CollectorRegistry | None = None,
        ready: ReadyCheck | None = None,
        token: TokenSource | None = None,
        component: str = "backbeat",
        ssl_context: ssl.SSLContext | None = None,
        header_timeout_s: float = HEADER_TIMEOUT_S,
        request_timeout_s: float = REQUEST_TIMEOUT_S,
    ) -> None:
        self.host = host
        self.header_timeout_s = header_timeout_s
        self.request_timeout_s = request_timeout_s
        self.port = port
        self.registry = registry
        self._ssl = ssl_context
        self._ready = ready or (lambda: (True, "ready"))
        self._token = token
        self._component = component
        self._app = web.Application(client_max_size=64 * 1024, middlewares=[self._deadline])
        self._app.router.add_get("/health", self._health)
        self._app.router.add_get("/ready", self._readiness)
        self._app.router.add_get("/metrics", self._metrics)
        self._runner: web.AppRunner | None = None

    @web.middleware
    async def _deadline(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            async with asyncio.timeout(self.request_timeout_s):
                return await handler(request)
        except TimeoutError:
            return error_response(
                408, "REQUEST_TIMEOUT", f"the request took over {self.request_timeout_s:g} s"
            )

    def add_route(self, method: str, path: str, handler: Handler) -> None:
        """Add a route; POST/PUT/PATCH/DELETE routes are wrapped with the bearer-token check."""
        if method.upper() in {"POST", "PUT", "PATCH", "DELETE"}:
            handler = self._authorized(handler)
        self._app.router.add_route(method.upper(), path, handler)

    def _authorized(self, handler: Handler) -> Handler:
        async def wrapped(request: web.Request) -> web.StreamResponse:
            # An empty token (none configured, development) disables the check, as in
            # BearerAuth; production refuses to start without one.
            expected = self._token() if self._token is not None else None
            if expected:
                header = request.headers.get("Authorization", "")
                scheme, _, presented = header.partition(" ")
                if scheme.lower() != "bearer" or not presented:
                    return error_response(401, "UNAUTHENTICATED", "missing bearer token")
                if not token_matches(presented.strip(), expected):
                    return error_response(403, "PERMISSION_DENIED", "invalid bearer token")
            return await handler(request)

        return wrapped

    async def _health(self, _: web.Request) -> web.Response:
        # Liveness: the event loop answers. Readiness is separate.
        return json_response({"status": "ok", "component": self._component})

    async def _readiness(self, _: web.Request) -> web.Response:
        ok, detail = self._ready()
        return json_response(
            {"status": "ready" if ok else "not_ready", "detail": detail}, status=200 if ok else 503
        )

    async def _metrics(self, _: web.Request) -> web.Response:
        body = generate_latest(self.registry) if self.registry else generate_latest()
        if self.registry is not None and self.registry is not REGISTRY:
            # Process-wide metrics (secrets, process_*, python_*) live in the default registry;
            # a component's own registry holds only its figures, so serve both.
            body += generate_latest(REGISTRY)
        response = web.Response(body=body)
        response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
        response.charset = "utf-8"
        return response

    @property
    def url(self) -> str:
        return f"{'https' if self._ssl else 'http'}://{self.host}:{self.port}"

    async def start(self) -> None:
        if self._runner is not None:
            return
        runner = web.AppRunner(
            self._app,
            access_log=None,
            handle_signals=False,
            keepalive_timeout=self.header_timeout_s,
        )
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port, ssl_context=self._ssl)
        await site.start()
        if runner.addresses:  # the port actually bound (port 0 picks a free one)
            self.port = int(runner.addresses[0][1])
        self._runner = runner

    async def close(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> AdminServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
