"""up and down: supervisord's own life, around apply.

Owned here: starting supervisord as a daemon from the live configuration in
the state directory (its pid file, socket and logs there too), and stopping
everything: agents in reverse dependency order (each level in parallel),
then supervisord itself, leaving no process behind. Called by the cli.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Callable

import psutil

from orchestrator import orphans, render
from orchestrator.apply import ApplyReport, converge, stop_in_order
from orchestrator.client import Client
from orchestrator.errors import StateError
from orchestrator.history import History
from orchestrator.model import ManifestSet
from orchestrator.sequencer import Event

START_TIMEOUT = 30.0
SHUTDOWN_TIMEOUT = 60.0


def socket_of(state_dir: str) -> str:
    """The supervisord socket the live version configures (default: STATE/supervisor.sock)."""
    current = History(state_dir).current()
    if current is not None:
        match = re.search(r"^file=(.+)$", current.main, re.MULTILINE)
        if match:
            return match.group(1).replace("%%", "%")
    return os.path.join(state_dir, "supervisor.sock")


def refuse_if_hung(state_dir: str, client: Client) -> None:
    """supervisord's pid file names a live supervisord that does not answer: touching its children would be wrong."""
    try:
        with open(os.path.join(state_dir, "supervisord.pid"), encoding="utf-8") as handle:
            pid = int(handle.read().strip())
        if "supervisord" in " ".join(psutil.Process(pid).cmdline()):
            raise StateError(f"supervisord (pid {pid}) is running but does not answer on {client.socket_path}; "
                             f"see its log in logs/supervisord.log, then stop it (kill {pid}) and retry")
    except (OSError, ValueError, psutil.Error):
        return


def start_supervisord(state_dir: str, client: Client, *, say: Callable[[str], None]) -> None:
    """Start supervisord from STATE/supervisord.conf and wait until it answers."""
    history = History(state_dir)
    os.makedirs(os.path.join(state_dir, render.LOGS_DIR), exist_ok=True)
    refuse_if_hung(state_dir, client)
    ended = orphans.sweep(state_dir, say=say)
    if ended:
        say(f"ended {len(ended)} process(es) left by a supervisord that did not stop cleanly")
    say("starting supervisord")
    done = subprocess.run([sys.executable, "-m", "supervisor.supervisord", "-c", history.config_path],
                          capture_output=True, text=True, cwd=state_dir, timeout=START_TIMEOUT)
    if done.returncode != 0:
        raise StateError(f"supervisord did not start: {(done.stderr or done.stdout).strip()}")
    deadline = time.monotonic() + START_TIMEOUT
    while not client.is_running():
        if time.monotonic() > deadline:
            raise StateError(f"supervisord did not answer on {client.socket_path} within {START_TIMEOUT:g}s; "
                             f"see {os.path.join(state_dir, render.LOGS_DIR, 'supervisord.log')}")
        time.sleep(0.05)


def up(manifests: ManifestSet, *, message: str = "", progress: Callable[[Event], None] = lambda e: None,
       say: Callable[[str], None] = lambda line: None) -> ApplyReport:
    """Start supervisord if it is not running, then apply."""
    history = History(manifests.state_dir)
    client = Client(render.socket_path(manifests))
    with history.lock():
        if not client.is_running():
            rendering = render.render(manifests)
            current = history.current()
            if current is None or current.main != rendering.main or \
                    current.programs != {a.name: rendering.program(a.name) for a in manifests.agents}:
                history.record(manifests, rendering, message=message or "up")
            start_supervisord(manifests.state_dir, client, say=say)
        return converge(manifests, client, history, message=message, progress=progress, say=say)


def down(state_dir: str, *, say: Callable[[str], None] = lambda line: None) -> list[str]:
    """Stop every agent, dependents first, then supervisord; the agents stopped."""
    history = History(state_dir)
    client = Client(socket_of(state_dir))
    if not client.is_running():
        refuse_if_hung(state_dir, client)
        ended = orphans.sweep(state_dir, say=say)
        say("supervisord is not running" + (f"; ended {len(ended)} orphaned process(es)" if ended else ""))
        return []
    with history.lock():
        current = history.current()
        deps = {n: a.depends_on for n, a in (current.agents if current else {}).items()}
        names = sorted({p.group for p in client.processes() if not p.group.startswith("_")})
        failures = stop_in_order(client, names, deps, progress=lambda agent, what: say(f"  {agent}: {what}"))
        # supervisord retires one stopped group per pass of its loop while shutting down, and an
        # idle pass waits up to 1 s: 12 groups took 12 s. Removed groups cost it nothing.
        for name in names:
            if name not in failures:
                client.remove_group(name)
        pid = client.pid()
        say("stopping supervisord")
        client.shutdown()
        try:
            psutil.Process(pid).wait(timeout=SHUTDOWN_TIMEOUT)
        except psutil.NoSuchProcess:
            pass
        except psutil.TimeoutExpired as exc:
            raise StateError(f"supervisord (pid {pid}) did not exit within {SHUTDOWN_TIMEOUT:g}s") from exc
        ended = orphans.sweep(state_dir, say=say)
        if ended:
            say(f"ended {len(ended)} process(es) that outlived supervisord")
        if failures:
            raise StateError("; ".join(f"{n}: {why}" for n, why in sorted(failures.items())))
        return names
