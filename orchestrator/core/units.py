"""Durations and sizes as manifests write them, parsed to seconds and bytes.

Called by the manifest validators (`spec`), nothing else. Standard library only.

Durations: `500ms`, `10s`, `5m`, `1h`, `1d`, combinations such as `1m30s`, and
plain numbers meaning seconds (`2`, `0.5`). Sizes: plain numbers are bytes;
`KB`/`MB`/`GB` are powers of 1000 and `KiB`/`MiB`/`GiB` powers of 1024, as
their names say (`512MB`, `1GiB`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TypeVar

MIB = 1024 * 1024  # the unit of resources.memory_mb: status, the exporter, its alerts and the rules read MiB
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)?")
_SIZE_UNITS = {
    None: 1, "B": 1,
    "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
    "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40,
}

DURATION_HINT = "a duration such as 500ms, 10s, 5m, 1h, 1m30s or a number of seconds"
SIZE_HINT = "a size such as 1048576, 512KB, 50MB, 1GiB"


# No duration or size in a manifest is near these; beyond them a number is a typo (or 400 zeros),
# and past float's range it would not even convert.
MAX_SECONDS = 10 * 366 * 86400.0
MAX_BYTES = 1 << 60
N = TypeVar("N", int, float)


def _bounded(parse: Callable[[object], N], value: object, limit: N) -> N:
    """`parse(value)` between 0 and `limit`, an overflow included, or ValueError."""
    try:
        parsed = parse(value)
    except OverflowError as exc:
        raise ValueError(value) from exc
    if not 0 <= parsed <= limit:
        raise ValueError(value)
    return parsed


def parse_duration(value: object) -> float:
    """Seconds in `value` (at most MAX_SECONDS); raises ValueError when it is not a duration."""
    return _bounded(_duration, value, MAX_SECONDS)


def _duration(value: object) -> float:
    if isinstance(value, bool):
        raise ValueError(value)
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError(value)
        return float(value)
    if not isinstance(value, str):
        raise ValueError(value)
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        if seconds < 0 or seconds != seconds or seconds == float("inf"):
            raise ValueError(value)
        return seconds
    pos, total = 0, 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != pos:
            raise ValueError(value)
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    if pos == 0 or pos != len(text):
        raise ValueError(value)
    return total


def parse_size(value: object) -> int:
    """Bytes in `value` (at most MAX_BYTES); raises ValueError when it is not a size."""
    return _bounded(_size, value, MAX_BYTES)


def _size(value: object) -> int:
    if isinstance(value, bool):
        raise ValueError(value)
    if isinstance(value, int):
        if value < 0:
            raise ValueError(value)
        return value
    if not isinstance(value, str):
        raise ValueError(value)
    match = _SIZE.fullmatch(value.strip())
    if not match:
        raise ValueError(value)
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2)])


def format_duration(seconds: float) -> str:
    """The shortest manifest spelling of `seconds` (`1.5s`, `5m`, `250ms`)."""
    if seconds and seconds < 1:
        return f"{seconds * 1000:g}ms"
    for unit, factor in (("h", 3600.0), ("m", 60.0)):
        if seconds >= factor and seconds % factor == 0:
            return f"{seconds / factor:g}{unit}"
    return f"{seconds:g}s"
