"""A window's claim log: how its entries are laid out, and the fold that turns them into the
window's aggregate. Pure, no I/O.

The ingest appends one entry per window per batch to the window's claims stream; the rollup
reads the stream of a sealed window and folds it. Every figure of a report that comes from
claims is computed here, from the log, so a report can be recomputed from the stored claims
(``docs/rollup.md``, "Replaying a window").

An entry (stream fields, all optional):

* ``m`` -- the batch's claims for the window, as one compact JSON array of
  ``CLAIM_META_FIELDS`` values per claim: agent_id, task_id, beat_index, state, beats_left,
  key_id (``null`` when the claim is not signed);
* ``x`` -- JSON array of the 0-based positions in ``m`` that were not accepted (duplicates
  of claims seen before); absent when all were accepted;
* ``d`` / ``l`` / ``r:<reason>`` -- duplicate, late and rejected claims counted in this
  window by the batch (they do not carry their claims: the late side stream and the dead
  letters keep those).

The claims' StatusClaim JSON goes to a second stream (``keys.window_payloads``), in an entry of
the same id: the rollup never reads them, auditing and replay tools do.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from backbeat.core.claims import RejectReason

#: Values per claim in an entry's ``m`` array.
CLAIM_META_FIELDS: Final = 6

#: Task states that fulfil (or, past the deadline, end) a help promise.
_MOVED_ON: Final = frozenset({"executing", "review", "done"})
_REVIEWED: Final = frozenset({"review", "done"})

#: An open help promise of a task: (beat of its first waiting claim, deadline beat).
Promise = tuple[int, int]


@dataclass(slots=True)
class ClaimFold:
    """Everything a window's claim log says, folded entry by entry in stream order."""

    accepted_claims: int = 0
    duplicate_claims: int = 0
    late_claims: int = 0
    rejected_by_reason: Counter[str] = field(default_factory=Counter)
    claims_by_state: Counter[str] = field(default_factory=Counter)
    agent_ids: set[str] = field(default_factory=set)
    on_time_tasks: set[str] = field(default_factory=set)
    helped_tasks: set[str] = field(default_factory=set)
    signed_claims: int = 0
    key_ids: set[str] = field(default_factory=set)
    #: Help promises open so far (task -> promise), starting from the previous window's.
    promises: dict[str, Promise] = field(default_factory=dict)

    @property
    def signature_failures(self) -> int:
        return self.rejected_by_reason.get(RejectReason.BAD_SIGNATURE.value, 0)

    def open_promises(self, next_from_beat: int) -> dict[str, Promise]:
        """Promises still open after the window that a later claim can fulfil (deadline at or
        after ``next_from_beat``), for the next window's fold."""
        return {t: p for t, p in sorted(self.promises.items()) if p[1] >= next_from_beat}


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def fold_entries(
    entries: Iterable[Mapping[Any, Any]], open_promises: Mapping[str, Promise] | None = None
) -> ClaimFold:
    """Fold a window's entries (stream field -> value, in stream order) into its figures.

    ``open_promises`` are the help promises left open by the window before (see
    ``ClaimFold.open_promises``); a claim here may fulfil them.
    """
    fold = ClaimFold(promises=dict(open_promises or {}))
    for entry in entries:
        _fold_entry(fold, {_text(k): v for k, v in entry.items()})
    return fold


def _fold_entry(fold: ClaimFold, entry: Mapping[str, Any]) -> None:
    for name, value in entry.items():
        if name == "d":
            fold.duplicate_claims += int(value)
        elif name == "l":
            fold.late_claims += int(value)
        elif name.startswith("r:"):
            fold.rejected_by_reason[name[2:]] += int(value)
    metas = entry.get("m")
    if metas is None:
        return
    values = json.loads(metas)
    n = CLAIM_META_FIELDS
    columns = [values[c::n] for c in range(n)]
    if "x" in entry:
        skipped = frozenset(json.loads(entry["x"]))
        keep = [k for k in range(len(columns[0])) if k not in skipped]
        columns = [[column[k] for k in keep] for column in columns]
    agents, tasks, beats, states, lefts, key_ids = columns
    # Whole-column work runs in C; only the promise rules go claim by claim.
    fold.accepted_claims += len(agents)
    fold.agent_ids.update(agents)
    fold.claims_by_state.update(states)
    fold.signed_claims += len(key_ids) - key_ids.count(None)
    fold.key_ids.update(k for k in set(key_ids) if k)
    fold.on_time_tasks.update(
        task
        for task, state, left in zip(tasks, states, lefts, strict=True)
        if left >= 0 and state in _REVIEWED
    )
    _track_promises(fold.promises, fold.helped_tasks, zip(tasks, beats, states, lefts, strict=True))


def _track_promises(
    promises: dict[str, Promise],
    helped: set[str],
    claims: Iterable[tuple[str, int, str, int]],
) -> None:
    """The help-promise rule of docs/kpis.md over accepted claims, in log order: a
    ``waiting`` claim opens (or narrows) its task's promise, a later ``executing`` /
    ``review`` / ``done`` claim within the deadline fulfils it, one past the deadline ends
    it. One loop without calls: it runs once per claim of the window."""
    get = promises.get
    for task, beat, state, left in claims:
        if state == "waiting":
            if left >= 0:
                deadline = beat + left
                open_ = get(task)
                if open_ is None or open_[1] < beat:
                    promises[task] = (beat, deadline)
                else:
                    promises[task] = (min(open_[0], beat), min(open_[1], deadline))
            continue
        open_ = get(task)
        if open_ is None or state not in _MOVED_ON:
            continue
        if open_[0] < beat <= open_[1]:
            helped.add(task)
            del promises[task]
        elif beat > open_[1]:
            del promises[task]


def encode_promises(promises: Mapping[str, Promise]) -> bytes:
    """Open promises as stored for the next window (compact, keys sorted)."""
    return json.dumps(
        {t: list(p) for t, p in sorted(promises.items())}, separators=(",", ":")
    ).encode()


def decode_promises(raw: bytes | str | None) -> dict[str, Promise]:
    """The inverse of :func:`encode_promises`; empty for None."""
    if raw is None:
        return {}
    loaded = json.loads(raw)
    return {str(t): (int(p[0]), int(p[1])) for t, p in loaded.items()}
