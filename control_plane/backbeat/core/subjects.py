"""NATS subjects and JetStream stream names of a cluster."""

from __future__ import annotations

import os
import re

#: The cluster a component serves when neither --cluster nor BACKBEAT_CLUSTER says otherwise.
DEFAULT_CLUSTER_ID = "local"


def default_cluster_id() -> str:
    """``BACKBEAT_CLUSTER`` when set, else ``local`` (what `backbeat up` runs)."""
    return os.environ.get("BACKBEAT_CLUSTER") or DEFAULT_CLUSTER_ID


_CLUSTER_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")


def check_cluster_id(cluster_id: str) -> str:
    """Cluster ids become NATS subject tokens and Redis hash tags: keep them plain."""
    if not _CLUSTER_RE.fullmatch(cluster_id):
        raise ValueError(
            f"cluster id {cluster_id!r} must be 1-64 characters of letters, digits, '-' or '_'"
        )
    return cluster_id


def beat(cluster_id: str) -> str:
    """Every beat, core NATS (fire and forget)."""
    return f"backbeat.{cluster_id}.beat"


def downbeat(cluster_id: str) -> str:
    """Downbeats, JetStream (durable; Nats-Msg-Id de-duplicates across failover)."""
    return f"backbeat.{cluster_id}.downbeat"


def pulse_handoff(cluster_id: str) -> str:
    """Pulse replicas only: a leader released the lock, or a new one was elected."""
    return f"backbeat.{cluster_id}.pulse.handoff"


def claims(cluster_id: str) -> str:
    """Status claims from agents (core NATS; ingest replicas share a queue group)."""
    return f"backbeat.{cluster_id}.claims"


def bar(cluster_id: str, window_id: str) -> str:
    """The one BarReport of a window (JetStream, one message per subject)."""
    return f"backbeat.{cluster_id}.bar.{window_id}"


def bars_wildcard(cluster_id: str) -> str:
    return f"backbeat.{cluster_id}.bar.*"


def _stream_token(cluster_id: str) -> str:
    return check_cluster_id(cluster_id).upper().replace("-", "_")


def downbeat_stream(cluster_id: str) -> str:
    return f"BACKBEAT_{_stream_token(cluster_id)}_DOWNBEATS"


def timeline_stream(cluster_id: str) -> str:
    """JetStream keeps the last timeline record announced (a floor for the grid that survives
    the loss of every Redis master's memory)."""
    return f"BACKBEAT_{_stream_token(cluster_id)}_TIMELINE"


def bar_stream(cluster_id: str) -> str:
    return f"BACKBEAT_{_stream_token(cluster_id)}_BARS"


CLAIMS_QUEUE_GROUP = "backbeat-reverb-ingest"


def timeline(cluster_id: str) -> str:
    """The leader announces its timeline record (current + pending) here on election and on
    every change; followers and SDKs pick up pending tempo changes early. JetStream keeps the
    last one (``timeline_stream``)."""
    return f"backbeat.{cluster_id}.timeline"
