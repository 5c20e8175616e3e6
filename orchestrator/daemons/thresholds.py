"""The exporter's thresholds: alerts, enforcement of limits, forecasts, health scores and the evidence `recommend` reads.

Owned here: the state the exporter's sampler keeps between two samples (each
rule's `core.alerts.RuleState`, each forecast `Window` and PREDICTED state,
when each agent was last acted on), and carrying out what the pure decisions
in core answer:

    per agent, after each sample (and on the 1 s limit tick, memory and open files only):
        core.alerts.evaluate(rule, value)  ->  a transition: logged, state.alerts.record, sent (`notify`)
        an EMERGENCY firing                ->  core.alerts.on_limit  ->  report(LimitAction): the restart keeper acts
        core.forecast.Window.add / forecast / predicted  ->  PREDICTED, recorded and sent like the others
        core.health.score                  ->  the score and penalties the exporter exports
        state.evidence.observe             ->  saved every EVIDENCE_SAVE seconds (atomically), read by `recommend`

Figures, as `status` gives them: memory in MiB (the tree's RSS / 2^20, the unit of resources.memory_mb),
CPU in percent of one core, open file descriptors of the tree. An agent's value is
the highest of its processes' (thresholds are per process). Times are wall-clock
seconds (the alert history's). The alerts this module owns, records and sends
(`notify`: the exporter's daemons.notify.Notifications) are those keyed
agent/metric/level; the keeper's exit alerts are never touched.

Called by the exporter's sampler (daemons.exporter).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple
from functools import partial

from orchestrator.core import alerts as rules_
from orchestrator.core.forecast import Fit, Forecast, Predicted, Window, fit, forecast, predicted
from orchestrator.core.health import Health, HealthInputs, score
from orchestrator.core.model import Agent
from orchestrator.host.sampling import core_ticks
from orchestrator.state import alerts as history
from orchestrator.state import evidence as evidence_
from orchestrator.state.alerts import AlertRecord

NOT_PREDICTED = Predicted()
QUIET = rules_.QUIET   # a rule seen for the first time, or below its line: neither pending nor firing
EVIDENCE_SAVE = 60.0     # seconds between two saves of the evidence (a restart of the exporter loses at most this)
FORECASTS = (("memory_mb", "memory"), ("open_fds", "fds"))   # metric, the resource it is exported as
# a window spans one horizon (see _window), and its fit uses every pair of its samples (MAX_PAIRS_POINTS): 1,000
# windows (500 agents) of 120 samples were 10 MB of the exporter's memory, and at 60 their fits a quarter of its CPU
# (1,770 slopes each); 30 samples an horizon apart make 435, and a trend of an hour is still seen every 2 minutes
WINDOW_SAMPLES = 30


class Observed(NamedTuple):   # a tuple: 500 agents make 500 a sample
    """One agent's figures in one sample: the highest of its processes'; None where not measured."""

    name: str
    agent: Agent | None
    up: bool
    started_at: float | None          # wall-clock start of its newest running process (warmup counts from it)
    run: float | None = None          # names that start (start time and pid): a new one empties its forecast windows
    cpu_percent: float | None = None
    memory_mb: float | None = None
    open_fds: float | None = None
    fd_limit: int | None = None


@dataclass(frozen=True)
class Assessment:
    """What the exporter exports of thresholds: alerts firing, health, forecasts (by agent and resource)."""

    firing: tuple[AlertRecord, ...] = ()
    health: Mapping[str, Health] = field(default_factory=dict)
    forecasts: Mapping[tuple[str, str], Forecast] = field(default_factory=dict)


def _window(horizon: float) -> Window:
    # WINDOW_SAMPLES samples over one horizon (every 2 minutes for an hour's): a window is full, and spans the
    # horizon, whatever its length (a fixed interval left a horizon of more than 4 hours without a forecast)
    return Window(max_samples=WINDOW_SAMPLES, min_interval=horizon / WINDOW_SAMPLES, max_age=max(6 * 3600.0, 2 * horizon))


class Thresholds:
    """The alert, forecast and evidence state of every agent; `assess` is called after each sample."""

    def __init__(self, state_dir: str, *, report: Callable[[rules_.LimitAction], None],
                 log: Callable[[str], None], notify: Callable[[AlertRecord], None] = lambda alert: None,
                 wall: Callable[[], float] = time.time) -> None:
        self.state_dir, self.report, self.log, self.notify, self.wall = state_dir, report, log, notify, wall
        self.horizon = 3600.0
        self.states: dict[str, rules_.RuleState] = {}
        self.windows: dict[tuple[str, str], Window] = {}
        self.fits: dict[tuple[str, str], tuple[object, Fit | None]] = {}   # key -> (the window's times, its line)
        self.predicted: dict[tuple[str, str], Predicted] = {}
        self.forecasts: dict[tuple[str, str], Forecast] = {}
        self.last_action: dict[str, float] = {}
        self.firing: dict[str, AlertRecord] = {}
        for record in history.active(state_dir):   # alerts left firing by the previous exporter resolve like any other
            if record.metric in rules_.METRICS:
                self.firing[record.key] = record
                if record.level != "PREDICTED":
                    self.states[record.key] = rules_.RuleState(firing_since=record.at, value=record.value)
                else:
                    metric = record.metric
                    self.predicted[(record.agent, metric)] = Predicted(True, record.at, None)
        self.evidence = evidence_.load(state_dir)
        self.saved_at = wall()
        self._cores: dict[int, tuple[int, int]] = {}
        self._watched: tuple[Mapping[str, Agent] | None, set[str]] = (None, set())   # declared agents, their rules' keys
        self._rules: dict[str, tuple[object, tuple[rules_.Rule, ...]]] = {}   # agent -> (its resources, their rules)

    # --- alerts -----------------------------------------------------------------------------------------------

    def check(self, observed: Sequence[Observed], *, metrics: Sequence[str] = rules_.METRICS) -> None:
        """Evaluate the rules of `metrics` for each agent; a transition is recorded, logged and sent; a limit acted on."""
        now = self.wall()
        states = self.states
        every = metrics is rules_.METRICS
        for o in observed:
            if o.agent is None:
                continue
            resources = o.agent.resources
            warming = o.started_at is not None and now - o.started_at < resources.warmup
            kept = self._rules.get(o.name)
            if kept is None or kept[0] is not resources:   # the same declaration from sample to sample: no hashing
                kept = self._rules[o.name] = (resources, rules_.rules_for(o.name, resources))
            for rule in kept[1]:
                if not every and rule.metric not in metrics:
                    continue
                value = getattr(o, rule.metric) if o.up else None
                before = states.get(rule.key, QUIET)
                if before is QUIET and (value is None or value < rule.fire_at):   # most rules at most samples: no change
                    continue
                state, transition = rules_.evaluate(rule, before, value, now, warming_up=warming)
                if state is QUIET:
                    states.pop(rule.key, None)
                else:
                    states[rule.key] = state
                if transition is None:
                    continue
                self._record(AlertRecord.of(transition))
                action = rules_.on_limit(transition, resources.on_limit,  # type: ignore[arg-type]
                                         self.last_action.get(o.name), resources.cooldown)
                if action is not None:
                    self.last_action[o.name] = now
                    self.log(f"exporter: {o.name}: {action.reason}: asking the restart keeper to {action.action} it")
                    try:
                        self.report(action)
                    except Exception as exc:  # noqa: BLE001 - supervisord not answering must not end the sampler
                        self.log(f"exporter: {o.name}: cannot report {action.reason}: {type(exc).__name__}: {exc}")
                    if action.reason == "memory_limit":
                        self.evidence.limit_restart(o.name, now)

    def _record(self, record: AlertRecord) -> None:
        self.log(f"exporter: alert {record.summary}")
        if record.kind == "firing":
            self.firing[record.key] = record
        else:
            self.firing.pop(record.key, None)
        try:
            history.record(self.state_dir, record)
        except OSError as exc:
            self.log(f"exporter: cannot record the alert {record.key}: {exc}")
        self.notify(record)

    def _forget(self, declared: Mapping[str, Agent]) -> None:
        """Alerts of an agent or a threshold the live version no longer has resolve (nobody else would)."""
        if not self.firing:
            return
        if declared is not self._watched[0]:   # the same live version from one sample to the next: its keys once
            self._watched = (declared, {r.key for name, agent in declared.items() for r in rules_.rules_for(name, agent.resources)})
        keys = self._watched[1]
        now = self.wall()
        for key, record in list(self.firing.items()):
            if record.level == "PREDICTED":
                if record.agent in declared:
                    continue
            elif key in keys:
                continue
            self._record(AlertRecord(key=key, agent=record.agent, metric=record.metric, level=record.level,
                                     kind="resolved", value=record.value, threshold=record.threshold, at=now,
                                     summary=f"{record.agent} {record.level} resolved: {record.metric} no longer watched"))
            self.states.pop(key, None)

    # --- forecasts --------------------------------------------------------------------------------------------

    def _forecast(self, o: Observed, now: float) -> None:
        if o.agent is None:
            return
        resources = o.agent.resources
        for metric, _ in FORECASTS:
            key = (o.name, metric)
            limit = resources.memory_mb.limit if metric == "memory_mb" else (resources.open_fds.limit or o.fd_limit)
            value = getattr(o, metric)
            if limit is None or limit <= 0:   # no limit (any more): no forecast, and no PREDICTED left firing
                self.windows.pop(key, None)
                self.fits.pop(key, None)
                self.forecasts.pop(key, None)
                if self.predicted.pop(key, NOT_PREDICTED).firing:
                    self._record(AlertRecord(key=f"{o.name}/{metric}/PREDICTED", agent=o.name, metric=metric,
                                             level="PREDICTED", kind="resolved", value=value or 0.0, threshold=0.0,
                                             at=now, summary=f"{o.name} PREDICTED resolved: {metric} has no limit"))
                continue
            window = self.windows.get(key)
            if o.up and value is not None:
                grown = (window if window is not None else _window(self.horizon)).add(now, value, o.run)
                if grown is not window:   # most samples: the same window (it takes one every horizon / WINDOW_SAMPLES)
                    window = self.windows[key] = grown
            fc = forecast(window, float(limit), self.horizon, now, fit_of=partial(self._fit, key)) \
                if window is not None and o.up else None
            if fc is None:
                self.forecasts.pop(key, None)
            else:
                self.forecasts[key] = fc
            if value is None or not o.up:
                continue
            before = self.predicted.get(key, NOT_PREDICTED)
            firing, after = predicted(before, fc, (float(limit) - value) / float(limit), now, horizon=self.horizon)
            self.predicted[key] = after
            if firing != before.firing:
                rule = f"{o.name}/{metric}/PREDICTED"
                if firing:
                    summary = (f"{o.name} PREDICTED firing: {metric} {value:g} reaches its limit {limit:g} in about "
                               f"{fc.seconds if fc and fc.seconds is not None else 0:.0f}s (horizon {self.horizon:g}s)")
                else:
                    summary = f"{o.name} PREDICTED resolved: {metric} {value:g} no longer reaches {limit:g} within the horizon"
                self._record(AlertRecord(key=rule, agent=o.name, metric=metric, level="PREDICTED",
                                         kind="firing" if firing else "resolved", value=value, threshold=float(limit),
                                         at=now, summary=summary))

    def _fit(self, key: tuple[str, str], window: Window) -> Fit | None:
        """The window's line, fitted again only when its samples changed (a window takes a sample every
        horizon / WINDOW_SAMPLES at most; the exporter samples every few seconds)."""
        kept = self.fits.get(key)
        if kept is None or kept[0] is not window.times:   # a window's arrays are new whenever it takes a sample
            kept = self.fits[key] = (window.times, fit(window.samples))
        return kept[1]

    # --- the whole assessment ---------------------------------------------------------------------------------

    def assess(self, observed: Sequence[Observed], declared: Mapping[str, Agent], *,
               ready: Mapping[str, bool], histories: Mapping[str, object],
               uptimes: Mapping[str, float]) -> Assessment:
        """After a full sample: every rule, the forecasts, the evidence, and the health of every agent."""
        self.check(observed)
        now = self.wall()
        for o in observed:
            self._forecast(o, now)
            if o.agent is not None and o.up:
                self.evidence.observe(o.name, now, memory_mb_peak=o.memory_mb, cpu_percent=o.cpu_percent)
        self._forget(declared)
        names = {o.name for o in observed}
        if len(self._rules) > len(names):
            self._rules = {name: kept for name, kept in self._rules.items() if name in names}
        for key in [k for k in self.windows if k[0] not in names]:
            self.windows.pop(key, None)
            self.fits.pop(key, None)
            self.forecasts.pop(key, None)
            self.predicted.pop(key, None)
        self._observe_cores(now)
        self.evidence.keep_only(declared)
        if now - self.saved_at >= EVIDENCE_SAVE:
            self.save()
        health = {o.name: self._health(o, ready.get(o.name, False), histories.get(o.name), uptimes.get(o.name))
                  for o in observed if o.agent is not None}
        return Assessment(firing=tuple(sorted(self.firing.values(), key=lambda r: r.key)), health=health,
                          forecasts=dict(self.forecasts))

    def _observe_cores(self, now: float) -> None:
        ticks = core_ticks()
        busy = {core: 100.0 * (b - self._cores[core][0]) / (t - self._cores[core][1])
                for core, (b, t) in ticks.items() if core in self._cores and t > self._cores[core][1]}
        self._cores = ticks
        if busy:
            self.evidence.observe_cores(busy, now)

    def save(self) -> None:
        self.saved_at = self.wall()
        try:
            evidence_.save(self.state_dir, self.evidence)
        except OSError as exc:
            self.log(f"exporter: cannot save the evidence: {exc}")

    def _health(self, o: Observed, ready: bool, agent_history: object, uptime: float | None) -> Health:
        if o.agent is None:
            return Health(0)
        resources, policy = o.agent.resources, o.agent.restart
        failures = getattr(agent_history, "failures", ())
        given_up = bool(getattr(agent_history, "given_up", False))
        levels = tuple(r.level for r in self.firing.values() if r.agent == o.name)
        return score(HealthInputs(up=o.up, ready=ready and o.up, given_up=given_up,
                                  reason=str(getattr(agent_history, "reason", "") or ("" if o.up else "not running")),
                                  restarts_in_window=len(failures), max_attempts=policy.max_attempts,
                                  cpu_percent=o.cpu_percent, cpu=resources.cpu_percent,
                                  memory_mb=o.memory_mb, memory=resources.memory_mb,
                                  open_fds=None if o.open_fds is None else int(o.open_fds), fd_limit=resources.open_files,
                                  alerts=levels, uptime=uptime if o.up else None, reset_after=policy.reset_after),
                     explain=False)   # the exporter exports causes and points; `status NAME` explains its own score

