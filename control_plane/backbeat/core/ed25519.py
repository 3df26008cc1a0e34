"""Ed25519 keyrings: what only the pulse (or the rollup function) can sign, and anyone can verify.

Frames, timeline records and bar reports are signed with Ed25519 so that holding the keys that
*verify* them (every agent does) does not allow forging them. A ``PrivateKeyring`` lives only
in the signing process; the matching ``PublicKeyring`` is handed to every consumer.

Key versions follow the same window rules as the claims' HMAC keyring
(``backbeat.core.signing``): signing uses the newest key active now; a key verifies while the
verifier's clock is inside ``[activates − clock_skew, retired + grace)``, ``retired`` being the
earlier of its expiry and the activation of the next newer key.

Documents (the secrets' content)::

    private: {"keys": [{"id", "private_key", "activates_at", "expires_at"?}, ...]}
    public:  {"keys": [{"id", "public_key", "activates_at", "expires_at"?}, ...]}

(``private_key``: the 32-byte seed in hex; ``public_key``: the raw 32-byte key in hex)

or, simpler, one raw key in hex (64 characters): its key id is derived from the public key
(``raw_key_id``), so every process names it alike.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from backbeat.core.messages import BeatFrame
from backbeat.core.rfc3339 import format_ns, parse_ns
from backbeat.core.signing import (
    DEFAULT_CLOCK_SKEW_NS,
    DEFAULT_GRACE_NS,
    Verification,
    VerifyStatus,
    WindowedKey,
    active_key,
    canonical_frame,
    canonical_report,
    canonical_timeline_record,
    key_retirements,
    key_validity,
    order_keys,
    unexpired_keys,
)
from backbeat.errors import SigningError

KEY_BYTES: Final = 32
SIGNATURE_HEX_CHARS: Final = 128

_KEY_ID_RE = re.compile(r"[A-Za-z0-9._:-]{1,64}")
_HEX_KEY_RE = re.compile(r"[0-9a-fA-F]{64}")
_SIGNATURE_RE = re.compile(r"[0-9a-f]{128}")


def raw_key_id(public: bytes) -> str:
    """Key id of a key given raw: derived from the public key, so signer and verifiers agree."""
    return "ed25519-" + hashlib.sha256(b"backbeat-ed25519-key-id\n" + public).hexdigest()[:12]


def _check_key_fields(key: WindowedKey) -> None:
    if not _KEY_ID_RE.fullmatch(key.key_id):
        raise SigningError(
            f"key id {key.key_id!r} must be 1-64 characters of letters, digits or ._:-"
        )
    if key.expires_ns is not None and key.expires_ns <= key.activates_ns:
        raise SigningError(f"key {key.key_id!r} expires before it activates")


@dataclass(frozen=True, slots=True)
class PublicKey:
    key_id: str
    public: bytes
    activates_ns: int
    expires_ns: int | None = None

    def __post_init__(self) -> None:
        _check_key_fields(self)
        if len(self.public) != KEY_BYTES:
            raise SigningError(f"public key {self.key_id!r} must be {KEY_BYTES} bytes")


@dataclass(frozen=True, slots=True)
class PrivateKey:
    key_id: str
    seed: bytes
    activates_ns: int
    expires_ns: int | None = None

    def __post_init__(self) -> None:
        _check_key_fields(self)
        if len(self.seed) != KEY_BYTES:
            raise SigningError(f"private key {self.key_id!r} must be {KEY_BYTES} bytes")

    @classmethod
    def generate(cls, key_id: str, activates_ns: int, expires_ns: int | None = None) -> PrivateKey:
        seed = Ed25519PrivateKey.generate().private_bytes_raw()
        return cls(key_id, seed, activates_ns, expires_ns)

    @property
    def public_bytes(self) -> bytes:
        return Ed25519PrivateKey.from_private_bytes(self.seed).public_key().public_bytes_raw()

    def public(self) -> PublicKey:
        return PublicKey(self.key_id, self.public_bytes, self.activates_ns, self.expires_ns)

    def __repr__(self) -> str:  # never print key material
        return (
            f"PrivateKey(key_id={self.key_id!r}, activates_ns={self.activates_ns}, "
            f"expires_ns={self.expires_ns})"
        )


class PublicKeyring:
    """Public key versions: verifies what the matching private keyring signed."""

    __slots__ = ("_by_id", "_ordered", "_retired", "_verifiers", "clock_skew_ns", "grace_ns")

    def __init__(
        self,
        keys: Iterable[PublicKey] = (),
        *,
        grace_ns: int = DEFAULT_GRACE_NS,
        clock_skew_ns: int = DEFAULT_CLOCK_SKEW_NS,
    ) -> None:
        ordered = order_keys(keys)
        self._ordered = tuple(ordered)
        self._by_id = {k.key_id: k for k in ordered}
        try:
            self._verifiers = {
                k.key_id: Ed25519PublicKey.from_public_bytes(k.public) for k in ordered
            }
        except ValueError as exc:
            raise SigningError(f"invalid Ed25519 public key: {exc}") from None
        self._retired = key_retirements(ordered)
        self.grace_ns = grace_ns
        self.clock_skew_ns = clock_skew_ns

    @property
    def keys(self) -> tuple[PublicKey, ...]:
        return self._ordered

    def __len__(self) -> int:
        return len(self._ordered)

    def __contains__(self, key_id: object) -> bool:
        return key_id in self._by_id

    def __repr__(self) -> str:
        return f"PublicKeyring({[k.key_id for k in self._ordered]})"

    def newest(self) -> PublicKey | None:
        return self._ordered[-1] if self._ordered else None

    def verify(self, content: bytes, key_id: str, signature: str, at_ns: int) -> Verification:
        """Check an Ed25519 ``signature`` (128 lowercase hex) over ``content`` at ``at_ns``."""
        if not signature or not key_id:
            return Verification(VerifyStatus.UNSIGNED, key_id, "message carries no signature")
        key = self._by_id.get(key_id)
        if key is None:
            return Verification(
                VerifyStatus.UNKNOWN_KEY, key_id, f"key id {key_id[:64]!r} is not in the keyring"
            )
        if not _SIGNATURE_RE.fullmatch(signature):
            return Verification(
                VerifyStatus.TAMPERED, key_id, "signature is not 128 lowercase hex characters"
            )
        try:
            self._verifiers[key_id].verify(bytes.fromhex(signature), content)
        except InvalidSignature:
            return Verification(
                VerifyStatus.TAMPERED, key_id, f"signature does not match the content ({key_id})"
            )
        return key_validity(
            key_id,
            key.activates_ns,
            self._retired[key_id],
            at_ns,
            grace_ns=self.grace_ns,
            clock_skew_ns=self.clock_skew_ns,
        )

    def without_expired(self, now_ns: int) -> PublicKeyring:
        keep = unexpired_keys(self._ordered, self._retired, now_ns, self.grace_ns)
        return PublicKeyring(keep, grace_ns=self.grace_ns, clock_skew_ns=self.clock_skew_ns)

    def to_document(self) -> str:
        return _document(
            [("public_key", k.public.hex(), k) for k in self._ordered],
        )

    @classmethod
    def from_document(
        cls,
        text: str,
        *,
        grace_ns: int = DEFAULT_GRACE_NS,
        clock_skew_ns: int = DEFAULT_CLOCK_SKEW_NS,
        now_ns: int = 0,
    ) -> PublicKeyring:
        """A public keyring document, or one raw public key in hex (active from ``now_ns``).

        A *private* keyring document is accepted too (its public halves are used), so one
        secret can serve a development setup where the signer also verifies.
        """
        text = text.strip()
        if _HEX_KEY_RE.fullmatch(text):
            public = bytes.fromhex(text)
            return cls(
                [PublicKey(raw_key_id(public), public, now_ns)],
                grace_ns=grace_ns,
                clock_skew_ns=clock_skew_ns,
            )
        entries = _parse_document(text)
        if entries and all("private_key" in e for _, e in entries):
            return PrivateKeyring.from_document(text).public(
                grace_ns=grace_ns, clock_skew_ns=clock_skew_ns
            )
        keys = [
            PublicKey(key_id, _hex_key(where, entry, "public_key"), activates, expires)
            for (where, entry), (key_id, activates, expires) in zip(
                entries, (_window(w, e) for w, e in entries), strict=True
            )
        ]
        return cls(keys, grace_ns=grace_ns, clock_skew_ns=clock_skew_ns)


class PrivateKeyring:
    """Private key versions; only the signing process holds it."""

    __slots__ = ("_ordered", "_signers")

    def __init__(self, keys: Iterable[PrivateKey] = ()) -> None:
        ordered = order_keys(keys)
        self._ordered = tuple(ordered)
        self._signers = {k.key_id: Ed25519PrivateKey.from_private_bytes(k.seed) for k in ordered}

    @property
    def keys(self) -> tuple[PrivateKey, ...]:
        return self._ordered

    def __len__(self) -> int:
        return len(self._ordered)

    def __contains__(self, key_id: object) -> bool:
        return key_id in self._signers

    def __repr__(self) -> str:
        return f"PrivateKeyring({[k.key_id for k in self._ordered]})"

    def newest(self) -> PrivateKey | None:
        return self._ordered[-1] if self._ordered else None

    def signing_key(self, now_ns: int) -> PrivateKey:
        """The newest key active at ``now_ns``. Raises SigningError when there is none."""
        return active_key(self._ordered, now_ns)

    def sign(self, content: bytes, now_ns: int) -> tuple[str, str]:
        """``(key_id, signature hex)`` of ``content`` by the newest key active at ``now_ns``."""
        key = self.signing_key(now_ns)
        return key.key_id, self._signers[key.key_id].sign(content).hex()

    def public(
        self, *, grace_ns: int = DEFAULT_GRACE_NS, clock_skew_ns: int = DEFAULT_CLOCK_SKEW_NS
    ) -> PublicKeyring:
        """The public halves, to hand to verifiers."""
        return PublicKeyring(
            [k.public() for k in self._ordered], grace_ns=grace_ns, clock_skew_ns=clock_skew_ns
        )

    def retired_ns(self) -> dict[str, int | None]:
        return key_retirements(self._ordered)

    def without_expired(self, now_ns: int, grace_ns: int = DEFAULT_GRACE_NS) -> PrivateKeyring:
        retired = key_retirements(self._ordered)
        return PrivateKeyring(unexpired_keys(self._ordered, retired, now_ns, grace_ns))

    def to_document(self) -> str:
        return _document([("private_key", k.seed.hex(), k) for k in self._ordered])

    @classmethod
    def from_document(cls, text: str, *, now_ns: int = 0) -> PrivateKeyring:
        """A private keyring document, or one raw 32-byte seed in hex (active from ``now_ns``)."""
        text = text.strip()
        if _HEX_KEY_RE.fullmatch(text):
            seed = bytes.fromhex(text)
            public = Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes_raw()
            return cls([PrivateKey(raw_key_id(public), seed, now_ns)])
        keys = []
        for where, entry in _parse_document(text):
            key_id, activates, expires = _window(where, entry)
            keys.append(
                PrivateKey(key_id, _hex_key(where, entry, "private_key"), activates, expires)
            )
        return cls(keys)


# -- documents ------------------------------------------------------------------------------


def _document(entries: list[tuple[str, str, WindowedKey]]) -> str:
    keys: list[dict[str, Any]] = []
    for field_name, value, key in entries:
        entry: dict[str, Any] = {
            "id": key.key_id,
            field_name: value,
            "activates_at": format_ns(key.activates_ns),
        }
        if key.expires_ns is not None:
            entry["expires_at"] = format_ns(key.expires_ns)
        keys.append(entry)
    return json.dumps({"keys": keys}, separators=(",", ":"), sort_keys=True)


def _parse_document(text: str) -> list[tuple[str, Mapping[str, Any]]]:
    try:
        obj = json.loads(text)
    except ValueError as exc:
        raise SigningError(f"keyring document is not JSON (nor one hex key): {exc}") from None
    if not isinstance(obj, Mapping) or not isinstance(obj.get("keys"), list):
        raise SigningError('keyring document must be an object with a "keys" list')
    out = []
    for i, entry in enumerate(obj["keys"]):
        if not isinstance(entry, Mapping):
            raise SigningError(f"keys[{i}]: expected an object")
        out.append((f"keys[{i}]", entry))
    return out


def _window(where: str, entry: Mapping[str, Any]) -> tuple[str, int, int | None]:
    key_id, activates, expires = entry.get("id"), entry.get("activates_at"), entry.get("expires_at")
    if not isinstance(key_id, str):
        raise SigningError(f"{where}: id must be a string")
    if not isinstance(activates, str) or not (expires is None or isinstance(expires, str)):
        raise SigningError(f"{where}: activates_at/expires_at must be RFC 3339 strings")
    try:
        return key_id, parse_ns(activates), None if expires is None else parse_ns(expires)
    except ValueError as exc:
        raise SigningError(f"{where}: {exc}") from None


def _hex_key(where: str, entry: Mapping[str, Any], field_name: str) -> bytes:
    value = entry.get(field_name)
    if not isinstance(value, str) or not _HEX_KEY_RE.fullmatch(value):
        raise SigningError(f"{where}: {field_name} must be {KEY_BYTES} bytes in hex")
    return bytes.fromhex(value)


# -- what the pulse and the rollup function sign ---------------------------------------------

PublicKeyringProvider = Callable[[], PublicKeyring]
PrivateKeyringProvider = Callable[[], PrivateKeyring]
Clock = Callable[[], int]

#: NATS headers carrying a bar report's signature (the payload stays the BarReport JSON).
REPORT_KEY_ID_HEADER: Final = "Backbeat-Key-Id"
REPORT_SIGNATURE_HEADER: Final = "Backbeat-Signature"


def _public(keys: PublicKeyring | PublicKeyringProvider) -> PublicKeyringProvider:
    if isinstance(keys, PublicKeyring):
        fixed = keys
        return lambda: fixed
    return keys


def _private(keys: PrivateKeyring | PrivateKeyringProvider) -> PrivateKeyringProvider:
    if isinstance(keys, PrivateKeyring):
        fixed = keys
        return lambda: fixed
    return keys


def sign_frame(frame: BeatFrame, keys: PrivateKeyring, *, now_ns: int | None = None) -> BeatFrame:
    """The frame with ``key_id`` and ``signature`` set by the newest key active now."""
    key_id, signature = keys.sign(
        canonical_frame(frame), time.time_ns() if now_ns is None else now_ns
    )
    return replace(frame, key_id=key_id, signature=signature)


def verify_frame(frame: BeatFrame, keys: PublicKeyring, *, now_ns: int) -> Verification:
    return keys.verify(canonical_frame(frame), frame.key_id, frame.signature, now_ns)


def frame_signer(
    keys: PrivateKeyring | PrivateKeyringProvider, *, clock: Clock = time.time_ns
) -> Callable[[BeatFrame], BeatFrame]:
    """``sign(frame) -> frame`` for the pulse; picks up rotated keyrings on every call."""
    current = _private(keys)

    def sign(frame: BeatFrame) -> BeatFrame:
        return sign_frame(frame, current(), now_ns=clock())

    return sign


def frame_verifier(
    keys: PublicKeyring | PublicKeyringProvider, *, clock: Clock = time.time_ns
) -> Callable[[BeatFrame], Verification]:
    """For consumers: the verification of a received frame at the receiver's clock."""
    current = _public(keys)

    def verify(frame: BeatFrame) -> Verification:
        return verify_frame(frame, current(), now_ns=clock())

    return verify


