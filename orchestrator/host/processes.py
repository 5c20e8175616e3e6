"""Process trees, their figures and their ends: the one place above the kernel that walks /proc.

Owned here: the walk of a process tree (a root and every descendant, also
those that left its process group with setsid), the CPU and memory figures of
a tree, and ending processes (SIGTERM, then SIGKILL after a grace; whole
process groups at once for an emergency stop). Built on psutil, which no
module above the host layer imports: operations ask here.

Called by status (figures), stopping and the emergency stop (ends), lifecycle
(supervisord's own pid), ports (the tree whose sockets count) and orphans.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable, Iterable, Mapping

import psutil

TERM_GRACE = 5.0  # seconds between SIGTERM and SIGKILL
Process = psutil.Process  # what the layers above hold, without importing psutil


def tree(roots: Iterable[int]) -> list[psutil.Process]:
    """The processes of `roots` and all their descendants that still exist, each once."""
    members: dict[int, psutil.Process] = {}
    for pid in roots:
        try:
            root = psutil.Process(pid)
            found = [root, *root.children(recursive=True)]
        except psutil.Error:
            continue
        for process in found:
            members.setdefault(process.pid, process)
    return list(members.values())


def descendants(roots: Mapping[str, Iterable[int]]) -> dict[str, list[psutil.Process]]:
    """Every descendant of each name's root pids (one walk of the process table for all of them)."""
    children: dict[int, list[psutil.Process]] = {}
    for process in psutil.process_iter(["ppid"]):
        children.setdefault(process.info["ppid"], []).append(process)
    found: dict[str, list[psutil.Process]] = {}
    for name, pids in roots.items():
        pending, seen = list(pids), []
        while pending:
            for child in children.get(pending.pop(), []):
                seen.append(child)
                pending.append(child.pid)
        found[name] = seen
    return found


def sample(pids: Iterable[int], interval: float) -> dict[int, tuple[float | None, int | None]]:
    """CPU percent (of one core, over `interval` seconds) and RSS of each pid's process tree, summed;
    (None, None) for a tree of which no process could be read."""
    trees = {pid: tree([pid]) for pid in pids}
    for members in trees.values():
        for process in members:
            with contextlib.suppress(psutil.Error):
                process.cpu_percent(None)
    if trees:
        time.sleep(interval)
    figures: dict[int, tuple[float | None, int | None]] = {}
    for pid, members in trees.items():
        cpu, rss, seen = 0.0, 0, False
        for process in members:
            try:
                cpu += process.cpu_percent(None)
                rss += process.memory_info().rss
                seen = True
            except psutil.Error:
                continue
        figures[pid] = (round(cpu, 1), rss) if seen else (None, None)
    return figures


def end(processes: list[psutil.Process], *, grace: float = TERM_GRACE) -> list[int]:
    """SIGTERM the processes still alive, SIGKILL after `grace`; the pids that had to be ended."""
    alive = []
    for process in processes:
        try:
            if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                process.terminate()
                alive.append(process)
        except psutil.Error:
            continue
    stubborn = wait_gone(alive, grace)
    for process in stubborn:
        with contextlib.suppress(psutil.Error):
            process.kill()
    wait_gone(stubborn, grace)
    return [p.pid for p in alive]


GONE_POLL = 0.01  # seconds between two looks at processes that were signalled


def wait_gone(victims: Iterable[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait until each of `victims` has ended (or `timeout` passed); those still alive.

    A process that ended but is not reaped yet counts as ended: a child that called setsid is reparented to
    init, which may reap it only seconds later (psutil.wait_procs waits for the reaping, a second per process
    where init is slow to reap, and stops of 50 such agents took 100 s)."""
    pending = list(victims)
    deadline = time.monotonic() + timeout
    while True:
        pending = [p for p in pending if _alive(p)]
        if not pending or time.monotonic() >= deadline:
            return pending
        time.sleep(GONE_POLL)


def _alive(process: psutil.Process) -> bool:
    try:
        if process.status() != psutil.STATUS_ZOMBIE:
            return bool(process.is_running())
    except psutil.Error:
        return False
    with contextlib.suppress(ChildProcessError, OSError):   # a zombie of ours: reap it
        os.waitpid(process.pid, os.WNOHANG)
    return False


def end_groups(victims: list[psutil.Process], *, deadline: float, say: Callable[[str], None] = lambda line: None) -> int:
    """SIGTERM to every victim's process group and to each victim (a child that left its group), SIGKILL to
    what is still alive after `deadline` seconds; how many had to be killed."""
    groups: set[int] = set()
    for process in victims:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            groups.add(os.getpgid(process.pid))
    for pgid in groups:
        _signal_group(pgid, signal.SIGTERM)
    for member in victims:
        _signal(member, signal.SIGTERM)
    say(f"SIGTERM sent to {len(victims)} process(es) in {len(groups)} process group(s)")
    alive = wait_gone(victims, deadline)
    if alive:
        for pgid in groups:
            _signal_group(pgid, signal.SIGKILL)
        for member in alive:
            _signal(member, signal.SIGKILL)
        wait_gone(alive, deadline)
        say(f"SIGKILL sent to {len(alive)} process(es) still alive after {deadline:g}s")
    return len(alive)


def is_running_command(pid: int, word: str) -> bool:
    """Whether process `pid` exists and its command line contains `word` (a pid file may name a reused pid)."""
    try:
        return word in " ".join(psutil.Process(pid).cmdline())
    except psutil.Error:
        return False


def wait_exit(pid: int, timeout: float) -> bool:
    """Wait until process `pid` is gone; False if it is still there after `timeout` seconds."""
    try:
        psutil.Process(pid).wait(timeout=timeout)
    except psutil.NoSuchProcess:
        return True
    except psutil.TimeoutExpired:
        return False
    return True


def _signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


def _signal(process: psutil.Process, signum: int) -> None:
    with contextlib.suppress(psutil.Error):
        process.send_signal(signum)
