"""Who decides an agent's next action, in every phase of its life: one actor per (phase, event).

Owned here: the ownership rules as a value, pure (no I/O, no clock). Two
actors on one process race, and the race shows only on a slower machine, so
for each phase and each thing that can happen in it exactly one actor acts:

    starter   apply, up, start, restart and the boot sequence: they issue an
              agent's first start, stop what they replace, and wait for outcomes
    keeper    the restart keeper in the listener: after any end of a process it
              alone decides (policies.decide) and alone starts it again
    operator  stop, down and emergency-stop: they stop, and mark the agent so
              nothing starts it behind their back
    nobody    the event changes nothing (it is only recorded, or impossible)

The phases, derived from the runtime state by `phase_of`:

    starting          a starter issued its start and waits for ready or given up
    running           up and ready
    backing-off       ended; the keeper's restart is pending (a deadline)
    given-up          max_attempts failed within the window; waits for a start or a changed manifest
    latched           the emergency stop is latched: nothing starts
    operator-stopped  stopped by stop/down/apply's removal: nothing restarts it
    stopping          down is stopping everything (the keeper stands down)

The keeper consults `rule` for the end of a process; the unit test checks the
table is total and that only the keeper ever restarts after an end.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Phase = Literal["starting", "running", "backing-off", "given-up", "latched", "operator-stopped", "stopping"]
EventKind = Literal["exited", "not-ready", "liveness-failed", "restart-due", "dependency-failed",
                    "start-request", "stop-request", "emergency-stop"]
Actor = Literal["starter", "keeper", "operator", "nobody"]
Act = Literal["decide", "count", "record", "start", "stop", "wait", "ignore"]

PHASES: tuple[Phase, ...] = ("starting", "running", "backing-off", "given-up", "latched", "operator-stopped", "stopping")
EVENTS: tuple[EventKind, ...] = ("exited", "not-ready", "liveness-failed", "restart-due", "dependency-failed",
                                 "start-request", "stop-request", "emergency-stop")


@dataclass(frozen=True)
class Rule:
    actor: Actor
    act: Act
    why: str


_KEEPER_DECIDES = Rule("keeper", "decide", "the restart policy decides: restart after its delay, or give up")
_COUNTED = Rule("keeper", "count", "the failure is counted; nothing restarts it")
_RECORDED = Rule("nobody", "record", "recorded only")
_OPERATOR_STOPS = Rule("operator", "stop", "stopped and marked stopped: nothing restarts it")
_EMERGENCY = Rule("operator", "stop", "every process group is signalled at once and the latch is set")
_STARTER_STARTS = Rule("starter", "start", "started on request, dependencies first; the count starts again")

_TABLE: dict[tuple[Phase, EventKind], Rule] = {}


def _row(phase: Phase, **rules: Rule) -> None:
    for event, rule in rules.items():
        _TABLE[(phase, event.replace("_", "-"))] = rule  # type: ignore[index]


_row("starting",
     exited=_KEEPER_DECIDES,
     not_ready=Rule("keeper", "decide", "its starter stopped it and reported it: the policy decides, as after an exit"),
     liveness_failed=Rule("nobody", "ignore", "liveness starts after warmup, once ready"),
     restart_due=Rule("nobody", "ignore", "no restart is pending while starting"),
     dependency_failed=Rule("starter", "wait", "the starter does not start it: it is reported blocked"),
     start_request=Rule("starter", "wait", "already being started: the second starter waits for the lock"),
     stop_request=_OPERATOR_STOPS, emergency_stop=_EMERGENCY)
_row("running",
     exited=_KEEPER_DECIDES,
     not_ready=Rule("nobody", "ignore", "readiness is not checked once running"),
     liveness_failed=Rule("keeper", "decide", "the keeper stops it and its policy decides (cooldown applies)"),
     restart_due=Rule("nobody", "ignore", "no restart is pending while running"),
     dependency_failed=Rule("keeper", "decide", "on_dependency_failure: stop, restart once back, or ignore"),
     start_request=Rule("starter", "wait", "already running: its readiness is checked"),
     stop_request=_OPERATOR_STOPS, emergency_stop=_EMERGENCY)
_row("backing-off",
     exited=_RECORDED,
     not_ready=_RECORDED,
     liveness_failed=Rule("nobody", "ignore", "not running"),
     restart_due=Rule("keeper", "start", "the keeper starts it; its starter, if any, keeps waiting"),
     dependency_failed=Rule("keeper", "decide", "the pending restart waits until the dependency is back"),
     start_request=Rule("starter", "wait", "a start request waits for the keeper's restart"),
     stop_request=Rule("operator", "stop", "the pending restart is cancelled and the agent marked stopped"),
     emergency_stop=Rule("operator", "stop", "the pending restart is cancelled and the latch set"))
_row("given-up",
     exited=_RECORDED, not_ready=_RECORDED,
     liveness_failed=Rule("nobody", "ignore", "not running"),
     restart_due=Rule("nobody", "ignore", "a given-up agent has no pending restart"),
     dependency_failed=Rule("nobody", "ignore", "not running"),
     start_request=_STARTER_STARTS,
     stop_request=Rule("operator", "record", "already down: marked stopped"),
     emergency_stop=Rule("operator", "record", "already down: the latch is set"))
_row("latched",
     exited=_COUNTED, not_ready=_COUNTED,
     liveness_failed=Rule("nobody", "ignore", "no action while latched"),
     restart_due=Rule("nobody", "ignore", "no restart fires while latched"),
     dependency_failed=Rule("nobody", "ignore", "no action while latched"),
     start_request=Rule("starter", "ignore", "apply and start refuse until emergency-clear"),
     stop_request=_OPERATOR_STOPS, emergency_stop=_EMERGENCY)
_row("operator-stopped",
     exited=_RECORDED, not_ready=_RECORDED,
     liveness_failed=Rule("nobody", "ignore", "not running"),
     restart_due=Rule("nobody", "ignore", "a stop cancels the pending restart"),
     dependency_failed=Rule("nobody", "ignore", "stopped: nothing to do"),
     start_request=_STARTER_STARTS,
     stop_request=Rule("operator", "record", "already stopped"),
     emergency_stop=_EMERGENCY)
_row("stopping",
     exited=_COUNTED, not_ready=_COUNTED,
     liveness_failed=Rule("nobody", "ignore", "everything is being stopped"),
     restart_due=Rule("nobody", "ignore", "the keeper stands down: no restart fires"),
     dependency_failed=Rule("nobody", "ignore", "everything is being stopped"),
     start_request=Rule("starter", "wait", "down holds the lock: a start waits for it, then finds supervisord gone"),
     stop_request=Rule("operator", "wait", "down is stopping it already"),
     emergency_stop=_EMERGENCY)


def rule(phase: Phase, event: EventKind) -> Rule:
    """The one actor, and what it does, when `event` happens to an agent in `phase`."""
    return _TABLE[(phase, event)]


def phase_of(*, latched: bool, standing_down: bool, given_up: bool, stopped: bool,
             restart_pending: bool, up: bool, ready: bool) -> Phase:
    """The phase an agent is in, from its runtime state and what supervisord reports."""
    if standing_down:
        return "stopping"
    if latched:
        return "latched"
    if given_up:
        return "given-up"
    if stopped:
        return "operator-stopped"
    if restart_pending:
        return "backing-off"
    if up and ready:
        return "running"
    return "starting"
