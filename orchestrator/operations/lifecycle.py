"""up and down: supervisord's own life, around apply.

Owned here: starting supervisord as a daemon from the live configuration in
the state directory (its pid file, socket and logs there too), and stopping
everything: agents in reverse dependency order (each level in parallel),
then supervisord itself, leaving no process behind. Called by the cli.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator


from orchestrator.core.events import Emit, Note, ignore
from orchestrator.host import cgroups, orphans, processes
from orchestrator.state import runtime
from orchestrator.core.names import LISTENER, LOGS_DIR, is_internal
from orchestrator.supervisord import launching, render
from orchestrator.core.plan import Plan
from orchestrator.operations.apply import ApplyReport, Confirm, converge, mark_stopping
from orchestrator.operations.stopping import stop_in_order
from orchestrator.supervisord.client import Client, SupervisorError
from orchestrator.core.errors import RenderError, StateError
from orchestrator.operations.reach import refuse_if_hung, socket_of
from orchestrator.state.history import LISTENER_READY, LOCK_TIMEOUT, History, leave_claim, leave_pointer
from orchestrator.core.model import ManifestSet, kept_settings
from orchestrator.core.versions import FIRST, Side, between, next_semver

START_TIMEOUT = 30.0
SHUTDOWN_TIMEOUT = 60.0


def start_supervisord(state_dir: str, client: Client, *, emit: Emit) -> None:
    """Start supervisord from STATE/supervisord.conf and wait until it answers."""
    history = History(state_dir)
    os.makedirs(os.path.join(state_dir, LOGS_DIR), exist_ok=True)
    refuse_if_hung(state_dir, client)
    ended = orphans.sweep(state_dir, say=_noting(emit))
    if ended:
        emit(Note(f"ended {len(ended)} process(es) left by a supervisord that did not stop cleanly"))
    emit(Note("starting supervisord"))
    done = subprocess.run([sys.executable, "-m", "supervisor.supervisord", "-c", history.config_path],
                          capture_output=True, text=True, cwd=state_dir, timeout=START_TIMEOUT)
    if done.returncode != 0:
        raise StateError(f"supervisord did not start: {(done.stderr or done.stdout).strip()}")
    deadline = time.monotonic() + START_TIMEOUT
    while not client.is_running():
        if time.monotonic() > deadline:
            raise StateError(f"supervisord did not answer on {client.socket_path} within {START_TIMEOUT:g}s; "
                             f"see {os.path.join(state_dir, LOGS_DIR, 'supervisord.log')}")
        time.sleep(0.05)
    _wait_for_listener(state_dir, client, deadline)


def _wait_for_listener(state_dir: str, client: Client, deadline: float) -> None:
    """Until orchestrator's listener reads events: an agent's first exit is then decided at once, not
    after the listener's own start (about 0.3 s of imports)."""
    ready = os.path.join(state_dir, LISTENER_READY)
    while time.monotonic() < deadline:
        try:
            listener = client.process(f"{LISTENER}:{LISTENER}").pid
            with open(ready, encoding="utf-8") as handle:
                if listener and handle.read().strip() == str(listener):
                    return
        except (OSError, SupervisorError):
            pass
        time.sleep(0.05)


def up(manifests: ManifestSet, *, shown: Plan | None = None, confirm: Confirm | None = None, message: str = "",
       emit: Emit = ignore, command: str = "up",
       lock_timeout: float | None = LOCK_TIMEOUT) -> ApplyReport:
    """Start supervisord if it is not running, then apply.

    `shown` and `confirm`: the plan shown to the operator when supervisord was already running,
    checked as apply checks it (see apply.apply).

    When up starts supervisord, it holds the apply lock throughout and leaves a
    claim naming that supervisord, so the boot sequence (which waits for the
    lock) finds the agents already up's to start, and starts none of them.
    """
    history = History(manifests.state_dir)
    client = Client(render.socket_path(manifests))
    with history.lock(timeout=lock_timeout, say=_noting(emit)):
        leave_pointer(manifests.origin_dir, manifests.state_dir, manifests.env)
        if not client.is_running():
            rendering = render.render(manifests)
            if rendering.problems:   # before supervisord starts: a launch without its secrets is not written
                raise RenderError("cannot write the agents' launch files:\n  " + "\n  ".join(rendering.problems))
            current = history.current()
            programs = {a.name: rendering.program(a.name) for a in manifests.agents}
            if current is None or current.main != rendering.main or current.programs != programs:
                history.record(manifests, rendering, message=message or "up", command=command,
                               semver=_semver(history, manifests, programs))
            start_supervisord(manifests.state_dir, client, emit=emit)
            leave_claim(manifests.state_dir, client.pid())
        report = converge(manifests, client, history, shown=shown, confirm=confirm, message=message, emit=emit,
                          command=command)
        current = history.current()
        if current is not None and current.status != "applied" and report.ok:
            history.mark(current, "applied")
        return report


