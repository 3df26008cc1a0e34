"""The ingest end to end against real NATS and Redis: round trips, bad input, duplicates, late."""

from __future__ import annotations

import dataclasses
import json
import math

import nats
import pytest

from backbeat.core import subjects
from backbeat.core.claims import DEFAULT_LIMITS, REJECT_REASONS, ClaimVerdict, RejectReason
from backbeat.core.messages import BeatFrame, StatusClaim
from backbeat.core.timeline import Timeline
from backbeat.embedded import NatsServer, RedisServer
from backbeat.reverb.ingest import ClaimIngest, IngestSettings
from backbeat.reverb.timeline_follower import TimelineFollower
from tests.reverb.claim_samples import SEED_CLAIM, ManualClock, make_claim
from tests.reverb.ingest_harness import BAR, grid, ingest_for
from tests.waiting import eventually

pytestmark = pytest.mark.integration

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def _reconciles(totals: dict[str, int]) -> bool:
    parts = sum(totals.get(k, 0) for k in ("accepted", "duplicate", "late", "rejected"))
    return parts == totals.get("received", 0)


def _processed(ingest: ClaimIngest) -> dict[str, float]:
    """Sum of backbeat_reverb_claims_processed_total by result."""
    out: dict[str, float] = {}
    for metric in ingest.metrics.registry.collect():
        if metric.name == "backbeat_reverb_claims_processed":
            for sample in metric.samples:
                if sample.name.endswith("_total"):
                    result = sample.labels["result"]
                    out[result] = out.get(result, 0) + sample.value
    return out


async def test_seed_claim_from_nats_lands_in_its_window(
    redis_server: RedisServer, nats_server: NatsServer, cluster_id: str
) -> None:
    async with ingest_for(cluster_id, redis_server.url, nats_server.url) as ingest:
        nc = await nats.connect(nats_server.url)
        try:
            await nc.publish(
                subjects.claims(cluster_id), SEED_CLAIM, headers={"traceparent": TRACEPARENT}
            )
            await nc.flush()

            async def committed() -> bool:
                return (await ingest.store.totals()).get("accepted", 0) == 1

            await eventually(committed, within_s=20.0, what="the seed claim to be committed")
        finally:
            await nc.close()
        timeline = ingest.follower.timeline
        assert timeline is not None
        window = timeline.window_id(1234)
        assert timeline.window_bounds(1234) == (1232, 1235)
        [(payload, traceparent)] = await ingest.store.window_claims(window)
        assert StatusClaim.decode(payload) == StatusClaim.decode(SEED_CLAIM)
        assert traceparent == TRACEPARENT
        agg = await ingest.store.seal_and_read(window, 1232, 1235)
        assert agg.agent_ids == frozenset({"agent:xyz"})
        assert agg.claims_by_state == {"executing": 1}
        assert _processed(ingest)["accepted"] == 1


async def test_submit_reports_each_claims_outcome(
    redis_server: RedisServer, cluster_id: str
) -> None:
    async with ingest_for(cluster_id, redis_server.url, None, current_beat=102) as ingest:
        timeline = ingest.follower.timeline
        assert timeline is not None
        claim = make_claim("a1", "t1", 101)
        outcomes = await ingest.submit(
            [
                claim,
                claim,
                make_claim("a1", "t2", 500),
                SEED_CLAIM.replace(b'"beat_index": 1234', b'"beat_index": 100'),
                ClaimVerdict(None, RejectReason.MALFORMED, "hlc: not a stamp"),
            ],
            traceparent=TRACEPARENT,
        )
        assert [(o.result, o.reason) for o in outcomes] == [
            ("accepted", ""),
            ("duplicate", ""),
            ("rejected", "in_future"),
            ("accepted", ""),
            ("rejected", "malformed"),
        ]
        assert outcomes[0].window_id == timeline.window_id(101)
        assert outcomes[3].window_id == timeline.window_id(100) == outcomes[0].window_id
        assert "500" in outcomes[2].detail


async def test_signature_check_applies_to_raw_payloads(
    redis_server: RedisServer, cluster_id: str
) -> None:
    # Raw payloads on the fast path get the signature check too.
    def refuse_mallory(claim: StatusClaim) -> str | None:
        return "unknown key" if claim.agent_id == "mallory" else None

    timeline, clock = grid(cluster_id, 102)
    settings = IngestSettings(cluster_id=cluster_id, nats_url=None, redis_url=redis_server.url)
    follower = TimelineFollower(cluster_id, BAR, timeline=timeline, clock=clock)
    async with ClaimIngest(settings, follower=follower, check_signature=refuse_mallory) as ingest:
        outcomes = await ingest.submit(
            [make_claim("mallory", "t1", 101).encode(), make_claim("alice", "t1", 101).encode()]
        )
    assert [(o.result, o.reason) for o in outcomes] == [
        ("rejected", "bad_signature"),
        ("accepted", ""),
    ]


