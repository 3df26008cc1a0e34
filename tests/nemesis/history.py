"""The history a nemesis run records: one JSON object per line, each with a ``type``.

Every event carries ``wall_ns`` (the recording process's ``time.time_ns()``) and ``mono_ns``
(``time.monotonic_ns()``) so a history can be read in the order things were observed. The
event types and their fields:

``meta``      cluster_id, bar_length, tempo_bpm, seed, scenario, consumers (names), settings
``frame``     consumer, beat, term, scheduled_ns, tempo, revision, downbeat, bar_start,
              window_id, degraded, source ("frame"; the SDK agent also delivers "local" beats)
``timeline``  consumer, role ("current" | "pending"), tempo, anchor_beat, anchor_ns, revision,
              term, bar_length, bar_origin, ramp_target
``tempo``     id, op ("step" | "ramp"), requested, replica, outcome ("ok" | "refused" |
              "unknown"), code, reason, effective_beat, effective_ns, effective_tempo, target,
              remaining_steps, start_ns, end_ns
``claim``     agent, task, beat, outcome ("accepted" | "duplicate" | "late" | "rejected" |
              "unknown"), reason, window_id
``report``    window_id, from_beat, to_beat, accepted_claims, seq
``fault``     kind, target, detail (one per injected fault)
``healed``    every fault undone (links restored, processes running)
``end``       the run stopped recording
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

Event = dict[str, Any]


class History:
    """Events in the order they were recorded; thread-safe appends, JSON Lines on disk."""

    def __init__(self) -> None:
        self._events: list[Event] = []
        self._lock = threading.Lock()

    def record(self, type_: str, **fields: Any) -> Event:
        event: Event = {"type": type_, "wall_ns": time.time_ns(), "mono_ns": time.monotonic_ns()}
        event.update(fields)
        with self._lock:
            self._events.append(event)
        return event

    @property
    def events(self) -> list[Event]:
        with self._lock:
            return list(self._events)

    def of_type(self, type_: str) -> list[Event]:
        return [e for e in self.events if e["type"] == type_]

    def write(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_events(path, self.events)
        return path


def write_events(path: Path, events: Iterable[Mapping[str, Any]]) -> None:
    with path.open("w") as out:
        for event in events:
            out.write(json.dumps(event, separators=(",", ":"), sort_keys=True) + "\n")


def read_events(path: Path) -> list[Event]:
    return list(_lines(path))


def _lines(path: Path) -> Iterator[Event]:
    with path.open() as lines:
        for line in lines:
            if line.strip():
                yield json.loads(line)
