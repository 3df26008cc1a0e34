"""HMAC-SHA256 signatures for BeatFrames and StatusClaims, and the keyring that verifies them.

A signed message carries ``key_id`` (which key version signed it) and ``signature`` (lowercase
hex of HMAC-SHA256 over the message's *canonical form*). The canonical form is defined here,
independently of JSON, so that a Go or Node client can produce the same bytes without copying
Python's float or JSON formatting:

* line 1: the message's ``type`` discriminator (``backbeat.beatframe.v1`` or
  ``backbeat.statusclaim.v1``) followed by ``\\n`` — a frame's signature is never a claim's;
* then one line ``<field>=<value>\\n`` per signed field, in the fixed order of
  ``FRAME_FIELDS`` / ``CLAIM_FIELDS`` below (every field except ``key_id`` and ``signature``);
* values: integers in decimal (``-`` for negatives, no leading zeros); booleans ``true`` /
  ``false``; floats as the 16 lowercase hex digits of their IEEE-754 binary64 bits, big-endian
  (so ``120`` and ``120.0`` sign alike and no decimal formatting is involved); strings as
  ``<UTF-8 byte length>:<UTF-8 bytes>`` (newlines inside strings stay unambiguous); timestamps
  as integer nanoseconds since the Unix epoch (the wire carries them as RFC 3339 with up to
  nanosecond precision); an absent optional field as ``null``.

Example (a frame)::

    backbeat.beatframe.v1
    cluster_id=17:chorus-production
    beat_index=1234
    downbeat=true
    ...
    tempo_bpm=405e000000000000

Key versions live in a ``Keyring``. Signing uses the newest key that is active now. A key
verifies a message while the verifier's clock is inside the key's window:
``[activates − clock_skew, retired + grace)``, where ``retired`` is the earlier of the key's
own expiry and the activation of the next newer key. Verification uses the *receiver's* clock,
never a time taken from the message (an attacker holding an old, retired key could otherwise
back-date a forgery).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import struct
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any, Final, Protocol, TypeVar

from backbeat.core.messages import (
    BARREPORT_TYPE,
    BEATFRAME_TYPE,
    STATUSCLAIM_TYPE,
    BeatFrame,
    StatusClaim,
)
from backbeat.core.rfc3339 import format_ns, parse_ns
from backbeat.errors import SigningError

#: Signed fields of a BeatFrame, in canonical order, with how each is encoded.
FRAME_FIELDS: Final[tuple[tuple[str, str], ...]] = (
    ("cluster_id", "str"),
    ("beat_index", "int"),
    ("downbeat", "bool"),
    ("phase", "str"),
    ("hlc", "str"),
    ("deadline_ns", "int"),
    ("tempo_bpm", "float"),
    ("window_id", "str"),
    ("term", "int"),
    ("degraded", "bool"),
    ("scheduled_ns", "int?"),
    ("emitted_ns", "int?"),
    ("bar_start_beat", "int?"),
    ("timeline_revision", "int"),
)

#: Signed fields of a StatusClaim, in canonical order.
CLAIM_FIELDS: Final[tuple[tuple[str, str], ...]] = (
    ("agent_id", "str"),
    ("task_id", "str"),
    ("beat_index", "int"),
    ("state", "str"),
    ("beats_left", "int"),
    ("progress", "float"),
    ("hlc", "str"),
    ("notes", "str"),
    ("cluster_id", "str"),
)

#: Fields that carry the signature itself and are therefore not signed.
UNSIGNED_FIELDS: Final = frozenset({"key_id", "signature"})

#: Key versions shorter than this are refused: HMAC-SHA256 wants a full 256-bit key.
MIN_KEY_BYTES: Final = 32
DEFAULT_GRACE_NS: Final = 30 * 1_000_000_000
DEFAULT_CLOCK_SKEW_NS: Final = 5 * 1_000_000_000

_KEY_ID_RE = re.compile(r"[A-Za-z0-9._:-]{1,64}")
_SIGNATURE_RE = re.compile(r"[0-9a-f]{64}")


def _bad(name: str, expected: str, value: object) -> SigningError:
    return SigningError(f"{name}: expected {expected}, got {type(value).__name__}")


def _int(name: str, value: object) -> bytes:
    if type(value) is not int:  # bool is an int subclass: refuse it
        raise _bad(name, "an integer", value)
    return b"%d" % value


def _opt_int(name: str, value: object) -> bytes:
    return b"null" if value is None else _int(name, value)


def _bool(name: str, value: object) -> bytes:
    if value is True:
        return b"true"
    if value is False:
        return b"false"
    raise _bad(name, "a boolean", value)


_DOUBLE = struct.Struct(">d")


def _float(name: str, value: object) -> bytes:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _bad(name, "a number", value)
    return _DOUBLE.pack(float(value)).hex().encode()


def _str(name: str, value: object) -> bytes:
    if not isinstance(value, str):
        raise _bad(name, "a string", value)
    raw = value.encode("utf-8", "surrogatepass")
    return b"%d:%b" % (len(raw), raw)


_ENCODERS: Final[dict[str, Callable[[str, object], bytes]]] = {
    "int": _int,
    "int?": _opt_int,
    "bool": _bool,
    "float": _float,
    "str": _str,
}


def _plan(
    type_name: str, fields: tuple[tuple[str, str], ...]
) -> tuple[bytes, tuple[tuple[str, bytes, Callable[[str, object], bytes]], ...]]:
    """Precomputed header and (attribute, b"name=", encoder) per field: signing is per beat."""
    return type_name.encode() + b"\n", tuple(
        (name, name.encode() + b"=", _ENCODERS[kind]) for name, kind in fields
    )


_FRAME_PLAN: Final = _plan(BEATFRAME_TYPE, FRAME_FIELDS)
_CLAIM_PLAN: Final = _plan(STATUSCLAIM_TYPE, CLAIM_FIELDS)


def _canonical(
    plan: tuple[bytes, tuple[tuple[str, bytes, Callable[[str, object], bytes]], ...]],
    message: object,
) -> bytes:
    header, steps = plan
    parts = [header]
    for name, prefix, encode in steps:
        parts.append(prefix + encode(name, getattr(message, name)) + b"\n")
    return b"".join(parts)


def canonical_frame(frame: BeatFrame) -> bytes:
    """The bytes a BeatFrame's signature covers (see the module docstring)."""
    return _canonical(_FRAME_PLAN, frame)


