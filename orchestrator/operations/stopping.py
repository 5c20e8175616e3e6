"""Stopping agents in reverse dependency order, and waiting until they are down.

Owned here: how a set of agents is stopped. Dependents stop before what they
depend on, each dependency level in parallel; a level is over when every
process of its agents is down, watched process by process every few
milliseconds. A group that fails to stop is reported, never waited on forever
(supervisord's stopwaitsecs, the manifest's stop_timeout, bounds each stop;
STOP_TIMEOUT is the outer limit). Once stopped, an agent ends whole: any
process of its tree that outlived it (a child that called setsid, outside
the process group supervisord signals) gets SIGTERM, then SIGKILL, and the
progress says so.

Called by apply (removed and replaced agents), control (stop), lifecycle
(down), the sequencer (a start that is not ready in time) and the restart
keeper (liveness and dependency failures).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterable, Mapping

from orchestrator.core.events import Emit, StopEvent, ignore
from orchestrator.core.names import TMP_DIR
from orchestrator.host import cgroups, processes
from orchestrator.supervisord import launching
from orchestrator.core.processes import DOWN_STATES
from orchestrator.supervisord.client import BadNameError, Client, SupervisorError
from orchestrator.core.graph import Graph

STOP_TIMEOUT = 120.0
STOP_POLL = 0.05        # the longest pause between two looks at what is stopping
STOP_POLL_EACH = 0.002  # ... and the pause per group still stopping, below that: a lone agent is looked at every 2 ms
LEFTOVER_GRACE = 3.0    # between SIGTERM and SIGKILL for what an agent left behind outside its process group


def stop_in_order(client: Client, names: Iterable[str], depends_on: Mapping[str, Iterable[str]],
                  *, state_dir: str, emit: Emit = ignore) -> dict[str, str]:
    """Stop `names` dependents first, each dependency level in parallel; the ones that failed to stop, with why.
    `state_dir`: the agents' state directory, whose cgroups (supervisord.launching's scope) each stopped agent's
    are emptied in, and where a stopped agent's private /tmp is removed."""
    chosen = set(names)
    waves = Graph.of_edges({n: depends_on.get(n, ()) for n in chosen}).waves
    failures: dict[str, str] = {}
    trees = _trees(client, chosen)
    for wave in reversed(waves):
        stopping: dict[str, list[str]] = {}
        for name in wave:
            emit(StopEvent(name, "stopping"))
            try:
                stopping[name] = client.stop_group(name, wait=False)
            except SupervisorError as exc:
                failures[name] = str(exc)
                emit(StopEvent(name, f"failed to stop: {exc}"))
        failures.update(wait_stopped(client, stopping, emit=emit))
    stopped = sorted(chosen - set(failures))
    # what every stopped agent left behind, ended at once (one grace for all, not one per agent)
    left = {name: tree for name, tree in trees.items() if name not in failures}
    ended = set(processes.end([p for tree in left.values() for p in tree], grace=LEFTOVER_GRACE))
    for name in sorted(left):
        mine = [p.pid for p in left[name] if p.pid in ended]
        if mine:
            emit(StopEvent(name, f"ended {len(mine)} process(es) it left behind outside its process group "
                                 f"(pid {', '.join(map(str, mine))})"))
    # and what no tree shows any more (a grandchild whose parent ended, re-parented): whatever is still in a
    # stopped agent's cgroups is killed, and said
    if stopped:
        layout, scope = cgroups.detect(), launching.scope(state_dir)
        for name in stopped:
            try:
                killed = cgroups.kill(layout, scope, name)
            except cgroups.CgroupError:
                continue
            if killed:
                emit(StopEvent(name, f"killed {len(killed)} process(es) left in its cgroup "
                                     f"(pid {', '.join(map(str, sorted(killed)))})"))
    for name in stopped:   # sandbox.private_tmp: removed once the agent is stopped (its next start makes it anew)
        shutil.rmtree(os.path.join(state_dir, TMP_DIR, name), ignore_errors=True)
    return failures


def _trees(client: Client, names: set[str]) -> dict[str, list[processes.Process]]:
    """The descendants of each agent's processes, before they are stopped: whatever of them outlives the
    stop (a child that called setsid escapes supervisord's group signals) is ended afterwards."""
    if not names:
        return {}
    roots: dict[str, list[int]] = {}
    try:
        for info in client.processes():
            if info.group in names and info.pid:
                roots.setdefault(info.group, []).append(info.pid)
    except SupervisorError:
        return {}
    return {name: tree for name, tree in processes.descendants(roots).items() if tree}


def wait_stopped(client: Client, processes: Mapping[str, Iterable[str]], *, timeout: float = STOP_TIMEOUT,
                 emit: Emit = ignore) -> dict[str, str]:
    """Wait until every process named (group -> full process names) is down; the groups that did not stop, with why.

    Each process is asked for by name (getProcessInfo costs the same at any size, where
    getAllProcessInfo grows with the square of the programs), every few milliseconds, so
    a stop in a dependency chain costs the agent's own exit, not a fixed poll per level.
    """
    waiting = {group: list(names) for group, names in processes.items()}
    states: dict[str, set[str]] = {}
    deadline = time.monotonic() + timeout
    while waiting:
        for group in sorted(waiting):
            states[group] = set()
            for name in waiting[group]:
                try:
                    states[group].add(client.process(name).state)
                except BadNameError:  # removed meanwhile: not running
                    continue
            if states[group] <= DOWN_STATES:
                del waiting[group]
                emit(StopEvent(group, "stopped"))
        if waiting and time.monotonic() > deadline:
            return {group: f"still {'/'.join(sorted(states[group]))} after {timeout:g}s" for group in waiting}
        if waiting:
            time.sleep(min(STOP_POLL, STOP_POLL_EACH * len(waiting)))
    return {}
