"""The function's input: which closed window to roll up (the downbeat event).

JSON form (the CloudEvent ``data``, the Lambda event, the in-process call)::

    {"type": "backbeat.rollup.v1", "cluster_id": "prod", "window_id": "<32 hex>",
     "from_beat": 240, "to_beat": 243, "downbeat_beat": 244,
     "window_start_ns": 1705314598000000000, "window_end_ns": 1705314600000000000,
     "traceparent": "00-…-…-01"}

``window_id`` must be the id that ``backbeat.core.timeline.window_id(cluster_id, from_beat)``
gives; ``type``, ``downbeat_beat`` (default ``to_beat + 1``) and the trace fields are optional.
``window_start_ns``/``window_end_ns`` (Unix ns; 0 or absent = unknown) give the window's time
span: the scheduled times of its first beat and of the closing downbeat. The rollup counts the
signing-key rotations due in ``[window_start_ns, window_end_ns)``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Final

from backbeat.core.messages import BeatFrame, load_object
from backbeat.core.timeline import NS_PER_MIN
from backbeat.core.timeline import window_id as compute_window_id
from backbeat.errors import CodecError

ROLLUP_EVENT_TYPE: Final = "backbeat.rollup.v1"
#: The CloudEvent ``type`` attribute of a rollup request.
CLOUDEVENT_TYPE: Final = "io.backbeat.rollup.v1"
_TRACEPARENT = re.compile(r"[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")


def _int(obj: Mapping[str, Any], name: str, default: int | None = None) -> int:
    value = obj.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int):
        if value is None:
            raise CodecError(name, "required field is missing")
        raise CodecError(name, f"expected an integer, got {type(value).__name__}")
    return value


def _str(obj: Mapping[str, Any], name: str, default: str | None = None) -> str:
    value = obj.get(name, default)
    if not isinstance(value, str):
        if value is None:
            raise CodecError(name, "required field is missing")
        raise CodecError(name, f"expected a string, got {type(value).__name__}")
    return value


@dataclass(frozen=True, slots=True)
class RollupEvent:
    cluster_id: str
    window_id: str
    from_beat: int
    to_beat: int
    downbeat_beat: int
    traceparent: str = ""
    tracestate: str = ""
    #: Scheduled time of the window's first beat (ns since the epoch; 0 = unknown).
    window_start_ns: int = 0
    #: Scheduled time of the closing downbeat (ns since the epoch; 0 = unknown).
    window_end_ns: int = 0

    def __post_init__(self) -> None:
        if self.from_beat < 0 or self.to_beat < self.from_beat:
            raise CodecError(
                "to_beat", f"window beats {self.from_beat}–{self.to_beat} are not a window"
            )
        expected = compute_window_id(self.cluster_id, self.from_beat)
        if self.window_id != expected:
            raise CodecError(
                "window_id",
                f"{self.window_id!r} is not the id of cluster {self.cluster_id!r} window "
                f"starting at beat {self.from_beat} ({expected})",
            )
        if self.traceparent and not _TRACEPARENT.fullmatch(self.traceparent):
            raise CodecError("traceparent", "not a W3C traceparent (00-<32 hex>-<16 hex>-<2 hex>)")
        if self.window_start_ns < 0 or self.window_end_ns < self.window_start_ns:
            raise CodecError("window_end_ns", "the window's time span ends before it starts")

    @property
    def time_span_known(self) -> bool:
        return 0 < self.window_start_ns < self.window_end_ns

    @classmethod
    def for_window(
        cls, cluster_id: str, from_beat: int, to_beat: int, *, traceparent: str = ""
    ) -> RollupEvent:
        return cls(
            cluster_id=cluster_id,
            window_id=compute_window_id(cluster_id, from_beat),
            from_beat=from_beat,
            to_beat=to_beat,
            downbeat_beat=to_beat + 1,
            traceparent=traceparent,
        )

    @classmethod
    def from_downbeat(
        cls, frame: BeatFrame, bar_length: int, *, traceparent: str = ""
    ) -> RollupEvent:
        """The window that ended just before downbeat ``frame``: beats d − bar_length … d − 1.

        Its time span ends at the downbeat's scheduled time and starts ``bar_length`` beats
        earlier at the frame's tempo. (A tempo change takes effect at a downbeat, so when this
        very downbeat changed the tempo the start is off by at most 10 % of a bar.)
        """
        d = frame.beat_index
        end_ns = (
            frame.scheduled_ns
            if frame.scheduled_ns is not None
            else frame.deadline_ns - round(NS_PER_MIN / frame.tempo_bpm)
        )
        start_ns = end_ns - round(bar_length * NS_PER_MIN / frame.tempo_bpm)
        return replace(
            cls.for_window(frame.cluster_id, d - bar_length, d - 1, traceparent=traceparent),
            window_start_ns=max(start_ns, 0),
            window_end_ns=max(end_ns, 0),
        )

    def to_json_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "type": ROLLUP_EVENT_TYPE,
            "cluster_id": self.cluster_id,
            "window_id": self.window_id,
            "from_beat": self.from_beat,
            "to_beat": self.to_beat,
            "downbeat_beat": self.downbeat_beat,
        }
        if self.traceparent:
            out["traceparent"] = self.traceparent
        if self.tracestate:
            out["tracestate"] = self.tracestate
        if self.time_span_known:
            out["window_start_ns"] = self.window_start_ns
            out["window_end_ns"] = self.window_end_ns
        return out

    @classmethod
    def decode(
        cls, payload: bytes | str | Mapping[str, Any], *, traceparent: str = ""
    ) -> RollupEvent:
        """Decode the JSON form; ``traceparent`` (e.g. a CloudEvent extension) is the fallback
        when the data carries none. Raises CodecError naming the field at fault."""
        obj = load_object(payload)
        kind = obj.get("type", ROLLUP_EVENT_TYPE)
        if kind != ROLLUP_EVENT_TYPE:
            raise CodecError("type", f"expected {ROLLUP_EVENT_TYPE!r}, got {kind!r}")
        to_beat = _int(obj, "to_beat")
        return cls(
            cluster_id=_str(obj, "cluster_id"),
            window_id=_str(obj, "window_id"),
            from_beat=_int(obj, "from_beat"),
            to_beat=to_beat,
            downbeat_beat=_int(obj, "downbeat_beat", to_beat + 1),
            traceparent=_str(obj, "traceparent", "") or traceparent,
            tracestate=_str(obj, "tracestate", ""),
            window_start_ns=_int(obj, "window_start_ns", 0),
            window_end_ns=_int(obj, "window_end_ns", 0),
        )
