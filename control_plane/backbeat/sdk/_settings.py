"""AgentSettings: everything an Agent can be told, in one typed object."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from backbeat.core.ed25519 import PublicKeyring
from backbeat.core.frame_guard import GuardSettings
from backbeat.core.signing import Keyring
from backbeat.core.subjects import DEFAULT_CLUSTER_ID, check_cluster_id

log = logging.getLogger("backbeat.sdk")

#: The pulse's public keyring, or a zero-argument callable returning the current one.
FrameKeys = PublicKeyring | Callable[[], PublicKeyring]


@dataclass(frozen=True, slots=True)
class AgentSettings:
    """How an Agent connects and behaves.

    Beats come over NATS when ``nats_url`` is set, otherwise over gRPC ``StreamBeats`` from
    ``pulse_targets`` (any pulse replica relays the leader's beats: agents of one process
    start at successive targets, so their streams spread over all of them, and move on to the
    next target when a replica fails). Claims go over NATS when ``nats_url`` is set, otherwise
    over gRPC ``SubmitClaims`` to ``reverb_target`` (one address or several, comma-separated:
    spread like the pulse targets). ``nats_url`` may name several servers, comma-separated (a
    NATS cluster): the agent reconnects to another when its server is lost.
    """

    cluster_id: str
    agent_id: str
    nats_url: str | None = None
    pulse_targets: Sequence[str] = ()
    reverb_target: str | None = None
    #: Bearer token for gRPC calls that need one (sent as ``authorization`` metadata).
    token: str | None = None
    #: The pulse's public keyring: every frame and timeline announcement is verified, and
    #: those that do not verify are dropped (``bad_signature``).
    frame_keys: FrameKeys | None = None
    #: Drop unsigned frames and timeline announcements too (``unsigned``); production fleets
    #: turn this on.
    require_signed_frames: bool = False
    #: Bounds of the frame guard (clock skew, term and revision jumps; see FrameGuard).
    frame_bounds: GuardSettings = field(default_factory=GuardSettings)
    #: Sign every claim with the newest active key of this keyring.
    claim_keyring: Keyring | None = None
    #: A beat whose frame has not arrived this long after its expected arrival is delivered
    #: from the local timeline (capped at a quarter of the beat period).
    frame_grace_s: float = 0.020
    #: This many beats in a row without a frame switch the status to DEGRADED.
    degraded_after_beats: int = 2
    #: Frames whose arrival times feed the median clock offset estimate.
    offset_samples: int = 15
    #: Beats per bar until the timeline (or two downbeats) says otherwise.
    bar_length_hint: int = 4
    #: After a gap (e.g. frames come back on a faster grid), at most this many missed beats
    #: are delivered at once; older ones are skipped and counted.
    max_catch_up_beats: int = 64
    #: Claims buffered before ``report`` waits (and ``report_nowait`` raises).
    claim_buffer: int = 10_000
    claim_batch: int = 500
    #: Longest a claim waits for its batch to fill.
    claim_linger_s: float = 0.005
    #: Give up a batch after this many failed attempts (0: retry until close).
    claim_max_attempts: int = 0
    #: Queue length of each ``beats()`` iterator; a slow reader loses the oldest beats.
    iterator_queue: int = 64
    #: How long close() waits for buffered claims to go out.
    close_timeout_s: float = 5.0
    #: gRPC stream considered dead when silent this long (progress messages keep it alive).
    stream_idle_timeout_s: float = 10.0
    #: How long ``start()`` waits for the first NATS connection (0: for ever); it then raises
    #: ``NatsUnreachable``. Once connected, the client reconnects for ever.
    connect_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        check_cluster_id(self.cluster_id)
        if not self.agent_id:
            raise ValueError("agent_id must not be empty")
        if not self.nats_url and not self.pulse_targets:
            raise ValueError("give nats_url or pulse_targets (gRPC) to receive beats")
        if not self.nats_url and not self.reverb_target and not self.pulse_targets:
            raise ValueError("give nats_url or reverb_target to send claims")
        if self.claim_buffer < 1 or self.claim_batch < 1:
            raise ValueError("claim_buffer and claim_batch must be at least 1")
        if self.degraded_after_beats < 1:
            raise ValueError("degraded_after_beats must be at least 1")
        if self.connect_timeout_s < 0:
            raise ValueError("connect_timeout_s must be 0 (wait for ever) or more")

    @classmethod
    def from_env(
        cls, agent_id: str, *, env: Mapping[str, str] | None = None, **overrides: object
    ) -> AgentSettings:
        """From ``BACKBEAT_CLUSTER``, ``NATS_URL``, ``BACKBEAT_PULSE_TARGETS`` (comma separated),
        ``BACKBEAT_REVERB_TARGET`` and ``BACKBEAT_API_TOKEN`` (``BACKBEAT_TOKEN``, an older
        name, is still read, with a warning); keyword arguments win."""
        env = os.environ if env is None else env
        values: dict[str, object] = {
            "cluster_id": env.get("BACKBEAT_CLUSTER") or DEFAULT_CLUSTER_ID,
            "agent_id": agent_id,
            "nats_url": env.get("NATS_URL") or None,
            "pulse_targets": tuple(
                t.strip() for t in env.get("BACKBEAT_PULSE_TARGETS", "").split(",") if t.strip()
            ),
            "reverb_target": env.get("BACKBEAT_REVERB_TARGET") or None,
            "token": _token_from(env),
        }
        values.update(overrides)
        return cls(**values)  # type: ignore[arg-type]

    def __repr__(self) -> str:  # never print the token
        return (
            f"AgentSettings(cluster_id={self.cluster_id!r}, agent_id={self.agent_id!r}, "
            f"nats_url={self.nats_url!r}, pulse_targets={tuple(self.pulse_targets)!r}, "
            f"reverb_target={self.reverb_target!r}, token={'***' if self.token else None}, "
            f"verify_frames={self.frame_keys is not None}, "
            f"require_signed_frames={self.require_signed_frames})"
        )


def _token_from(env: Mapping[str, str]) -> str | None:
    """``BACKBEAT_API_TOKEN``, the name every BACKBEAT command reads; ``BACKBEAT_TOKEN`` (the
    name older docs gave) still works but says so, so that claims are not lost to a typo."""
    token = env.get("BACKBEAT_API_TOKEN")
    legacy = env.get("BACKBEAT_TOKEN")
    if legacy and not token:
        log.warning("BACKBEAT_TOKEN is read for now; name it BACKBEAT_API_TOKEN")
        return legacy
    if legacy and legacy != token:
        log.warning("BACKBEAT_TOKEN is ignored: BACKBEAT_API_TOKEN is set and wins")
    return token or None
