from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from backbeat.core.claims import (
    REJECT_REASONS,
    ClaimLimits,
    RejectReason,
    accept_fast,
    claim_fields,
    validate_claim,
)
from backbeat.core.hlc import HLCTimestamp
from backbeat.core.messages import StatusClaim

from .test_messages import SEED_STATUSCLAIM

NOW = 1234
SKEW_NS = 500_000_000


def claim(**changes: Any) -> bytes:
    obj = json.loads(SEED_STATUSCLAIM) | changes
    return json.dumps(obj).encode()


def test_seed_claim_is_accepted() -> None:
    verdict = validate_claim(SEED_STATUSCLAIM.encode(), current_beat=NOW)
    assert verdict.ok
    assert verdict.claim is not None
    assert verdict.claim.task_id == "task:123"


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"not json", RejectReason.MALFORMED),
        (b"\x00\x01\x02\xff", RejectReason.MALFORMED),
        (claim(beat_index="x"), RejectReason.MALFORMED),
        (claim(agent_id=""), RejectReason.MALFORMED),
        (claim(state="sleeping"), RejectReason.UNKNOWN_STATE),
        (claim(progress=1.5), RejectReason.OUT_OF_RANGE),
        (claim(progress=-0.1), RejectReason.OUT_OF_RANGE),
        (claim(beat_index=-1), RejectReason.OUT_OF_RANGE),
        (claim(beats_left=10**9), RejectReason.OUT_OF_RANGE),
        (claim(beat_index=NOW - 65), RejectReason.TOO_OLD),
        (claim(beat_index=NOW + 3), RejectReason.IN_FUTURE),
        (claim(notes="x" * 2000), RejectReason.OVERSIZED),
        (claim(notes="x" * 5000), RejectReason.OVERSIZED),
        (claim(agent_id="a" * 300), RejectReason.OVERSIZED),
        (claim(cluster_id="other"), RejectReason.WRONG_CLUSTER),
    ],
)
def test_bad_claims_get_their_reason(payload: bytes, reason: RejectReason) -> None:
    verdict = validate_claim(payload, current_beat=NOW, cluster_id="chorus")
    assert verdict.reason is reason
    assert verdict.claim is None
    assert verdict.detail


def test_signature_check_is_applied_last() -> None:
    def refuse(c: StatusClaim) -> str | None:
        return f"no valid signature for {c.agent_id}"

    verdict = validate_claim(claim(), current_beat=NOW, check_signature=refuse)
    assert verdict.reason is RejectReason.BAD_SIGNATURE
    assert "agent:xyz" in verdict.detail


def test_limits_are_configurable() -> None:
    tight = ClaimLimits(max_age_beats=1)
    assert validate_claim(claim(beat_index=NOW - 2), current_beat=NOW, limits=tight).reason == (
        RejectReason.TOO_OLD
    )


def test_reason_codes_are_fixed() -> None:
    assert set(REJECT_REASONS) >= {
        "malformed", "unknown_state", "out_of_range", "too_old", "in_future", "oversized",
        "bad_signature",
    }  # fmt: skip


@given(st.one_of(st.binary(max_size=600), st.text(max_size=600)))
def test_garbage_never_raises(payload: bytes | str) -> None:
    verdict = validate_claim(payload, current_beat=NOW)
    assert verdict.ok or verdict.reason is not None


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=10,
)


@given(st.dictionaries(st.sampled_from(list(json.loads(SEED_STATUSCLAIM))), json_values))
def test_field_fuzz_is_accepted_or_rejected_with_a_reason(changes: dict[str, Any]) -> None:
    obj = json.loads(SEED_STATUSCLAIM) | changes
    verdict = validate_claim(json.dumps(obj), current_beat=NOW)
    if verdict.ok:
        assert verdict.claim is not None
    else:
        assert verdict.reason in set(RejectReason)


@pytest.mark.parametrize("field", ["agent_id", "task_id", "key_id"])
@pytest.mark.parametrize("char", ["\x00", "\x1e", "\x1f", "\n", "\x7f"])
def test_ids_with_control_characters_are_malformed(field: str, char: str) -> None:
    obj = json.loads(SEED_STATUSCLAIM)
    obj[field] = f"agent{char}x"
    obj.setdefault("signature", "ab")
    verdict = validate_claim(json.dumps(obj), current_beat=1234)
    assert verdict.reason is RejectReason.MALFORMED
    assert field in verdict.detail


