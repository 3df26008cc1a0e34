"""docs/grpc-api.md's error table against the services' code: every (code, reason) an RPC
aborts with is listed for that RPC, bearer-auth errors included wherever an RPC checks it."""

from __future__ import annotations

import re

from tests.local_stack import REPO

DOC = REPO / "docs" / "grpc-api.md"
SERVICES = [REPO / "control_plane" / "backbeat" / part / "grpc_service.py"
            for part in ("pulse", "reverb")]  # fmt: skip
ABORT = re.compile(r'abort_with_reason\(\s*context,\s*grpc\.StatusCode\.(\w+),\s*"(\w+)"', re.S)
#: What BearerAuth.require aborts with (backbeat/service/rpc.py).
AUTH = {("UNAUTHENTICATED", "UNAUTHENTICATED"), ("PERMISSION_DENIED", "PERMISSION_DENIED")}


def documented() -> set[tuple[str, str, str]]:
    """(code, reason, rpc) of every row of the error table."""
    rows: set[tuple[str, str, str]] = set()
    for code, reason, rpcs in re.findall(
        r"^\| `(\w+)` \| `(\w+)` \| ([^|]+) \|", DOC.read_text(encoding="utf-8"), re.M
    ):
        rows |= {(code, reason, rpc) for rpc in re.findall(r"`(\w+)`", rpcs)}
    return rows


def raised() -> set[tuple[str, str, str]]:
    """(code, reason, rpc) of every abort written in an RPC method's own body."""
    found: set[tuple[str, str, str]] = set()
    for path in SERVICES:
        source = path.read_text(encoding="utf-8")
        methods = re.split(r"^    async def ", source, flags=re.M)[1:]
        for method in methods:
            name = method.split("(", 1)[0]
            if not name[:1].isupper():
                continue  # a helper, not an RPC
            found |= {(code, reason, name) for code, reason in ABORT.findall(method)}
            if "self.auth.require(" in method:
                found |= {(code, reason, name) for code, reason in AUTH}
    return found


def test_every_error_an_rpc_returns_is_in_the_table() -> None:
    code_side = raised()
    assert ("UNAUTHENTICATED", "UNAUTHENTICATED", "SubmitClaims") in code_side  # parsed at all
    missing = sorted(code_side - documented())
    assert not missing, f"docs/grpc-api.md lacks these (code, reason, RPC) rows: {missing}"


def test_the_tempo_rate_limit_is_documented() -> None:
    assert ("RESOURCE_EXHAUSTED", "TEMPO_RATE_LIMITED", "SetTempo") in documented()
