"""Consumers and clients that record what they see into a ``History``.

* ``NatsBeats`` — a raw subscriber of the beat and timeline subjects (keeps every frame).
* ``GrpcBeats`` — ``StreamBeats`` on one replica, reconnecting and resuming after its last beat.
* ``SdkBeats`` — a ``backbeat.sdk.Agent`` following NATS; records every beat it delivers.
* ``TempoClient`` — ``SetTempo`` steps (±≤ 7 %) and ramps, each call's outcome classified.
* ``ClaimClient`` — ``SubmitClaims`` to the ingest every beat, each claim's outcome recorded.
* ``read_reports`` — a JetStream subscriber replaying every BarReport of the cluster.

Every network await has a timeout; ``stop()`` ends each background loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final

import grpc
import nats
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy

from backbeat.core import subjects
from backbeat.core.hlc import HybridLogicalClock
from backbeat.core.messages import BeatFrame, StatusClaim
from backbeat.core.protobuf import (
    beat_frame_from_pb,
    ns_from_timestamp,
    status_claim_to_pb,
    timeline_change_from_pb,
    timeline_from_pb,
)
from backbeat.core.timeline import Timeline
from backbeat.sdk import Agent, AgentSettings, Beat
from backbeat.service.rpc import error_reason
from backbeat.v1 import pulse_service_pb2 as pulse_pb
from backbeat.v1 import pulse_service_pb2_grpc as pulse_grpc
from backbeat.v1 import reverb_service_pb2 as reverb_pb
from backbeat.v1 import reverb_service_pb2_grpc as reverb_grpc
from tests.nemesis.history import History

CALL_TIMEOUT_S: Final = 3.0
STREAM_IDLE_S: Final = 3.0
RETRY_S: Final = 0.2
#: ErrorInfo reasons that say the change was not made (anything else is an unknown outcome).
REFUSALS: Final = frozenset(
    {
        "TEMPO_OUT_OF_BOUNDS",
        "TEMPO_STEP_TOO_LARGE",
        "TEMPO_RATE_LIMITED",
        "UNAUTHENTICATED",
        "PERMISSION_DENIED",
        "NO_QUORUM",
        "NOT_LEADER",
        "FENCED",
    }
)
_RESULTS: Final = {
    reverb_pb.CLAIM_RESULT_ACCEPTED: "accepted",
    reverb_pb.CLAIM_RESULT_DUPLICATE: "duplicate",
    reverb_pb.CLAIM_RESULT_LATE: "late",
    reverb_pb.CLAIM_RESULT_REJECTED: "rejected",
}


def frame_event(consumer: str, frame: BeatFrame) -> dict[str, Any]:
    return {
        "consumer": consumer,
        "beat": frame.beat_index,
        "term": frame.term,
        "scheduled_ns": frame.scheduled_ns,
        "tempo": frame.tempo_bpm,
        "revision": frame.timeline_revision,
        "downbeat": frame.downbeat,
        "bar_start": frame.bar_start_beat,
        "window_id": frame.window_id,
        "degraded": frame.degraded,
        "source": "frame",
    }


def timeline_event(consumer: str, role: str, timeline: Timeline, **extra: Any) -> dict[str, Any]:
    return {
        "consumer": consumer,
        "role": role,
        "tempo": timeline.tempo_bpm,
        "anchor_beat": timeline.anchor_beat,
        "anchor_ns": timeline.anchor_time_ns,
        "revision": timeline.revision,
        "term": timeline.term,
        "bar_length": timeline.bar_length,
        "bar_origin": timeline.bar_origin,
        **extra,
    }


class Loop:
    """A background task with a stop flag."""

    def __init__(self) -> None:
        self._stopped = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._guarded())

    async def _guarded(self) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            await self.run()

    async def run(self) -> None:
        raise NotImplementedError

    @property
    def stopped(self) -> bool:
        return self._stopped.is_set()

    async def pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopped.wait(), seconds)

    async def stop(self) -> None:
        self._stopped.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), 5.0)
            except TimeoutError:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                    await asyncio.wait_for(self._task, 2.0)


async def connect_nats(url: str, name: str) -> NatsClient:
    async def quiet(exc: Exception) -> None:
        return None

    return await asyncio.wait_for(
        nats.connect(
            url,
            name=name,
            allow_reconnect=True,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.2,
            connect_timeout=2,
            error_cb=quiet,
        ),
        10.0,
    )


class NatsBeats:
    """Every frame and timeline record published on NATS, in arrival order."""

    consumer = "nats"

    def __init__(self, url: str, cluster_id: str, history: History) -> None:
        self.url, self.cluster_id, self.history = url, cluster_id, history
        self.nc: NatsClient | None = None
        self.last: BeatFrame | None = None

    async def start(self) -> NatsBeats:
        self.nc = await connect_nats(self.url, "nemesis-nats-beats")
        await self.nc.subscribe(subjects.beat(self.cluster_id), cb=self._on_beat)
        await self.nc.subscribe(subjects.timeline(self.cluster_id), cb=self._on_timeline)
        await asyncio.wait_for(self.nc.flush(), 5.0)
        return self

    async def _on_beat(self, msg: Msg) -> None:
        try:
            frame = BeatFrame.decode(msg.data)
        except ValueError:
            self.history.record("undecodable", consumer=self.consumer, data=msg.data[:200].hex())
            return
        self.history.record("frame", **frame_event(self.consumer, frame))
        if self.last is None or frame.beat_index > self.last.beat_index:
            self.last = frame

    async def _on_timeline(self, msg: Msg) -> None:
        try:
            record = json.loads(msg.data)
        except ValueError:
            return
        for role in ("current", "pending"):
            obj = record.get(role)
            if isinstance(obj, dict):
                with contextlib.suppress(KeyError, ValueError, TypeError):
                    self.history.record(
                        "timeline",
                        consumer=self.consumer,
                        role=role,
                        tempo=float(obj["tempo_bpm"]),
                        anchor_beat=int(obj["anchor_beat"]),
                        anchor_ns=int(obj["anchor_time_ns"]),
                        revision=int(obj["revision"]),
                        term=int(obj.get("term", 0)),
                        bar_length=int(obj.get("bar_length", 0)),
                        bar_origin=int(obj.get("bar_origin", 0)),
                        ramp_target=record.get("ramp_target_bpm"),
                    )

    def current_beat(self) -> int | None:
        """The beat due now, extrapolated from the newest frame at its tempo."""
        last = self.last
        if last is None or last.scheduled_ns is None:
            return None
        period_ns = 60e9 / last.tempo_bpm
        elapsed_beats = int((time.time_ns() - last.scheduled_ns) // period_ns)
        return int(last.beat_index) + elapsed_beats

    async def close(self) -> None:
        if self.nc is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.nc.close(), 5.0)


class GrpcBeats(Loop):
    """``StreamBeats`` on one replica; after any error it reconnects and resumes."""

    def __init__(self, name: str, address: str, history: History) -> None:
        super().__init__()
        self.consumer = f"grpc:{name}"
        self.address = address
        self.history = history
        self.last_beat: int | None = None
        self.reconnects = 0

    async def run(self) -> None:
        while not self.stopped:
            try:
                await self._stream()
            except (grpc.aio.AioRpcError, TimeoutError, OSError, ValueError) as exc:
                if isinstance(exc, grpc.aio.AioRpcError) and (
                    exc.code() == grpc.StatusCode.OUT_OF_RANGE
                ):
                    self.last_beat = None  # history compacted: start from the next beat
            self.reconnects += 1
            await self.pause(RETRY_S)

    async def _stream(self) -> None:
        start = self.last_beat + 1 if self.last_beat is not None else 0
        async with grpc.aio.insecure_channel(self.address) as channel:
            call = pulse_grpc.PulseServiceStub(channel).StreamBeats(
                pulse_pb.StreamBeatsRequest(start_beat=start, progress_interval_ms=500)
            )
            try:
                while not self.stopped:
                    message = await asyncio.wait_for(call.read(), STREAM_IDLE_S)
                    if not isinstance(message, pulse_pb.StreamBeatsResponse):  # grpc.aio.EOF
                        return
                    self._record(message)
            finally:
                call.cancel()

    def _record(self, message: pulse_pb.StreamBeatsResponse) -> None:
        event = message.WhichOneof("event")
        if event == "beat":
            frame = beat_frame_from_pb(message.beat)
            self.history.record("frame", **frame_event(self.consumer, frame))
            self.last_beat = frame.beat_index
        elif event == "timeline":
            timeline = timeline_from_pb(message.timeline)
            self.history.record("timeline", **timeline_event(self.consumer, "current", timeline))
        elif event == "pending":
            change = timeline_change_from_pb(message.pending)
            self.history.record(
                "timeline",
                **timeline_event(
                    self.consumer, "pending", change.timeline, ramp_target=change.ramp_target_bpm
                ),
            )


class SdkBeats:
    """An SDK agent on NATS; every beat it delivers (from a frame or its local timeline)."""

    consumer = "sdk"

    def __init__(self, url: str, cluster_id: str, history: History) -> None:
        settings = AgentSettings(cluster_id=cluster_id, agent_id="nemesis-sdk", nats_url=url)
        self.agent = Agent(settings)
        self.history = history
        self.agent.on_beat(self._on_beat)

    def _on_beat(self, beat: Beat) -> None:
        self.history.record(
            "frame",
            consumer=self.consumer,
            beat=beat.beat_index,
            term=beat.term,
            scheduled_ns=beat.scheduled_ns,
            tempo=beat.tempo_bpm,
            revision=beat.timeline_revision,
            downbeat=beat.downbeat,
            bar_start=beat.bar_start_beat,
            window_id=beat.window_id,
            degraded=beat.leader_degraded,
            source=beat.source.value,
        )

    async def start(self) -> SdkBeats:
        await asyncio.wait_for(self.agent.start(), 10.0)
        return self

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.agent.close(1.0), 5.0)


def classify(error: grpc.aio.AioRpcError) -> tuple[str, str, str]:
    """(outcome, code, reason) of a failed SetTempo."""
    reason = ""
    with contextlib.suppress(Exception):
        reason = error_reason(error) or ""
    code = error.code().name
    if reason in REFUSALS or (code == "INVALID_ARGUMENT" and not reason):
        return "refused", code, reason
    return "unknown", code, reason


class TempoClient:
    """Issues SetTempo calls and records each outcome. Every requested tempo is unique in the
    run, so the checker can tell which call a change in the frames came from."""

    def __init__(self, history: History, rng: random.Random, low: float, high: float) -> None:
        self.history = history
        self.rng = rng
        self.low, self.high = low, high
        self._used: set[float] = set()
        self._count = 0

    def unique(self, tempo: float) -> float:
        # Distinct by more than the checker's tolerance (0.0015 BPM): the nearest free value
        # 0.01 BPM apart, searched outwards within the bounds (a bounded search: this runs on
        # the event loop).
        wanted = round(min(max(tempo, self.low), self.high), 3)
        for k in range(int((self.high - self.low) / 0.01) + 2):
            for candidate in (round(wanted + k * 0.01, 3), round(wanted - k * 0.01, 3)):
                if self.low <= candidate <= self.high and all(
                    abs(candidate - used) >= 0.005 for used in self._used
                ):
                    self._used.add(candidate)
                    return candidate
        raise RuntimeError(f"no unused tempo left in {self.low:g}–{self.high:g} BPM")

    def random_step(self, current: float) -> float:
        return self.unique(current * self.rng.uniform(0.93, 1.07))

    def random_target(self) -> float:
        return self.unique(self.rng.uniform(self.low, self.high))

    async def call(self, replica: str, address: str, tempo: float, *, ramp: bool) -> dict[str, Any]:
        self._count += 1
        call_id = f"tempo-{self._count}"
        start = time.time_ns()
        fields: dict[str, Any] = {
            "id": call_id,
            "op": "ramp" if ramp else "step",
            "requested": tempo,
            "replica": replica,
            "start_ns": start,
            "code": "",
            "reason": "",
        }
        try:
            async with grpc.aio.insecure_channel(address) as channel:
                response = await pulse_grpc.PulseServiceStub(channel).SetTempo(
                    pulse_pb.SetTempoRequest(tempo_bpm=tempo, request_id=call_id, ramp=ramp),
                    timeout=CALL_TIMEOUT_S,
                )
            fields.update(
                outcome="ok",
                code="OK",
                effective_beat=response.effective_beat,
                effective_ns=ns_from_timestamp(response.effective_time),
                effective_tempo=response.timeline.tempo_bpm,
                revision=response.timeline.revision,
                target=response.target_tempo_bpm,
                remaining_steps=response.remaining_steps,
            )
        except grpc.aio.AioRpcError as exc:
            outcome, code, reason = classify(exc)
            fields.update(outcome=outcome, code=code, reason=reason, detail=exc.details())
        except (TimeoutError, OSError) as exc:
            fields.update(outcome="unknown", code="TRANSPORT", reason=type(exc).__name__)
        fields["end_ns"] = time.time_ns()
        return self.history.record("tempo", **fields)


class ClaimClient(Loop):
    """One claim a beat over gRPC ``SubmitClaims``; records each claim's outcome."""

    def __init__(
        self,
        address: str,
        cluster_id: str,
        history: History,
        current_beat: Callable[[], int | None],
        interval_s: float,
    ) -> None:
        super().__init__()
        self.address, self.cluster_id, self.history = address, cluster_id, history
        self.current_beat = current_beat
        self.interval_s = interval_s
        self.hlc = HybridLogicalClock(0x4E4D)
        self.sent = 0

    async def run(self) -> None:
        async with grpc.aio.insecure_channel(self.address) as channel:
            stub = reverb_grpc.ReverbServiceStub(channel)
            while not self.stopped:
                beat = self.current_beat()
                if beat is not None and beat >= 0:
                    await self._send(stub, beat)
                await self.pause(self.interval_s)

    async def _send(self, stub: reverb_grpc.ReverbServiceStub, beat: int) -> None:
        self.sent += 1
        claim = StatusClaim(
            agent_id=f"nemesis-agent-{self.sent % 3}",
            task_id=f"task-{self.sent}",
            beat_index=beat,
            state="executing",
            beats_left=2,
            progress=0.5,
            hlc=str(self.hlc.now()),
            cluster_id=self.cluster_id,
        )
        fields: dict[str, Any] = {
            "agent": claim.agent_id,
            "task": claim.task_id,
            "beat": beat,
            "sent_ns": time.time_ns(),
        }
        try:
            response = await asyncio.wait_for(self._submit(stub, claim), CALL_TIMEOUT_S)
            outcome = response.outcomes[0]
            fields.update(
                outcome=_RESULTS.get(outcome.result, "unknown"),
                reason=outcome.reason,
                window_id=outcome.window_id,
            )
        except (grpc.aio.AioRpcError, TimeoutError, OSError, IndexError) as exc:
            fields.update(outcome="unknown", reason=type(exc).__name__, window_id="")
        self.history.record("claim", **fields)

    @staticmethod
    async def _submit(
        stub: reverb_grpc.ReverbServiceStub, claim: StatusClaim
    ) -> reverb_pb.SubmitClaimsResponse:
        # A request stream without an iterator: the aio call is written to and read from.
        call: Any = stub.SubmitClaims()  # type: ignore[call-arg]
        try:
            await call.write(reverb_pb.SubmitClaimsRequest(claims=[status_claim_to_pb(claim)]))
            await call.done_writing()
            response = await call.read()
            if not isinstance(response, reverb_pb.SubmitClaimsResponse):  # grpc.aio.EOF
                raise OSError("SubmitClaims ended without an answer")
            return response
        finally:
            call.cancel()


