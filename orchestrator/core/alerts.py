"""Threshold alerts: when a measured value fires an alert, when it resolves, and what the limit asks for.

Owned here, as pure functions of (rule, state, value, now), like `policies.decide`:
- the rules an agent's thresholds make: WARNING above `warning`, CRITICAL above
  `critical`, EMERGENCY at `limit` (memory, CPU and open file descriptors);
- `for`: a value must stay above the fire level that long before the alert fires,
  so a spike that falls back sooner raises nothing;
- hysteresis: a firing alert resolves only below its resolve level (the fire level
  less `hysteresis`, a fraction of it), so a value hovering at the line does not
  flap;
- warmup: no alert starts pending while the agent warms up after a start;
- what an EMERGENCY asks for (`on_limit`: restart, stop, or alert only), and not
  twice within the agent's `cooldown`.

The exporter's sampler feeds it values and carries out what it returns (log, alert
history, notifications); the restart keeper carries out a limit's restart or stop,
so backoff and give-up apply to it as to a crash.

Standard library only, no clock (`now` is a parameter), no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Literal

from orchestrator.core.model import Resources, Thresholds

Level = Literal["WARNING", "CRITICAL", "EMERGENCY", "PREDICTED"]
LEVELS: tuple[Level, ...] = ("WARNING", "CRITICAL", "EMERGENCY", "PREDICTED")
SEVERITY = {"WARNING": 1, "PREDICTED": 2, "CRITICAL": 3, "EMERGENCY": 4}   # for notifications' minimum severity
METRICS = ("cpu_percent", "memory_mb", "open_fds")
_BY_THRESHOLD: tuple[tuple[str, Level], ...] = (("warning", "WARNING"), ("critical", "CRITICAL"), ("limit", "EMERGENCY"))


@dataclass(frozen=True, slots=True)   # slots: 500 agents have some 4,000 rules, kept while their version is live
class Rule:
    """One threshold of one metric of one agent."""

    agent: str
    metric: str          # "cpu_percent", "memory_mb", "open_fds"
    level: Level
    fire_at: float       # fires at or above this (after `for_seconds`)
    resolve_at: float    # a firing alert resolves below this
    for_seconds: float = 0.0
    key: str = field(init=False, repr=False, compare=False)   # agent/metric/level, asked for a dozen times a sample

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", f"{self.agent}/{self.metric}/{self.level}")


@dataclass(frozen=True)
class RuleState:
    """Where a rule stands: pending since a time (above the line, `for` not yet over), or firing since one."""

    pending_since: float | None = None
    firing_since: float | None = None
    value: float | None = None       # the last value seen

    @property
    def firing(self) -> bool:
        return self.firing_since is not None


QUIET = RuleState()   # neither pending nor firing: where every rule starts, and where most stay (shared, never copied)


@dataclass(frozen=True)
class Transition:
    """An alert fired or resolved."""

    rule: Rule
    kind: Literal["firing", "resolved"]
    value: float
    at: float

    @property
    def summary(self) -> str:
        threshold = self.rule.fire_at if self.kind == "firing" else self.rule.resolve_at
        relation = "at or above" if self.kind == "firing" else "below"
        return (f"{self.rule.agent} {self.rule.level} {self.kind}: {self.rule.metric} {self.value:g} is {relation} "
                f"{threshold:g}" + (f" for {self.rule.for_seconds:g}s" if self.kind == "firing" and self.rule.for_seconds else ""))


@lru_cache(maxsize=4096)   # asked for every agent at every sample; the same (name, resources) make the same rules
def rules_for(agent: str, resources: Resources) -> tuple[Rule, ...]:
    """The rules an agent's `resources` thresholds make, in metric then severity order."""
    rules = []
    for metric in METRICS:
        thresholds: Thresholds = getattr(resources, metric)
        for name, level in _BY_THRESHOLD:
            value = getattr(thresholds, name)
            if value is not None:
                rules.append(Rule(agent=agent, metric=metric, level=level, fire_at=float(value),
                                  resolve_at=float(value) * (1.0 - thresholds.hysteresis),
                                  for_seconds=thresholds.for_seconds))
    return tuple(rules)


def evaluate(rule: Rule, state: RuleState, value: float | None, now: float, *,
             warming_up: bool = False) -> tuple[RuleState, Transition | None]:
    """The rule's state after seeing `value` at `now`, and the transition it makes, if any.

    `value` None (no sample: the agent is down) ends a pending wait and leaves a firing alert as
    it is: it resolves on the first value below its resolve level, not on a gap.
    """
    # each path builds its state whole: 500 agents make some 4,000 of these a sample, and dataclasses.replace
    # costs three times a constructor
    if value is None:
        return (state if state.pending_since is None else RuleState(firing_since=state.firing_since, value=state.value)), None
    if state.firing_since is not None:
        if value < rule.resolve_at:
            return QUIET, Transition(rule, "resolved", value, now)
        return RuleState(firing_since=state.firing_since, value=value), None
    if value < rule.fire_at or warming_up:
        return QUIET, None
    since = state.pending_since if state.pending_since is not None else now
    if now - since >= rule.for_seconds:
        return RuleState(firing_since=now, value=value), Transition(rule, "firing", value, now)
    return RuleState(pending_since=since, value=value), None


OnLimit = Literal["restart", "stop", "alert"]


@dataclass(frozen=True)
class LimitAction:
    """What an EMERGENCY alert asks the restart keeper to do to its agent (reason `memory_limit` and so on)."""

    agent: str
    action: Literal["restart", "stop"]
    reason: str          # "memory_limit", "cpu_limit", "fds_limit"
    detail: str


def on_limit(transition: Transition, action: OnLimit, last_action_at: float | None, cooldown: float) -> LimitAction | None:
    """What a limit that fired asks for: `action` unless it is `alert` or the agent was acted on within `cooldown`."""
    if transition.kind != "firing" or transition.rule.level != "EMERGENCY" or action == "alert":
        return None
    if last_action_at is not None and transition.at - last_action_at < cooldown:
        return None
    reason = {"memory_mb": "memory_limit", "cpu_percent": "cpu_limit", "open_fds": "fds_limit"}[transition.rule.metric]
    return LimitAction(agent=transition.rule.agent, action=action, reason=reason, detail=transition.summary)
