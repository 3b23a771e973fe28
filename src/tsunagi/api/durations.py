"""Go/Istio-style duration strings ("10s", "1.5s", "1h30m", "250us")."""

from __future__ import annotations

import re
from datetime import timedelta

# Go's time.ParseDuration units, in seconds.
_UNITS: dict[str, float] = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")

MILLISECOND = 1e-3
#: Longest duration protobuf (and so Envoy) can represent: 10,000 years, in seconds.
MAX_DURATION = 315_576_000_000.0


class DurationError(ValueError):
    """A duration string could not be parsed; ``str(err)`` is a user-facing reason."""


def parse_duration(value: object) -> float:
    """Parse a Go-style duration string to seconds.

    Accepts a sequence of decimal numbers each followed by a unit (``ns``, ``us``,
    ``ms``, ``s``, ``m``, ``h``), e.g. ``"1h30m"`` or ``"1.5s"``. Negative
    durations and bare numbers are rejected because Istio never means them.
    """
    if isinstance(value, bool) or not isinstance(value, str):
        raise DurationError(f'must be a duration string such as "10s" or "100ms", got {value!r}')
    text = value.strip()
    if not text:
        raise DurationError('must be a duration such as "10s", got an empty string')
    if text.startswith("-"):
        raise DurationError(f"must not be negative, got {value!r}")
    body = text[1:] if text.startswith("+") else text
    if body == "0":
        return 0.0
    pos = 0
    total = 0.0
    while pos < len(body):
        m = _PART.match(body, pos)
        if m is None:
            raise DurationError(
                f"invalid duration {value!r}: expected numbers with units ns, us, ms, s, m, h"
                ' (e.g. "10s", "1.5s", "1h30m")'
            )
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if not body:
        raise DurationError(f"invalid duration {value!r}")
    if not total <= MAX_DURATION:  # also catches inf from a 400-digit number
        raise DurationError(
            f"duration {value!r} is too long; at most {MAX_DURATION:.0f}s (10,000 years)"
        )
    return total


def to_timedelta(seconds: float) -> timedelta:
    """Convert parsed seconds to a :class:`datetime.timedelta`."""
    return timedelta(seconds=seconds)


def to_seconds_nanos(seconds: float) -> tuple[int, int]:
    """Split seconds into (seconds, nanos) as protobuf's Duration wants them."""
    total_ns = round(seconds * 1e9)
    return total_ns // 1_000_000_000, total_ns % 1_000_000_000


def format_duration(seconds: float) -> str:
    """Format seconds as a protobuf-JSON duration string, e.g. ``"1.500s"``."""
    secs, nanos = to_seconds_nanos(seconds)
    if nanos == 0:
        return f"{secs}s"
    frac = f"{nanos:09d}".rstrip("0")
    return f"{secs}.{frac}s"
