"""Spreading gRPC clients over the replicas they are given.

A client given several addresses (pulse replicas: any of them serves ``StreamBeats``, relays
the leader's beats and forwards ``SetTempo``) starts each stream or call at the next address
in turn, so that many streams from one process land on every replica alike; the first address
a process starts at is random, so that many processes started together do not all begin with
the first address. When a replica fails, its clients move on to the next address in the list.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterable, Sequence

#: Where the next ``spread`` starts, per process (random first, then round robin).
_turn = itertools.count(random.randrange(1 << 16))


def parse_targets(text: str | Iterable[str]) -> tuple[str, ...]:
    """Addresses from ``HOST:PORT[,HOST:PORT...]`` (or from several such strings), in order,
    without blanks or repeats."""
    parts = [text] if isinstance(text, str) else list(text)
    found: list[str] = []
    for part in parts:
        for piece in part.split(","):
            address = piece.strip()
            if address and address not in found:
                found.append(address)
    return tuple(found)


def spread(targets: Sequence[str]) -> list[str]:
    """``targets`` rotated to start at the next address in turn (round robin per call, per
    process); a client tries them in this order and moves on to the next one on failure."""
    if not targets:
        return []
    start = next(_turn) % len(targets)
    return [*targets[start:], *targets[:start]]
