"""Signed beats and claims end to end (real Redis, NATS, pulse, ingest and SDK agent): a
tampered message, an unknown key id and an expired key are rejected and counted, and a key
rotation in the middle of a window keeps every honest message accepted."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import replace

import nats
import nats.aio.client
import pytest

from backbeat.core import subjects
from backbeat.core.ed25519 import PrivateKey, PrivateKeyring, sign_frame
from backbeat.core.messages import BeatFrame, StatusClaim
from backbeat.core.signing import Keyring, SigningKey, sign_claim
from backbeat.embedded import NatsServer, RedisServer
from backbeat.pulse.node import Role
from backbeat.pulse.server import PulseServer
from backbeat.pulse.settings import PulseSettings
from backbeat.reverb.server import ReverbServer, ReverbSettings
from backbeat.sdk import Agent, AgentSettings
from tests.waiting import eventually

pytestmark = pytest.mark.integration

S = 1_000_000_000
K1 = SigningKey("beat-1", b"1" * 8 + b"a" * 24, activates_ns=0)
STRANGER = SigningKey("beat-x", b"x" * 8 + b"b" * 24, activates_ns=0)
#: A key every verifier still knows, but that expired an hour ago.
K0 = SigningKey(
    "beat-0", b"0" * 8 + b"d" * 24, activates_ns=0, expires_ns=time.time_ns() - 3600 * S
)
#: The pulse's frame keys (Ed25519): an expired one, the current one, and a stranger's.
F0 = PrivateKey("frame-0", b"0" * 32, activates_ns=0, expires_ns=time.time_ns() - 3600 * S)
F1 = PrivateKey("frame-1", b"1" * 32, activates_ns=0)
F_STRANGER = PrivateKey("frame-x", b"x" * 32, activates_ns=0)
FRAME_KEYS = PrivateKeyring([F0, F1])


@pytest.fixture
async def stack(
    redis_servers: list[RedisServer], nats_server: NatsServer, cluster_id: str
) -> AsyncIterator[tuple[PulseServer, ReverbServer, dict[str, Keyring]]]:
    """A signing pulse and a verifying ingest sharing a keyring that the test can rotate."""
    ring = {"current": Keyring([K0, K1])}
    pulse = PulseServer(
        PulseSettings(
            cluster_id=cluster_id,
            node_id="pulse-sig",
            redis_urls=tuple(s.url for s in redis_servers),
            nats_url=nats_server.url,
            tempo_bpm=240.0,
            admin_port=-1,
        ),
        frame_signing_keys=lambda: FRAME_KEYS,
    )
    reverb = ReverbServer(
        ReverbSettings(
            cluster_id=cluster_id,
            nats_url=nats_server.url,
            redis_url=redis_servers[0].url,
            grpc_port=-1,
            admin_port=-1,
        ),
        signing_keys=lambda: ring["current"],
        require_signed_claims=True,
    )
    async with pulse, reverb:
        await eventually(lambda: pulse.node.role is Role.LEADER, within_s=20.0)
        await eventually(lambda: reverb.ingest.readiness()[0], within_s=20.0)
        yield pulse, reverb, ring


def processed(reverb: ReverbServer, result: str, reason: str = "") -> float:
    return float(reverb.ingest.metrics.processed.labels(result, reason)._value.get())


async def test_forged_claims_are_rejected_and_counted_and_rotation_keeps_honest_ones(
    stack: tuple[PulseServer, ReverbServer, dict[str, Keyring]],
    nc: nats.aio.client.Client,
    cluster_id: str,
) -> None:
    _, reverb, ring = stack
    beat = reverb.ingest.follower.current_beat()

    def claim(task: str, cluster: str = cluster_id) -> StatusClaim:
        return StatusClaim(
            "agent:s", task, beat, "executing", 2, 0.5, "0001:0001:beef", cluster_id=cluster
        )

    now = time.time_ns()
    expired_ring = Keyring([replace(K0, expires_ns=None)])
    honest = sign_claim(claim("t-honest-1"), ring["current"])
    forged = [
        replace(sign_claim(claim("t-tampered"), ring["current"]), beats_left=9),  # tampered
        sign_claim(claim("t-unknown"), Keyring([STRANGER])),  # unknown key id
        sign_claim(claim("t-expired"), expired_ring, now_ns=now - 2 * 3600 * S),  # expired
        claim("t-unsigned"),
        # Correctly signed with this cluster's key, but bound to another cluster or to none:
        # a claim signed for one cluster is never valid in another sharing the key.
        sign_claim(claim("t-other-cluster", "elsewhere"), ring["current"]),
        sign_claim(claim("t-no-cluster", ""), ring["current"]),
    ]
    for c in [honest, *forged]:
        await nc.publish(subjects.claims(cluster_id), c.encode())
    await nc.flush()
    await eventually(lambda: processed(reverb, "rejected", "bad_signature") == 5, within_s=20.0)
    await eventually(lambda: processed(reverb, "rejected", "wrong_cluster") == 1, within_s=20.0)
    assert processed(reverb, "accepted") == 1

    # Rotation mid-window: key 2 takes over now; claims signed by key 1 just before the switch
    # (still in flight) and by key 2 after it are all accepted.
    k2 = SigningKey("beat-2", b"2" * 8 + b"c" * 24, activates_ns=time.time_ns())
    before = sign_claim(claim("t-old-key"), ring["current"])
    ring["current"] = Keyring([K0, K1, k2])
    after = sign_claim(claim("t-new-key"), ring["current"])
    assert (before.key_id, after.key_id) == ("beat-1", "beat-2")
    for c in (before, after):
        await nc.publish(subjects.claims(cluster_id), c.encode())
    await nc.flush()
    await eventually(lambda: processed(reverb, "accepted") == 3, within_s=20.0)
    assert processed(reverb, "rejected", "bad_signature") == 5
    entries = await reverb.ingest.store.dead_letter_entries()
    details = [bytes(e.get("detail", b"")).decode() for e in entries]
    for status in ("tampered", "unknown_key", "expired", "unsigned", "wrong_cluster"):
        assert any(d.startswith(status) for d in details), (status, details)


async def test_forged_frames_are_dropped_by_the_sdk(
    stack: tuple[PulseServer, ReverbServer, dict[str, Keyring]],
    nats_server: NatsServer,
    nc: nats.aio.client.Client,
    cluster_id: str,
) -> None:
    pulse, _, _ = stack
    agent = Agent(
        AgentSettings(
            cluster_id=cluster_id,
            agent_id="agent:verifier",
            nats_url=nats_server.url,
            frame_keys=FRAME_KEYS.public(),
        )
    )
    async with agent:
        await eventually(lambda: agent.stats.frames_accepted >= 2, within_s=20.0)
        template = pulse.node.hub.last_frame if hasattr(pulse.node.hub, "last_frame") else None
        base = BeatFrame(
            cluster_id=cluster_id,
            beat_index=10_000_000,
            downbeat=False,
            phase="execution",
            hlc="0001:0001:beef",
            deadline_ns=time.time_ns() + S,
            tempo_bpm=240.0,
            window_id="0" * 32,
            term=10_000,
        ) if template is None else template  # fmt: skip
        base = replace(base, beat_index=10_000_000, term=10_000)
        now = time.time_ns()
        expired = PrivateKeyring([replace(F0, expires_ns=None)])
        forged = [
            replace(sign_frame(base, FRAME_KEYS), tempo_bpm=60.0),  # tampered
            sign_frame(base, PrivateKeyring([F_STRANGER])),  # unknown key id
            sign_frame(base, expired, now_ns=now - 2 * 3600 * S),  # expired
        ]
        for frame in forged:
            await nc.publish(subjects.beat(cluster_id), frame.encode())
        await nc.flush()
        await eventually(
            lambda: agent.stats.frames_dropped.get("bad_signature", 0) >= 3, within_s=20.0
        )
        # Honest frames keep coming and keep being accepted; the grid was not hijacked.
        accepted = agent.stats.frames_accepted
        await eventually(lambda: agent.stats.frames_accepted > accepted + 1, within_s=20.0)
        assert agent.last_beat is not None
        assert agent.last_beat.beat_index < 10_000_000
