"""Control commands: start, stop, restart, their -all forms, and the emergency stop.

Owned here: acting on running agents by hand, in dependency order. start
brings an agent's dependencies up first (each ready before the next starts),
stop takes its dependents down first, each level in parallel; `no_deps`
limits either to the names given. A manual start clears a given-up agent.

The emergency stop is the exception to every ordering: every agent's whole
process group gets SIGTERM at once, SIGKILL after a short deadline, and a
latch is set (in the runtime state, so it survives everything) under which
nothing restarts automatically and apply and start refuse, until
`emergency_clear`. Called by the cli.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace

from orchestrator.core.events import Emit, Note, ignore
from orchestrator.core.names import is_internal
from orchestrator.host import cgroups, orphans, processes
from orchestrator.state import runtime
from orchestrator.operations.apply import mark_stopping
from orchestrator.operations.stopping import stop_in_order
from orchestrator.core.processes import UP_STATES
from orchestrator.supervisord import launching
from orchestrator.supervisord.client import Client, SupervisorError
from orchestrator.core.errors import OrchestratorError, require_known
from orchestrator.core.graph import Graph
from orchestrator.state.history import History
from orchestrator.core.model import Agent
from orchestrator.operations.sequencer import Result, Sequencer

EMERGENCY_DEADLINE = 3.0  # seconds between SIGTERM and SIGKILL
LATCH_LOCK_TIMEOUT = 5.0  # an emergency stop does not wait longer than this for the runtime lock


def _live(state_dir: str) -> Mapping[str, Agent]:
    current = History(state_dir).current()
    if current is None:
        raise OrchestratorError(f"nothing has been applied in {state_dir} yet (run `orchestrator up`)")
    return current.agents


def _check(names: Iterable[str], agents: Mapping[str, Agent]) -> list[str]:
    names = list(names)
    require_known(names, agents)
    return names


def _select(state_dir: str, names: Iterable[str] | None, *, no_deps: bool,
            related: Callable[[Graph, str], Iterable[str]]) -> tuple[Mapping[str, Agent], list[str], Graph, set[str]]:
    """The live agents, the ones named (all when None), the graph, and the named plus what `related` adds."""
    agents = _live(state_dir)
    chosen = _check(names if names is not None else agents, agents)
    graph = Graph.of_agents(agents)
    wanted = set(chosen)
    if not no_deps:
        for name in chosen:
            wanted.update(related(graph, name))
    return agents, chosen, graph, wanted


def start(state_dir: str, client: Client, names: Iterable[str] | None, *, no_deps: bool = False,
          emit: Emit = ignore, restarting: Iterable[str] = ()) -> Result:
    """Start `names` (all agents when None), their dependencies first; a given-up agent is cleared.
    `restarting`: the agents the operator's restart stopped, each counted as a restart with reason `operator`."""
    runtime.refuse_if_latched(state_dir)
    agents, chosen, graph, wanted = _select(state_dir, names, no_deps=no_deps, related=Graph.dependencies)
    restarted = set(restarting)
    with runtime.changing(state_dir) as live:
        for name in chosen:
            history = live.agent(name).cleared()
            live.agents[name] = history.restarted("operator") if name in restarted else history
    up = {p.group for p in client.processes() if p.state in UP_STATES}
    to_start = {n for n in wanted if n not in up}
    verify = {n for n in wanted if n in up}
    # with no_deps, what the named agents need is not started but must be ready before they start: checked, so
    # the sequencer does not wait on it for ever (the bug: `restart NAME` stopped NAME and never started it)
    verify |= {d for n in to_start for d in graph.dependencies(n) if d in up}
    with runtime.changing(state_dir) as live:
        for name in to_start:
            live.agents[name] = live.agent(name).starting()
    return Sequencer(client, agents, state_dir=state_dir, progress=emit).run(to_start, verify=verify)


