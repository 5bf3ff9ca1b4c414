"""Go-style duration strings ("250ms", "1s", "1m30s", "1.5h") as used by kube-proxy's flags.

Pure and stdlib-only: the option table parses flag values with it before gevent is imported.
A bare number is read as seconds (YAML configs often say ``udpTimeout: 30``).
"""

from __future__ import annotations

import re

_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")


class DurationError(ValueError):
    """The text is not a duration; the message says what a valid one looks like."""


def parse_duration(text: str | int | float) -> float:
    """Seconds for a Go duration string ("100ms", "1m30s") or a plain number of seconds.

    Negative durations are refused: every duration edgeproxy takes is a period or a timeout.
    """
    if isinstance(text, bool):
        raise DurationError(f"invalid duration {text!r}: expected e.g. 100ms, 1s, 5m")
    if isinstance(text, (int, float)):
        if text < 0:
            raise DurationError(f"invalid duration {text!r}: must not be negative")
        return float(text)
    value = text.strip()
    if value in ("0", ""):
        if value == "":
            raise DurationError("invalid duration '': expected e.g. 100ms, 1s, 5m")
        return 0.0
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        if seconds < 0:
            raise DurationError(f"invalid duration {text!r}: must not be negative")
        return seconds
    if value.startswith("-"):
        raise DurationError(f"invalid duration {text!r}: must not be negative")
    value = value.lstrip("+")
    pos = 0
    total = 0.0
    for match in _PART.finditer(value):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if pos != len(value) or pos == 0:
        raise DurationError(
            f"invalid duration {text!r}: expected a number with a unit (ns, us, ms, s, m, h), "
            "e.g. 100ms, 1s, 1m30s"
        )
    return total
