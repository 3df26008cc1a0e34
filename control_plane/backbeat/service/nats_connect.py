"""The first connection of a service to NATS, bounded in time.

A service that cannot reach NATS when it starts waits up to ``connect_timeout_s`` (0: for
ever), logging one warning at the first failure instead of a traceback per attempt, then gives
up with :class:`NatsUnreachable`; its command logs one error naming the URL and exits
non-zero. Once connected, the client's own reconnect policy (the options passed through)
applies unchanged.

A URL may name several servers, comma-separated (the nodes of a NATS cluster): the client
connects to one of them and, when it is lost, reconnects to another (:func:`nats_servers`).
A JetStream publish that meets a cluster electing a stream leader is retried within a bound
(:func:`publish_retrying`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, Final
from urllib.parse import unquote, urlsplit, urlunsplit

from nats import errors as nats_errors
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js import errors as js_errors
from nats.js.api import PubAck

from backbeat.errors import NatsUnreachable
from backbeat.service.logs import get_logger
from backbeat.service.settings import mask_url

#: How long a service waits for its first NATS connection by default (seconds).
DEFAULT_CONNECT_TIMEOUT_S: Final = 30.0

#: Longest a publish waits for the client to flush a full outgoing buffer (nats-py: no bound).
FLUSH_TIMEOUT_S: Final = 10.0

#: Exit status of a command that gave up waiting for a server at start.
EXIT_UNREACHABLE: Final = 1

ErrorCallback = Callable[[Exception], Awaitable[None]]
#: Client callbacks that only mean something once the first connection is made.
_CONNECTION_CALLBACKS: Final = ("disconnected_cb", "reconnected_cb", "closed_cb")


def _unreachable(url: str, timeout_s: float, last_error: BaseException | None) -> NatsUnreachable:
    """The error of a connect that timed out: the URL masked, the last failure described."""
    described = describe_error(last_error) if last_error is not None else ""
    return NatsUnreachable(mask_url(url), timeout_s, described)


def nats_servers(url: str) -> list[str]:
    """The servers of ``url``: one URL or several, comma-separated (spaces ignored).

    >>> nats_servers("nats://n1:4222, nats://n2:4222")
    ['nats://n1:4222', 'nats://n2:4222']
    """
    servers = [part.strip() for part in url.split(",") if part.strip()]
    if not servers:
        raise ValueError("a NATS URL is required (several: comma-separated)")
    return servers


def split_credentials(servers: list[str]) -> tuple[list[str], dict[str, str]]:
    """``servers`` without the credentials written into them, and those credentials as client
    options (``user``/``password`` or ``token``, from the first URL that has some).

    The client also reconnects to servers a cluster announces (host:port, no credentials); it
    authenticates to those with its options, never with a URL's own, so credentials given in
    the URLs must become options or a reconnection to an announced server is refused.
    """
    bare: list[str] = []
    options: dict[str, str] = {}
    for server in servers:
        parts = urlsplit(server if "://" in server else f"nats://{server}")
        if parts.username is not None and not options:
            if parts.password is not None:
                options = {"user": unquote(parts.username), "password": unquote(parts.password)}
            else:
                options = {"token": unquote(parts.username)}
        netloc = parts.netloc.rpartition("@")[2]
        bare.append(urlunsplit(parts._replace(netloc=netloc)))
    return bare, options


def describe_error(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def check_connect_timeout(value: float) -> float:
    if value < 0:
        raise ValueError(f"--connect-timeout-s must be 0 (wait for ever) or more, got {value:g}")
    return value


async def connect_nats(
    url: str,
    *,
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
    error_cb: ErrorCallback | None = None,
    log: Any = None,
    **options: Any,
) -> NatsClient:
    """Connect to ``url`` (one server or several, comma-separated), retrying the first
    connection for up to ``connect_timeout_s``.

    ``options`` go to :meth:`nats.aio.client.Client.connect` as they are (reconnect policy,
    name, callbacks). ``error_cb`` and the connection callbacks are called once the client is
    connected; before, the first failure is logged as a warning and later ones only
    remembered for the final error.
    Raises :class:`NatsUnreachable` when the time is up.
    """
    log = log if log is not None else get_logger(component="nats")
    masked_url = mask_url(url)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + connect_timeout_s if connect_timeout_s > 0 else None
    connected = False
    last_error: BaseException | None = None

    async def on_error(exc: Exception) -> None:
        nonlocal last_error
        if connected:
            if error_cb is not None:
                await error_cb(exc)
            else:
                log.warning("nats error", error=describe_error(exc))
            return
        if last_error is None:
            log.warning(
                "NATS not reachable yet; retrying",
                url=masked_url,
                error=describe_error(exc),
                connect_timeout_s=connect_timeout_s or None,
            )
        last_error = exc

    def once_connected(callback: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
        async def call() -> None:
            if connected:
                await callback()

        return call

    # A publish that finds the outgoing buffer full waits for a flush: bounded, not for ever.
    options.setdefault("flush_timeout", FLUSH_TIMEOUT_S)
    # A client given up before it connected is closed, which would fire these: not news.
    for key in _CONNECTION_CALLBACKS:
        if options.get(key) is not None:
            options[key] = once_connected(options[key])

    servers, credentials = split_credentials(nats_servers(url))
    for key, value in credentials.items():
        options.setdefault(key, value)

    while True:
        client = NatsClient()
        remaining = None if deadline is None else max(deadline - loop.time(), 0.0)
        try:
            await asyncio.wait_for(client.connect(servers, error_cb=on_error, **options), remaining)
        except TimeoutError:
            await _close_quietly(client)
            raise _unreachable(url, connect_timeout_s, last_error) from None
        except nats_errors.NoServersError as exc:
            # The client's own attempts ran out (a finite max_reconnect_attempts): start over
            # with a fresh client until the deadline.
            await _close_quietly(client)
            last_error = last_error or exc
            if deadline is not None and loop.time() >= deadline:
                raise _unreachable(url, connect_timeout_s, last_error) from None
            await asyncio.sleep(0.25)
            continue
        except BaseException:
            await _close_quietly(client)
            raise
        connected = True
        if last_error is not None:
            log.info("connected to NATS", url=masked_url)
        return client


async def _close_quietly(client: NatsClient) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(client.close(), 2.0)


def report_unreachable(exc: NatsUnreachable, component: str) -> int:
    """Log why a command gives up at start (one line, no traceback); its exit status."""
    get_logger(component=component).error(
        f"{exc}; exiting", url=exc.url, connect_timeout_s=exc.timeout_s
    )
    return EXIT_UNREACHABLE


#: A JetStream fetch still unanswered this long after its own timeout is given up.
FETCH_GRACE_S: Final = 5.0


async def fetch(sub: Any, batch: int, timeout_s: float) -> list[Any]:
    """``sub.fetch(batch, timeout=timeout_s)`` on a JetStream pull subscription, made safe to
    cancel and bounded in time.

    nats-py waits for each message in a task of its own (``Subscription.next_msg``), through
    ``asyncio.wait_for``. On CPython 3.11, ``wait_for`` drops a cancellation that arrives in
    the same event-loop iteration as the message and returns the message; as cancelling a task
    that awaits another task only cancels that other task, the caller's cancellation is lost
    and a loop that stops by being cancelled fetches on for ever. Here the fetch runs in a task
    of its own that the caller does not await directly: the caller's cancellation reaches the
    caller at once and the fetch is cancelled. A message the cancelled fetch had already taken
    is not acknowledged, so JetStream delivers it again after the consumer's ack wait.
    A fetch that has not answered ``FETCH_GRACE_S`` after its own timeout raises
    :class:`TimeoutError`.
    """
    fetching = asyncio.ensure_future(sub.fetch(batch, timeout=timeout_s))
    try:
        done, _ = await asyncio.wait({fetching}, timeout=timeout_s + FETCH_GRACE_S)
    except asyncio.CancelledError:
        _abandon(fetching)
        raise
    if not done:
        _abandon(fetching)
        raise TimeoutError(f"JetStream fetch unanswered after {timeout_s + FETCH_GRACE_S:g} s")
    return list(fetching.result())


def _abandon(fetching: asyncio.Future[Any]) -> None:
    fetching.cancel()
    # Its outcome no longer matters, but is read so that a failure is not reported as lost.
    fetching.add_done_callback(lambda done: done.cancelled() or done.exception())


#: What a JetStream request meets while a cluster elects its leaders or moves a stream's leader,
#: or a client moves to another server: no answer in time, no responder yet, "temporarily
#: unavailable" (503). Worth trying again.
TRANSIENT_JETSTREAM_ERRORS: Final = (
    nats_errors.TimeoutError,
    js_errors.NoStreamResponseError,
    js_errors.ServiceUnavailableError,
    nats_errors.ConnectionReconnectingError,
)


async def publish_retrying(
    js: JetStreamContext,
    subject: str,
    payload: bytes,
    *,
    headers: dict[str, str],
    attempt_timeout_s: float,
    within_s: float,
    pause_s: float = 0.05,
) -> PubAck:
    """``js.publish`` retried on transient failures until ``within_s`` has passed.

    ``headers`` must carry a ``Nats-Msg-Id``: an attempt that was stored but whose
    acknowledgement was lost is then answered as a duplicate when retried, never stored twice.
    Each attempt waits at most ``attempt_timeout_s`` (and no longer than what is left); the
    last transient error is raised when the time is up, any other error at once.
    """
    if "Nats-Msg-Id" not in headers:
        raise ValueError("a retried JetStream publish needs a Nats-Msg-Id header")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    while True:
        left = deadline - loop.time()
        try:
            return await js.publish(
                subject,
                payload,
                headers=dict(headers),
                timeout=max(min(attempt_timeout_s, left), 0.01),
            )
        except TRANSIENT_JETSTREAM_ERRORS:
            if loop.time() + pause_s >= deadline:
                raise
        await asyncio.sleep(pause_s)
