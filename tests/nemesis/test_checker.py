"""The history checker on made-up histories: a clean one passes (also with missed beats around
tempo changes), and each doctored one is caught with the violation it holds."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from backbeat.core.timeline import Timeline, window_id
from tests.nemesis import checker
from tests.nemesis.checker import check_history

Event = dict[str, Any]

CLUSTER = "nemesis-test"
T0 = 1_800_000_000_000_000_000
TERM_1 = 1_800_000_000_000
TERM_2 = TERM_1 + 5_000
BEATS = 80
FAILOVER_GAP = range(21, 24)  # beats the failover lost
CONSUMERS = {"nats": checker.RAW, "grpc:pulse-2": checker.FILTERING, "sdk": checker.SDK}
#: (downbeat, tempo): the clean history's changes: a step at 16, a ramp's two steps at 32, 36.
CLEAN_CHANGES = ((16, 250.0), (32, 275.0), (36, 290.0))


def _call(
    id_: str,
    op: str,
    requested: float,
    outcome: str,
    *,
    at_beat: int,
    effective: int = 0,
    effective_tempo: float = 0.0,
    timelines: Sequence[Timeline] = (),
    reason: str = "",
) -> Event:
    start = T0 + at_beat * 250_000_000
    call: Event = {
        "type": "tempo",
        "id": id_,
        "op": op,
        "requested": requested,
        "outcome": outcome,
        "replica": "pulse-1",
        "code": "" if outcome == "ok" else "FAILED_PRECONDITION",
        "reason": reason,
        "start_ns": start,
        "end_ns": start + 5_000_000,
        "wall_ns": start,
        "mono_ns": start,
    }
    if outcome == "ok":
        timeline = next(t for t in timelines if t.anchor_beat == effective)
        call.update(
            effective_beat=effective,
            effective_ns=timeline.anchor_time_ns,
            effective_tempo=effective_tempo,
            revision=timeline.revision,
            target=requested,
            remaining_steps=0,
        )
    return call


def timelines_for(changes: Sequence[tuple[int, float]]) -> list[Timeline]:
    timelines = [Timeline.start(CLUSTER, 240.0, T0, term=TERM_1)]
    for beat, tempo in changes:
        # replace(), not with_tempo(): doctored histories need illegal steps too.
        prev = timelines[-1]
        timelines.append(
            dataclasses.replace(
                prev,
                tempo_bpm=tempo,
                anchor_beat=beat,
                anchor_time_ns=prev.beat_time_ns(beat),
                revision=prev.revision + 1,
            )
        )
    return timelines


def governing(timelines: Sequence[Timeline], beat: int) -> Timeline:
    return [t for t in timelines if t.anchor_beat <= beat][-1]


def frame(consumer: str, beat: int, timelines: Sequence[Timeline], **over: Any) -> Event:
    timeline = governing(timelines, beat)
    scheduled = timeline.beat_time_ns(beat)
    event: Event = {
        "type": "frame",
        "consumer": consumer,
        "beat": beat,
        "term": TERM_1 if beat < FAILOVER_GAP.start else TERM_2,
        "scheduled_ns": scheduled,
        "tempo": timeline.tempo_bpm,
        "revision": timeline.revision,
        "downbeat": timeline.is_downbeat(beat),
        "bar_start": timeline.bar_start(beat),
        "window_id": timeline.window_id(beat),
        "degraded": False,
        "source": "frame",
        "wall_ns": scheduled + 2_000_000,
        "mono_ns": scheduled + 2_000_000,
    }
    event.update(over)
    return event


def history(
    changes: Sequence[tuple[int, float]] = CLEAN_CHANGES,
    calls: Sequence[Event] | None = None,
    missing: Callable[[int], bool] = lambda beat: False,
) -> list[Event]:
    """A clean run: three consumers, a failover, a step and a ramp, claims and reports."""
    timelines = timelines_for(changes)
    if calls is None:
        calls = [
            _call(
                "step-1",
                "step",
                250.0,
                "ok",
                at_beat=10,
                effective=16,
                effective_tempo=250.0,
                timelines=timelines,
            ),
            _call(
                "ramp-1",
                "ramp",
                290.0,
                "ok",
                at_beat=28,
                effective=32,
                effective_tempo=275.0,
                timelines=timelines,
            ),
            _call("step-2", "step", 222.5, "refused", at_beat=40, reason="NO_QUORUM"),
            _call("step-3", "step", 231.25, "unknown", at_beat=26, reason="DEADLINE_EXCEEDED"),
        ]
    events: list[Event] = [
        {
            "type": "meta",
            "cluster_id": CLUSTER,
            "bar_length": 4,
            "tempo_bpm": 240.0,
            "consumers": CONSUMERS,
            "report_settle_s": 6.0,
            "stall_window_s": 3.0,
            "wall_ns": T0 - 1,
            "mono_ns": 0,
        }
    ]
    for timeline in timelines:
        events.append(
            {
                "type": "timeline",
                "consumer": "grpc:pulse-2",
                "role": "current",
                "tempo": timeline.tempo_bpm,
                "anchor_beat": timeline.anchor_beat,
                "anchor_ns": timeline.anchor_time_ns,
                "revision": timeline.revision,
                "term": timeline.term,
                "wall_ns": T0,
                "mono_ns": 0,
            }
        )
    events.extend(calls)
    for beat in range(BEATS):
        if beat in FAILOVER_GAP or missing(beat):
            continue
        for consumer in CONSUMERS:
            events.append(frame(consumer, beat, timelines))
        if beat % 2 == 0:
            timeline = governing(timelines, beat)
            events.append(
                {
                    "type": "claim",
                    "agent": "agent-1",
                    "task": "task-1",
                    "beat": beat,
                    "outcome": "accepted",
                    "reason": "",
                    "window_id": timeline.window_id(beat),
                    "wall_ns": timeline.beat_time_ns(beat),
                    "mono_ns": 0,
                }
            )
    last_time = governing(timelines, BEATS).beat_time_ns(BEATS)
    for seq, bar in enumerate(range(0, BEATS - 4, 4), start=1):
        events.append(
            {
                "type": "report",
                "window_id": window_id(CLUSTER, bar),
                "from_beat": bar,
                "to_beat": bar + 3,
                "accepted_claims": 2,
                "seq": seq,
                "wall_ns": governing(timelines, bar + 4).beat_time_ns(bar + 4) + 100_000_000,
                "mono_ns": 0,
            }
        )
    events.append({"type": "healed", "wall_ns": T0 + 7 * 10**9, "mono_ns": 0})
    events.append({"type": "end", "wall_ns": last_time, "mono_ns": 0})
    return sorted(events, key=lambda e: (e["wall_ns"], e["type"] != "meta"))


def frames_of(events: list[Event], consumer: str | None = None) -> list[Event]:
    return [
        e
        for e in events
        if e["type"] == "frame" and (consumer is None or e["consumer"] == consumer)
    ]


def insert_after(events: list[Event], anchor: Event, new: Event) -> list[Event]:
    index = next(i for i, e in enumerate(events) if e is anchor)
    return [*events[: index + 1], new, *events[index + 1 :]]


def nats_frame(events: list[Event], beat: int) -> Event:
    return next(e for e in frames_of(events, "nats") if e["beat"] == beat)


# -- the clean histories pass --------------------------------------------------------------


def test_a_clean_history_passes() -> None:
    result = check_history(history())
    assert result.ok, result.summary()
    assert result.checked["beats"] == BEATS - len(FAILOVER_GAP)
    assert result.checked["tempo_changes"] == 3
    assert result.checked["acknowledged_calls"] == 2
    assert result.checked["ramps_completed"] == 1
    assert result.checked["windows_with_claims"] > 10
    assert result.checked["consumers_live"] == 2


def test_missed_beats_around_tempo_changes_raise_no_false_alarm() -> None:
    # The beats of both ramp steps are lost: the gap spans two downbeats and +16 %.
    result = check_history(history(missing=lambda beat: 29 <= beat <= 38))
    assert result.ok, result.summary()
    assert result.unverified["tempo_changes_in_gaps"] == 1


def test_written_and_read_back_the_history_is_the_same(tmp_path: Any) -> None:
    from tests.nemesis.history import read_events, write_events

    events = history()
    write_events(tmp_path / "h.jsonl", events)
    assert check_history(read_events(tmp_path / "h.jsonl")).ok


# -- each doctored history is caught ---------------------------------------------------------


def test_a_newer_term_going_back_is_caught() -> None:
    events = history()
    late = nats_frame(events, 60)
    regressed = frame("nats", 58, timelines_for(CLEAN_CHANGES), term=TERM_2 + 1)
    result = check_history(insert_after(events, late, regressed))
    assert checker.BEAT_REGRESSED in result.kinds(), result.summary()


def test_a_newer_term_repeating_the_last_beat_is_caught() -> None:
    events = history()
    last = nats_frame(events, 60)
    repeated = {**last, "term": TERM_2 + 1}
    result = check_history(insert_after(events, last, repeated))
    assert checker.BEAT_REPEATED in result.kinds(), result.summary()


def test_a_beat_published_twice_in_one_term_is_caught() -> None:
    events = history()
    last = nats_frame(events, 60)
    result = check_history(insert_after(events, last, dict(last)))
    assert checker.BEAT_PUBLISHED_TWICE in result.kinds(), result.summary()


def test_a_stream_delivering_an_older_beat_is_caught() -> None:
    events = history()
    last = next(e for e in frames_of(events, "grpc:pulse-2") if e["beat"] == 60)
    older = next(e for e in frames_of(events, "grpc:pulse-2") if e["beat"] == 50)
    result = check_history(insert_after(events, last, dict(older)))
    assert checker.DELIVERED_OUT_OF_ORDER in result.kinds(), result.summary()


def test_an_sdk_delivering_a_higher_term_with_a_lower_index_is_caught() -> None:
    events = history()
    last = next(e for e in frames_of(events, "sdk") if e["beat"] == 60)
    result = check_history(insert_after(events, last, {**last, "beat": 2, "term": TERM_2 + 9}))
    assert checker.DELIVERED_OUT_OF_ORDER in result.kinds(), result.summary()


def test_a_term_lower_than_an_earlier_one_is_caught() -> None:
    events = [
        {**e, "term": TERM_1 - 7} if e["type"] == "frame" and e["beat"] >= 60 else e
        for e in history()
    ]
    result = check_history(events)
    assert checker.TERM_REGRESSED in result.kinds(), result.summary()


def test_one_beat_at_two_times_is_caught() -> None:
    events = history()
    last = nats_frame(events, 50)
    moved = {**last, "consumer": "grpc:pulse-2", "scheduled_ns": last["scheduled_ns"] + 10**8}
    events = [
        moved if e.get("consumer") == "grpc:pulse-2" and e.get("beat") == 50 else e for e in events
    ]
    result = check_history(events)
    assert checker.GRID_CONFLICT in result.kinds(), result.summary()


def _shifted(events: list[Event], from_beat: int, by_ns: int) -> list[Event]:
    return [
        {**e, "scheduled_ns": e["scheduled_ns"] + by_ns}
        if e["type"] == "frame" and e["beat"] >= from_beat
        else e
        for e in events
    ]


def test_a_beat_off_the_period_is_caught() -> None:
    result = check_history(_shifted(history(), 50, 50_000_000))
    assert checker.GRID_STEP_WRONG in result.kinds(), result.summary()


def test_a_grid_jump_across_missed_beats_is_caught() -> None:
    events = history(missing=lambda beat: 45 <= beat <= 55)
    result = check_history(_shifted(events, 56, 200_000_000))
    assert checker.GRID_GAP_WRONG in result.kinds(), result.summary()
    assert checker.GRID_STEP_WRONG not in result.kinds()


def test_a_jump_across_a_failover_at_a_ramp_is_caught() -> None:
    # Scenario: quorum lost mid-ramp, the winner continues from an older record — the beat
    # after the gap comes 1.7 s after the previous one at ~240 BPM.
    events = history(missing=lambda beat: 41 <= beat <= 43)
    result = check_history(_shifted(events, 44, 1_200_000_000))
    assert checker.GRID_GAP_WRONG in result.kinds(), result.summary()


def test_a_grid_jump_that_only_a_double_step_could_explain_is_caught() -> None:
    # After the ramp (290 BPM from beat 36) beats 41–47 are lost and the grid comes back late:
    # 40 → 48 spans the downbeats 44 and 48. Each step is ±10 %, so the bar 44–47 runs at
    # 261–319 BPM (capped at 300): a gap of ≥ 0.98 s here means two illegal steps.
    events = history(missing=lambda beat: 41 <= beat <= 47)
    result = check_history(_shifted(events, 48, 180_000_000))
    assert checker.GRID_GAP_WRONG in result.kinds(), result.summary()


def test_a_gap_a_legal_tempo_path_explains_passes() -> None:
    # The same gap with a legal detour (one bar at 270 BPM, then back to 290) is fine.
    changes = (*CLEAN_CHANGES, (44, 270.0), (48, 290.0))
    calls = [
        *history_calls(CLEAN_CHANGES),
        _call("a", "step", 270.0, "unknown", at_beat=42),
        _call("b", "step", 290.0, "unknown", at_beat=46),
    ]
    result = check_history(history(changes, calls, missing=lambda beat: 41 <= beat <= 47))
    assert result.ok, result.summary()


def test_a_frame_off_its_announced_timeline_is_caught() -> None:
    result = check_history(_shifted(history(), 40, 50_000_000))
    assert checker.FRAME_OFF_TIMELINE in result.kinds(), result.summary()


def test_a_tempo_change_between_downbeats_is_caught() -> None:
    events = [
        {**e, "tempo": 245.0} if e["type"] == "frame" and e["beat"] == 17 else e for e in history()
    ]
    result = check_history(events)
    assert checker.TEMPO_OFF_DOWNBEAT in result.kinds(), result.summary()


def test_a_tempo_step_over_ten_percent_is_caught() -> None:
    changes = ((16, 250.0), (32, 275.0), (36, 290.0), (48, 250.0))  # 290 → 250: −13.8 %
    calls = [*history_calls(changes), _call("s", "step", 250.0, "unknown", at_beat=46)]
    result = check_history(history(changes, calls))
    assert checker.TEMPO_STEP_TOO_LARGE in result.kinds(), result.summary()


def history_calls(changes: Sequence[tuple[int, float]]) -> list[Event]:
    return [e for e in history(changes) if e["type"] == "tempo"]


def test_an_acknowledged_change_that_never_happens_is_caught() -> None:
    changes = ((32, 264.0), (36, 290.0))  # the step to 250 at beat 16 is lost
    timelines = timelines_for(((16, 250.0), *changes))
    calls = [
        _call(
            "step-1",
            "step",
            250.0,
            "ok",
            at_beat=10,
            effective=16,
            effective_tempo=250.0,
            timelines=timelines,
        ),
        _call(
            "ramp-1",
            "ramp",
            290.0,
            "ok",
            at_beat=28,
            effective=32,
            effective_tempo=264.0,
            timelines=timelines_for(changes),
        ),
    ]
    result = check_history(history(changes, calls))
    assert result.kinds() == {checker.ACK_NOT_APPLIED}, result.summary()


def test_a_refused_change_that_takes_effect_is_caught() -> None:
    changes = (*CLEAN_CHANGES, (60, 261.0))  # the refused call's 261 lands later
    calls = [
        *history_calls(CLEAN_CHANGES),
        _call("late", "step", 261.0, "refused", at_beat=20, reason="FENCED"),
    ]
    result = check_history(history(changes, calls))
    assert checker.REFUSED_APPLIED in result.kinds(), result.summary()


def test_a_refused_change_inside_a_gap_is_caught_from_its_announced_timeline() -> None:
    """No frame of the bars around downbeat 60 arrived (beats 57-66), so the frames alone show
    261 BPM only across two downbeats; the announced timeline names the change at 60."""
    changes = (*CLEAN_CHANGES, (60, 261.0))
    calls = [
        *history_calls(CLEAN_CHANGES),
        _call("late", "step", 261.0, "refused", at_beat=50, reason="NOT_LEADER"),
    ]
    result = check_history(history(changes, calls, missing=lambda beat: 57 <= beat <= 66))
    assert checker.REFUSED_APPLIED in result.kinds(), result.summary()
    calls[-1] = _call("late", "step", 261.0, "unknown", at_beat=50, reason="TEMPO_OUTCOME_UNKNOWN")
    result = check_history(history(changes, calls, missing=lambda beat: 57 <= beat <= 66))
    assert result.ok, result.summary()


def test_a_change_nobody_asked_for_is_caught() -> None:
    changes = (*CLEAN_CHANGES, (60, 270.0))
    result = check_history(history(changes, history_calls(CLEAN_CHANGES)))
    assert checker.TEMPO_UNEXPLAINED in result.kinds(), result.summary()


def test_a_ramp_that_stops_halfway_is_caught() -> None:
    changes = CLEAN_CHANGES[:2]  # the step to 290 never comes
    result = check_history(history(changes, history_calls(CLEAN_CHANGES)))
    assert result.kinds() == {checker.RAMP_STALLED}, result.summary()


def test_ramp_steps_rounded_to_thousandths_are_explained() -> None:
    # A ramp's intermediate steps are whole thousandths within the ±10 % bound: the ramp
    # 224.78 → 281.631 steps to 247.258, then 271.983 (247.258 × 1.1 = 271.9838), then 281.631.
    changes = ((16, 224.78), (20, 247.258), (24, 271.983), (28, 281.631))
    timelines = timelines_for(changes)
    calls = [
        _call("s", "step", 224.78, "ok", at_beat=10, effective=16, effective_tempo=224.78,
              timelines=timelines),
        _call("r", "ramp", 281.631, "ok", at_beat=17, effective=20, effective_tempo=247.258,
              timelines=timelines),
    ]  # fmt: skip
    result = check_history(history(changes, calls))
    assert result.ok, result.summary()
    assert result.checked["ramps_completed"] == 1


def test_a_ramp_replaced_by_a_later_change_may_stop() -> None:
    changes = (*CLEAN_CHANGES[:2], (40, 260.0))
    calls = [*history_calls(CLEAN_CHANGES), _call("s", "step", 260.0, "unknown", at_beat=36)]
    result = check_history(history(changes, calls))
    assert result.ok, result.summary()


def test_a_window_with_claims_and_no_report_is_caught() -> None:
    events = [e for e in history() if not (e["type"] == "report" and e["from_beat"] == 40)]
    result = check_history(events)
    assert result.kinds() == {checker.WINDOW_UNREPORTED}, result.summary()


def test_two_reports_for_one_window_are_caught() -> None:
    events = history()
    report = next(e for e in events if e["type"] == "report" and e["from_beat"] == 40)
    result = check_history([*events, {**report, "seq": 999}])
    assert result.kinds() == {checker.REPORT_DUPLICATED}, result.summary()


def test_a_window_id_naming_two_bars_is_caught() -> None:
    events = history()
    last = nats_frame(events, 60)
    again = frame("nats", 8, timelines_for(CLEAN_CHANGES))
    moved = {**again, "scheduled_ns": last["scheduled_ns"] + 250_000_000, "term": TERM_2 + 1}
    result = check_history(insert_after(events, last, moved))
    assert checker.WINDOW_ID_REUSED in result.kinds(), result.summary()


def test_a_stream_that_starves_is_caught() -> None:
    events = [
        e
        for e in history()
        if not (e["type"] == "frame" and e["consumer"] == "grpc:pulse-2" and e["beat"] > 40)
    ]
    result = check_history(events)
    assert result.kinds() == {checker.CONSUMER_STALLED}, result.summary()


def test_a_claim_for_the_current_beat_rejected_in_future_is_caught() -> None:
    # The ingest followed a regressed grid (it ordered frames another way): the claim for
    # beat 60, sent right after frame 60, was "in the future" for it.
    events = history()
    claim = next(e for e in events if e["type"] == "claim" and e["beat"] == 60)
    misjudged = {**claim, "outcome": "rejected", "reason": "in_future", "window_id": "",
                 "sent_ns": claim["wall_ns"] + 150_000_000}  # fmt: skip
    result = check_history([misjudged if e is claim else e for e in events])
    assert result.kinds() == {checker.CLAIM_MISJUDGED}, result.summary()


def test_a_claim_far_ahead_of_the_frames_may_be_rejected_in_future() -> None:
    events = history()
    claim = next(e for e in events if e["type"] == "claim" and e["beat"] == 60)
    ahead = {**claim, "beat": 70, "outcome": "rejected", "reason": "in_future", "window_id": ""}
    result = check_history([ahead if e is claim else e for e in events])
    assert result.ok, result.summary()


@pytest.mark.parametrize("kind", checker.ALL_KINDS)
def test_every_violation_kind_has_a_doctored_history(kind: str) -> None:
    names = {
        checker.BEAT_REGRESSED: "going_back",
        checker.BEAT_REPEATED: "repeating",
        checker.BEAT_PUBLISHED_TWICE: "published_twice",
        checker.DELIVERED_OUT_OF_ORDER: "delivering_an_older",
        checker.TERM_REGRESSED: "term_lower",
        checker.GRID_CONFLICT: "two_times",
        checker.GRID_STEP_WRONG: "off_the_period",
        checker.GRID_GAP_WRONG: "grid_jump",
        checker.FRAME_OFF_TIMELINE: "announced_timeline",
        checker.TEMPO_OFF_DOWNBEAT: "between_downbeats",
        checker.TEMPO_STEP_TOO_LARGE: "over_ten_percent",
        checker.ACK_NOT_APPLIED: "acknowledged_change",
        checker.REFUSED_APPLIED: "refused",
        checker.TEMPO_UNEXPLAINED: "nobody_asked",
        checker.RAMP_STALLED: "stops_halfway",
        checker.WINDOW_UNREPORTED: "no_report",
        checker.REPORT_DUPLICATED: "two_reports",
        checker.WINDOW_ID_REUSED: "two_bars",
        checker.CONSUMER_STALLED: "starves",
    }
    assert any(names[kind] in name for name in globals() if name.startswith("test_"))
