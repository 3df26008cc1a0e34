"""Every error BACKBEAT raises, under one root.

Catch ``BackbeatError`` for any of them. Each also inherits the standard exception it is a kind
of (a malformed payload is a ``ValueError``, a missing history a ``LookupError``), so callers
that only know the standard library still catch them. The calls that raise an error say so in
their docstrings; the gRPC reason each maps to is in ``docs/grpc-api.md``. The serverless
function's own errors (``reverb_rollup``) derive from ``BackbeatError`` too.

This module imports nothing of BACKBEAT: any module, the pure core included, may use it.
"""

from __future__ import annotations


class BackbeatError(Exception):
    """The root of every BACKBEAT error."""


# -- messages, time and keys (the core) -----------------------------------------------------


class CodecError(BackbeatError, ValueError):
    """A payload that does not decode. ``field`` names the offending field ("" for the whole)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field


class ClockSkewError(BackbeatError, ValueError):
    """A remote stamp is further ahead of the local physical clock than ``max_offset_ms``."""


class SigningError(BackbeatError, ValueError):
    """No key can sign now, or a key or keyring document is invalid."""


class TempoError(BackbeatError, ValueError):
    """A tempo that may not be applied. ``reason`` is a stable machine-readable code."""

    def __init__(self, reason: str, message: str, *, allowed: tuple[float, float]) -> None:
        super().__init__(message)
        self.reason = reason
        self.allowed = allowed


# -- the pulse ---------------------------------------------------------------------------------


class NotLeaderError(BackbeatError, RuntimeError):
    """This replica does not lead; ``leader_address`` says who does, when known."""

    def __init__(self, leader_id: str, leader_address: str) -> None:
        super().__init__(
            f"this replica is not the leader (leader: {leader_id or 'unknown'}"
            f"{' at ' + leader_address if leader_address else ''})"
        )
        self.leader_id = leader_id
        self.leader_address = leader_address


class LeaderUnreachableError(BackbeatError, ConnectionError):
    """A follower could not connect to the leader to forward a call: nothing was sent."""

    def __init__(self, leader_address: str) -> None:
        super().__init__(f"the leader at {leader_address} accepted no connection")
        self.leader_address = leader_address


class FencedError(BackbeatError, RuntimeError):
    """A Redis master holds a higher term: a newer leader exists and nothing was stored.

    Not a ``NotLeaderError``: this replica believed it led, and does not know who leads now.
    """

    def __init__(self, term: int, newer_term: int) -> None:
        super().__init__(
            f"this replica's term {term} was fenced by a newer leader's term {newer_term}; "
            "nothing was changed"
        )
        self.term = term
        self.newer_term = newer_term


class NoQuorumError(BackbeatError, RuntimeError):
    """No Redis quorum: the grid continues degraded and tempo changes are refused (nothing was
    written)."""


class TermError(BackbeatError, RuntimeError):
    """A new leader could not take a term on a majority of Redis masters (too few answered,
    or another replica took a higher term meanwhile)."""


class TempoOutcomeUnknownError(BackbeatError, RuntimeError):
    """A tempo change reached fewer than a majority of Redis masters.

    It was not acknowledged, but it was not refused either: a later leader that reads one of
    the masters it reached may still apply it at its announced beat. Read the timeline
    (``GetTimeline``) to learn what happened before trying again.
    """

    def __init__(self, effective_beat: int, confirmed: int, total: int) -> None:
        super().__init__(
            f"the tempo change reached {confirmed} of {total} Redis masters (no majority): it may "
            f"or may not take effect at beat {effective_beat}; check GetTimeline before retrying"
        )
        self.effective_beat = effective_beat
        self.confirmed = confirmed
        self.total = total


class TempoConflictError(BackbeatError, RuntimeError):
    """The beat loop kept moving the tempo change's downbeat while it was being stored (the
    quorum is fine); trying again usually succeeds."""


class TempoRateLimited(BackbeatError, RuntimeError):
    """More tempo changes than the per-minute limit; ``retry_after_s`` says when one fits."""

    def __init__(self, limit: int, retry_after_s: float) -> None:
        super().__init__(
            f"at most {limit} tempo changes per minute are accepted; retry in {retry_after_s:.1f} s"
        )
        self.limit = limit
        self.retry_after_s = retry_after_s


class TempoRequestError(BackbeatError, ValueError):
    """A SetTempo request that is wrong whatever the state (maps to INVALID_ARGUMENT)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class HistoryGone(BackbeatError, LookupError):
    """The requested start beat is older than the retained history."""

    def __init__(self, start_beat: int, oldest: int) -> None:
        super().__init__(
            f"beat {start_beat} is no longer retained; the oldest retained beat is {oldest}"
        )
        self.oldest = oldest


# -- the reverb ingest, the trigger and the operator commands ---------------------------------


class NotReadyError(BackbeatError, RuntimeError):
    """The ingest cannot take claims yet (no timeline) or any more (closing)."""


class InvokeError(BackbeatError, RuntimeError):
    """The function did not report the window (it failed, timed out or was unreachable)."""


class PrefixError(BackbeatError, ValueError):
    """A window id prefix that names no window, or more than one."""


# -- the SDK -----------------------------------------------------------------------------------


class ClaimBufferFull(BackbeatError, RuntimeError):
    """``report_nowait`` found the claim buffer full: the sink is slower than the producers."""


class ClaimsRefused(BackbeatError, RuntimeError):
    """The claim ingest refuses this agent's claims (no API token, or a wrong one): nothing it
    reports can be delivered until its settings change. Raised by ``report`` and
    ``report_nowait`` from the first refusal on, and logged as an error when it happens."""


# -- secrets -----------------------------------------------------------------------------------


class SecretError(BackbeatError):
    """A secret could not be obtained. The message says which and why, never the value."""

    def __init__(self, name: str, message: str) -> None:
        name = str(name)  # a SecretName prints as its plain value
        super().__init__(f"secret {name!r}: {message}")
        self.name = name


class SecretNotFound(SecretError):
    """The backend answered, and the secret does not exist there."""


class SecretUnavailable(SecretError):
    """The backend is unreachable, sealed, refused access or timed out."""


class SecretRejected(SecretError):
    """The backend answered with a value that fails the checks (``value_check``): it is not
    used, and the last good value stays in use."""


class UnsafeConfiguration(BackbeatError, RuntimeError):
    """BACKBEAT_ENV=production and the configuration is unsafe; ``problems`` says why."""

    def __init__(self, component: str, problems: list[str]) -> None:
        self.component = component
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(
            f"backbeat {component}: refusing to start with BACKBEAT_ENV=production:\n{lines}"
        )


# -- service plumbing --------------------------------------------------------------------------


class NatsUnreachable(BackbeatError, RuntimeError):
    """No connection to NATS could be made within the connect timeout.

    ``url`` is shown with its credentials masked; ``last_error`` describes the last attempt's
    failure ("" when there was none).
    """

    def __init__(self, url: str, timeout_s: float, last_error: str) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self.last_error = last_error
        detail = f" (last error: {last_error})" if last_error else ""
        super().__init__(f"cannot connect to NATS at {url} within {timeout_s:g} s{detail}")


class MalformedBody(BackbeatError, ValueError):
    """The request body is not what the route takes; answered with 400 MALFORMED."""


class ServerError(BackbeatError, RuntimeError):
    """A server binary is missing or a server did not come up."""