def canonical_claim(claim: StatusClaim) -> bytes:
    """The bytes a StatusClaim's signature covers (see the module docstring)."""
    return _canonical(_CLAIM_PLAN, claim)


#: Signed fields of each timeline in a timeline record (the pulse's announcement on NATS).
TIMELINE_FIELDS: Final[tuple[tuple[str, str], ...]] = (
    ("cluster_id", "str"),
    ("tempo_bpm", "float"),
    ("anchor_beat", "int"),
    ("anchor_time_ns", "int"),
    ("bar_length", "int"),
    ("bar_origin", "int"),
    ("phases", "phases"),
    ("revision", "int"),
    ("term", "int"),
)
TIMELINE_RECORD_TYPE: Final = "backbeat.timelinerecord.v1"


def _phases(name: str, value: object) -> bytes:
    """``[[name, beats], ...]`` as the string ``name:beats,name:beats`` (length-prefixed)."""
    if not isinstance(value, list | tuple):
        raise _bad(name, "a list of [name, beats]", value)
    parts = []
    for entry in value:
        if not isinstance(entry, list | tuple) or len(entry) != 2:
            raise _bad(name, "a list of [name, beats]", entry)
        label, beats = entry
        if not isinstance(label, str) or "," in label or ":" in label:
            raise SigningError(f"{name}: phase names are strings without ',' or ':'")
        parts.append(f"{label}:{_int(name, beats).decode()}")
    return _str(name, ",".join(parts))


def canonical_timeline_record(record: Mapping[str, Any]) -> bytes:
    """The bytes a timeline record's signature covers: its type line, then per timeline
    (``current``, ``pending``) one line per field of ``TIMELINE_FIELDS`` prefixed with the
    timeline's name (``pending=null`` when there is none), then ``ramp_target_bpm`` and the
    writer's ``term`` (0 when absent).

    Built from the record's JSON object, so signer and verifier need no shared class. Raises
    SigningError when a field is missing or has the wrong type.
    """
    parts = [TIMELINE_RECORD_TYPE.encode() + b"\n"]
    for which in ("current", "pending"):
        timeline = record.get(which)
        if timeline is None and which == "pending":
            parts.append(b"pending=null\n")
            continue
        if not isinstance(timeline, Mapping):
            raise SigningError(f"{which}: expected a timeline object")
        for name, kind in TIMELINE_FIELDS:
            if name not in timeline:
                raise SigningError(f"{which}.{name}: required field is missing")
            encode = _phases if kind == "phases" else _ENCODERS[kind]
            value = encode(f"{which}.{name}", timeline[name])
            parts.append(f"{which}.{name}=".encode() + value + b"\n")
    ramp = record.get("ramp_target_bpm")
    parts.append(
        b"ramp_target_bpm=" + (b"null" if ramp is None else _float("ramp_target_bpm", ramp)) + b"\n"
    )
    # The writer's term decides which record wins (records order by term, then revision).
    term = record.get("term", 0)
    if isinstance(term, bool) or not isinstance(term, int):
        raise SigningError("term: expected an integer")
    parts.append(b"term=" + str(term).encode() + b"\n")
    return b"".join(parts)


