"""orchestrator's event listener inside supervisord: boot-time sequencing and restart policies.

Owned here: the thin shell supervisord runs as `[eventlistener:_orchestrator]`.
Its stdout carries only supervisord's event-listener protocol; everything it
has to say goes to stderr (supervisord logs it to STATE/logs/_orchestrator.log).

Each process-state event (and each starter's report of a failed readiness
wait, a REMOTE_COMMUNICATION event) is handed to the restart keeper
(`restarts.Keeper.on_event`) and acknowledged only once the keeper has
recorded its decision: a listener killed at any moment leaves the event with
supervisord, which delivers it again to the listener it restarts. The keeper
decides in milliseconds and hands anything that waits to a thread of its own,
so supervisord is never held up.

When supervisord starts (SUPERVISOR_STATE_CHANGE_RUNNING: a reboot, a restart
after a crash), the boot sequence starts the live version's agents in
dependency order, each once its dependencies are ready, exactly as apply
would. It waits for the state directory's apply lock first: when `up` started
this supervisord, up holds the lock, starts the agents itself and leaves a
claim naming this supervisord, and the boot sequence then starts nothing. So
the two never both start an agent. Before starting anything it ends processes
a previous, killed supervisord left behind, so no agent runs twice.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from typing import TextIO

from supervisor import childutils

from orchestrator.host import orphans
from orchestrator.state import runtime
from orchestrator.core.processes import DOWN_STATES
from orchestrator.supervisord.client import Client, SupervisorError
from orchestrator.core.errors import OrchestratorError
from orchestrator.state.files import write_atomically
from orchestrator.state.history import LISTENER_READY, History, take_claim
from orchestrator.daemons.monitor import LivenessMonitor
from orchestrator.daemons.restarts import Keeper
from orchestrator.operations.reach import socket_of
from orchestrator.operations.sequencer import Event, Sequencer


def log(message: str, stream: TextIO | None = None) -> None:
    stream = stream or sys.stderr
    stream.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}\n")
    stream.flush()


def boot(state_dir: str, socket_path: str, *, supervisord_pid: int) -> None:
    """Start every agent of the live version that is not running, in dependency order."""
    history = History(state_dir)
    with history.lock():
        if take_claim(state_dir, supervisord_pid):
            log("`up` started this supervisord and its agents: the boot sequence has nothing to start")
            return
        current = history.current()
        if current is None:
            log("no version applied yet: nothing to start")
            return
        ended = orphans.sweep(state_dir, keep_tree_of=supervisord_pid, say=log)
        live = runtime.load(state_dir)
        if live.latch is not None:
            log(f"{runtime.describe_latch(live.latch)}: starting nothing")
            return
        if live.stand_down == supervisord_pid:
            log("everything is being stopped (`down`): starting nothing")
            return
        held = sorted(name for name, entry in live.agents.items() if entry.given_up)
        if held:
            log(f"given up, left stopped until started by hand: {', '.join(held)}")
        if ended:
            log(f"ended {len(ended)} process(es) left by a previous supervisord")
        client = Client(socket_path)
        groups: dict[str, list[str]] = {}
        for process in client.processes():
            groups.setdefault(process.group, []).append(process.state)
        to_start = {name for name in current.agents
                    if name not in held and all(s in DOWN_STATES for s in groups.get(name, ["STOPPED"]))}
        running = set(current.agents) - to_start
        log(f"supervisord started: starting {len(to_start)} agent(s) in dependency order")
        sequencer = Sequencer(client, current.agents, state_dir=state_dir, progress=lambda e: log(_describe(e)),
                              cwd=current.project_dir)
        result = sequencer.run(to_start, verify=running)
        if result.ok:
            log(f"boot sequence complete: {len(result.outcomes)} agent(s) ready")
        else:
            for outcome in result.failed:
                log(f"{outcome.agent} did not become ready: {outcome.detail}")
            if result.blocked:
                log(f"not started: {', '.join(result.blocked)}")


def _describe(event: Event) -> str:
    return f"[{event.elapsed:6.1f}s] {event.agent}: {event.kind}{' ' + event.detail if event.detail else ''}"


def _boot_safely(state_dir: str, socket_path: str, supervisord_pid: int) -> None:
    try:
        boot(state_dir, socket_path, supervisord_pid=supervisord_pid)
    except (OrchestratorError, SupervisorError, OSError) as exc:
        log(f"boot sequence failed: {exc}")


def main(argv: list[str] | None = None, *, stdin: TextIO = sys.stdin, stdout: TextIO = sys.stdout) -> None:
    parser = argparse.ArgumentParser(prog="python -m orchestrator.listener")
    parser.add_argument("--state-dir", required=True)
    args = parser.parse_args(argv)
    state_dir = os.path.abspath(args.state_dir)
    os.umask(0o077)  # its runtime files are private, whatever supervisord's umask
    socket_path = socket_of(state_dir)
    supervisord_pid = os.getppid()
    keeper = Keeper(state_dir, Client(socket_path), log=log, supervisord_pid=supervisord_pid)
    keeper.start()
    monitor = LivenessMonitor(state_dir, Client(socket_path), keeper.submit, log=log)
    threading.Thread(target=monitor.run, name="liveness", daemon=True).start()
    failures: dict[str, int] = {}
    write_atomically(os.path.join(state_dir, LISTENER_READY), str(os.getpid()))  # `up` waits for this before starting agents
    while True:
        headers, payload = childutils.listener.wait(stdin, stdout)
        event = headers.get("eventname", "")
        if event == "SUPERVISOR_STATE_CHANGE_RUNNING":
            threading.Thread(target=_boot_safely, args=(state_dir, socket_path, supervisord_pid),
                             name="boot", daemon=True).start()
            childutils.listener.ok(stdout)
            continue
        if _handled(keeper, headers, payload, failures):
            childutils.listener.ok(stdout)
        else:
            childutils.listener.fail(stdout)  # supervisord keeps the event and delivers it again


RETRIES = 5  # an event whose handling fails this often (supervisord unreachable, disk full) is let go, and said so


def _handled(keeper: Keeper, headers: dict[str, str], payload: str, failures: dict[str, int]) -> bool:
    """Give one event to the keeper; False when it could not be recorded and should be delivered again."""
    serial = headers.get("serial", "")
    event = headers.get("eventname", "")
    try:
        if event == "REMOTE_COMMUNICATION":
            first, _, body = payload.partition("\n")
            keeper.on_event(headers, childutils.get_headers(first), body)
        else:
            keeper.on_event(headers, childutils.get_headers(payload.partition("\n")[0]))
    except (SupervisorError, OSError) as exc:
        failures[serial] = failures.get(serial, 0) + 1
        if failures[serial] < RETRIES:
            log(f"restart keeper: {event} not recorded ({exc}); supervisord will deliver it again")
            return False
        log(f"restart keeper: {event} could not be recorded after {RETRIES} tries, let go: {exc}")
    except Exception as exc:  # noqa: BLE001 - a bug must not stop every later event: say it, go on
        log(f"restart keeper: unexpected {type(exc).__name__} on {event}: {exc}")
    failures.pop(serial, None)
    return True


if __name__ == "__main__":
    main()
