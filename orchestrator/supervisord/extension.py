"""Runs inside supervisord: wakes its main loop the moment a process changes state.

Owned here: an `[rpcinterface:orchestrator]` factory, supervisord's documented
extension point, loaded into supervisord's own process. supervisord's loop
waits up to 1 s in poll() when nothing happens; a process that dies is reaped
at once, but its event reaches listeners, and a restart requested by one takes
effect, only at the next pass: about 1,005 ms when no client talks to it. This
module subscribes to supervisord's process-state events in-process and writes
a byte to a self-pipe that sits in supervisord's poll set, so the next pass
runs at once. Measured here (see bench/bench_restart.py): SIGKILL to RUNNING
again falls from about a second to a few tens of milliseconds.

It adds one RPC namespace: `orchestrator.ping`; `orchestrator.getConfigHashes`,
which answers the configuration hash of each group as supervisord holds it
(see `core.names.CONFIG_MARKER`), read-only; `orchestrator.getConfigDigests`, a
digest of each group's whole configuration as supervisord holds it (drift); `orchestrator.getProcessTimes`, a
process's last start and stop to the microsecond; and `orchestrator.startOnce`, a start
that happens at most once per restart decision, for the restart keeper.
Only supervisord imports this module.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import time
from typing import Any

from supervisor import events
from supervisor.medusa import asyncore_25 as asyncore

from orchestrator.core.names import CONFIG_MARKER, EXITS_DIR, MARKER, RUNTIME_DIR



class _Waker:
    """A self-pipe shaped like the dispatchers supervisord polls."""

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe()
        os.set_blocking(self.read_fd, False)
        os.set_blocking(self.write_fd, False)
        asyncore.socket_map[self.read_fd] = self

    def wake(self, event: object = None) -> None:
        with contextlib.suppress(BlockingIOError):  # the pipe is full: supervisord is awake already
            os.write(self.write_fd, b"!")

    # the dispatcher interface supervisord's loop calls
    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return False

    def handle_read_event(self) -> None:
        try:
            while os.read(self.read_fd, 4096):
                pass
        except BlockingIOError:
            pass

    def handle_write_event(self) -> None:
        pass

    def handle_error(self) -> None:
        pass

    def close(self) -> None:
        pass


class OrchestratorNamespace:
    def __init__(self, waker: _Waker, supervisord: Any) -> None:
        self.waker = waker
        self.supervisord = supervisord
        self.carried_out: dict[str, str] = {}   # process -> the last restart token started

    def getProcessTimes(self, name: str) -> dict[str, float]:  # noqa: N802 - supervisord's RPC naming
        """When process `group:name` last started and stopped (floats, not getProcessInfo's whole seconds),
        and its last exit status (-1 if supervisord has none)."""
        group, _, process_name = name.partition(":")
        process = self.supervisord.process_groups[group].processes[process_name]
        status = process.exitstatus
        return {"start": float(process.laststart), "stop": float(process.laststop),
                "exitstatus": -1 if status is None else int(status)}

    def startOnce(self, name: str, token: str) -> bool:  # noqa: N802 - supervisord's RPC naming
        """Start process `group:name` for the restart decision `token`, at most once per token.

        The restart keeper names each decision; a keeper killed after asking and
        restarted asks again with the same token, and nothing starts twice.
        supervisord is single-threaded, so the check and the start are one step.
        True when it was started now; False when this token was already carried
        out, or the process is up.
        """
        if self.carried_out.get(name) == token:
            return False
        from supervisor.rpcinterface import SupervisorNamespaceRPCInterface
        from supervisor.states import RUNNING_STATES

        group, _, process_name = name.partition(":")
        process = self.supervisord.process_groups[group].processes[process_name] if group in self.supervisord.process_groups \
            else None
        if process is not None and process.get_state() in RUNNING_STATES:
            self.carried_out[name] = token
            return False
        SupervisorNamespaceRPCInterface(self.supervisord).startProcess(name, False)
        self.carried_out[name] = token
        return True

    def getAllProcessStates(self) -> str:  # noqa: N802 - supervisord's RPC naming
        """Every process as getAllProcessInfo describes it, minus its log paths and description, in one JSON string:
        [[name, group, statename, pid, start, now, exitstatus, spawnerr], ...].

        supervisord sends a reply 4 KiB per pass of its loop, and each pass polls every process's pipes: at 500
        programs getAllProcessInfo's 300 KB of XML takes some 75 passes. This reply is a tenth of its size."""
        from supervisor.states import getProcessStateDescription

        now = int(time.time())
        rows = []
        for group_name in sorted(self.supervisord.process_groups):
            group = self.supervisord.process_groups[group_name]
            for name in sorted(group.processes):
                process = group.processes[name]
                rows.append([name, group_name, getProcessStateDescription(process.get_state()), process.pid,
                             int(process.laststart), now, process.exitstatus or 0, process.spawnerr or ""])
        return json.dumps(rows, separators=(",", ":"))

    def ping(self) -> bool:
        """True: orchestrator's extension is loaded in this supervisord."""
        return True

    def getConfigDigests(self) -> dict[str, str]:  # noqa: N802 - supervisord's RPC naming
        """A digest of each active group's whole configuration as supervisord holds it now, read-only.

        Every parameter supervisord compares when it decides that a group changed (ProcessConfig's), so an edit
        of a rendered file that supervisord loaded (`supervisorctl update`) changes it, where the hash of
        getConfigHashes, written by orchestrator into the file, stays. The same files give the same digest in
        any supervisord."""
        return {name: _digest(group.config) for name, group in self.supervisord.process_groups.items()}

    def getConfigHashes(self) -> dict[str, str]:  # noqa: N802 - supervisord's RPC naming
        """Each active group's configuration hash (ORCHESTRATOR_CONFIG), as supervisord holds it now.

        supervisord keeps a group's old configuration until the group is removed and
        added again, whatever its files say: this is what its next start would run.
        """
        hashes = {}
        for name, group in self.supervisord.process_groups.items():
            for process in group.config.process_configs:
                value = (process.environment or {}).get(CONFIG_MARKER)
                if value:
                    hashes[name] = str(value)
        return hashes



def _plain(value: Any) -> Any:
    """A configuration value in a form that is the same in every process (no object addresses)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, dict):
        return sorted([str(k), _plain(v)] for k, v in value.items())
    if isinstance(value, (list, tuple, set, frozenset)):
        items = [_plain(v) for v in value]
        return sorted(items, key=repr) if isinstance(value, (set, frozenset)) else items
    if isinstance(value, type):
        return f"{value.__module__}.{value.__qualname__}"
    return f"{type(value).__module__}.{type(value).__qualname__}"


def _digest(config: Any) -> str:
    processes = []
    for process in sorted(getattr(config, "process_configs", ()), key=lambda p: str(p.name)):
        names = list(getattr(process, "req_param_names", ())) + list(getattr(process, "optional_param_names", ()))
        processes.append([[name, _plain(getattr(process, name, None))] for name in names])
    text = json.dumps([str(config.name), _plain(getattr(config, "priority", None)), processes], sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def note_exit(event: Any) -> None:
    """Write down how an agent's process ended, for the restart keeper, as supervisord sees it.

    supervisord's EXITED event carries no times and no exit status; asking for them over
    XML-RPC costs a request supervisord must serve between two passes of its loop, and with
    every agent crash-looping those requests were a third of its work. A file per process
    (pid, start, stop, exit status; replaced atomically, about 50 microseconds) costs it
    nothing but a write. The keeper reads it and checks the pid against the event's.
    """
    process = event.process
    environment = process.config.environment or {}
    state_dir = environment.get(MARKER)
    group = process.group.config.name if process.group is not None else ""
    if not state_dir or not group or CONFIG_MARKER not in environment:
        return  # not an agent of ours
    pid = dict(event.extra_values).get("pid", process.pid)
    status = -1 if process.exitstatus is None else int(process.exitstatus)
    directory = os.path.join(state_dir, RUNTIME_DIR, EXITS_DIR)
    path = os.path.join(directory, f"{group}:{process.config.name}")
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        with open(path + ".tmp", "w", encoding="utf-8") as handle:
            handle.write(f"{pid} {process.laststart!r} {process.laststop!r} {status}\n")
        os.replace(path + ".tmp", path)
    except OSError:
        pass  # a full or read-only disk: the keeper asks over XML-RPC instead


def make_interface(supervisord: Any, **config: Any) -> OrchestratorNamespace:
    waker = _Waker()
    events.subscribe(events.ProcessStateExitedEvent, note_exit)  # before the wake: the keeper may read it at once
    events.subscribe(events.ProcessStateEvent, waker.wake)
    # A child's death is seen through its pipes closing, but it may not be
    # reapable yet; supervisord then polls again, and Python resumes that poll
    # after SIGCHLD (PEP 475), so the reap waited up to a second. With the
    # wakeup fd, every signal also writes to the self-pipe and ends the poll.
    # supervisord calls this factory in its main thread, as set_wakeup_fd needs.
    signal.set_wakeup_fd(waker.write_fd, warn_on_full_buffer=False)
    return OrchestratorNamespace(waker, supervisord)
