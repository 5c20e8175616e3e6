"""Finding and ending processes a killed supervisord left behind.

Owned here: recognising our own processes by the marker variable every
program orchestrator renders carries (`ORCHESTRATOR_STATE_DIR`, naming its
state directory): never by name. Agents also get a parent-death signal (see
`render.launch_argv`), so this sweep only has stragglers to find: children an
agent forked into another process group, or an agent that ignores SIGTERM.

Called by lifecycle (before supervisord starts, after it stops) and by the
boot listener (before it starts agents), so a restarted supervisord never
runs a second copy of an agent beside the first; and by `stopping`, which
ends what a stopped agent left behind (with `processes.descendants` and `processes.end`): a child that
called setsid is outside the process group supervisord signals.
"""

from __future__ import annotations

from collections.abc import Callable

import psutil

import contextlib

from orchestrator.host.processes import end
from orchestrator.core.names import CONFIG_MARKER, ENV_MARKER, MANIFESTS_MARKER, MARKER



def find(state_dir: str, *, keep_tree_of: int | None = None, agents_only: bool = False) -> list[psutil.Process]:
    """Processes marked with `state_dir`, except `keep_tree_of` and its descendants (a live supervisord).

    `agents_only`: only agents and their descendants (they also carry a configuration hash;
    orchestrator's own listener does not).
    """
    found = []
    for process in psutil.process_iter(["pid"]):
        try:
            environ = process.environ()
            if environ.get(MARKER) != state_dir or (agents_only and CONFIG_MARKER not in environ):
                continue
            if keep_tree_of is not None and (process.pid == keep_tree_of or
                                             any(parent.pid == keep_tree_of for parent in process.parents())):
                continue
            found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def state_dirs_of(manifests_dir: str, env: str | None) -> list[str]:
    """The state directories of running projects rendered from `manifests_dir` (and `env`), found by the
    markers orchestrator's listener carries: how `down`, `status` and `emergency-stop` find a running
    project when nothing else names its state directory and the manifests may not load."""
    found = set()
    for process in psutil.process_iter(["pid"]):
        try:
            environ = process.environ()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        if environ.get(MANIFESTS_MARKER) == manifests_dir and environ.get(ENV_MARKER, "") == (env or "") \
                and environ.get(MARKER):
            found.add(environ[MARKER])
    return sorted(found)


def sweep(state_dir: str, *, keep_tree_of: int | None = None, say: Callable[[str], None] = lambda line: None) -> list[int]:
    """End every orphan of `state_dir`: SIGTERM, then SIGKILL after TERM_GRACE; the PIDs ended."""
    orphans = find(state_dir, keep_tree_of=keep_tree_of)
    for process in orphans:
        with contextlib.suppress(psutil.Error):
            say(f"ending orphan {process.pid} ({' '.join(process.cmdline())[:80]})")
    end(orphans)
    return [p.pid for p in orphans]