def _bad_corpus(current_beat: int) -> list[tuple[bytes, str]]:
    good = json.loads(SEED_CLAIM)
    good["beat_index"] = current_beat

    def variant(**changes: object) -> bytes:
        obj = dict(good)
        for key, value in changes.items():
            if value is _DROP:
                obj.pop(key)
            else:
                obj[key] = value
        return json.dumps(obj).encode()

    nan_progress = json.dumps(good).replace('"progress": 0.5', '"progress": NaN').encode()
    future_hlc = f"{(10**13):x}:0001:beef"  # year 2286
    return [
        (b"{not json", "malformed"),
        (b"\x00\xff\xfe garbage \x80\x81", "malformed"),
        (b"", "malformed"),
        (b"[1, 2, 3]", "malformed"),
        (b'"just a string"', "malformed"),
        (variant(type="backbeat.beatframe.v1"), "malformed"),
        (variant(agent_id=_DROP), "malformed"),
        (variant(beat_index="1234"), "malformed"),
        (variant(beat_index=True), "malformed"),
        (variant(progress="half"), "malformed"),
        (variant(beats_left=1.5), "malformed"),
        (variant(agent_id=""), "malformed"),
        (variant(hlc="yesterday"), "malformed"),
        (nan_progress, "malformed"),
        (variant(progress=-0.1), "out_of_range"),
        (variant(progress=1.5), "out_of_range"),
        (variant(beat_index=-5), "out_of_range"),
        (variant(beats_left=10**9), "out_of_range"),
        (variant(state="sleeping"), "unknown_state"),
        (variant(state="EXECUTING"), "unknown_state"),
        (variant(notes="x" * 2000), "oversized"),
        (variant(agent_id="a" * 300), "oversized"),
        (variant(notes="x" * 5000), "oversized"),
        (b"{" + b" " * 10_000 + b"}", "oversized"),
        (variant(beat_index=current_beat + 3), "in_future"),
        (variant(beat_index=current_beat - 65), "too_old"),
        (variant(beat_index=0), "too_old"),
        (variant(cluster_id="someone-else"), "wrong_cluster"),
        (variant(hlc=future_hlc), "clock_skew"),
    ]


_DROP = object()


async def test_bad_claims_are_rejected_with_the_right_reason(
    redis_server: RedisServer, nats_server: NatsServer, cluster_id: str
) -> None:
    current = 1235
    corpus = _bad_corpus(current)
    async with ingest_for(cluster_id, redis_server.url, nats_server.url) as ingest:
        nc = await nats.connect(nats_server.url)
        try:
            subject = subjects.claims(cluster_id)
            for payload, _ in corpus:
                await nc.publish(subject, payload)
            await nc.publish(subject, SEED_CLAIM)  # the service still accepts good claims
            await nc.flush()

            async def all_in() -> bool:
                return (await ingest.store.totals()).get("received", 0) == len(corpus) + 1

            await eventually(all_in, within_s=20.0, what="every claim to be processed")
        finally:
            await nc.close()
        dead = await ingest.store.dead_letter_entries()
        got = [(d["payload"], d["reason"].decode()) for d in dead]
        # A dead letter keeps the rejected payload up to the claim size limit.
        assert got == [(payload[: DEFAULT_LIMITS.max_payload_bytes], r) for payload, r in corpus]
        for entry in dead:
            assert int(entry["received_ns"]) > 0
            assert entry["detail"]
        totals = await ingest.store.totals()
        assert totals["accepted"] == 1
        assert totals["rejected"] == len(corpus)
        assert _reconciles(totals)
        by_reason = {r: sum(1 for _, x in corpus if x == r) for r in REJECT_REASONS}
        for reason, n in by_reason.items():
            assert totals.get(f"rejected:{reason}", 0) == n, reason
        processed = _processed(ingest)
        assert processed["rejected"] == len(corpus)
        assert processed["accepted"] == 1
        assert ingest.readiness() == (True, "ready")