def _semver(history: History, manifests: ManifestSet, programs: dict[str, str]) -> str:
    """The semantic version of `manifests` recorded over the live version, with no supervisord to plan against:
    the plan of its agents against the live version's (core.versions.between)."""
    current = history.current()
    if current is None:
        return FIRST
    change = between(Side("", current.agents, current.programs, history.settings(current)),
                     Side("", {a.name: a for a in manifests.agents}, programs, kept_settings(manifests)))
    return next_semver(current.semver, change, current.agents)


def down(state_dir: str, *, emit: Emit = ignore) -> list[str]:
    """Stop every agent, dependents first, then supervisord; the agents stopped.

    First the restart keeper stands down (no pending restart fires after this
    point, and a start in progress ends), then down waits for an apply, up or
    boot sequence in progress to let go of the lock, stops the agents in reverse
    dependency order, and shuts supervisord down. It ends with nothing of the
    state directory's left running, or an error naming what is.
    """
    history = History(state_dir)
    client = Client(socket_of(state_dir))
    _stand_down(state_dir, client)
    with _waiting_lock(history, emit):
        client = Client(socket_of(state_dir))
        if not client.is_running():
            refuse_if_hung(state_dir, client)
            ended = orphans.sweep(state_dir, say=_noting(emit))
            emit(Note("supervisord is not running" + (f"; ended {len(ended)} orphaned process(es)" if ended else "")))
            _left_behind(state_dir)
            _remove_cgroups(state_dir)
            return []
        _stand_down(state_dir, client)
        current = history.current()
        deps = {n: a.depends_on for n, a in (current.agents if current else {}).items()}
        names = sorted({p.group for p in client.processes() if not is_internal(p.group)})
        mark_stopping(state_dir, names)
        failures = stop_in_order(client, names, deps, emit=emit, state_dir=state_dir)
        # supervisord retires one stopped group per pass of its loop while shutting down, and an
        # idle pass waits up to 1 s: 12 groups took 12 s. Removed groups cost it nothing.
        for name in names:
            if name not in failures:
                with contextlib.suppress(SupervisorError):  # started again meanwhile: shutdown stops it
                    client.remove_group(name)
        pid = client.pid()
        emit(Note("stopping supervisord"))
        client.shutdown()
        if not processes.wait_exit(pid, SHUTDOWN_TIMEOUT):
            raise StateError(f"supervisord (pid {pid}) did not exit within {SHUTDOWN_TIMEOUT:g}s")
        ended = orphans.sweep(state_dir, say=_noting(emit))
        if ended:
            emit(Note(f"ended {len(ended)} process(es) that outlived supervisord"))
        _left_behind(state_dir)
        _remove_cgroups(state_dir)
        return names


def _remove_cgroups(state_dir: str) -> None:
    """The agents' cgroups, empty once everything is down: none left behind (one still holding a process stays)."""
    with contextlib.suppress(cgroups.CgroupError, OSError):
        cgroups.remove(cgroups.detect(), launching.scope(state_dir))


def _stand_down(state_dir: str, client: Client) -> None:
    """Tell the restart keeper of the running supervisord (if any) that everything is being stopped."""
    try:
        pid = client.pid()
    except SupervisorError:
        return
    with runtime.changing(state_dir) as live:
        live.stand_down = pid


@contextlib.contextmanager
def _waiting_lock(history: History, emit: Emit) -> Iterator[None]:
    with history.lock(wait=False) as mine:
        if mine:
            yield
            return
    emit(Note("waiting for the apply, up or boot sequence in progress to finish"))
    with history.lock(say=_noting(emit)):
        yield


def _left_behind(state_dir: str) -> None:
    left = orphans.find(state_dir)
    if left:
        raise StateError("still running after down: " + ", ".join(f"{p.pid} ({' '.join(p.cmdline())[:60]})" for p in left))


def _noting(emit: Emit) -> Callable[[str], None]:
    """A line-at-a-time reporter (what the host layer's sweeps take) that emits each line as a Note."""
    return lambda line: emit(Note(line))
