"""An agent's health score, 0-100, as a pure function: (HealthInputs) -> Health.

Owned here: the formula, and nothing that gathers its figures. It starts at
100 and every point lost is a `Penalty` naming its cause, so a score is always
explained by the list beside it:

    down, given up   the score is 0 (one penalty of 100 names why)
    readiness        not ready: READINESS
    liveness         LIVENESS_PER_FAILURE per consecutive failure, at most LIVENESS_MAX
    restarts         RESTARTS_MAX * restarts in the window / max_attempts (at most RESTARTS_MAX)
    cpu, memory      per resource: a ramp of up to HEADROOM_RAMP from RAMP_START of its
                     highest threshold to that threshold, plus ABOVE_WARNING over the
                     warning threshold, or ABOVE_CRITICAL over the critical one
    open files       the same ramp against the open-files limit
    alerts           ALERT_POINTS per open alert by severity, at most ALERTS_MAX
    uptime           UPTIME_MAX * the part of the policy's reset_after not yet reached

Each penalty is rounded half up to whole points on its own; the score is
max(0, 100 - the sum). Nothing here reads a clock or a process: the exporter
and status gather the figures and pass them in (tests/unit/test_health.py).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple
from types import MappingProxyType

from orchestrator.core.model import Thresholds

FULL = 100
# Not ready: it cannot serve what depends on it; heavy, but short of down.
READINESS = 40
# Each consecutive liveness failure; the probe acts at its `failures`, so three cost the most.
LIVENESS_PER_FAILURE = 10
LIVENESS_MAX = 30
# Restarts in the policy's window, as a share of max_attempts: at max_attempts the agent is given up.
RESTARTS_MAX = 30
# Headroom: the first RAMP_START of the highest threshold is free, the rest costs up to HEADROOM_RAMP, linearly.
RAMP_START = 0.5
HEADROOM_RAMP = 10
# Crossing a threshold that alerts: warning, or critical (in place of warning, not on top of it).
ABOVE_WARNING = 5
ABOVE_CRITICAL = 10
# Each open alert, by severity; an alert repeats what a threshold says, so their sum is capped.
ALERT_POINTS: Mapping[str, int] = MappingProxyType({"WARNING": 3, "PREDICTED": 5, "CRITICAL": 10, "EMERGENCY": 25})
ALERTS_MAX = 40
# A process younger than the policy's reset_after has not proved itself stable yet.
UPTIME_MAX = 10


class HealthInputs(NamedTuple):
    """What the score is computed from, for one agent at one moment. A figure left None is not counted.
    (A tuple: the exporter makes one per agent at every sample, at a third of a frozen dataclass's cost.)"""

    up: bool = True
    ready: bool = True
    given_up: bool = False
    reason: str = ""                       # why it is down or given up, when known
    liveness_failures: int = 0             # consecutive failed liveness probes; 0 when passing
    restarts_in_window: int = 0            # failed attempts inside the restart policy's window
    max_attempts: int = 5
    cpu_percent: float | None = None
    cpu: Thresholds = Thresholds()
    memory_mb: float | None = None
    memory: Thresholds = Thresholds()
    open_fds: int | None = None
    fd_limit: int | None = None            # resources.open_files
    alerts: tuple[str, ...] = ()           # the severity of each open alert: WARNING, CRITICAL, EMERGENCY, PREDICTED
    uptime: float | None = None            # seconds since its process started
    reset_after: float = 300.0             # the restart policy's reset_after


@dataclass(frozen=True, slots=True)
class Penalty:
    cause: str      # readiness, liveness, restarts, cpu, memory, open files, alerts, uptime, down, given up
    points: int
    detail: str     # the figures behind the points


@dataclass(frozen=True, slots=True)
class Health:
    score: int
    penalties: tuple[Penalty, ...] = ()


def _round(x: float) -> int:
    """Half up, not to even: 2.5 points cost 3."""
    return math.floor(x + 0.5)


def _num(x: float) -> str:
    return f"{x:g}"


def headroom_points(value: float, thresholds: Thresholds, *, explain: bool = True) -> tuple[float, str]:
    """The unrounded headroom penalty of `value` against `thresholds`, and its explanation ("" unless `explain`).

    Non-decreasing in `value`: the ramp and the steps only grow as it approaches the highest threshold.
    """
    levels = [(name, t) for name, t in (("limit", thresholds.limit), ("critical", thresholds.critical),
                                        ("warning", thresholds.warning)) if t is not None and t > 0]
    if not levels:
        return 0.0, ""
    name, top = levels[0]
    used = value / top
    ramp = HEADROOM_RAMP * min(1.0, max(0.0, (used - RAMP_START) / (1.0 - RAMP_START)))
    step = 0
    if thresholds.critical is not None and value > thresholds.critical:
        step = ABOVE_CRITICAL
    elif thresholds.warning is not None and value > thresholds.warning:
        step = ABOVE_WARNING
    if not explain:
        return ramp + step, ""
    parts = [f"{ramp:.1f} for {used:.0%} of its {name} {_num(top)}"] if ramp > 0 else []
    if step == ABOVE_CRITICAL:
        parts.append(f"{step} above critical {_num(thresholds.critical or 0)}")
    elif step == ABOVE_WARNING:
        parts.append(f"{step} above warning {_num(thresholds.warning or 0)}")
    return ramp + step, ", ".join(parts)


def score(inputs: HealthInputs, *, explain: bool = True) -> Health:
    """The agent's score and every penalty that makes it up; without `explain`, the penalties' details are empty
    (the exporter exports causes and points only: the words cost more than the sums at 500 agents a sample)."""
    if not inputs.up:
        return Health(0, (Penalty("down", FULL, inputs.reason or "not running"),))
    if inputs.given_up:
        return Health(0, (Penalty("given up", FULL, inputs.reason or "restart attempts exhausted"),))
    found: list[tuple[str, float, str]] = []
    if not inputs.ready:
        found.append(("readiness", READINESS, "readiness probe not passing"))
    if inputs.liveness_failures > 0:
        found.append(("liveness", min(LIVENESS_MAX, LIVENESS_PER_FAILURE * inputs.liveness_failures),
                      f"{inputs.liveness_failures} consecutive liveness failure(s)" if explain else ""))
    if inputs.restarts_in_window > 0:
        share = min(1.0, inputs.restarts_in_window / max(1, inputs.max_attempts))
        found.append(("restarts", RESTARTS_MAX * share,
                      f"{inputs.restarts_in_window} of {inputs.max_attempts} attempts used in the window" if explain else ""))
    for cause, value, thresholds, unit in (("cpu", inputs.cpu_percent, inputs.cpu, "%"),
                                           ("memory", inputs.memory_mb, inputs.memory, " MB")):
        if value is not None:
            points, why = headroom_points(value, thresholds, explain=explain)
            found.append((cause, points, f"{_num(value)}{unit}: {why}" if explain else ""))
    if inputs.open_fds is not None and inputs.fd_limit:
        points, why = headroom_points(inputs.open_fds, Thresholds(limit=inputs.fd_limit), explain=explain)
        found.append(("open files", points, f"{inputs.open_fds} open: {why}" if explain else ""))
    if inputs.alerts:
        counts = {s: inputs.alerts.count(s) for s in sorted(set(inputs.alerts), key=lambda s: -ALERT_POINTS.get(s, 0))}
        total = sum(ALERT_POINTS.get(s, 0) * n for s, n in counts.items())
        listed = ", ".join(f"{n} {s}" for s, n in counts.items())
        capped = f" (capped at {ALERTS_MAX})" if total > ALERTS_MAX else ""
        found.append(("alerts", min(ALERTS_MAX, total), f"{listed} open{capped}"))
    if inputs.uptime is not None and inputs.reset_after > 0 and inputs.uptime < inputs.reset_after:
        found.append(("uptime", UPTIME_MAX * (1.0 - max(0.0, inputs.uptime) / inputs.reset_after),
                      f"up {_num(round(inputs.uptime, 1))}s of the {_num(inputs.reset_after)}s that prove it stable"
                      if explain else ""))
    penalties = tuple(Penalty(cause, rounded, detail) for cause, points, detail in found if (rounded := _round(points)) > 0)
    return Health(max(0, FULL - sum(p.points for p in penalties)), penalties)