async def test_duplicates_and_late_claims_are_counted_exactly(
    redis_server: RedisServer, cluster_id: str
) -> None:
    async with ingest_for(cluster_id, redis_server.url, None, current_beat=103) as ingest:
        timeline = ingest.follower.timeline
        assert timeline is not None
        claims = [make_claim(f"a{i}", "t", 100 + i % 4) for i in range(40)]
        outcomes = await ingest.submit(claims + claims[:10])
        assert [o.result for o in outcomes] == ["accepted"] * 40 + ["duplicate"] * 10
        old = timeline.window_id(100)
        sealed = await ingest.store.seal_and_read(old, 100, 103)
        assert (sealed.accepted_claims, sealed.duplicate_claims) == (40, 10)

        # The clock moves into the next bar; claims for the sealed window are now late.
        clock = ingest.follower.clock
        assert isinstance(clock, ManualClock)
        clock.now_ns = timeline.beat_time_ns(105)
        late = [make_claim(f"late{i}", "t", 102) for i in range(7)]
        outcomes = await ingest.submit(late + late[:2] + claims[:3])
        assert [o.result for o in outcomes] == ["late"] * 7 + ["duplicate"] * 5
        assert {o.window_id for o in outcomes} == {old}
        assert await ingest.store.seal_and_read(old, 100, 103) == sealed
        current = await ingest.store.seal_and_read(timeline.window_id(104), 104, 107)
        assert (current.late_claims, current.duplicate_claims) == (7, 5)
        side = await ingest.store.late_entries()
        assert len(side) == 7
        assert {e["window"] for e in side} == {old.encode()}
        totals = await ingest.store.totals()
        assert totals == {
            "received": 62,
            "accepted": 40,
            "duplicate": 15,
            "late": 7,
        }
        assert _processed(ingest) == {"accepted": 40, "duplicate": 15, "late": 7, "rejected": 0}


async def test_ingest_follows_beat_frames_before_taking_claims(
    redis_server: RedisServer, nats_server: NatsServer, cluster_id: str
) -> None:
    settings = IngestSettings(
        cluster_id=cluster_id,
        nats_url=nats_server.url,
        redis_url=redis_server.url,
        bar_length=BAR,
    )
    timeline, clock = grid(cluster_id, 1235)
    follower = TimelineFollower(cluster_id, BAR, clock=clock)
    async with ClaimIngest(settings, follower=follower) as ingest:
        assert not ingest.readiness()[0]
        nc = await nats.connect(nats_server.url)
        try:
            frame = BeatFrame(
                cluster_id=cluster_id,
                beat_index=1234,
                downbeat=False,
                phase="execution",
                hlc="7ffd:0001:beef",
                deadline_ns=timeline.beat_time_ns(1235),
                tempo_bpm=120,
                window_id=timeline.window_id(1234),
                term=3,
                scheduled_ns=timeline.beat_time_ns(1234),
                bar_start_beat=1232,
            )
            await nc.publish(subjects.beat(cluster_id), frame.encode())

            async def ready() -> bool:
                return ingest.readiness()[0]

            await eventually(ready, within_s=20.0, what="the ingest to learn the timeline")
            learned = ingest.follower.timeline
            assert learned is not None
            assert learned.bar_start(1234) == 1232
            assert learned.beat_time_ns(1300) == timeline.beat_time_ns(1300)
            assert ingest.follower.current_beat() == 1235
            # Stale frames (older term) are ignored.
            stale = dataclasses.replace(frame, term=2, tempo_bpm=60.0)
            assert not ingest.follower.on_frame(stale.encode())

            await nc.publish(subjects.claims(cluster_id), SEED_CLAIM)
            await nc.flush()

            async def committed() -> bool:
                return (await ingest.store.totals()).get("accepted", 0) == 1

            await eventually(committed, within_s=20.0, what="the claim to be committed")
        finally:
            await nc.close()


def test_follower_uses_deadline_when_scheduled_time_is_missing() -> None:
    timeline = Timeline.start("c1", 100, 10**18, bar_length=BAR)
    follower = TimelineFollower("c1", BAR)
    frame = BeatFrame(
        cluster_id="c1",
        beat_index=9,
        downbeat=False,
        phase="plan",
        hlc="1:0:1",
        deadline_ns=timeline.beat_time_ns(10),
        tempo_bpm=100,
        window_id=timeline.window_id(9),
    )
    assert follower.on_frame(frame.encode())
    assert not follower.on_frame(b"garbage")
    learned = follower.timeline
    assert learned is not None
    assert abs(learned.beat_time_ns(50) - timeline.beat_time_ns(50)) <= 1
    assert math.isclose(learned.tempo_bpm, 100)
