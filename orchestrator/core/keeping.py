"""The restart keeper's decisions, pure: (event, history, agent, world, now) -> Decision.

Owned here: everything the restart keeper decides, and nothing it does. Given
one event about an agent (its process ended, it started, it was stopped, it
failed its liveness probe, a starter reported it not ready, its restart is
due), the agent's recorded `AgentHistory`, its manifest (`Agent`: restart
policy, min_uptime, cooldown, on_dependency_failure), the global state
(`World`: the emergency latch, down's stand-down) and the time `now`, `decide`
answers the agent's new history and the actions to carry out, in order. It
consults the ownership table (`ownership`) for who acts in the agent's phase,
`policies.decide` for the restart policy, and applies the latch, the
stand-down, the cooldown, the give-up and the de-duplication of an event
delivered twice. `on_dependency_failure` decides for the dependents of an
agent that stopped being ready; `to_restart_when_back` and `waiting_for`
decide who comes back once it is.

Nothing here reads a clock, sleeps or does I/O: `now` and the random number
for jitter are parameters, so every decision is unit-tested on a fake clock
(tests/unit/test_keeping.py). The keeper (`daemons.restarts.Keeper`) is the
thin shell: it reads the runtime state, calls these functions (under the
runtime lock when it records), and carries the actions out.

An action list is carried out in order; a `Stop` waits for the agent to be
down, so the keeper runs it, and every action after it, on a thread of its
own: nothing waits behind a stop.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import TypeAlias

from orchestrator.core import ownership, policies
from orchestrator.core.model import Agent
from orchestrator.core.policies import AgentHistory, Exit

# -- what the keeper is told -------------------------------------------------------------------


@dataclass(frozen=True)
class Ended:
    """A process of `agent` ended (supervisord's EXITED, or FATAL: it could not be started at all)."""

    agent: str
    exit: Exit
    serial: str = ""               # "SUPERVISORD_PID:SERIAL" of the event: a redelivery is recognised by it
    started: float | None = None   # when the process that ended had started (supervisord's clock), if known


@dataclass(frozen=True)
class NotReady:
    """A starter stopped `agent` because it did not become ready in time, and reported it."""

    agent: str
    exits: int                     # the agent's `AgentHistory.exits` when the starter started it
    detail: str = ""
    serial: str = ""


@dataclass(frozen=True)
class Running:
    """`agent` was started, by anyone (STARTING), or is up (RUNNING)."""

    agent: str
    running: bool = False          # RUNNING, not only STARTING


@dataclass(frozen=True)
class Stopped:
    """`agent` was stopped (supervisord's STOPPED)."""

    agent: str
    by_keeper: bool = False        # a stop the keeper itself asked for: its scheduled restart stays


@dataclass(frozen=True)
class LivenessFailed:
    """The liveness monitor saw `agent` fail its probe `failures` times in a row."""

    agent: str
    detail: str = "liveness failed"


@dataclass(frozen=True)
class LimitReached:
    """The exporter saw `agent` at a limit of its `resources` for the limit's `for` (see core.alerts.on_limit)."""

    agent: str
    reason: str                    # memory_limit, cpu_limit, fds_limit
    detail: str
    action: str = "restart"        # restart (through the restart policy) or stop


@dataclass(frozen=True)
class RestartDue:
    """The deadline of `agent`'s scheduled restart has come."""

    agent: str


@dataclass(frozen=True)
class DependencyFailed:
    """`dependency` stopped being ready (it ended, gave up or failed its liveness): its dependents act."""

    dependency: str


Event: TypeAlias = Ended | NotReady | Running | Stopped | LivenessFailed | LimitReached | RestartDue


@dataclass(frozen=True)
class World:
    """What the keeper reads of the global runtime state."""

    latched: bool = False          # the emergency stop is latched
    standing_down: bool = False    # `down` is stopping this supervisord: the keeper stands down

    @property
    def quiet(self) -> bool:
        """Nothing is started, stopped or restarted by the keeper."""
        return self.latched or self.standing_down


# -- what the keeper does ----------------------------------------------------------------------


@dataclass(frozen=True)
class Record:
    """Say `reason` in the listener's log; nothing else happens."""

    reason: str


@dataclass(frozen=True)
class Skip:
    """Nothing to do, and nothing worth saying (latched, standing down, stopped, delivered again)."""

    why: str


@dataclass(frozen=True)
class ScheduleRestart:
    """Start the agent again at `at`, at most once for the decision `token`."""

    at: float
    token: str
    reason: str


@dataclass(frozen=True)
class GiveUp:
    """The agent is given up: say so, and where its stderr is."""

    reason: str


@dataclass(frozen=True)
class Stop:
    """Stop the agent and wait until it is down; the actions after this one wait for it too."""

    reason: str
    keeps_restart: bool = True     # the keeper's own stop: the restart it scheduled is not cancelled by it


@dataclass(frozen=True)
class CancelRestart:
    """Drop the agent's scheduled restart: it was stopped by someone else than the keeper."""

    reason: str


@dataclass(frozen=True)
class StartOnce:
    """Start the agent's processes that are down, for the restart decision `token` (once per token)."""

    token: str


@dataclass(frozen=True)
class FailDependents:
    """The agent stopped being ready: its dependents act on their on_dependency_failure."""

    dependency: str


@dataclass(frozen=True)
class RecoverDependents:
    """The agent is running again: once it is ready, bring back the dependents waiting for it."""

    dependency: str


@dataclass(frozen=True)
class RaiseAlert:
    """An alert about the agent's life (not a threshold's): a manual-policy agent that exited. Key: agent/exit."""

    summary: str
    value: float = -1.0           # its exit status, when known


@dataclass(frozen=True)
class ResolveAlert:
    """The agent runs again: its exit alert, if one fires, resolves."""


Action: TypeAlias = (Record | Skip | ScheduleRestart | GiveUp | Stop | CancelRestart | StartOnce | FailDependents
                     | RecoverDependents | RaiseAlert | ResolveAlert)


@dataclass(frozen=True)
class Decision:
    """The agent's new history (None: leave the recorded one as it is), and the actions to carry out, in order."""

    history: AgentHistory | None = None
    actions: tuple[Action, ...] = ()


# -- the decisions -----------------------------------------------------------------------------


def decide(event: Event, history: AgentHistory, agent: Agent, now: float, *, world: World, rand: float = 0.5) -> Decision:
    """What the keeper does about `event` of `agent`, given its recorded `history` and the `world`, at time `now`.

    For an `Ended` event `now` is when the process ended (supervisord's clock), not when the event was read.
    """
    if isinstance(event, Ended):
        return _ended(event.exit, history, agent, now, world=world, rand=rand, serial=event.serial, started=event.started)
    if isinstance(event, NotReady):
        if history.exits != event.exits:
            return Decision(actions=(Skip("the attempt this report is about was already decided (it exited first)"),))
        return _ended(Exit(exitstatus=None, during_start=True, detail=event.detail), history, agent, now, world=world,
                      rand=rand, serial=event.serial, started=None, kind="not-ready")
    if isinstance(event, Running):
        # started, by anyone: no longer waiting for a dependency
        cleared = replace(history, waiting_for="") if history.waiting_for else None
        if not event.running:
            return Decision(cleared, ())
        # only a manual-policy agent can have an exit alert to resolve
        return Decision(cleared, (RecoverDependents(agent.name),
                                  *((ResolveAlert(),) if agent.restart.policy == "manual" else ())))
    if isinstance(event, Stopped):
        if event.by_keeper:
            return Decision(actions=(Skip("the keeper's own stop: its scheduled restart stays"),))
        cancelled = replace(history, next_restart_at=None) if history.next_restart_at is not None else None
        return Decision(cancelled, (CancelRestart("stopped on request; its pending restart is cancelled"),))
    if isinstance(event, LivenessFailed):
        return _liveness_failed(event.detail, history, agent, now, world=world, rand=rand, cause="liveness")
    if isinstance(event, LimitReached):
        if event.action == "stop":
            return _limit_stop(event, history, agent, now, world=world)
        return _liveness_failed(f"{event.reason}: {event.detail}", history, agent, now, world=world, rand=rand,
                                cause=event.reason)
    if isinstance(event, RestartDue):
        if not may_restart(history, world):
            return Decision(actions=(Skip("the restart is no longer due: stopped, given up, latched or waiting"),))
        return Decision(actions=(StartOnce(history.restart_token or f"{agent.name}#{history.exits}"),))
    raise TypeError(f"not an event of the restart keeper: {event!r}")


def _ended(ended: Exit, history: AgentHistory, agent: Agent, now: float, *, world: World, rand: float, serial: str,
           started: float | None, kind: ownership.EventKind = "exited") -> Decision:
    if serial and history.last_event == serial:
        return Decision(actions=(Skip("delivered again after the listener died holding it: already counted"),))
    entry = history
    pending = entry.next_restart_at is not None
    if pending and started and entry.decided_at is not None and started >= entry.decided_at:
        # The pending restart was carried out (its listener died before clearing the mark): this is
        # the end of the process it started, to be decided like any other.
        pending = False
        entry = replace(entry, next_restart_at=None)
    phase = ownership.phase_of(latched=world.latched, standing_down=world.standing_down, given_up=entry.given_up,
                               stopped=entry.stopped, restart_pending=pending, up=False, ready=False)
    rule = ownership.rule(phase, kind)
    if started:
        entry = replace(entry, started_at=started)
    if rule.act in ("decide", "count"):
        early = entry.started_at is not None and now - entry.started_at < agent.min_uptime
        decision = policies.decide(replace(ended, during_start=ended.during_start or early), entry, agent.restart, now, rand=rand)
        if rule.act == "count" and decision.action == "restart":
            decision = replace(decision, action="record", reason=f"{decision.reason}; not restarted: {phase}",
                               history=replace(decision.history, next_restart_at=None))
    else:
        decision = policies.Decision("record", reason=f"ended while {phase}: {rule.why}", history=entry)
    counted = replace(decision.history, exits=entry.exits + 1, last_event=serial or entry.last_event)
    actions: list[Action] = []
    if decision.action == "restart":
        token = f"{agent.name}#{entry.exits + 1}"
        counted = replace(counted, decided_at=now, restart_token=token)
        actions.append(ScheduleRestart(at=counted.next_restart_at if counted.next_restart_at is not None else now,
                                       token=token, reason=decision.reason))
    elif decision.action == "give-up":
        actions.append(GiveUp(decision.reason))
    elif decision.action == "record":  # a decision that only records keeps a pending restart as it was
        actions.append(Record(decision.reason))
        if rule.act == "decide" and agent.restart.policy == "manual" and not ended.expected:
            actions.append(RaiseAlert(f"{agent.name} exited and its restart policy is manual: {decision.reason}",
                                      value=float(ended.exitstatus if ended.exitstatus is not None else -1)))
    if rule.act == "decide" and (decision.action in ("restart", "give-up") or not ended.expected):
        actions.append(FailDependents(agent.name))
    return Decision(counted, tuple(actions))


def _liveness_failed(detail: str, history: AgentHistory, agent: Agent, now: float, *, world: World, rand: float,
                     cause: str) -> Decision:
    """A running agent failed its liveness probe: stop it, then its restart policy decides, unless in cooldown."""
    if history.given_up or history.stopped or world.quiet:
        return Decision(actions=(Skip("given up, stopped, latched or standing down: no liveness action"),))
    cooldown = agent.resources.cooldown
    if history.in_cooldown(cooldown, now):
        return Decision(actions=(Record(f"{detail}; no action: in cooldown for {cooldown:g}s after the last one"),))
    decision = policies.decide(Exit(exitstatus=None, detail=detail), history, agent.restart, now, rand=rand, cause=cause)
    counted = replace(decision.history, last_action_at=now, exits=history.exits + 1)
    then: Action
    if decision.action == "restart":
        # a token of its own: the token of an earlier restart decision would be refused as carried out already
        token = f"{agent.name}#{history.exits + 1}"
        counted = replace(counted, decided_at=now, restart_token=token)
        then = ScheduleRestart(at=counted.next_restart_at if counted.next_restart_at is not None else now,
                               token=token, reason=decision.reason)
    elif decision.action == "give-up":
        then = GiveUp(decision.reason)
    else:
        then = Record(decision.reason)
    return Decision(counted, (Stop(f"{detail}: stopping it"), then, FailDependents(agent.name)))


def _limit_stop(event: LimitReached, history: AgentHistory, agent: Agent, now: float, *, world: World) -> Decision:
    """A limit whose manifest says `stop`: the agent is stopped and stays stopped, as if by the operator."""
    if history.given_up or history.stopped or world.quiet:
        return Decision(actions=(Skip("given up, stopped, latched or standing down: no limit action"),))
    if history.in_cooldown(agent.resources.cooldown, now):
        return Decision(actions=(Record(f"{event.reason}: {event.detail}; no action: in cooldown"),))
    why = f"{event.reason}: {event.detail}"
    stopped = replace(history.stopping(), last_action_at=now, reason=why)
    return Decision(stopped, (Stop(f"{why}: stopping it (on_limit: stop)", keeps_restart=False),
                              Record(f"{agent.name} stays stopped until `orchestrator start {agent.name}`"),
                              FailDependents(agent.name)))


def may_restart(history: AgentHistory, world: World) -> bool:
    """Whether a scheduled restart may still be carried out."""
    return not (world.quiet or history.given_up or history.stopped or history.next_restart_at is None or history.waiting_for)


def after_restart(decided: AgentHistory, current: AgentHistory, world: World, *, started: bool) -> Decision:
    """The restart decided in `decided` was just asked of supervisord (`started`: something started); `current` is the
    history recorded now. The pending mark is cleared if the decision is still the recorded one; if an operator's
    stop, `down` or an emergency stop was recorded meanwhile, what just started is stopped again."""
    same = current.restart_token == decided.restart_token and current.decided_at == decided.decided_at
    cleared = replace(current, next_restart_at=None) if same and current.next_restart_at is not None else None
    if not started:
        return Decision(cleared)
    if same and not may_restart(current, world):
        return Decision(cleared, (Stop("stopped again: it was stopped or latched while its restart was being carried out",
                                     keeps_restart=False),))
    return Decision(cleared, (Record("restarted"),))


# -- dependency failure ------------------------------------------------------------------------


@dataclass(frozen=True)
class DependentsDecision:
    """What the dependents of a failed agent do: their new histories, who is stopped, who restarts once it is back."""

    histories: Mapping[str, AgentHistory] = field(default_factory=dict)
    stop: tuple[str, ...] = ()
    wait: tuple[str, ...] = ()


def acting(agents: Mapping[str, Agent], dependents: Iterable[str]) -> list[str]:
    """The `dependents` that act when what they depend on fails (on_dependency_failure is not `ignore`)."""
    return [d for d in dependents if d in agents and agents[d].on_dependency_failure != "ignore"]


def on_dependency_failure(dependency: str, dependents: Iterable[str], agents: Mapping[str, Agent],
                          histories: Mapping[str, AgentHistory], *, world: World) -> DependentsDecision:
    """`dependency` stopped being ready: each of its (direct or indirect) `dependents` waits for it to be back; those
    with on_dependency_failure `stop` are stopped until then, those with `restart` restart once it is, `ignore` do
    nothing. Nothing acts while latched or standing down, nor for a dependent the operator stopped."""
    if world.quiet:
        return DependentsDecision()
    chosen = [d for d in acting(agents, dependents) if not histories.get(d, AgentHistory()).stopped]
    changed = {d: replace(histories.get(d, AgentHistory()), waiting_for=dependency) for d in chosen
               if not histories.get(d, AgentHistory()).waiting_for}
    stop = tuple(d for d in chosen if agents[d].on_dependency_failure == "stop")
    return DependentsDecision(histories=changed, stop=stop, wait=tuple(d for d in chosen if d not in stop))


def waiting_for(dependency: str, dependents: Iterable[str], histories: Mapping[str, AgentHistory]) -> list[str]:
    """The `dependents` waiting for `dependency` to be back, sorted."""
    return sorted(d for d in dependents if histories.get(d, AgentHistory()).waiting_for == dependency)


def to_restart_when_back(waiting: Iterable[str], agents: Mapping[str, Agent]) -> list[str]:
    """Of the dependents that waited, those stopped before being started again (on_dependency_failure `restart`);
    the others (`stop`) are down already and are only started."""
    return [d for d in waiting if d in agents and agents[d].on_dependency_failure == "restart"]
