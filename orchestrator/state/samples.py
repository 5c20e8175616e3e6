"""The exporter's latest sample of every agent process, for `status` to read instead of sampling on its own.

    STATE/runtime/sample.json   {"taken_at": seconds since the epoch, "interval": s,
                                 "processes": {"PID": [cpu_percent, rss_bytes], ...}}

Owned by the exporter's sampler, which rewrites it (atomically) after each sample; `status`
only reads it, and only when it is fresh: taken within two of the exporter's intervals.
Otherwise (no exporter, or a stale file) status samples the process trees itself.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

from orchestrator.core.names import RUNTIME_DIR
from orchestrator.state.files import write_atomically

FILE = "sample.json"
Figures = dict[int, tuple[float | None, int | None]]


def _path(state_dir: str) -> str:
    return os.path.join(state_dir, RUNTIME_DIR, FILE)


def write(state_dir: str, taken_at: float, interval: float, figures: Mapping[int, tuple[float | None, int | None]]) -> None:
    os.makedirs(os.path.join(state_dir, RUNTIME_DIR), mode=0o700, exist_ok=True)
    data = {"taken_at": taken_at, "interval": interval,
            "processes": {str(pid): [cpu, rss] for pid, (cpu, rss) in figures.items()}}
    # a cache, rewritten every interval: no fsync (it cost the sampler 5 ms a sample at 500 agents)
    write_atomically(_path(state_dir), json.dumps(data, separators=(",", ":")), durable=False)


def read(state_dir: str, now: float) -> Figures | None:
    """The figures of the latest sample by pid, or None when there is none taken within two intervals of `now`."""
    try:
        with open(_path(state_dir), encoding="utf-8") as handle:
            data = json.load(handle)
        taken_at, interval = float(data["taken_at"]), float(data["interval"])
        if not 0 <= now - taken_at <= 2 * interval:
            return None
        return {int(pid): (None if cpu is None else float(cpu), None if rss is None else int(rss))
                for pid, (cpu, rss) in data["processes"].items()}
    except (OSError, ValueError, KeyError, TypeError):
        return None