def canonical_report(cluster_id: str, window_id: str, payload: bytes) -> bytes:
    """The bytes a bar report's signature covers: the report's JSON bytes exactly as published,
    bound to its cluster and window (a report signed for one window is no other's)."""
    return b"".join(
        (
            BARREPORT_TYPE.encode(),
            b"\ncluster_id=",
            _str("cluster_id", cluster_id),
            b"\nwindow_id=",
            _str("window_id", window_id),
            b"\nreport=",
            b"%d:%b" % (len(payload), payload),
            b"\n",
        )
    )


def hmac_hex(secret: bytes, content: bytes) -> str:
    return hmac.new(secret, content, hashlib.sha256).hexdigest()


# -- keys and keyring -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SigningKey:
    """One key version. ``expires_ns`` None means "until a newer key takes over"."""

    key_id: str
    secret: bytes
    activates_ns: int
    expires_ns: int | None = None

    def __post_init__(self) -> None:
        if not _KEY_ID_RE.fullmatch(self.key_id):
            raise SigningError(
                f"key id {self.key_id!r} must be 1-64 characters of letters, digits or ._:-"
            )
        if len(self.secret) < MIN_KEY_BYTES:
            raise SigningError(
                f"key {self.key_id!r} is {len(self.secret)} bytes; at least {MIN_KEY_BYTES} needed"
            )
        if self.expires_ns is not None and self.expires_ns <= self.activates_ns:
            raise SigningError(f"key {self.key_id!r} expires before it activates")

    def __repr__(self) -> str:  # never print key material
        return (
            f"SigningKey(key_id={self.key_id!r}, secret=<{len(self.secret)} bytes>, "
            f"activates_ns={self.activates_ns}, expires_ns={self.expires_ns})"
        )


class VerifyStatus(StrEnum):
    VALID = "valid"
    UNSIGNED = "unsigned"  # no signature (or no key id) on the message
    UNKNOWN_KEY = "unknown_key"  # key id not in the keyring
    TAMPERED = "tampered"  # signature malformed or does not match the content
    EXPIRED = "expired"  # the key was retired longer ago than the grace period
    NOT_YET_VALID = "not_yet_valid"  # the key activates later than now + clock skew


@dataclass(frozen=True, slots=True)
class Verification:
    status: VerifyStatus
    key_id: str = ""
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.status is VerifyStatus.VALID