def stop(state_dir: str, client: Client, names: Iterable[str] | None, *, no_deps: bool = False,
         emit: Emit = ignore) -> list[str]:
    """Stop `names` (all agents when None), their dependents first; the agents stopped."""
    agents, _, graph, wanted = _select(state_dir, names, no_deps=no_deps, related=Graph.dependents)
    mark_stopping(state_dir, wanted)
    failures = stop_in_order(client, wanted, {n: a.depends_on for n, a in agents.items()},
                             emit=emit, state_dir=state_dir)
    if failures:
        raise OrchestratorError("; ".join(f"{n} could not be stopped: {why}" for n, why in sorted(failures.items())))
    return [n for n in graph.stop_order if n in wanted]


@dataclass
class EmergencyReport:
    """What an emergency stop did, and what it could not do."""

    signalled: int = 0            # processes that got SIGTERM
    killed: int = 0               # ... of which still alive after the deadline, and SIGKILLed
    latched: bool = False         # the latch is recorded in the runtime state
    problems: list[str] = field(default_factory=list)   # what could not be done, in words


def emergency_stop(state_dir: str, client: Client | None, *, reason: str = "", deadline: float = EMERGENCY_DEADLINE,
                   emit: Emit = ignore) -> EmergencyReport:
    """End every agent's processes at once, whatever else is broken; then say what could not be recorded.

    Signals first, records afterwards, each step independent of the others:
      1. supervisord is asked to stop every agent's group without waiting (if it answers
         within seconds), so what ends counts as stopped on request and is not restarted;
      2. every process that carries the state directory's marker and a configuration hash
         (every agent and each of its descendants, found in /proc: no supervisord, lock or
         manifest needed) gets SIGTERM, to its process group and to itself, and SIGKILL
         after `deadline` seconds;
      3. the latch is recorded, if the state directory can be written and its lock is free
         within LATCH_LOCK_TIMEOUT (a full or read-only disk, or a stuck lock holder, is
         reported, not fatal).
    """
    report = EmergencyReport()
    if client is not None:
        try:
            for group in sorted({p.group for p in client.processes() if not is_internal(p.group)}):
                client.stop_group(group, wait=False)
        except SupervisorError as exc:
            report.problems.append(f"supervisord did not take the stop: {exc}")
    victims = orphans.find(state_dir, agents_only=True)
    report.signalled = len(victims)
    report.killed = processes.end_groups(victims, deadline=deadline, say=lambda line: emit(Note(line)))
    report.killed += _empty_cgroups(state_dir, emit)
    try:
        with runtime.changing(state_dir, timeout=LATCH_LOCK_TIMEOUT) as live:
            live.latch = runtime.Latch(since=time.time(), reason=reason)
            for name in list(live.agents):
                live.agents[name] = replace(live.agent(name), next_restart_at=None)
        report.latched = True
    except (OSError, runtime.LockTimeout) as exc:
        why = f"{exc.strerror or exc}" if isinstance(exc, OSError) else str(exc)
        report.problems.append(f"the latch could not be recorded in {state_dir}: {why}; the agents were stopped, but "
                               "a start or apply is not refused until it is (emergency-stop again once that is fixed)")
    return report


def _empty_cgroups(state_dir: str, emit: Emit) -> int:
    """What is still in the agents' cgroups after the signals (a process that cleared its environment, so no
    marker finds it), killed; how many."""
    scope = launching.scope(state_dir)
    try:
        layout = cgroups.detect()
        left = cgroups.agents(layout, scope)
    except (cgroups.CgroupError, OSError):
        return 0
    killed = 0
    for agent in sorted(left):
        try:
            gone = cgroups.kill(layout, scope, agent)
        except cgroups.CgroupError as exc:
            emit(Note(f"{agent}: its cgroup could not be emptied: {exc}"))
            continue
        if gone:
            emit(Note(f"{agent}: killed {len(gone)} process(es) left in its cgroup"))
            killed += len(gone)
    return killed


def emergency_clear(state_dir: str) -> runtime.Latch | None:
    """Lift the latch; the agents stay stopped until started. The latch that was lifted, if any."""
    with runtime.changing(state_dir) as live:
        latch, live.latch = live.latch, None
    return latch
