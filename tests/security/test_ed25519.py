"""Ed25519 keyrings: documents, raw keys, rotation windows, and what each key can sign."""

from __future__ import annotations

import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from backbeat.core.ed25519 import (
    PrivateKey,
    PrivateKeyring,
    PublicKeyring,
    raw_key_id,
    report_headers,
    sign_timeline_record,
    verify_report,
    verify_timeline_record,
)
from backbeat.core.signing import VerifyStatus, canonical_timeline_record
from backbeat.errors import SigningError

S = 1_000_000_000
T0 = 1_700_000_000 * S
OLD = PrivateKey("frame-1", b"1" * 32, activates_ns=T0)
NEW = PrivateKey("frame-2", b"2" * 32, activates_ns=T0 + 100 * S)


def test_signatures_are_plain_ed25519_over_the_content() -> None:
    ring = PrivateKeyring([OLD])
    key_id, signature = ring.sign(b"content", T0 + S)
    assert key_id == "frame-1"
    Ed25519PublicKey.from_public_bytes(OLD.public_bytes).verify(
        bytes.fromhex(signature), b"content"
    )
    assert ring.public().verify(b"content", key_id, signature, T0 + S).ok


def test_rotation_signs_with_the_newest_key_and_verifies_the_old_one_for_the_grace() -> None:
    private = PrivateKeyring([NEW, OLD])
    public = PublicKeyring([k.public() for k in private.keys], grace_ns=10 * S)
    old_id, old_sig = private.sign(b"m", T0 + 99 * S)
    new_id, new_sig = private.sign(b"m", T0 + 100 * S)
    assert (old_id, new_id) == ("frame-1", "frame-2")
    assert public.verify(b"m", old_id, old_sig, T0 + 109 * S).ok
    expired = public.verify(b"m", old_id, old_sig, T0 + 110 * S)
    assert expired.status is VerifyStatus.EXPIRED
    early = public.verify(b"m", new_id, new_sig, T0 + 90 * S)
    assert early.status is VerifyStatus.NOT_YET_VALID


def test_documents_round_trip_and_public_documents_hold_no_private_key() -> None:
    private = PrivateKeyring([OLD, NEW])
    again = PrivateKeyring.from_document(private.to_document())
    assert [k.seed for k in again.keys] == [OLD.seed, NEW.seed]
    public_doc = private.public().to_document()
    assert OLD.seed.hex() not in public_doc
    assert "private_key" not in public_doc
    public = PublicKeyring.from_document(public_doc)
    assert [k.public for k in public.keys] == [OLD.public_bytes, NEW.public_bytes]
    # A private document read as a public keyring yields only the public halves.
    assert [k.key_id for k in PublicKeyring.from_document(private.to_document()).keys] == [
        "frame-1",
        "frame-2",
    ]
    assert "seed" not in repr(OLD)
    for bad in ("nope", "[]", '{"keys": [1]}', '{"keys": [{"id": "x", "public_key": "zz"}]}'):
        with pytest.raises(SigningError):
            PublicKeyring.from_document(bad)


def test_a_raw_key_has_the_same_id_for_signer_and_verifiers() -> None:
    seed = "ab" * 32
    private = PrivateKeyring.from_document(seed, now_ns=T0)
    (key,) = private.keys
    public = PublicKeyring.from_document(key.public_bytes.hex(), now_ns=T0)
    assert public.keys[0].key_id == key.key_id == raw_key_id(key.public_bytes)
    key_id, signature = private.sign(b"m", T0)
    assert public.verify(b"m", key_id, signature, T0).ok


def test_timeline_record_signature_covers_every_field() -> None:
    timeline = {
        "cluster_id": "c1",
        "tempo_bpm": 120.0,
        "anchor_beat": 8,
        "anchor_time_ns": T0,
        "bar_length": 4,
        "bar_origin": 0,
        "phases": [["plan", 1], ["execution", 2], ["review", 1]],
        "revision": 2,
        "term": 5,
    }
    record = {"current": timeline, "pending": dict(timeline, revision=3, tempo_bpm=126.0)}
    signed = sign_timeline_record(record, PrivateKeyring([OLD]), now_ns=T0)
    public = PrivateKeyring([OLD]).public()
    received = json.loads(json.dumps(signed))
    assert verify_timeline_record(received, public, now_ns=T0).ok
    for field in timeline:
        changed = json.loads(json.dumps(signed))
        value = changed["pending"][field]
        changed["pending"][field] = (
            value + 1 if isinstance(value, int | float) else ("c2" if field == "cluster_id" else [])
        )
        assert not verify_timeline_record(changed, public, now_ns=T0).ok, field
    assert canonical_timeline_record(record).startswith(b"backbeat.timelinerecord.v1\n")


def test_report_signature_binds_cluster_and_window() -> None:
    ring = PrivateKeyring([OLD])
    headers = report_headers("c1", "a" * 32, b"{}", ring, now_ns=T0)
    public = ring.public()
    assert verify_report("c1", "a" * 32, b"{}", headers, public, now_ns=T0).ok
    assert not verify_report("c1", "b" * 32, b"{}", headers, public, now_ns=T0).ok
    assert not verify_report("c2", "a" * 32, b"{}", headers, public, now_ns=T0).ok
    assert not verify_report("c1", "a" * 32, b"{ }", headers, public, now_ns=T0).ok
    missing = verify_report("c1", "a" * 32, b"{}", None, public, now_ns=T0)
    assert missing.status is VerifyStatus.UNSIGNED
