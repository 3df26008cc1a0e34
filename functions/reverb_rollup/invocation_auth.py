"""Authenticated invocations: only a holder of the invocation key can make the function roll up.

The caller (the trigger) signs the exact request body with HMAC-SHA256 under the shared secret
``rollup_invoke_key`` and sends the result in one header::

    X-Backbeat-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>\\n" + body>

The function recomputes the MAC and accepts the call only when it matches one of its keys (the
current value and the one it replaced, so a rotation never rejects honest calls, whichever side
picks up the new value first) and ``t`` is within ``max_age_s`` of its own clock, which bounds
how long a captured request can be replayed. Pure logic: no I/O, the clock is passed in.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from typing import Final

from backbeat.errors import BackbeatError

#: The HTTP header (and Lambda request header) carrying the signature.
SIGNATURE_HEADER: Final = "X-Backbeat-Signature"
#: How far the signing time may be from the verifier's clock, either way (seconds).
DEFAULT_MAX_AGE_S: Final = 300
#: Shortest key accepted: 32 bytes, as for the other shared secrets.
MIN_KEY_BYTES: Final = 32


class InvocationRefused(BackbeatError, PermissionError):
    """The invocation carries no valid signature; the message says why (never the key)."""


def _mac(key: bytes, timestamp: int, body: bytes) -> str:
    return hmac.new(key, f"{timestamp}\n".encode() + body, hashlib.sha256).hexdigest()


def sign_invocation(key: str, body: bytes, now_s: float) -> str:
    """The ``X-Backbeat-Signature`` value for ``body`` sent at ``now_s`` (Unix seconds)."""
    timestamp = int(now_s)
    return f"t={timestamp},v1={_mac(key.encode(), timestamp, body)}"


def _parse(header: str) -> tuple[int, list[str]]:
    timestamp: int | None = None
    macs: list[str] = []
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        if name == "t" and value.isdigit() and len(value) <= 12:
            timestamp = int(value)
        elif name == "v1" and value:
            macs.append(value)
    if timestamp is None or not macs:
        raise InvocationRefused(f"malformed {SIGNATURE_HEADER} header: expected t=<unix>,v1=<hex>")
    return timestamp, macs


def verify_invocation(
    keys: Iterable[str],
    body: bytes,
    header: str | None,
    now_s: float,
    *,
    max_age_s: float = DEFAULT_MAX_AGE_S,
) -> None:
    """Raise ``InvocationRefused`` unless ``header`` signs ``body`` under one of ``keys`` at a
    time within ``max_age_s`` of ``now_s``."""
    usable = [key for key in keys if key]
    if not usable:
        raise InvocationRefused("no invocation key is configured: every invocation is refused")
    if not header:
        raise InvocationRefused(f"the invocation carries no {SIGNATURE_HEADER} header")
    timestamp, macs = _parse(header)
    if abs(now_s - timestamp) > max_age_s:
        raise InvocationRefused(
            f"the invocation was signed {now_s - timestamp:+.0f} s from this function's clock; "
            f"at most {max_age_s:g} s either way (replayed, or a clock is off)"
        )
    for key in usable:
        expected = _mac(key.encode(), timestamp, body)
        if any(hmac.compare_digest(expected, mac) for mac in macs):
            return
    raise InvocationRefused("the invocation signature matches no invocation key")
