"""RFC 3339 timestamps <-> integer nanoseconds since the Unix epoch (no float rounding)."""

from __future__ import annotations

import calendar
import re
import time

_PATTERN = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(Z|z|[+-]\d{2}:\d{2})\Z"
)


def format_ns(time_ns: int) -> str:
    """``2024-01-15T10:30:00.25Z``: UTC, fraction to the nanosecond, trailing zeros trimmed."""
    seconds, nanos = divmod(time_ns, 1_000_000_000)
    base = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    if nanos:
        return f"{base}.{nanos:09d}".rstrip("0") + "Z"
    return base + "Z"


def parse_ns(text: str) -> int:
    """Parse an RFC 3339 timestamp; raises ValueError with the offending text."""
    match = _PATTERN.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not an RFC 3339 timestamp (e.g. 2024-01-15T10:30:00Z)")
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    fraction, zone = match.group(7), match.group(8)
    if not (1 <= month <= 12 and 1 <= day <= 31 and hour < 24 and minute < 60 and second < 61):
        raise ValueError(f"{text!r} has a field out of range")
    seconds = calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0))
    if zone not in ("Z", "z"):
        sign = 1 if zone[0] == "+" else -1
        seconds -= sign * (int(zone[1:3]) * 3600 + int(zone[4:6]) * 60)
    nanos = int(fraction.ljust(9, "0")) if fraction else 0
    return seconds * 1_000_000_000 + nanos