def sign_timeline_record(
    record: Mapping[str, Any], keys: PrivateKeyring, *, now_ns: int | None = None
) -> dict[str, Any]:
    """The record's JSON object with ``key_id`` and ``signature`` added."""
    unsigned = {k: v for k, v in record.items() if k not in ("key_id", "signature")}
    key_id, signature = keys.sign(
        canonical_timeline_record(unsigned), time.time_ns() if now_ns is None else now_ns
    )
    return {**unsigned, "key_id": key_id, "signature": signature}


def verify_timeline_record(
    record: Mapping[str, Any], keys: PublicKeyring, *, now_ns: int
) -> Verification:
    key_id, signature = record.get("key_id", ""), record.get("signature", "")
    if not isinstance(key_id, str) or not isinstance(signature, str):
        return Verification(VerifyStatus.TAMPERED, "", "key_id and signature must be strings")
    try:
        content = canonical_timeline_record(record)
    except SigningError as exc:
        return Verification(VerifyStatus.TAMPERED, key_id, f"unreadable record: {exc}")
    return keys.verify(content, key_id, signature, now_ns)


def report_headers(
    cluster_id: str, window_id: str, payload: bytes, keys: PrivateKeyring, *, now_ns: int
) -> dict[str, str]:
    """The NATS headers that sign a report published for ``window_id``."""
    key_id, signature = keys.sign(canonical_report(cluster_id, window_id, payload), now_ns)
    return {REPORT_KEY_ID_HEADER: key_id, REPORT_SIGNATURE_HEADER: signature}


def verify_report(
    cluster_id: str,
    window_id: str,
    payload: bytes,
    headers: Mapping[str, str] | None,
    keys: PublicKeyring,
    *,
    now_ns: int,
) -> Verification:
    """Whether ``payload`` is the report the rollup function signed for ``window_id``."""
    headers = headers or {}
    return keys.verify(
        canonical_report(cluster_id, window_id, payload),
        headers.get(REPORT_KEY_ID_HEADER, ""),
        headers.get(REPORT_SIGNATURE_HEADER, ""),
        now_ns,
    )
