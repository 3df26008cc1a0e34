"""Validation of incoming status claims: every claim is accepted or rejected with a fixed reason."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

from backbeat.core.hlc import DEFAULT_MAX_OFFSET_MS, physical_ms
from backbeat.core.messages import (
    STATUSCLAIM_TYPE,
    TASK_STATES,
    StatusClaim,
    parse_utf8_json,
)
from backbeat.errors import CodecError


class RejectReason(StrEnum):
    """Why a claim was rejected. The list is fixed: dashboards and alerts key on these values."""

    MALFORMED = "malformed"  # not JSON, wrong type discriminator, missing field, wrong field type
    UNKNOWN_STATE = "unknown_state"  # state is not one of TaskState
    OUT_OF_RANGE = "out_of_range"  # progress outside [0, 1], negative beat, absurd beats_left
    TOO_OLD = "too_old"  # beat_index older than the retention horizon
    IN_FUTURE = "in_future"  # beat_index further ahead of the current beat than allowed
    OVERSIZED = "oversized"  # payload or a field longer than its limit
    BAD_SIGNATURE = "bad_signature"  # signature missing where required, unknown key, or wrong
    WRONG_CLUSTER = "wrong_cluster"  # names another cluster
    CLOCK_SKEW = "clock_skew"  # HLC stamp too far ahead of the receiver's clock


REJECT_REASONS: Final = tuple(r.value for r in RejectReason)


@dataclass(frozen=True, slots=True)
class ClaimLimits:
    max_payload_bytes: int = 4096
    max_id_chars: int = 256
    max_notes_chars: int = 1024
    #: A claim may be at most this many beats older than the current beat (late claims for
    #: reported windows are still accepted inside this horizon).
    max_age_beats: int = 64
    #: ...and at most this many beats ahead of it (agents' clocks are slightly ahead at times).
    max_future_beats: int = 2
    max_abs_beats_left: int = 1_000_000


DEFAULT_LIMITS: Final = ClaimLimits()

#: A claim whose HLC stamp is further ahead of the receiver's clock than this is rejected
#: (clock_skew): the HLC's own bound on a remote clock's offset.
DEFAULT_MAX_CLOCK_SKEW_NS: Final = DEFAULT_MAX_OFFSET_MS * 1_000_000


@dataclass(frozen=True, slots=True)
class ClaimVerdict:
    """The outcome of validating one payload: a claim, or a reason and a human-readable detail."""

    claim: StatusClaim | None
    reason: RejectReason | None = None
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.reason is None


#: Characters no id may hold: C0 and C1 controls, and the Unicode characters that reorder or
#: hide text (bidi marks, embeddings, overrides and isolates, zero-width characters, word
#: joiners, the BOM) or break lines (U+2028/U+2029). Ids become Redis set members and
#: separators in the ingest's batches, and are printed to operators in reports.
_UNSAFE_ID_CHARS: Final = re.compile(
    "[\x00-\x1f\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]"
)
#: Console markup tags (``[bold red]``, ``[/]``, ``[link=…]``) in an id would restyle or
#: forge what an operator's terminal shows; ``agent[1]`` (a digit after the bracket) is fine.
_MARKUP_TAG: Final = re.compile(r"\[[A-Za-z#/@][^\[\]]*\]")


def id_problem(value: str) -> str | None:
    """Why ``value`` cannot be an agent, task or key id (None: it can)."""
    if _UNSAFE_ID_CHARS.search(value):
        return "must not contain control, bidi or invisible formatting characters"
    if "[" in value and _MARKUP_TAG.search(value):
        return "must not contain markup tags like [bold]"
    return None


def _reject(reason: RejectReason, detail: str) -> ClaimVerdict:
    return ClaimVerdict(None, reason, detail)


#: What the window store needs of an accepted claim: agent_id, task_id, beat_index, state,
#: beats_left and key_id (None when the claim is not signed).
ClaimFields = tuple[str, str, int, str, int, str | None]


def claim_fields(claim: StatusClaim) -> ClaimFields:
    return (
        claim.agent_id,
        claim.task_id,
        claim.beat_index,
        claim.state,
        claim.beats_left,
        claim.key_id if claim.signature else None,
    )


#: Checks a claim's signature; returns an error message, or None when the claim is acceptable.
SignatureCheck = Callable[[StatusClaim], str | None]


def validate_claim(
    payload: bytes | str | Mapping[str, Any] | StatusClaim,
    *,
    current_beat: int,
    now_ns: int | None = None,
    max_clock_skew_ns: int = DEFAULT_MAX_CLOCK_SKEW_NS,
    cluster_id: str = "",
    limits: ClaimLimits = DEFAULT_LIMITS,
    check_signature: SignatureCheck | None = None,
) -> ClaimVerdict:
    """Decode and validate one claim against the current beat. Never raises on bad input.

    ``now_ns`` is the receiver's wall clock (Unix ns): a claim whose HLC stamp is more than
    ``max_clock_skew_ns`` ahead of it is rejected (clock_skew). HLC stamps carry wall-clock
    time, so this is the real clock, not the grid's. None skips the rule (claims checked
    away from any receiver, e.g. by the simulator).
    """
    if isinstance(payload, bytes | str) and len(payload) > limits.max_payload_bytes:
        return _reject(
            RejectReason.OVERSIZED,
            f"payload is {len(payload)} bytes; the limit is {limits.max_payload_bytes}",
        )
    if isinstance(payload, StatusClaim):
        claim = payload
    else:
        try:
            claim = StatusClaim.decode(payload)
        except CodecError as exc:
            return _reject(RejectReason.MALFORMED, str(exc))
        except (TypeError, ValueError, RecursionError) as exc:  # defensive: never crash ingest
            return _reject(RejectReason.MALFORMED, f"undecodable payload: {exc}")

    for name in ("agent_id", "task_id", "key_id"):
        value: str = getattr(claim, name)
        if not value and name != "key_id":
            return _reject(RejectReason.MALFORMED, f"{name}: must not be empty")
        if len(value) > limits.max_id_chars:
            return _reject(
                RejectReason.OVERSIZED, f"{name}: {len(value)} chars; limit {limits.max_id_chars}"
            )
        problem = id_problem(value)
        if problem:
            return _reject(RejectReason.MALFORMED, f"{name}: {problem}")
    if len(claim.notes) > limits.max_notes_chars:
        return _reject(
            RejectReason.OVERSIZED,
            f"notes: {len(claim.notes)} chars; limit {limits.max_notes_chars}",
        )
    if claim.state not in TASK_STATES:
        return _reject(
            RejectReason.UNKNOWN_STATE,
            f"state: {claim.state[:64]!r} is not one of {', '.join(sorted(TASK_STATES))}",
        )
    if not (math.isfinite(claim.progress) and 0.0 <= claim.progress <= 1.0):
        return _reject(RejectReason.OUT_OF_RANGE, f"progress: {claim.progress} is not in [0, 1]")
    if claim.beat_index < 0:
        return _reject(RejectReason.OUT_OF_RANGE, f"beat_index: {claim.beat_index} is negative")
    if abs(claim.beats_left) > limits.max_abs_beats_left:
        return _reject(
            RejectReason.OUT_OF_RANGE,
            f"beats_left: {claim.beats_left} exceeds ±{limits.max_abs_beats_left}",
        )
    if cluster_id and claim.cluster_id and claim.cluster_id != cluster_id:
        return _reject(
            RejectReason.WRONG_CLUSTER,
            f"cluster_id: {claim.cluster_id[:64]!r} is not this cluster ({cluster_id!r})",
        )
    if claim.beat_index < current_beat - limits.max_age_beats:
        return _reject(
            RejectReason.TOO_OLD,
            f"beat_index: {claim.beat_index} is more than {limits.max_age_beats} beats before "
            f"the current beat {current_beat}",
        )
    if claim.beat_index > current_beat + limits.max_future_beats:
        return _reject(
            RejectReason.IN_FUTURE,
            f"beat_index: {claim.beat_index} is more than {limits.max_future_beats} beats after "
            f"the current beat {current_beat}",
        )
    if check_signature is not None:
        problem = check_signature(claim)
        if problem is not None:
            return _reject(RejectReason.BAD_SIGNATURE, problem)
    if now_ns is not None and _hlc_ahead(claim.hlc, now_ns + max_clock_skew_ns):
        return _reject(
            RejectReason.CLOCK_SKEW,
            f"hlc: {claim.hlc[:40]!r} is more than {max_clock_skew_ns // 1_000_000} "
            "ms ahead of the receiver's clock",
        )
    return ClaimVerdict(claim)


def _hlc_ahead(hlc: str, limit_ns: int) -> bool:
    """Whether the physical part of an HLC stamp is later than ``limit_ns``."""
    head = hlc.split(":", 1)[0]
    try:
        return int(head, 16) * 1_000_000 > limit_ns
    except ValueError:
        return False


def accept_fast(
    payload: bytes,
    *,
    current_beat: int,
    now_ns: int | None = None,
    max_clock_skew_ns: int = DEFAULT_MAX_CLOCK_SKEW_NS,
    cluster_id: str = "",
    limits: ClaimLimits = DEFAULT_LIMITS,
    check_signature: SignatureCheck | None = None,
) -> ClaimFields | None:
    """The fields of a claim that ``validate_claim`` (given the same arguments) accepts, or
    None: then ``validate_claim`` gives the verdict.

    The ingest's hot path. One JSON parse and plain type checks, no StatusClaim: it only
    recognises claims that are plainly fine (UTF-8, exact JSON types, printable ids) and
    leaves everything else, including every reject and its reason, to ``validate_claim``.
    Whatever it accepts, ``validate_claim`` accepts with the same fields (tested).
    """
    if len(payload) > limits.max_payload_bytes:
        return None
    try:
        obj = parse_utf8_json(payload)
    except (ValueError, RecursionError):
        return None
    if type(obj) is not dict:
        return None
    get = obj.get
    agent = get("agent_id")
    task = get("task_id")
    beat = get("beat_index")
    state = get("state")
    left = get("beats_left")
    progress = get("progress")
    hlc = get("hlc")
    notes = get("notes", "")
    cluster = get("cluster_id", "")
    key_id = get("key_id", "")
    signature = get("signature", "")
    if not (
        get("type") == STATUSCLAIM_TYPE
        and type(agent) is str
        and type(task) is str
        and type(key_id) is str
        and type(beat) is int
        and type(left) is int
        and type(state) is str
        and type(hlc) is str
        and type(notes) is str
        and type(cluster) is str
        and type(signature) is str
        and (type(progress) is float or type(progress) is int)
    ):
        return None
    max_id = limits.max_id_chars
    if not (
        0 < len(agent) <= max_id
        and 0 < len(task) <= max_id
        and len(key_id) <= max_id
        # printable implies no control, bidi or invisible characters (the slow path decides
        # the rest); a bracket may open a markup tag, which the slow path judges
        and agent.isprintable()
        and task.isprintable()
        and key_id.isprintable()
        and "[" not in agent
        and "[" not in task
        and "[" not in key_id
        and len(notes) <= limits.max_notes_chars
        and state in TASK_STATES
        and 0.0 <= progress <= 1.0
        and beat >= 0
        and current_beat - limits.max_age_beats <= beat <= current_beat + limits.max_future_beats
        and -limits.max_abs_beats_left <= left <= limits.max_abs_beats_left
        and (not cluster_id or not cluster or cluster == cluster_id)
    ):
        return None
    physical = physical_ms(hlc)
    if physical is None:
        return None
    if now_ns is not None and physical * 1_000_000 > now_ns + max_clock_skew_ns:
        return None
    if check_signature is not None:
        # What StatusClaim.decode makes of these (already checked) values.
        claim = StatusClaim(
            agent_id=agent,
            task_id=task,
            beat_index=beat,
            state=state,
            beats_left=left,
            progress=float(progress),
            hlc=hlc,
            notes=notes,
            cluster_id=cluster,
            key_id=key_id,
            signature=signature,
        )
        if check_signature(claim) is not None:
            return None
    return (agent, task, beat, state, left, key_id if signature else None)
