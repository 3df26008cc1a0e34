"""Redis key names. Every key of a cluster shares one hash tag, so scripts never CROSSSLOT.

The claims buffer may be split over several partitions (``claim_partitions``), each with a
hash tag of its own (one slot each on Redis Cluster). Partition 0 is the cluster's own tag,
so one partition is exactly the unpartitioned layout; the per-window and ingest keys below
take a partition's prefix (``partition_prefixes``) in place of ``cluster_prefix``.
"""

from __future__ import annotations

import binascii
import functools
import zlib
from typing import Final

#: Hash slots of a Redis Cluster.
HASH_SLOTS: Final = 16384


def cluster_prefix(cluster_id: str) -> str:
    """``backbeat:{<cluster>}``: the hash tag shared by every key of the cluster."""
    return f"backbeat:{{{cluster_id}}}"


def hash_slot(key: str) -> int:
    """The Redis Cluster hash slot of ``key``: CRC16 (XMODEM) of its hash tag, mod 16384."""
    raw = key.encode()
    start = raw.find(b"{")
    if start >= 0:
        end = raw.find(b"}", start + 1)
        if end > start + 1:
            raw = raw[start + 1 : end]
    return binascii.crc_hqx(raw, 0) % HASH_SLOTS


def slot_bands(count: int) -> list[tuple[int, int]]:
    """``count`` equal ranges of hash slots (first, last), as a Redis Cluster whose ``count``
    masters own equal shares assigns them (the test and ``backbeat up`` clusters do)."""
    return [(k * HASH_SLOTS // count, (k + 1) * HASH_SLOTS // count - 1) for k in range(count)]


def _band(slot: int, count: int) -> int:
    return next(k for k, (_, last) in enumerate(slot_bands(count)) if slot <= last)


@functools.cache
def partition_tags(cluster_id: str, partitions: int) -> tuple[str, ...]:
    """The hash tags of the claims partitions, partition 0 first.

    Partition 0 is the cluster's own tag (``<cluster>``), so one partition is the layout
    without partitions. Partition ``p >= 1`` is ``<cluster>:<n>``, ``n`` the smallest number
    (above the previous partition's) whose slot falls in a band of ``slot_bands(partitions)``
    no earlier partition holds: the partitions' slots lie one per band, so a cluster whose
    masters own equal slot ranges holds one partition per master when ``partitions`` equals
    the masters (and the same number on each when it is a multiple).
    """
    if partitions < 1:
        raise ValueError("partitions must be at least 1")
    tags = [cluster_id]
    taken = {_band(hash_slot(f"{{{cluster_id}}}"), partitions)}
    n = 0
    while len(tags) < partitions:
        n += 1
        tag = f"{cluster_id}:{n}"
        band = _band(hash_slot(f"{{{tag}}}"), partitions)
        if band not in taken:
            taken.add(band)
            tags.append(tag)
    return tuple(tags)


def partition_prefixes(cluster_id: str, partitions: int) -> tuple[str, ...]:
    """``backbeat:{<tag>}`` of each claims partition (``partition_tags``), partition 0 first:
    the prefix the per-window keys, window indexes, late and dead-letter streams, ingest
    counters and batch records of that partition are built from."""
    return tuple(f"backbeat:{{{tag}}}" for tag in partition_tags(cluster_id, partitions))


def claim_partition(task_id: str, partitions: int) -> int:
    """The partition of a claim: CRC32 of its ``task_id`` mod ``partitions``. A task's claims
    (so a claim's duplicates and a task's help promise) all live in one partition."""
    return zlib.crc32(task_id.encode()) % partitions if partitions > 1 else 0


# -- pulse (fenced state) ------------------------------------------------------------------


def lock(cluster_id: str) -> str:
    """The Redlock resource, set on every Redis master."""
    return f"{cluster_prefix(cluster_id)}:leader"


def term(cluster_id: str) -> str:
    """The fencing term counter, kept on every Redis master."""
    return f"{cluster_prefix(cluster_id)}:term"


def pulse_state(cluster_id: str) -> str:
    """Hash: timeline, beat and HLC high-water marks, written only through the fenced CAS."""
    return f"{cluster_prefix(cluster_id)}:pulse"


def beat_stats(cluster_id: str, window_id: str) -> str:
    """Hash of per-window emission stats, written by the leader with each beat (fenced).

    Fields: ``beats`` (count emitted), ``degraded_beats`` (count flagged degraded),
    ``max_drift_us`` (largest |emitted - scheduled| in microseconds, integer) and one field
    ``term:<n>`` = ``1`` per leadership term that emitted a beat in the window, and the
    window's bounds ``from_beat`` / ``to_beat`` (both inclusive).
    """
    return f"{cluster_prefix(cluster_id)}:w:{window_id}:beats"


# -- reverb (claims buffer) ----------------------------------------------------------------


def window_prefix(cluster_id: str, window_id: str) -> str:
    """Prefix of every key that belongs to one window's claims."""
    return f"{cluster_prefix(cluster_id)}:w:{window_id}"


def dead_letters(cluster_id: str) -> str:
    """Stream of rejected claims: raw payload, reason, detail, arrival time."""
    return f"{cluster_prefix(cluster_id)}:deadletter"


# Per-window keys (``window_prefix`` + suffix). The ingest's Lua builds the same names from
# the prefix; tests check that the two agree.
WINDOW_KEY_SUFFIXES = ("agg", "claims", "payloads", "dedupe")


def window_aggregate(cluster_id: str, window_id: str) -> str:
    """Hash: a window's outcome counters for operators (accepted, duplicate, late,
    rejected:<reason>), bounds (from_beat, to_beat), seal (sealed, sealed_ns, beat-stats
    snapshot ``beats.<field>``) and report (reported, reported_ns, report). The report's
    claim figures come from the claims stream, not from these counters."""
    return f"{window_prefix(cluster_id, window_id)}:agg"


def window_claims(cluster_id: str, window_id: str) -> str:
    """Stream: the window's claim log, one entry per ingest batch (layout in
    ``backbeat.core.claim_log``); the source of every claim figure of its report."""
    return f"{window_prefix(cluster_id, window_id)}:claims"


def window_payloads(cluster_id: str, window_id: str) -> str:
    """Stream: the StatusClaim JSON of the claims of each ``window_claims`` entry, under the
    same entry id: ``p`` (concatenated), ``n`` (JSON array of lengths), ``tp`` (JSON array of
    traceparents, absent when none)."""
    return f"{window_prefix(cluster_id, window_id)}:payloads"


def window_dedupe(cluster_id: str, window_id: str) -> str:
    """Set of ``agent US task US beat`` of every claim seen for the window."""
    return f"{window_prefix(cluster_id, window_id)}:dedupe"


def windows_index(cluster_id: str) -> str:
    """Sorted set: window_id scored by from_beat, every window known to the store."""
    return f"{cluster_prefix(cluster_id)}:windows"


def windows_pending(cluster_id: str) -> str:
    """Sorted set: window_id scored by from_beat, windows not yet reported."""
    return f"{cluster_prefix(cluster_id)}:windows:pending"


def windows_with_beats(cluster_id: str) -> str:
    """Sorted set: window_id scored by from_beat, windows whose beats the pulse leader recorded
    (with their beat stats, fenced) and that are not reported yet. It lets the rollup's
    catch-up find windows that had beats but no claims; the leader trims members far behind
    its beat and the report removes the window."""
    return f"{cluster_prefix(cluster_id)}:windows:beats"


def windows_reported(cluster_id: str) -> str:
    """Sorted set: window_id scored by report time (ms), to forget windows past retention."""
    return f"{cluster_prefix(cluster_id)}:windows:reported"


def late_claims(cluster_id: str) -> str:
    """Stream of late claims: ``window`` (their own window), ``counted_in``, ``c``, ``tp``."""
    return f"{cluster_prefix(cluster_id)}:late"


def ingest_totals(cluster_id: str) -> str:
    """Hash: cluster-wide ingest counters (received, accepted, duplicate, late, rejected,
    rejected:<reason>, unassigned), updated atomically with the writes they count."""
    return f"{cluster_prefix(cluster_id)}:ingest"


def ingest_watermarks(cluster_id: str) -> str:
    """Hash: ingest replica id -> ``<low watermark ns>:<written ns>`` (see
    ``backbeat.core.watermark``): every claim the replica received before the low watermark
    is applied. The trigger seals a window once the live replicas' watermarks pass its
    deadline."""
    return f"{cluster_prefix(cluster_id)}:ingest:watermarks"


def ingest_batch(cluster_id: str, batch_id: str) -> str:
    """String: the outcome of an applied batch (short-lived), so a retried batch is not
    applied twice."""
    return f"{cluster_prefix(cluster_id)}:batch:{batch_id}"


# -- security ------------------------------------------------------------------------------


def rotations(cluster_id: str) -> str:
    """Stream of signing-key rotation events, one entry per rotation that fell due.

    Fields: ``time_ns`` (when the rotation ran, integer ns since the epoch), ``due_ns`` (when
    it was scheduled), ``key_id`` (the key version that took over, "" when none did), ``ok``
    (``1`` or ``0``) and ``detail`` (human-readable reason when not ok). The rollup counts the
    entries with ``due_ns`` inside a window for ``secret_rotations_ok``.
    """
    return f"{cluster_prefix(cluster_id)}:rotations"


# -- rollup (exactly-once bookkeeping) -----------------------------------------------------


def rollup_record(cluster_id: str, window_id: str) -> str:
    """Hash: the idempotency record of one window's rollup.

    Fields: ``state`` (``in_progress`` | ``computed`` | ``published``), ``owner`` (the attempt
    holding the lease while ``in_progress``; the key then expires with the lease) and ``report``
    (the report bytes computed first, which every retry republishes unchanged).
    """
    return f"{cluster_prefix(cluster_id)}:rollup:{window_id}"


def rollup_agents(cluster_id: str, window_id: str) -> str:
    """String: the window's agent ids, newline-separated and sorted (short-lived), so the next
    window's rollup can name agents that stopped reporting."""
    return f"{cluster_prefix(cluster_id)}:rollup:{window_id}:agents"


def rollup_promises(cluster_id: str, window_id: str) -> str:
    """String: the help promises still open after the window (JSON, ``claim_log``), kept as
    long as ``rollup_agents``, for the next window's rollup."""
    return f"{cluster_prefix(cluster_id)}:rollup:{window_id}:promises"


def rollup_dead_letters(cluster_id: str) -> str:
    """Hash: window_id -> JSON of a window the trigger gave up on (attempts, last error)."""
    return f"{cluster_prefix(cluster_id)}:rollup:deadletter"


def rollup_unannounced(cluster_id: str) -> str:
    """Set: dead-lettered window ids not yet named in a published report's issues."""
    return f"{cluster_prefix(cluster_id)}:rollup:unannounced"


def rollup_attempts(cluster_id: str) -> str:
    """Hash: window_id -> failed rollup attempts so far, shared by every trigger replica."""
    return f"{cluster_prefix(cluster_id)}:rollup:attempts"
