"""Redis key names. Every key of a cluster shares one hash tag, so scripts never CROSSSLOT."""

from __future__ import annotations


def cluster_prefix(cluster_id: str) -> str:
    """``backbeat:{<cluster>}``: the hash tag shared by every key of the cluster."""
    return f"backbeat:{{{cluster_id}}}"


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
    ``term:<n>`` = ``1`` per leadership term that emitted a beat in the window.
    """
    return f"{cluster_prefix(cluster_id)}:w:{window_id}:beats"


# -- reverb (claims buffer) ----------------------------------------------------------------


def window_prefix(cluster_id: str, window_id: str) -> str:
    """Prefix of every key that belongs to one window's claims."""
    return f"{cluster_prefix(cluster_id)}:w:{window_id}"


def dead_letters(cluster_id: str) -> str:
    """Stream of rejected claims: raw payload, reason, detail, arrival time."""
    return f"{cluster_prefix(cluster_id)}:deadletter"


# -- security ------------------------------------------------------------------------------


def rotations(cluster_id: str) -> str:
    """Stream of signing-key rotation events, one entry per rotation that fell due.

    Fields: ``time_ns`` (when the rotation ran, integer ns since the epoch), ``due_ns`` (when
    it was scheduled), ``key_id`` (the key version that took over, "" when none did), ``ok``
    (``1`` or ``0``) and ``detail`` (human-readable reason when not ok). The rollup counts the
    entries with ``due_ns`` inside a window for ``secret_rotations_ok``.
    """
    return f"{cluster_prefix(cluster_id)}:rotations"
