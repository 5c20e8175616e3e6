"""Evidence-based suggestions for an agent's resources: (agent, evidence, now) -> recommendations.

Owned here, pure: the `DecayingHistogram` the evidence is kept in, and
`recommend`, which turns an agent's evidence into suggestions, each with the
figures that justify it and a confidence. Whoever samples (the exporter) adds
to the histograms and persists them (`to_plain`, `from_plain`); nothing here
reads a clock or a process. After Kubernetes' vertical pod autoscaler:

    memory limit   the upper percentile (p95) of per-interval peaks, +15% margin;
                   after a restart for the memory limit, at least that limit
                   + max(100 MB, 20%); the target (p90) is shown beside it
    cpu            warning at p95 of CPU + 15%, critical at p99 + 30%, rounded up to 5
    nice           +5 for a CPU-bound agent (p90 >= CPU_BOUND) whose cores are busy
                   and no other core is idle
    cpu_affinity   the idlest core, for a CPU-bound agent whose cores are busy while one is idle
    replicas       enough to bring a saturated agent's p90 back to REPLICA_TARGET per process

Confidence is 1 - 2^(-hours of history / CONFIDENCE_HALF_HOURS): 0.5 after a
day, 0.75 after two. Below `min_history` nothing is suggested; a suggestion
within TOLERANCE of the current value is not made.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from orchestrator.core.model import Agent

TARGET_Q = 0.90
UPPER_Q = 0.95
MARGIN = 0.15                    # the vertical pod autoscaler's safety margin
OOM_BUMP_MB = 100.0              # after a memory_limit restart: at least limit + max(100 MB, 20%)
OOM_BUMP_RATIO = 0.20
CPU_WARNING_Q, CPU_WARNING_MARGIN = 0.95, 0.15
CPU_CRITICAL_Q, CPU_CRITICAL_MARGIN = 0.99, 0.30
CPU_BOUND = 80.0                 # % of one core at p90: the agent is CPU-bound
BUSY_CORE = 85.0                 # % a core is busy: its agents compete
IDLE_CORE = 50.0                 # % a core is busy at most to take another CPU-bound agent
NICE_STEP = 5
SATURATED = 90.0                 # % of one core per process at p90
REPLICA_TARGET = 60.0            # % per process that added replicas aim at
TOLERANCE = 0.10                 # a change smaller than this is not worth suggesting
CONFIDENCE_HALF_HOURS = 24.0
MIN_HISTORY = 3600.0             # seconds of history below which nothing is suggested


class DecayingHistogram:
    """Weights of values in exponential buckets, older weight halving every `half_life` seconds.

    Bucket 0 holds [0, first); bucket i >= 1 holds [first * ratio^(i-1), first * ratio^i). A sample's weight
    is scaled by 2^((t - reference) / half_life) when added, so weights never need decaying; the reference
    moves forward (and every weight is rescaled) before the factor grows too large for a float.
    """

    def __init__(self, *, first: float = 1.0, ratio: float = 1.05, half_life: float = 24 * 3600.0,
                 reference: float = 0.0) -> None:
        if first <= 0 or ratio <= 1 or half_life <= 0:
            raise ValueError("first > 0, ratio > 1 and half_life > 0")
        self.first, self.ratio, self.half_life, self.reference = first, ratio, half_life, reference
        self.buckets: dict[int, float] = {}

    def _index(self, value: float) -> int:
        if value < self.first:
            return 0
        return 1 + int(math.floor(math.log(value / self.first, self.ratio) + 1e-9))

    def upper(self, index: int) -> float:
        """The upper bound of bucket `index`."""
        return self.first * self.ratio ** index

    def add(self, value: float, t: float, weight: float = 1.0) -> None:
        """Count `value`, seen at time `t`, with `weight`."""
        exponent = (t - self.reference) / self.half_life
        if exponent > 100:  # 2^100: rescale while floats still hold the old weights well
            factor = 2.0 ** -exponent
            self.buckets = {i: w * factor for i, w in self.buckets.items() if w * factor > 0}
            self.reference, exponent = t, 0.0
        index = self._index(max(0.0, value))
        self.buckets[index] = self.buckets.get(index, 0.0) + weight * 2.0 ** exponent

    def total_weight(self, now: float) -> float:
        """The sum of the weights, decayed to `now`."""
        return sum(self.buckets.values()) * math.pow(2.0, (self.reference - now) / self.half_life)

    def percentile(self, q: float) -> float | None:
        """The upper bound of the bucket where the cumulative weight reaches `q` (0..1); None when empty."""
        total = sum(self.buckets.values())
        if total <= 0:
            return None
        running = 0.0
        for index in sorted(self.buckets):
            running += self.buckets[index]
            if running >= q * total * (1 - 1e-12):
                return self.upper(index)
        return self.upper(max(self.buckets))

    def to_plain(self) -> dict[str, Any]:
        return {"first": self.first, "ratio": self.ratio, "half_life": self.half_life, "reference": self.reference,
                "buckets": [[i, w] for i, w in sorted(self.buckets.items())]}

    @classmethod
    def from_plain(cls, data: Mapping[str, Any]) -> DecayingHistogram:
        h = cls(first=data["first"], ratio=data["ratio"], half_life=data["half_life"], reference=data["reference"])
        h.buckets = {int(i): float(w) for i, w in data["buckets"]}
        return h

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DecayingHistogram) and self.to_plain() == other.to_plain()

    __hash__ = None  # type: ignore[assignment]  # mutable


@dataclass(frozen=True)
class Evidence:
    """What has been observed of one agent since `since`."""

    since: float                                   # when its history starts
    memory_peaks: DecayingHistogram | None = None  # MB: the peak of each sampling interval, per process
    cpu: DecayingHistogram | None = None           # % of one core, per process
    memory_limit_restarts: int = 0                 # restarts for its memory limit within the history
    cores_busy: Mapping[int, float] = field(default_factory=lambda: MappingProxyType({}))  # p90 % busy, per core


@dataclass(frozen=True)
class Recommendation:
    agent: str
    field: str                          # the manifest field: resources.memory_mb.limit, replicas, ...
    current: Any
    suggested: Any
    reason: str
    figures: Mapping[str, Any]
    confidence: float


def confidence(hours: float) -> float:
    """0 with no history, 0.5 after CONFIDENCE_HALF_HOURS, 0.75 after twice that, rounded to 3 places."""
    return round(1.0 - math.pow(2.0, -max(0.0, hours) / CONFIDENCE_HALF_HOURS), 3)


def _round_up(x: float, step: float) -> float:
    return float(math.ceil(x / step - 1e-9) * step)


def _differs(current: float | None, suggested: float) -> bool:
    return current is None or abs(suggested - current) > TOLERANCE * max(abs(current), 1e-9)


def recommend(agent: Agent, evidence: Evidence, now: float, *, min_history: float = MIN_HISTORY) -> list[Recommendation]:
    """The suggestions the evidence supports for `agent`; none below `min_history` seconds of history."""
    history = now - evidence.since
    if history < min_history:
        return []
    conf = confidence(history / 3600.0)
    hours = round(history / 3600.0, 1)
    out: list[Recommendation] = []

    def suggest(field_: str, current: Any, suggested: Any, reason: str, **figures: Any) -> None:
        out.append(Recommendation(agent.name, field_, current, suggested, reason,
                                  MappingProxyType({**figures, "history_hours": hours}), conf))

    resources = agent.resources
    peaks = evidence.memory_peaks
    if peaks is not None and (upper := peaks.percentile(UPPER_Q)) is not None:
        target = peaks.percentile(TARGET_Q)
        limit = _round_up(upper * (1 + MARGIN), 1)
        reason = f"p95 of memory peaks {upper:.0f} MB + {MARGIN:.0%}"
        current = resources.memory_mb.limit
        figures: dict[str, Any] = {"p90_mb": target, "p95_mb": upper, "margin": MARGIN}
        if evidence.memory_limit_restarts and current is not None:
            bumped = _round_up(current + max(OOM_BUMP_MB, OOM_BUMP_RATIO * current), 1)
            figures["memory_limit_restarts"] = evidence.memory_limit_restarts
            if bumped > limit:
                limit, reason = bumped, (f"restarted {evidence.memory_limit_restarts}x for its limit {current:g} MB: "
                                         f"+max({OOM_BUMP_MB:g} MB, {OOM_BUMP_RATIO:.0%})")
        if _differs(current, limit):
            suggest("resources.memory_mb.limit", current, limit, reason, **figures)

    cpu = evidence.cpu
    if cpu is not None and (p90 := cpu.percentile(0.90)) is not None:
        p95, p99 = cpu.percentile(CPU_WARNING_Q) or p90, cpu.percentile(CPU_CRITICAL_Q) or p90
        warning = _round_up(p95 * (1 + CPU_WARNING_MARGIN), 5)
        critical = max(_round_up(p99 * (1 + CPU_CRITICAL_MARGIN), 5), warning + 5)
        for name, current_t, value, q, margin in (("warning", resources.cpu_percent.warning, warning, "p95", CPU_WARNING_MARGIN),
                                                  ("critical", resources.cpu_percent.critical, critical, "p99", CPU_CRITICAL_MARGIN)):
            if _differs(current_t, value):
                suggest(f"resources.cpu_percent.{name}", current_t, value, f"{q} of CPU + {margin:.0%}",
                        p90_percent=p90, p95_percent=p95, p99_percent=p99)
        cores = set(resources.cpu_affinity or evidence.cores_busy)
        own = [evidence.cores_busy[c] for c in sorted(cores) if c in evidence.cores_busy]
        others = {c: b for c, b in evidence.cores_busy.items() if c not in cores}
        if p90 >= CPU_BOUND and own and min(own) >= BUSY_CORE:
            idlest = min(others, key=lambda c: (others[c], c)) if others else None
            if idlest is not None and others[idlest] <= IDLE_CORE:
                suggest("resources.cpu_affinity", resources.cpu_affinity, (idlest,),
                        f"CPU-bound (p90 {p90:.0f}%) on busy cores; core {idlest} is {others[idlest]:.0f}% busy",
                        p90_percent=p90, cores_busy=dict(evidence.cores_busy))
            else:
                nice = resources.nice or 0
                if nice < 19:
                    suggest("resources.nice", resources.nice, min(19, nice + NICE_STEP),
                            f"CPU-bound (p90 {p90:.0f}%) on cores all busy: let the others go first",
                            p90_percent=p90, cores_busy=dict(evidence.cores_busy))
        if p90 >= SATURATED:
            replicas = math.ceil(agent.replicas * p90 / REPLICA_TARGET)
            if replicas > agent.replicas:
                suggest("replicas", agent.replicas, replicas,
                        f"saturated: p90 {p90:.0f}% per process; {REPLICA_TARGET:.0f}% each with {replicas}",
                        p90_percent=p90)
    return out
