"""Signatures of BeatFrames and StatusClaims, and the keyring's rotation rules."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backbeat.core.claims import RejectReason, SignatureCheck, validate_claim
from backbeat.core.ed25519 import (
    PrivateKey,
    PrivateKeyring,
    PublicKeyring,
    sign_frame,
    verify_frame,
)
from backbeat.core.messages import BeatFrame, StatusClaim
from backbeat.core.signing import (
    CLAIM_FIELDS,
    FRAME_FIELDS,
    UNSIGNED_FIELDS,
    Keyring,
    SigningKey,
    VerifyStatus,
    canonical_claim,
    canonical_frame,
    claim_signature_check,
    sign_claim,
    verify_claim,
)
from backbeat.errors import SigningError

S = 1_000_000_000
T0 = 1_700_000_000 * S
KEY_A = SigningKey("beat-1", b"a" * 32, activates_ns=T0)
KEY_B = SigningKey("beat-2", b"b" * 32, activates_ns=T0 + 100 * S)
#: The pulse's Ed25519 frame key (frames are not HMAC-signed: agents hold the HMAC keys).
FRAME_KEYS = PrivateKeyring([PrivateKey("frame-1", b"f" * 32, activates_ns=T0)])


def frame(**overrides: object) -> BeatFrame:
    base = BeatFrame(
        cluster_id="chorus-production",
        beat_index=1234,
        downbeat=True,
        phase="execution",
        hlc="7ffd:0001:beef",
        deadline_ns=T0 + 500_000_000,
        tempo_bpm=120.0,
        window_id="7e9b0e6c4c9a4e59b7f2d9a3c1b2e4d5",
        term=3,
        scheduled_ns=T0,
        emitted_ns=T0 + 12_345,
        bar_start_beat=1232,
        timeline_revision=7,
    )
    return dataclasses.replace(base, **overrides)  # type: ignore[arg-type]


def claim(**overrides: object) -> StatusClaim:
    base = StatusClaim(
        agent_id="agent:xyz",
        task_id="task:123",
        beat_index=1234,
        state="executing",
        beats_left=3,
        progress=0.5,
        hlc="7ffd:0001:beef",
        notes="fetching inputs",
    )
    return dataclasses.replace(base, **overrides)  # type: ignore[arg-type]


def test_canonical_forms_cover_every_field_but_the_signature() -> None:
    """A field added to a message later must be signed or consciously excluded here."""
    for cls, fields in ((BeatFrame, FRAME_FIELDS), (StatusClaim, CLAIM_FIELDS)):
        names = {f.name for f in dataclasses.fields(cls)}
        assert names - UNSIGNED_FIELDS == {name for name, _ in fields}


def test_canonical_frame_is_the_documented_byte_form() -> None:
    text = canonical_frame(frame()).decode()
    assert text == (
        "backbeat.beatframe.v1\n"
        "cluster_id=17:chorus-production\n"
        "beat_index=1234\n"
        "downbeat=true\n"
        "phase=9:execution\n"
        "hlc=14:7ffd:0001:beef\n"
        f"deadline_ns={T0 + 500_000_000}\n"
        "tempo_bpm=405e000000000000\n"
        "window_id=32:7e9b0e6c4c9a4e59b7f2d9a3c1b2e4d5\n"
        "term=3\n"
        "degraded=false\n"
        f"scheduled_ns={T0}\n"
        f"emitted_ns={T0 + 12_345}\n"
        "bar_start_beat=1232\n"
        "timeline_revision=7\n"
    )
    assert b"emitted_ns=null\n" in canonical_frame(frame(emitted_ns=None))


def test_claim_signature_is_hmac_sha256_hex_of_the_canonical_form() -> None:
    signed = sign_claim(claim(), Keyring([KEY_A]), now_ns=T0 + S)
    expected = hmac.new(KEY_A.secret, canonical_claim(claim()), hashlib.sha256).hexdigest()
    assert (signed.key_id, signed.signature) == ("beat-1", expected)


def test_signed_frame_survives_the_json_wire_round_trip() -> None:
    signed = sign_frame(frame(tempo_bpm=120), FRAME_KEYS, now_ns=T0 + S)
    received = BeatFrame.decode(signed.encode())
    assert verify_frame(received, FRAME_KEYS.public(), now_ns=T0 + 2 * S).ok


def test_claim_and_frame_signatures_are_not_interchangeable() -> None:
    ring = Keyring([KEY_A])
    signed = sign_claim(claim(), ring, now_ns=T0 + S)
    assert verify_claim(signed, ring, now_ns=T0 + S).ok
    assert not canonical_claim(claim()).startswith(b"backbeat.beatframe")


def test_a_frame_signed_with_the_claim_keys_never_verifies() -> None:
    """Agents hold the claims' HMAC keys: an HMAC signature, even under a key id the frame
    keyring knows, is no frame signature."""
    public = FRAME_KEYS.public()
    mac = hmac.new(KEY_A.secret, canonical_frame(frame()), hashlib.sha256).hexdigest()
    forged = dataclasses.replace(frame(), key_id="frame-1", signature=mac)
    assert verify_frame(forged, public, now_ns=T0 + S).status is VerifyStatus.TAMPERED


def test_tampered_claim_is_rejected() -> None:
    ring = Keyring([KEY_A])
    signed = sign_claim(claim(), ring, now_ns=T0 + S)
    forged = dataclasses.replace(signed, progress=0.75)
    result = verify_claim(forged, ring, now_ns=T0 + S)
    assert result.status is VerifyStatus.TAMPERED
    garbage = dataclasses.replace(signed, signature="zz" * 32)
    assert verify_claim(garbage, ring, now_ns=T0 + S).status is VerifyStatus.TAMPERED


def test_unknown_key_id_is_rejected() -> None:
    signed = sign_claim(claim(), Keyring([KEY_A]), now_ns=T0 + S)
    result = verify_claim(signed, Keyring([KEY_B]), now_ns=T0 + 200 * S)
    assert result.status is VerifyStatus.UNKNOWN_KEY
    assert "beat-1" in result.detail


def test_expired_key_is_rejected_after_the_grace_period() -> None:
    key = SigningKey("old", b"o" * 32, activates_ns=T0, expires_ns=T0 + 60 * S)
    ring = Keyring([key], grace_ns=10 * S)
    signed = sign_claim(claim(), ring, now_ns=T0 + 30 * S)
    assert verify_claim(signed, ring, now_ns=T0 + 65 * S).ok  # inside the grace period
    result = verify_claim(signed, ring, now_ns=T0 + 70 * S)
    assert result.status is VerifyStatus.EXPIRED
    with pytest.raises(SigningError, match="no signing key"):
        sign_claim(claim(), ring, now_ns=T0 + 61 * S)


def test_key_not_yet_active_is_rejected_beyond_clock_skew() -> None:
    ring = Keyring([KEY_A, KEY_B], clock_skew_ns=2 * S)
    forged = sign_claim(claim(), Keyring([dataclasses.replace(KEY_B, activates_ns=T0)]), now_ns=T0)
    assert verify_claim(forged, ring, now_ns=T0 + 50 * S).status is VerifyStatus.NOT_YET_VALID
    assert verify_claim(forged, ring, now_ns=T0 + 99 * S).ok  # within the skew allowance


def test_unsigned_frame_is_reported_as_unsigned() -> None:
    public = FRAME_KEYS.public()
    assert verify_frame(frame(), public, now_ns=T0).status is VerifyStatus.UNSIGNED


def test_signing_uses_the_newest_active_key() -> None:
    ring = Keyring([KEY_B, KEY_A])  # order of construction does not matter
    assert ring.signing_key(T0 + 99 * S).key_id == "beat-1"
    assert ring.signing_key(T0 + 100 * S).key_id == "beat-2"
    assert ring.retired_ns("beat-1") == T0 + 100 * S
    assert ring.retired_ns("beat-2") is None


def test_rotation_mid_window_keeps_every_honest_claim_accepted() -> None:
    """A bar of claims every 0.5 s across a rotation, received up to 2 s late, all verify.

    The verifiers learn the next key before it activates (it is published ahead), the signer
    switches at activation, and the old key keeps verifying for the grace period.
    """
    ring = Keyring([KEY_A, KEY_B], grace_ns=5 * S)
    used = set()
    for beat in range(180, 220):  # claims at T0 + 90 s .. T0 + 110 s
        sent = T0 + beat * S // 2
        signed = sign_claim(claim(beat_index=beat), ring, now_ns=sent)
        used.add(signed.key_id)
        for delay in (0, S // 100, 2 * S):
            received = StatusClaim.decode(signed.encode())
            assert verify_claim(received, ring, now_ns=sent + delay).ok, (beat, delay)
    assert used == {"beat-1", "beat-2"}


def test_claim_signature_check_plugs_into_claim_validation() -> None:
    ring = Keyring([KEY_A])
    check: SignatureCheck = claim_signature_check(ring, cluster_id="c1", clock=lambda: T0 + S)
    good = sign_claim(claim(cluster_id="c1"), ring, now_ns=T0 + S)
    assert validate_claim(good.encode(), current_beat=1234, check_signature=check).ok
    bad = dataclasses.replace(good, progress=0.9)
    verdict = validate_claim(bad.encode(), current_beat=1234, check_signature=check)
    assert verdict.reason is RejectReason.BAD_SIGNATURE
    assert verdict.detail.startswith("tampered:")
    unsigned = validate_claim(claim().encode(), current_beat=1234, check_signature=check)
    assert unsigned.detail.startswith("unsigned:")
    lenient = claim_signature_check(
        ring, cluster_id="c1", require_signature=False, clock=lambda: T0 + S
    )
    assert validate_claim(claim().encode(), current_beat=1234, check_signature=lenient).ok


def test_keyring_document_round_trip_and_errors() -> None:
    ring = Keyring([KEY_A, dataclasses.replace(KEY_B, expires_ns=T0 + 900 * S)])
    again = Keyring.from_document(ring.to_document())
    assert again.keys == ring.keys
    assert "secret" not in repr(again.keys[0]).replace("secret=<", "")
    for bad in ("nope", "[]", '{"keys": [1]}', '{"keys": [{"id": "x", "secret": "zz"}]}'):
        with pytest.raises(SigningError):
            Keyring.from_document(bad)
    with pytest.raises(SigningError, match="at least 32"):
        SigningKey("short", b"x" * 16, activates_ns=T0)
    with pytest.raises(SigningError, match="twice"):
        Keyring([KEY_A, KEY_A])


def test_without_expired_drops_only_keys_past_grace() -> None:
    ring = Keyring([KEY_A, KEY_B], grace_ns=10 * S)
    assert [k.key_id for k in ring.without_expired(T0 + 105 * S).keys] == ["beat-1", "beat-2"]
    assert [k.key_id for k in ring.without_expired(T0 + 110 * S).keys] == ["beat-2"]


# -- properties ----------------------------------------------------------------------------

_text = st.text(max_size=40)
_claims = st.builds(
    StatusClaim,
    agent_id=_text,
    task_id=_text,
    beat_index=st.integers(0, 2**62),
    state=st.sampled_from(["planning", "executing", "waiting", "review", "done"]),
    beats_left=st.integers(-(2**31), 2**31),
    progress=st.floats(0.0, 1.0),
    hlc=st.just("7ffd:0001:beef"),
    notes=_text,
    cluster_id=_text,
)
_frames = st.builds(
    BeatFrame,
    cluster_id=_text,
    beat_index=st.integers(0, 2**62),
    downbeat=st.booleans(),
    phase=_text,
    hlc=st.just("18c2f3a1b00:0001:beef"),
    deadline_ns=st.integers(0, 2**62),
    tempo_bpm=st.floats(20.0, 300.0),
    window_id=st.just("0" * 32),
    term=st.integers(0, 2**40),
    degraded=st.booleans(),
    scheduled_ns=st.none() | st.integers(0, 2**62),
    emitted_ns=st.none() | st.integers(0, 2**62),
    bar_start_beat=st.none() | st.integers(0, 2**40),
    timeline_revision=st.integers(0, 2**20),
)


@settings(max_examples=200, deadline=None)
@given(message=_frames | _claims)
def test_property_sign_verify_round_trip(message: BeatFrame | StatusClaim) -> None:
    ring = Keyring([KEY_A])
    if isinstance(message, BeatFrame):
        signed_frame = sign_frame(message, FRAME_KEYS, now_ns=T0)
        assert verify_frame(signed_frame, FRAME_KEYS.public(), now_ns=T0).ok
    else:
        signed_claim = sign_claim(message, ring, now_ns=T0)
        assert verify_claim(signed_claim, ring, now_ns=T0).ok
        assert verify_claim(StatusClaim.decode(signed_claim.encode()), ring, now_ns=T0).ok


@settings(max_examples=300, deadline=None)
@given(message=_frames | _claims, data=st.data())
def test_property_any_single_byte_change_of_canonical_content_fails(
    message: BeatFrame | StatusClaim, data: st.DataObject
) -> None:
    ring = Keyring([KEY_A])
    verifier: Keyring | PublicKeyring = ring
    if isinstance(message, BeatFrame):
        content = canonical_frame(message)
        signed = sign_frame(message, FRAME_KEYS, now_ns=T0)
        key_id, signature = signed.key_id, signed.signature
        verifier = FRAME_KEYS.public()
    else:
        content = canonical_claim(message)
        key_id, signature = KEY_A.key_id, sign_claim(message, ring, now_ns=T0).signature
    index = data.draw(st.integers(0, len(content) - 1), label="index")
    delta = data.draw(st.integers(1, 255), label="delta")
    changed = bytearray(content)
    changed[index] = (changed[index] + delta) % 256
    result = verifier.verify(bytes(changed), key_id, signature, T0)
    assert result.status is VerifyStatus.TAMPERED


@settings(max_examples=100, deadline=None)
@given(first=_claims, second=_claims)
def test_property_distinct_claims_have_distinct_canonical_forms(
    first: StatusClaim, second: StatusClaim
) -> None:
    """The encoding is injective: no two different claims share the signed bytes."""
    if first != second:
        assert canonical_claim(first) != canonical_claim(second)
