"""JSON wire forms of the BeatFrame, the StatusClaim and the BarReport.

Decoding is strict about types (a bool is not an integer, a string is not a number, NaN is not
JSON) and tolerant of extra fields. Every error names the field at fault.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final, TypeVar

from backbeat.core.hlc import HLCTimestamp
from backbeat.core.rfc3339 import format_ns, parse_ns
from backbeat.errors import CodecError

BEATFRAME_TYPE: Final = "backbeat.beatframe.v1"
STATUSCLAIM_TYPE: Final = "backbeat.statusclaim.v1"
BARREPORT_TYPE: Final = "backbeat.barreport.v1"


class TaskState(StrEnum):
    PLANNING = "planning"
    EXECUTING = "executing"
    WAITING = "waiting"
    REVIEW = "review"
    DONE = "done"
    FAILED = "failed"


TASK_STATES: Final = frozenset(s.value for s in TaskState)


def _reject_constant(name: str) -> Any:
    raise CodecError("", f"{name} is not valid JSON")


#: One decoder for every payload (json.loads with parse_constant builds a new one per call).
_DECODER: Final = json.JSONDecoder(parse_constant=_reject_constant)


def parse_utf8_json(payload: bytes) -> Any:
    """Parse UTF-8 JSON (NaN/Infinity refused) without ``load_object``'s encoding detection.

    For hot paths that fall back to ``load_object`` on any error: raises ValueError (including
    UnicodeDecodeError and CodecError), also for leading whitespace, which JSON allows.
    """
    text = payload.decode()
    obj, end = _DECODER.raw_decode(text)  # raw_decode: no whitespace scans around the value
    if end != len(text) and text[end:].strip(" \t\n\r"):
        raise CodecError("", f"extra data at character {end}")
    return obj


def load_object(payload: bytes | str | Mapping[str, Any]) -> Mapping[str, Any]:
    """Parse a JSON object (NaN/Infinity refused) or pass a mapping through."""
    if isinstance(payload, Mapping):
        return payload
    try:
        if isinstance(payload, bytes | bytearray):
            # What json.loads does with bytes, without building a new decoder per call.
            payload = payload.decode(json.detect_encoding(payload), "surrogatepass")
        obj = _DECODER.decode(payload)
    except CodecError:
        raise
    except (ValueError, UnicodeDecodeError) as exc:
        raise CodecError("", f"invalid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise CodecError("", f"expected a JSON object, got {type(obj).__name__}")
    return obj


_T = TypeVar("_T")
_MISSING: Final = object()


def _describe(value: object) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:40]}{'…' if len(text) > 40 else ''}"


def _field(obj: Mapping[str, Any], name: str, kind: type[_T], default: Any = _MISSING) -> _T:
    value = obj.get(name, _MISSING)
    if value is _MISSING or (value is None and default is not _MISSING):
        if default is _MISSING:
            raise CodecError(name, "required field is missing")
        return default  # type: ignore[no-any-return]
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise CodecError(name, f"expected a number, got {_describe(value)}")
        if not math.isfinite(value):
            raise CodecError(name, "expected a finite number")
        return float(value)  # type: ignore[return-value]
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        if isinstance(value, float) and value.is_integer():
            return int(value)  # type: ignore[return-value]
        raise CodecError(name, f"expected an integer, got {_describe(value)}")
    if not isinstance(value, kind):
        raise CodecError(name, f"expected {kind.__name__}, got {_describe(value)}")
    return value


def _check_type(obj: Mapping[str, Any], expected: str) -> None:
    found = _field(obj, "type", str)
    if found != expected:
        raise CodecError("type", f"expected {expected!r}, got {found!r}")


def _hlc(obj: Mapping[str, Any], name: str) -> str:
    text = _field(obj, name, str)
    try:
        HLCTimestamp.parse(text)
    except ValueError as exc:
        raise CodecError(name, str(exc)) from None
    return text


def _time(obj: Mapping[str, Any], name: str, *, required: bool = True) -> int | None:
    text: str | None = _field(obj, name, str) if required else _field(obj, name, str, None)
    if text is None:
        return None
    try:
        return parse_ns(text)
    except ValueError as exc:
        raise CodecError(name, str(exc)) from None


def dumps(obj: Mapping[str, Any]) -> bytes:
    """Compact, key-ordered JSON bytes (byte-identical for equal content)."""
    return json.dumps(obj, separators=(",", ":"), sort_keys=True, allow_nan=False).encode()


# -- BeatFrame ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BeatFrame:
    cluster_id: str
    beat_index: int
    downbeat: bool
    phase: str
    hlc: str
    deadline_ns: int
    tempo_bpm: float
    window_id: str
    term: int = 0
    degraded: bool = False
    scheduled_ns: int | None = None
    emitted_ns: int | None = None
    bar_start_beat: int | None = None
    timeline_revision: int = 0
    key_id: str = ""
    signature: str = ""

    def to_json_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "type": BEATFRAME_TYPE,
            "cluster_id": self.cluster_id,
            "beat_index": self.beat_index,
            "downbeat": self.downbeat,
            "phase": self.phase,
            "hlc": self.hlc,
            "deadline_at": format_ns(self.deadline_ns),
            "tempo_bpm": self.tempo_bpm,
            "window_id": self.window_id,
            "term": self.term,
            "degraded": self.degraded,
            "timeline_revision": self.timeline_revision,
        }
        if self.scheduled_ns is not None:
            out["scheduled_at"] = format_ns(self.scheduled_ns)
        if self.emitted_ns is not None:
            out["emitted_at"] = format_ns(self.emitted_ns)
        if self.bar_start_beat is not None:
            out["bar_start_beat"] = self.bar_start_beat
        if self.signature:
            out["key_id"] = self.key_id
            out["signature"] = self.signature
        return out

    def encode(self) -> bytes:
        return dumps(self.to_json_dict())

    @classmethod
    def decode(cls, payload: bytes | str | Mapping[str, Any]) -> BeatFrame:
        """The BeatFrame of a JSON payload; raises CodecError naming the offending field."""
        obj = load_object(payload)
        _check_type(obj, BEATFRAME_TYPE)
        window = _field(obj, "window_id", str)
        if len(window) != 32 or any(ch not in "0123456789abcdef" for ch in window):
            raise CodecError("window_id", f"expected 32 lowercase hex characters, got {window!r}")
        deadline = _time(obj, "deadline_at")
        assert deadline is not None
        return cls(
            cluster_id=_field(obj, "cluster_id", str),
            beat_index=_field(obj, "beat_index", int),
            downbeat=_field(obj, "downbeat", bool),
            phase=_field(obj, "phase", str),
            hlc=_hlc(obj, "hlc"),
            deadline_ns=deadline,
            tempo_bpm=_field(obj, "tempo_bpm", float),
            window_id=window,
            term=_field(obj, "term", int, 0),
            degraded=_field(obj, "degraded", bool, False),
            scheduled_ns=_time(obj, "scheduled_at", required=False),
            emitted_ns=_time(obj, "emitted_at", required=False),
            bar_start_beat=_field(obj, "bar_start_beat", int, None),
            timeline_revision=_field(obj, "timeline_revision", int, 0),
            key_id=_field(obj, "key_id", str, ""),
            signature=_field(obj, "signature", str, ""),
        )


# -- StatusClaim ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StatusClaim:
    agent_id: str
    task_id: str
    beat_index: int
    state: str
    beats_left: int
    progress: float
    hlc: str
    notes: str = ""
    cluster_id: str = ""
    key_id: str = ""
    signature: str = ""

    def to_json_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "type": STATUSCLAIM_TYPE,
            "agent_id": self.agent_id,
            "task_id": self.task_id,
            "beat_index": self.beat_index,
            "state": self.state,
            "beats_left": self.beats_left,
            "progress": self.progress,
            "notes": self.notes,
            "hlc": self.hlc,
        }
        if self.cluster_id:
            out["cluster_id"] = self.cluster_id
        if self.signature:
            out["key_id"] = self.key_id
            out["signature"] = self.signature
        return out

    def encode(self) -> bytes:
        return dumps(self.to_json_dict())

    @property
    def dedupe_key(self) -> str:
        """Claims with the same agent, task and beat are one claim."""
        return f"{self.agent_id}\x1f{self.task_id}\x1f{self.beat_index}"

    @classmethod
    def decode(cls, payload: bytes | str | Mapping[str, Any]) -> StatusClaim:
        """The StatusClaim of a JSON payload; raises CodecError naming the offending field."""
        obj = load_object(payload)
        _check_type(obj, STATUSCLAIM_TYPE)
        return cls(
            agent_id=_field(obj, "agent_id", str),
            task_id=_field(obj, "task_id", str),
            beat_index=_field(obj, "beat_index", int),
            state=_field(obj, "state", str),
            beats_left=_field(obj, "beats_left", int),
            progress=_field(obj, "progress", float),
            notes=_field(obj, "notes", str, ""),
            hlc=_hlc(obj, "hlc"),
            cluster_id=_field(obj, "cluster_id", str, ""),
            key_id=_field(obj, "key_id", str, ""),
            signature=_field(obj, "signature", str, ""),
        )


# -- BarReport ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReportIssue:
    code: str
    message: str
    severity: str = "warning"
    count: int = 0
    agent_ids: tuple[str, ...] = ()

    def to_json_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "code": self.code,
            "severity": self.severity,
            "message": self.message,
        }
        if self.count:
            out["count"] = self.count
        if self.agent_ids:
            out["agent_ids"] = list(self.agent_ids)
        return out

    @classmethod
    def decode(cls, value: object, where: str) -> ReportIssue:
        if isinstance(value, str):
            return cls(code="note", message=value, severity="info")
        if not isinstance(value, Mapping):
            raise CodecError(where, f"expected an object or a string, got {_describe(value)}")
        agents = _field(value, "agent_ids", list, [])
        if not all(isinstance(a, str) for a in agents):
            raise CodecError(f"{where}.agent_ids", "expected a list of strings")
        return cls(
            code=_field(value, "code", str),
            message=_field(value, "message", str, ""),
            severity=_field(value, "severity", str, "warning"),
            count=_field(value, "count", int, 0),
            agent_ids=tuple(agents),
        )


def _counts(obj: Mapping[str, Any], name: str) -> dict[str, int]:
    raw = _field(obj, name, dict, {})
    out: dict[str, int] = {}
    for key, value in raw.items():
        if isinstance(value, bool) or not isinstance(value, int):
            raise CodecError(f"{name}.{key}", f"expected an integer, got {_describe(value)}")
        out[str(key)] = value
    return out


@dataclass(frozen=True, slots=True)
class BarReport:
    window_id: str
    from_beat: int
    to_beat: int
    agents_reporting: int
    on_time_reviews: int
    help_promises_fulfilled: int
    secret_rotations_ok: bool
    tempo_drift_ms: float
    issues: tuple[ReportIssue, ...] = ()
    cluster_id: str = ""
    claims_by_state: Mapping[str, int] = field(default_factory=dict)
    rejected_by_reason: Mapping[str, int] = field(default_factory=dict)
    accepted_claims: int = 0
    duplicate_claims: int = 0
    late_claims: int = 0
    terms: tuple[int, ...] = ()
    degraded_beats: int = 0
    rollup_ms: float | None = None
    published_ns: int | None = None

    def to_json_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "type": BARREPORT_TYPE,
            "window_id": self.window_id,
            "from_beat": self.from_beat,
            "to_beat": self.to_beat,
            "agents_reporting": self.agents_reporting,
            "on_time_reviews": self.on_time_reviews,
            "help_promises_fulfilled": self.help_promises_fulfilled,
            "secret_rotations_ok": self.secret_rotations_ok,
            "tempo_drift_ms": self.tempo_drift_ms,
            "issues": [issue.to_json_dict() for issue in self.issues],
            "cluster_id": self.cluster_id,
            "claims_by_state": dict(self.claims_by_state),
            "rejected_by_reason": dict(self.rejected_by_reason),
            "accepted_claims": self.accepted_claims,
            "duplicate_claims": self.duplicate_claims,
            "late_claims": self.late_claims,
            "terms": list(self.terms),
            "degraded_beats": self.degraded_beats,
        }
        if self.rollup_ms is not None:
            out["rollup_ms"] = self.rollup_ms
        if self.published_ns is not None:
            out["published_at"] = format_ns(self.published_ns)
        return out

    def encode(self) -> bytes:
        return dumps(self.to_json_dict())

    @classmethod
    def decode(cls, payload: bytes | str | Mapping[str, Any]) -> BarReport:
        """The BarReport of a JSON payload; raises CodecError naming the offending field."""
        obj = load_object(payload)
        _check_type(obj, BARREPORT_TYPE)
        issues = _field(obj, "issues", list, [])
        terms = _field(obj, "terms", list, [])
        if not all(isinstance(t, int) and not isinstance(t, bool) for t in terms):
            raise CodecError("terms", "expected a list of integers")
        rollup_ms = _field(obj, "rollup_ms", float, None)
        return cls(
            window_id=_field(obj, "window_id", str),
            from_beat=_field(obj, "from_beat", int),
            to_beat=_field(obj, "to_beat", int),
            agents_reporting=_field(obj, "agents_reporting", int),
            on_time_reviews=_field(obj, "on_time_reviews", int),
            help_promises_fulfilled=_field(obj, "help_promises_fulfilled", int),
            secret_rotations_ok=_field(obj, "secret_rotations_ok", bool),
            tempo_drift_ms=_field(obj, "tempo_drift_ms", float),
            issues=tuple(ReportIssue.decode(v, f"issues[{i}]") for i, v in enumerate(issues)),
            cluster_id=_field(obj, "cluster_id", str, ""),
            claims_by_state=_counts(obj, "claims_by_state"),
            rejected_by_reason=_counts(obj, "rejected_by_reason"),
            accepted_claims=_field(obj, "accepted_claims", int, 0),
            duplicate_claims=_field(obj, "duplicate_claims", int, 0),
            late_claims=_field(obj, "late_claims", int, 0),
            terms=tuple(terms),
            degraded_beats=_field(obj, "degraded_beats", int, 0),
            rollup_ms=rollup_ms,
            published_ns=_time(obj, "published_at", required=False),
        )
