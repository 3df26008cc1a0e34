"""Hybrid logical clocks (Kulkarni, Demirbas et al., "Logical Physical Clocks", 2014).

A stamp is ``(l, c, node)``: ``l`` is the largest physical time (ms) seen so far, ``c`` a
logical counter that orders events sharing the same ``l``. Stamps respect happens-before, stay
close to physical time and never go backwards even when the wall clock does.

String form: ``phys:logical:node`` in lowercase hex, e.g. ``"18c2f3a1b00:0001:beef"``; the
short form of the specification's example, ``"7ffd:0001:beef"``, parses too.
"""

from __future__ import annotations

import re
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass

from backbeat.errors import ClockSkewError

#: Default bound on how far ahead of our physical clock a remote stamp may be (ms).
DEFAULT_MAX_OFFSET_MS = 500
_MAX_FIELD = (1 << 64) - 1


_HLC_RE = re.compile(r"([0-9a-fA-F]{1,16}):([0-9a-fA-F]{1,16}):([0-9a-fA-F]{1,16})")


@dataclass(frozen=True, slots=True, order=True)
class HLCTimestamp:
    physical_ms: int
    logical: int
    node: int = 0

    def __str__(self) -> str:
        return f"{self.physical_ms:x}:{self.logical:04x}:{self.node:04x}"

    @classmethod
    def parse(cls, text: str) -> HLCTimestamp:
        """Parse ``phys:logical:node`` (hex). Raises ValueError naming what is wrong."""
        if not isinstance(text, str):
            raise TypeError(f"HLC stamp must be a string, got {type(text).__name__}")
        match = _HLC_RE.fullmatch(text)
        if match is not None:  # the common case, fast; the slow path names what is wrong
            return cls(int(match[1], 16), int(match[2], 16), int(match[3], 16))
        parts = text.split(":")
        if len(parts) != 3:
            raise ValueError(f"HLC stamp {text!r} must have the form phys:logical:node (hex)")
        values = []
        for name, part in zip(("physical", "logical", "node"), parts, strict=True):
            if not part or len(part) > 16 or any(ch not in "0123456789abcdefABCDEF" for ch in part):
                raise ValueError(f"HLC stamp {text!r}: {name} part {part!r} is not hex")
            values.append(int(part, 16))
        return cls(values[0], values[1], values[2])


def physical_ms(text: str) -> int | None:
    """The physical part (ms) of a stamp that ``HLCTimestamp.parse`` accepts, else None."""
    match = _HLC_RE.fullmatch(text)
    return None if match is None else int(match[1], 16)


def node_id_from_name(name: str) -> int:
    """A stable 16-bit node id for a human-readable node name."""
    return zlib.crc32(name.encode()) & 0xFFFF


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


class HybridLogicalClock:
    """The clock of one node. Not thread-safe: use it from one event loop or thread."""

    __slots__ = ("_c", "_clock", "_l", "max_offset_ms", "node")

    def __init__(
        self,
        node: int,
        *,
        max_offset_ms: int = DEFAULT_MAX_OFFSET_MS,
        clock: Callable[[], int] = wall_clock_ms,
    ) -> None:
        if not 0 <= node <= _MAX_FIELD:
            raise ValueError(f"node id {node} out of range")
        self.node = node
        self.max_offset_ms = max_offset_ms
        self._clock = clock
        self._l = 0
        self._c = 0

    @property
    def last(self) -> HLCTimestamp:
        """The most recent stamp issued or observed (the high-water mark)."""
        return HLCTimestamp(self._l, self._c, self.node)

    def now(self) -> HLCTimestamp:
        """Stamp a local or send event."""
        pt = self._clock()
        if pt > self._l:
            self._l, self._c = pt, 0
        else:
            self._c += 1
        return HLCTimestamp(self._l, self._c, self.node)

    def update(self, remote: HLCTimestamp) -> HLCTimestamp:
        """Stamp a receive event for a message carrying ``remote``.

        Raises ClockSkewError (and leaves the clock unchanged) when ``remote`` is more than
        ``max_offset_ms`` ahead of the local physical clock.
        """
        pt = self._clock()
        if remote.physical_ms - pt > self.max_offset_ms:
            raise ClockSkewError(
                f"remote HLC {remote} is {remote.physical_ms - pt} ms ahead of the local clock "
                f"(max_offset {self.max_offset_ms} ms)"
            )
        l_old = self._l
        l_new = max(l_old, remote.physical_ms, pt)
        if l_new == l_old == remote.physical_ms:
            c_new = max(self._c, remote.logical) + 1
        elif l_new == l_old:
            c_new = self._c + 1
        elif l_new == remote.physical_ms:
            c_new = remote.logical + 1
        else:
            c_new = 0
        self._l, self._c = l_new, c_new
        return HLCTimestamp(l_new, c_new, self.node)

    def restore(self, high_water: HLCTimestamp) -> None:
        """Never issue a stamp at or below ``high_water`` (e.g. the HLC mark of a previous leader).

        Unlike ``update`` this applies no skew bound: the mark was issued by this cluster.
        """
        self._l, self._c = max((self._l, self._c), (high_water.physical_ms, high_water.logical))