async def read_reports(url: str, cluster_id: str, history: History, within_s: float = 15.0) -> int:
    """Replay every BarReport stored for the cluster into the history; how many."""
    nc = await connect_nats(url, "nemesis-reports")
    try:
        js = nc.jetstream(timeout=5.0)
        try:
            info = await js.stream_info(subjects.bar_stream(cluster_id))
        except Exception:  # no stream: no report was ever published
            return 0
        last = info.state.last_seq
        if info.state.messages == 0:
            return 0
        seen: set[int] = set()
        done = asyncio.Event()

        async def on_report(msg: Msg) -> None:
            seq = msg.metadata.sequence.stream
            if seq in seen:
                return
            seen.add(seq)
            with contextlib.suppress(ValueError, KeyError, TypeError):
                body = json.loads(msg.data)
                history.record(
                    "report",
                    window_id=str(body["window_id"]),
                    from_beat=int(body["from_beat"]),
                    to_beat=int(body["to_beat"]),
                    accepted_claims=int(body.get("accepted_claims", 0)),
                    seq=seq,
                    subject=msg.subject,
                )
            if seq >= last:
                done.set()

        sub = await js.subscribe(
            subjects.bars_wildcard(cluster_id),
            cb=on_report,
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.ALL,
        )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), within_s)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(sub.unsubscribe(), 5.0)
        return len(seen)
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(nc.close(), 5.0)


async def bounded(awaitable: Awaitable[Any], seconds: float) -> Any:
    """Await with a bound, swallowing the timeout (teardown helpers)."""
    with contextlib.suppress(TimeoutError, Exception):
        return await asyncio.wait_for(awaitable, seconds)
    return None


def replica_addresses(replicas: Sequence[Any]) -> list[tuple[str, str]]:
    return [(r.node_id, r.grpc_address) for r in replicas]