class Keyring:
    """An immutable set of key versions. Build a new one to add or drop keys."""

    __slots__ = ("_by_id", "_macs", "_ordered", "_retired", "clock_skew_ns", "grace_ns")

    def __init__(
        self,
        keys: Iterable[SigningKey] = (),
        *,
        grace_ns: int = DEFAULT_GRACE_NS,
        clock_skew_ns: int = DEFAULT_CLOCK_SKEW_NS,
    ) -> None:
        ordered = order_keys(keys)
        self._ordered = tuple(ordered)
        self._by_id = {k.key_id: k for k in ordered}
        # Keyed HMAC states, copied per message: skips re-deriving the key pads every time.
        self._macs = {k.key_id: hmac.new(k.secret, digestmod=hashlib.sha256) for k in ordered}
        self.grace_ns = grace_ns
        self.clock_skew_ns = clock_skew_ns
        self._retired = key_retirements(ordered)

    @property
    def keys(self) -> tuple[SigningKey, ...]:
        """Key versions, oldest activation first."""
        return self._ordered

    def __len__(self) -> int:
        return len(self._ordered)

    def __contains__(self, key_id: object) -> bool:
        return key_id in self._by_id

    def __repr__(self) -> str:
        return f"Keyring({[k.key_id for k in self._ordered]}, grace_ns={self.grace_ns})"

    def get(self, key_id: str) -> SigningKey | None:
        return self._by_id.get(key_id)

    def retired_ns(self, key_id: str) -> int | None:
        """When ``key_id`` stops signing (None: not yet known)."""
        return self._retired[key_id]

    def mac_hex(self, key_id: str, content: bytes) -> str:
        """HMAC-SHA256 of ``content`` under key ``key_id`` (which must be in the keyring)."""
        mac = self._macs[key_id].copy()
        mac.update(content)
        return mac.hexdigest()

    def signing_key(self, now_ns: int) -> SigningKey:
        """The newest key active at ``now_ns``. Raises SigningError when there is none."""
        return active_key(self._ordered, now_ns)

    def newest(self) -> SigningKey | None:
        return self._ordered[-1] if self._ordered else None

    def verify(self, content: bytes, key_id: str, signature: str, at_ns: int) -> Verification:
        """Check ``signature`` over ``content`` with key ``key_id`` at the verifier's ``at_ns``."""
        if not signature or not key_id:
            return Verification(VerifyStatus.UNSIGNED, key_id, "message carries no signature")
        key = self._by_id.get(key_id)
        if key is None:
            return Verification(
                VerifyStatus.UNKNOWN_KEY, key_id, f"key id {key_id[:64]!r} is not in the keyring"
            )
        if not _SIGNATURE_RE.fullmatch(signature):
            return Verification(
                VerifyStatus.TAMPERED, key_id, "signature is not 64 lowercase hex characters"
            )
        if not hmac.compare_digest(self.mac_hex(key_id, content), signature):
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

    def without_expired(self, now_ns: int) -> Keyring:
        """A copy without keys that can no longer verify anything at ``now_ns``."""
        keep = unexpired_keys(self._ordered, self._retired, now_ns, self.grace_ns)
        return Keyring(keep, grace_ns=self.grace_ns, clock_skew_ns=self.clock_skew_ns)

    # -- the keyring document (how key versions are stored in a secret) --------------------

    def to_document(self) -> str:
        """JSON: ``{"keys": [{"id", "secret" (hex), "activates_at", "expires_at"?}, ...]}``."""
        keys: list[dict[str, Any]] = []
        for key in self._ordered:
            entry: dict[str, Any] = {
                "id": key.key_id,
                "secret": key.secret.hex(),
                "activates_at": format_ns(key.activates_ns),
            }
            if key.expires_ns is not None:
                entry["expires_at"] = format_ns(key.expires_ns)
            keys.append(entry)
        return json.dumps({"keys": keys}, separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_document(
        cls,
        text: str,
        *,
        grace_ns: int = DEFAULT_GRACE_NS,
        clock_skew_ns: int = DEFAULT_CLOCK_SKEW_NS,
    ) -> Keyring:
        """Parse a keyring document (see ``to_document``). Raises SigningError naming the fault."""
        try:
            obj = json.loads(text)
        except ValueError as exc:
            raise SigningError(f"keyring document is not JSON: {exc}") from None
        if not isinstance(obj, Mapping) or not isinstance(obj.get("keys"), list):
            raise SigningError('keyring document must be an object with a "keys" list')
        keys = []
        for i, entry in enumerate(obj["keys"]):
            where = f"keys[{i}]"
            if not isinstance(entry, Mapping):
                raise SigningError(f"{where}: expected an object")
            key_id, secret_hex, activates = (
                entry.get("id"),
                entry.get("secret"),
                entry.get("activates_at"),
            )
            expires = entry.get("expires_at")
            if not isinstance(key_id, str) or not isinstance(secret_hex, str):
                raise SigningError(f"{where}: id and secret (hex) must be strings")
            if not isinstance(activates, str) or not (expires is None or isinstance(expires, str)):
                raise SigningError(f"{where}: activates_at/expires_at must be RFC 3339 strings")
            try:
                secret = bytes.fromhex(secret_hex)
                activates_ns = parse_ns(activates)
                expires_ns = None if expires is None else parse_ns(expires)
            except ValueError as exc:
                raise SigningError(f"{where}: {exc}") from None
            keys.append(SigningKey(key_id, secret, activates_ns, expires_ns))
        return cls(keys, grace_ns=grace_ns, clock_skew_ns=clock_skew_ns)


# -- hooks for the components ---------------------------------------------------------------

#: Where a component gets the current keyring from (a rotating source, or a fixed one).
KeyringProvider = Callable[[], Keyring]
Clock = Callable[[], int]


def _provider(keyring: Keyring | KeyringProvider) -> KeyringProvider:
    if isinstance(keyring, Keyring):
        fixed = keyring
        return lambda: fixed
    return keyring


def sign_claim(claim: StatusClaim, keyring: Keyring, *, now_ns: int | None = None) -> StatusClaim:
    """The claim with ``key_id`` and ``signature`` set by the newest key active now."""
    key = keyring.signing_key(time.time_ns() if now_ns is None else now_ns)
    signature = keyring.mac_hex(key.key_id, canonical_claim(claim))
    return replace(claim, key_id=key.key_id, signature=signature)


class WindowedKey(Protocol):
    """What the key-version rules below need of a key of any keyring."""

    @property
    def key_id(self) -> str: ...
    @property
    def activates_ns(self) -> int: ...
    @property
    def expires_ns(self) -> int | None: ...


_K = TypeVar("_K", bound=WindowedKey)


def order_keys(keys: Iterable[_K]) -> list[_K]:
    """Key versions, oldest activation first; a key id may appear once."""
    ordered = sorted(keys, key=lambda k: (k.activates_ns, k.key_id))
    seen: set[str] = set()
    for key in ordered:
        if key.key_id in seen:
            raise SigningError(f"key id {key.key_id!r} appears twice in the keyring")
        seen.add(key.key_id)
    return ordered


def key_retirements(ordered: Sequence[WindowedKey]) -> dict[str, int | None]:
    """A key retires when it expires or when the next newer key activates, whichever is first."""
    retired: dict[str, int | None] = {}
    for i, key in enumerate(ordered):
        successor = next(
            (k.activates_ns for k in ordered[i + 1 :] if k.activates_ns > key.activates_ns), None
        )
        ends = [t for t in (key.expires_ns, successor) if t is not None]
        retired[key.key_id] = min(ends) if ends else None
    return retired


def unexpired_keys(
    ordered: Sequence[_K], retired: Mapping[str, int | None], now_ns: int, grace_ns: int
) -> list[_K]:
    """The keys that can still verify something at ``now_ns`` (retired less than the grace ago)."""
    return [k for k in ordered if (r := retired[k.key_id]) is None or now_ns < r + grace_ns]


def active_key(ordered: Sequence[_K], now_ns: int) -> _K:
    """The newest key active at ``now_ns``. Raises SigningError when there is none."""
    for key in reversed(ordered):
        if key.activates_ns <= now_ns and (key.expires_ns is None or now_ns < key.expires_ns):
            return key
    raise SigningError(f"no signing key is active at {format_ns(now_ns)}")


def key_validity(
    key_id: str,
    activates_ns: int,
    retired_ns: int | None,
    at_ns: int,
    *,
    grace_ns: int,
    clock_skew_ns: int,
) -> Verification:
    """Whether a key whose signature matched may vouch at ``at_ns``: activated (within the clock
    skew), and not retired for longer than the grace. One rule for every keyring."""
    if at_ns < activates_ns - clock_skew_ns:
        return Verification(
            VerifyStatus.NOT_YET_VALID,
            key_id,
            f"key {key_id} activates at {format_ns(activates_ns)}",
        )
    if retired_ns is not None and at_ns >= retired_ns + grace_ns:
        return Verification(
            VerifyStatus.EXPIRED,
            key_id,
            f"key {key_id} retired at {format_ns(retired_ns)} "
            f"(grace {grace_ns / 1e9:g} s has passed)",
        )
    return Verification(VerifyStatus.VALID, key_id)


def verify_claim(claim: StatusClaim, keyring: Keyring, *, now_ns: int) -> Verification:
    return keyring.verify(canonical_claim(claim), claim.key_id, claim.signature, now_ns)


def claim_signature_check(
    keyring: Keyring | KeyringProvider,
    *,
    cluster_id: str,
    require_signature: bool = True,
    clock: Clock = time.time_ns,
) -> Callable[[StatusClaim], str | None]:
    """A ``backbeat.core.claims.SignatureCheck`` for the ingest: None, or why the claim fails.

    The message starts with the verification status (``tampered: ...``, ``unknown_key: ...``)
    so dead letters say which failure it was. Unsigned claims pass when ``require_signature``
    is False (mixed fleets during a roll-out).

    A signed claim is bound to its cluster: its ``cluster_id`` (inside the signed bytes) must be
    ``cluster_id``. One signed for another cluster sharing the key, or carrying no cluster id,
    fails with ``wrong_cluster``.
    """
    current = _provider(keyring)

    def check(claim: StatusClaim) -> str | None:
        if not require_signature and not claim.signature and not claim.key_id:
            return None
        result = verify_claim(claim, current(), now_ns=clock())
        if not result.ok:
            return f"{result.status.value}: {result.detail}"
        if claim.cluster_id != cluster_id:
            found = repr(claim.cluster_id[:64]) if claim.cluster_id else "no cluster_id"
            return (
                f"wrong_cluster: the claim was signed for {found}; this ingest serves "
                f"{cluster_id!r}"
            )
        return None

    return check
