from __future__ import annotations

import json
from typing import Any

import pytest

from backbeat.core.messages import (
    BarReport,
    BeatFrame,
    ReportIssue,
    StatusClaim,
    parse_utf8_json,
)
from backbeat.core.rfc3339 import format_ns, parse_ns
from backbeat.errors import CodecError

# The three interface examples of the specification, verbatim.
SEED_BEATFRAME = """{
  "type": "backbeat.beatframe.v1",
  "cluster_id": "chorus-production",
  "beat_index": 1234,
  "downbeat": true,
  "phase": "execution",
  "hlc": "7ffd:0001:beef",
  "deadline_at": "2024-01-15T10:30:00Z",
  "tempo_bpm": 120,
  "window_id": "7e9b0e6c4c9a4e59b7f2d9a3c1b2e4d5"
}"""
SEED_STATUSCLAIM = """{
  "type": "backbeat.statusclaim.v1",
  "agent_id": "agent:xyz",
  "task_id": "task:123",
  "beat_index": 1234,
  "state": "executing",
  "beats_left": 3,
  "progress": 0.5,
  "notes": "fetching inputs",
  "hlc": "7ffd:0001:beef"
}"""
SEED_BARREPORT = """{
  "type": "backbeat.barreport.v1",
  "window_id": "7e9b0e6c4c9a4e59b7f2d9a3c1b2e4d5",
  "from_beat": 240,
  "to_beat": 359,
  "agents_reporting": 978,
  "on_time_reviews": 842,
  "help_promises_fulfilled": 91,
  "secret_rotations_ok": true,
  "tempo_drift_ms": 7,
  "issues": []
}"""


def test_seed_beatframe_decodes_and_round_trips() -> None:
    frame = BeatFrame.decode(SEED_BEATFRAME)
    assert frame.beat_index == 1234
    assert frame.downbeat is True
    assert frame.deadline_ns == parse_ns("2024-01-15T10:30:00Z")
    assert frame.tempo_bpm == 120.0
    again = BeatFrame.decode(frame.encode())
    assert again == frame
    original = json.loads(SEED_BEATFRAME)
    encoded = frame.to_json_dict()
    assert {k: encoded[k] for k in original} == original


def test_seed_statusclaim_decodes_and_round_trips() -> None:
    claim = StatusClaim.decode(SEED_STATUSCLAIM.encode())
    assert (claim.agent_id, claim.task_id, claim.state) == ("agent:xyz", "task:123", "executing")
    assert StatusClaim.decode(claim.encode()) == claim
    assert claim.to_json_dict() == json.loads(SEED_STATUSCLAIM)


def test_seed_barreport_decodes_and_round_trips() -> None:
    report = BarReport.decode(SEED_BARREPORT)
    assert (report.from_beat, report.to_beat, report.agents_reporting) == (240, 359, 978)
    assert report.tempo_drift_ms == 7
    assert BarReport.decode(report.encode()) == report
    encoded = report.to_json_dict()
    original = json.loads(SEED_BARREPORT)
    assert {k: encoded[k] for k in original} == original


def test_extra_fields_are_tolerated() -> None:
    obj = json.loads(SEED_STATUSCLAIM) | {"future_field": {"x": 1}, "term": 9}
    assert StatusClaim.decode(obj).agent_id == "agent:xyz"


def test_report_issues_as_objects_or_strings() -> None:
    obj = json.loads(SEED_BARREPORT)
    obj["issues"] = ["agent:a missed 2 beats", {"code": "failover", "message": "term 3 -> 4"}]
    report = BarReport.decode(obj)
    assert report.issues == (
        ReportIssue(code="note", message="agent:a missed 2 beats", severity="info"),
        ReportIssue(code="failover", message="term 3 -> 4"),
    )


def _mutate(text: str, **changes: Any) -> str:
    obj = json.loads(text)
    for key, value in changes.items():
        if value is ...:
            del obj[key]
        else:
            obj[key] = value
    return json.dumps(obj)


@pytest.mark.parametrize(
    ("decoder", "payload", "field", "message"),
    [
        (StatusClaim.decode, _mutate(SEED_STATUSCLAIM, beat_index="1234"), "beat_index", "integer"),
        (StatusClaim.decode, _mutate(SEED_STATUSCLAIM, beat_index=True), "beat_index", "integer"),
        (StatusClaim.decode, _mutate(SEED_STATUSCLAIM, beat_index=12.5), "beat_index", "integer"),
        (StatusClaim.decode, _mutate(SEED_STATUSCLAIM, progress="half"), "progress", "number"),
        (StatusClaim.decode, _mutate(SEED_STATUSCLAIM, agent_id=...), "agent_id", "missing"),
        (StatusClaim.decode, _mutate(SEED_STATUSCLAIM, agent_id=7), "agent_id", "str"),
        (StatusClaim.decode, _mutate(SEED_STATUSCLAIM, hlc="nope"), "hlc", "form"),
        (StatusClaim.decode, _mutate(SEED_STATUSCLAIM, type="x.v1"), "type", "expected"),
        (StatusClaim.decode, '{"progress": NaN}', "", "NaN"),
        (StatusClaim.decode, "[1, 2]", "", "JSON object"),
        (StatusClaim.decode, b"\xff\xfe garbage", "", "invalid JSON"),
        (BeatFrame.decode, _mutate(SEED_BEATFRAME, downbeat=1), "downbeat", "bool"),
        (BeatFrame.decode, _mutate(SEED_BEATFRAME, deadline_at="tomorrow"), "deadline_at", "RFC"),
        (BeatFrame.decode, _mutate(SEED_BEATFRAME, window_id="ABC"), "window_id", "32"),
        (BeatFrame.decode, _mutate(SEED_BEATFRAME, tempo_bpm=None), "tempo_bpm", "number"),
        (BarReport.decode, _mutate(SEED_BARREPORT, issues={}), "issues", "list"),
        (BarReport.decode, _mutate(SEED_BARREPORT, issues=[3]), "issues[0]", "object"),
        (BarReport.decode, _mutate(SEED_BARREPORT, secret_rotations_ok="yes"), "secret_", "bool"),
    ],
)
def test_malformed_payloads_name_the_field(
    decoder: Any, payload: str | bytes, field: str, message: str
) -> None:
    with pytest.raises(CodecError, match=message) as info:
        decoder(payload)
    assert info.value.field.startswith(field)


@pytest.mark.parametrize(
    ("text", "ns"),
    [
        ("2024-01-15T10:30:00Z", 1705314600 * 10**9),
        ("2024-01-15T10:30:00.5Z", 1705314600 * 10**9 + 500_000_000),
        ("2024-01-15T11:30:00.000000001+01:00", 1705314600 * 10**9 + 1),
    ],
)
def test_rfc3339(text: str, ns: int) -> None:
    assert parse_ns(text) == ns
    assert parse_ns(format_ns(ns)) == ns


def test_parse_utf8_json_is_strict_about_what_follows_the_value() -> None:
    assert parse_utf8_json(b'{"a": 1}\r\n \t') == {"a": 1}
    for bad in (b'{"a": 1} x', b'{"a": 1}\xe2\x80\x83', b'{"a": 1}{}', b"[1] ]"):
        with pytest.raises(CodecError, match="extra data"):
            parse_utf8_json(bad)
    with pytest.raises(json.JSONDecodeError):
        parse_utf8_json(b' {"a": 1}')  # leading whitespace: left to load_object