def _same_as_full_validation(payload: bytes, cluster_id: str = "") -> None:
    """accept_fast accepts only what validate_claim accepts, with the same fields, and gives
    a signature check the same claim."""
    checked: list[StatusClaim] = []

    def check(claim: StatusClaim) -> str | None:
        checked.append(claim)
        return "refused" if claim.agent_id.startswith("mallory") else None

    fast = accept_fast(payload, current_beat=NOW, cluster_id=cluster_id)
    fast_checked = accept_fast(
        payload, current_beat=NOW, cluster_id=cluster_id, check_signature=check
    )
    if fast is None:
        assert fast_checked is None
        return
    verdict = validate_claim(payload, current_beat=NOW, cluster_id=cluster_id)
    assert verdict.claim is not None, verdict
    assert fast == claim_fields(verdict.claim)
    assert checked == [verdict.claim]
    assert fast_checked == (None if verdict.claim.agent_id.startswith("mallory") else fast)
    # The clock-skew rule draws the same line on both paths: at the bound, and just past it.
    stamp_ns = HLCTimestamp.parse(verdict.claim.hlc).physical_ms * 1_000_000
    for now_ns, accepted in ((stamp_ns - SKEW_NS, True), (stamp_ns - SKEW_NS - 1, False)):
        skewed = accept_fast(
            payload,
            current_beat=NOW,
            now_ns=now_ns,
            max_clock_skew_ns=SKEW_NS,
            cluster_id=cluster_id,
        )
        assert skewed == (fast if accepted else None)
        verdict = validate_claim(
            payload,
            current_beat=NOW,
            now_ns=now_ns,
            max_clock_skew_ns=SKEW_NS,
            cluster_id=cluster_id,
        )
        assert verdict.reason is (None if accepted else RejectReason.CLOCK_SKEW), verdict


def test_fast_path_takes_plain_claims() -> None:
    signed = claim(key_id="k1", signature="ab", cluster_id="chorus")
    for payload in (SEED_STATUSCLAIM.encode(), claim(progress=1), signed, claim(beats_left=-3)):
        assert accept_fast(payload, current_beat=NOW, cluster_id="chorus") is not None
        _same_as_full_validation(payload, "chorus")
    assert accept_fast(signed, current_beat=NOW) == (
        "agent:xyz",
        "task:123",
        1234,
        "executing",
        3,
        "k1",
    )


@pytest.mark.parametrize(
    "payload",
    [
        claim(beat_index=1234.0),  # accepted by the full check (an integral float)
        claim(notes=None),  # accepted by the full check (the default)
        claim(agent_id="agent\u2028x"),  # not printable, no control character: accepted
        b"\xef\xbb\xbf" + SEED_STATUSCLAIM.encode(),  # BOM: accepted
        SEED_STATUSCLAIM.encode("utf-16"),
        claim(progress=True),
        claim(beat_index=NOW + 3),
        claim(hlc="7ffd:0001"),
        claim(cluster_id="other"),
        claim(agent_id="a\x1fb"),
    ],
)
def test_fast_path_leaves_the_rest_to_full_validation(payload: bytes) -> None:
    assert accept_fast(payload, current_beat=NOW, cluster_id="chorus") is None


@given(st.dictionaries(st.sampled_from(list(json.loads(SEED_STATUSCLAIM))), json_values))
def test_fast_path_agrees_with_full_validation(changes: dict[str, Any]) -> None:
    obj = json.loads(SEED_STATUSCLAIM) | changes
    _same_as_full_validation(json.dumps(obj).encode(), "chorus")
    _same_as_full_validation(json.dumps(obj, ensure_ascii=False).encode())


@given(st.one_of(st.binary(max_size=600), st.text(max_size=600).map(str.encode)))
def test_fast_path_on_garbage(payload: bytes) -> None:
    _same_as_full_validation(payload)


near_valid = st.fixed_dictionaries(
    {},
    optional={
        "agent_id": st.text(max_size=300) | st.just("mallory"),
        "task_id": st.text(min_size=1, max_size=10),
        "key_id": st.text(max_size=5),
        "signature": st.sampled_from(["", "ab"]) | st.none(),
        "beat_index": st.integers(NOW - 70, NOW + 5) | st.floats(NOW - 70, NOW + 5),
        "beats_left": st.integers(-(10**6) - 2, 10**6 + 2),
        "progress": st.floats(-0.5, 1.5) | st.integers(-1, 2) | st.booleans(),
        "state": st.sampled_from(["planning", "done", "waiting", "Done", ""]),
        "hlc": st.from_regex(r"[0-9a-fA-Fg]{0,17}:[0-9a-f]{1,4}:[0-9a-f]{0,4}", fullmatch=True),
        "notes": st.text(max_size=1030) | st.none(),
        "cluster_id": st.sampled_from(["", "chorus", "other"]),
        "type": st.sampled_from(["backbeat.statusclaim.v1", "backbeat.beatframe.v1"]),
    },
)


@given(near_valid)
def test_fast_path_agrees_with_full_validation_near_the_limits(changes: dict[str, Any]) -> None:
    obj = json.loads(SEED_STATUSCLAIM) | changes
    _same_as_full_validation(json.dumps(obj).encode(), "chorus")
