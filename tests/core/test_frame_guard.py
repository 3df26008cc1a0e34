"""The frame guard: signatures only the pulse can make, and values near the local clock/grid."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from backbeat.core.ed25519 import (
    PrivateKey,
    PrivateKeyring,
    sign_frame,
    sign_timeline_record,
)
from backbeat.core.frame_guard import MAX_BAR_LENGTH, FrameGuard, GuardSettings, Refusal
from backbeat.core.messages import BeatFrame
from backbeat.core.timeline import Timeline, default_phases

S = 1_000_000_000
NOW = 1_800_000_000 * S
TERM = NOW // 1_000_000  # terms are wall-clock milliseconds of the election
KEYS = PrivateKeyring([PrivateKey("frame-1", b"p" * 32, activates_ns=0)])
PUBLIC = KEYS.public()
GRID = Timeline("c1", 120.0, 0, NOW - 100 * S // 2, bar_length=4, revision=3, term=TERM)


def frame(n: int, **overrides: object) -> BeatFrame:
    base = BeatFrame(
        cluster_id="c1",
        beat_index=n,
        downbeat=GRID.is_downbeat(n),
        phase=GRID.phase_of(n),
        hlc="0001:0001:beef",
        deadline_ns=GRID.beat_time_ns(n + 1),
        tempo_bpm=120.0,
        window_id=GRID.window_id(n),
        term=TERM,
        scheduled_ns=GRID.beat_time_ns(n),
        bar_start_beat=GRID.bar_start(n),
        timeline_revision=3,
    )
    return replace(base, **overrides)  # type: ignore[arg-type]


def _at(scheduled_ns: int) -> dict[str, object]:
    return {"scheduled_ns": scheduled_ns, "deadline_ns": scheduled_ns + S // 2}


def guard(**settings: object) -> FrameGuard:
    return FrameGuard("c1", lambda: PUBLIC, GuardSettings(**settings))  # type: ignore[arg-type]


def test_genuine_frames_pass_and_forgeries_are_refused_by_signature() -> None:
    g = guard()
    assert g.check_frame(sign_frame(frame(100), KEYS, now_ns=NOW), NOW) is None
    tampered = replace(sign_frame(frame(101), KEYS, now_ns=NOW), term=2**62)
    refused = g.check_frame(tampered, NOW)
    assert refused is not None
    assert refused.reason is Refusal.BAD_SIGNATURE
    stranger = PrivateKeyring([PrivateKey("frame-1", b"x" * 32, activates_ns=0)])
    assert g.check_frame(sign_frame(frame(101), stranger, now_ns=NOW), NOW) is not None
    assert g.refused == {"bad_signature": 2}


def test_unsigned_frames_pass_in_development_and_are_refused_when_required() -> None:
    assert guard().check_frame(frame(100), NOW) is None
    refused = guard(require_signature=True).check_frame(frame(100), NOW)
    assert refused is not None
    assert refused.reason is Refusal.UNSIGNED
    no_keys = FrameGuard("c1", None, GuardSettings(require_signature=True))
    assert no_keys.check_frame(sign_frame(frame(100), KEYS, now_ns=NOW), NOW) is not None


@pytest.mark.parametrize(
    ("change", "why"),
    [
        (_at(NOW + 100 * 365 * 86400 * S), "ahead of the local clock"),
        (_at(NOW - 3 * 3600 * S), "behind the local clock"),
        ({"tempo_bpm": 900.0}, "tempo"),
        ({"tempo_bpm": 5.0}, "tempo"),
        ({"term": 2**62}, "term"),
        ({"beat_index": 10**15}, "beat_index"),
        ({"bar_start_beat": 100 - MAX_BAR_LENGTH}, "bar start"),
        ({"deadline_ns": NOW + 3600 * S}, "deadline_at"),
    ],
)
def test_values_far_from_the_clock_are_refused(change: dict[str, object], why: str) -> None:
    forged = replace(frame(100), **change)  # type: ignore[arg-type]
    refused = guard(max_age_ns=3600 * S).check_frame(sign_frame(forged, KEYS, now_ns=NOW), NOW)
    assert refused is not None
    assert refused.reason is Refusal.OUT_OF_BOUNDS
    assert why in refused.detail


def test_beat_and_revision_jumps_beyond_the_reference_grid_are_refused() -> None:
    g = guard()
    assert g.check_frame(frame(100), NOW) is None
    refused = g.check_frame(frame(100_000, scheduled_ns=NOW, deadline_ns=NOW + S // 2), NOW)
    assert refused is not None
    assert "furthest the grid" in refused.detail
    refused = g.check_frame(frame(101, timeline_revision=10**9), NOW + S // 2)
    assert refused is not None
    assert "revision" in refused.detail
    # The genuine next beats, also from a new leader elected an hour later, pass.
    assert g.check_frame(frame(101), NOW + S // 2) is None
    later = NOW + 3600 * S
    n = GRID.beat_at(later)
    assert g.check_frame(frame(n, term=later // 1_000_000), later) is None


def test_the_trigger_waits_on_no_old_downbeat_but_refuses_future_ones() -> None:
    g = guard(max_age_ns=None)
    assert g.check_frame(frame(4, scheduled_ns=NOW - 86400 * S), NOW) is not None  # deadline
    old = replace(frame(4), scheduled_ns=NOW - 86400 * S, deadline_ns=NOW - 86400 * S + S // 2)
    assert g.check_frame(old, NOW) is None
    ahead = replace(frame(8), scheduled_ns=NOW + 60 * S, deadline_ns=NOW + 60 * S + S // 2)
    assert g.check_frame(ahead, NOW) is not None


def record(**current: object) -> dict[str, object]:
    timeline: dict[str, object] = {
        "cluster_id": "c1",
        "tempo_bpm": 120.0,
        "anchor_beat": 0,
        "anchor_time_ns": GRID.anchor_time_ns,
        "bar_length": 4,
        "bar_origin": 0,
        "phases": [[p.name, p.beats] for p in default_phases(4)],
        "revision": 3,
        "term": TERM,
    }
    return {"current": timeline | current, "pending": None, "effective_beat": None}


def test_timeline_records_signed_by_the_pulse_pass_and_others_do_not() -> None:
    g = guard(require_signature=True)
    signed = sign_timeline_record(record(), KEYS, now_ns=NOW)
    assert g.check_timeline_record(signed, NOW) is None
    assert g.check_timeline_payload(json.dumps(signed).encode(), NOW) is None
    forged = dict(signed) | {"current": record(tempo_bpm=33.0)["current"]}
    refused = g.check_timeline_record(forged, NOW)
    assert refused is not None
    assert refused.reason is Refusal.BAD_SIGNATURE
    unsigned = g.check_timeline_record(record(), NOW)
    assert unsigned is not None
    assert unsigned.reason is Refusal.UNSIGNED
    malformed = g.check_timeline_payload(b'{"current": 1}', NOW)
    assert malformed is not None
    assert malformed.reason is Refusal.MALFORMED


@pytest.mark.parametrize(
    ("current", "why"),
    [
        ({"bar_length": 20000, "phases": [["execution", 20000]]}, "bar_length"),
        ({"tempo_bpm": 400.0}, "tempo"),
        ({"anchor_time_ns": NOW + 3600 * S}, "future"),
        ({"term": 2**62}, "term"),
        ({"cluster_id": "other"}, "other"),
    ],
)
def test_timeline_records_far_from_the_clock_are_refused(
    current: dict[str, object], why: str
) -> None:
    signed = sign_timeline_record(record(**current), KEYS, now_ns=NOW)
    refused = guard().check_timeline_record(signed, NOW)
    assert refused is not None
    assert why in refused.detail
