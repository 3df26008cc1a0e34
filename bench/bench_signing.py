"""Cost of signing and verifying beats and claims, next to encoding/decoding the same message.

The baselines are work every component does anyway (the pulse encodes each frame, the ingest
decodes each claim), so the ratio says how much signing adds on top.
"""

from __future__ import annotations

import time

from backbeat.core.ed25519 import PrivateKey, PrivateKeyring, frame_verifier, sign_frame
from backbeat.core.messages import BeatFrame, StatusClaim
from backbeat.core.signing import Keyring, SigningKey, claim_signature_check, sign_claim
from bench.result import Result
from bench.throughput import calls_per_second


def run(quick: bool) -> list[Result]:
    seconds = 0.6 if quick else 3.0
    now = time.time_ns()
    ring = Keyring(
        [
            SigningKey("beat-1", bytes(range(32)), activates_ns=now - 3600 * 10**9),
            SigningKey("beat-2", bytes(range(1, 33)), activates_ns=now - 60 * 10**9),
        ]
    )
    frame_keys = PrivateKeyring(
        [
            PrivateKey("frame-1", bytes(range(32)), activates_ns=now - 3600 * 10**9),
            PrivateKey("frame-2", bytes(range(1, 33)), activates_ns=now - 60 * 10**9),
        ]
    )
    frame = BeatFrame(
        cluster_id="bench", beat_index=123_456, downbeat=True, phase="plan",
        hlc="18c2f3a1b00:0001:beef", deadline_ns=now + 500_000_000, tempo_bpm=120.0,
        window_id="7e9b0e6c4c9a4e59b7f2d9a3c1b2e4d5", term=4, scheduled_ns=now, emitted_ns=now,
        bar_start_beat=123_456, timeline_revision=2,
    )  # fmt: skip
    claim = StatusClaim(
        agent_id="agent:0042", task_id="task:77", beat_index=123_456, state="executing",
        beats_left=3, progress=0.5, hlc="18c2f3a1b00:0001:beef", notes="fetching inputs",
        cluster_id="bench",
    )  # fmt: skip
    signed_frame = sign_frame(frame, frame_keys, now_ns=now)
    signed_claim_payload = sign_claim(claim, ring, now_ns=now).encode()
    verify = frame_verifier(frame_keys.public())
    check = claim_signature_check(ring, cluster_id="bench")
    signed_claim = StatusClaim.decode(signed_claim_payload)

    encode = calls_per_second(frame.encode, seconds)
    decode = calls_per_second(lambda: StatusClaim.decode(signed_claim_payload), seconds)
    figures = [
        ("sign_frame", calls_per_second(lambda: sign_frame(frame, frame_keys, now_ns=now), seconds),
         "BeatFrame.encode()", encode),
        ("verify frame", calls_per_second(lambda: verify(signed_frame), seconds),
         "BeatFrame.encode()", encode),
        ("check claim signature", calls_per_second(lambda: check(signed_claim), seconds),
         "StatusClaim.decode()", decode),
    ]  # fmt: skip
    return [
        Result(
            bench="signing",
            metric=name,
            value=rate / 1e3,
            unit="k ops/s",
            baseline_name=baseline_name,
            baseline_value=baseline / 1e3,
            better="higher",
            target="claim check >= 20k/s (ingest target)" if "claim" in name else "",
            notes="one core, best of 3; frames Ed25519, claims HMAC-SHA256; 2-key keyrings",
        )
        for name, rate, baseline_name, baseline in figures
    ]
