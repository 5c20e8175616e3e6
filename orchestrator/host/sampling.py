"""The figures of many process trees at once, read from /proc directly: what the exporter samples.

Owned here: one pass over /proc that finds every tree (a root and all its
descendants, also those that left its process group) and sums their figures:
CPU seconds, memory (RSS, virtual, and on request PSS and USS), read and
written bytes, open file descriptors, threads, context switches, TCP sockets
by state and the ports the tree listens on. psutil costs about five times as
much per process (an object, several files and a syscall per figure); this
module reads each file once and parses only what it needs (see bench/bench_exporter.py).

What is summed over a tree, and how:

    cpu                 user + system seconds of every member, plus the seconds of the children each member has
                        waited for (so a short-lived child's CPU is not lost when it ends)
    rss, vms            summed per member: a page shared by two members (a fork's copy-on-write, a shared library)
                        counts twice; rss is an upper bound of the tree's memory
    pss                 summed per member: each shared page divided among the processes that share it, so the sum
                        is the tree's fair share and never counts a page twice (on request: smaps_rollup is costly)
    uss                 pages private to each member, summed: what ending the tree would free at least
    io, fds, threads, context switches, tcp sockets    summed per member
    fd_limit            the root's soft limit on open files (what `resources.open_files` sets)

A process that ends while it is read costs its own figures, never the pass:
every read of a member that fails because it is gone is skipped, and counted.

Called by the exporter (daemons.exporter) and the benchmark.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any
from dataclasses import dataclass, field

_PAGE = os.sysconf("SC_PAGE_SIZE")
_TICKS = os.sysconf("SC_CLK_TCK")
PROC = "/proc"

# /proc/net/tcp's st column
TCP_STATES = {1: "established", 2: "syn_sent", 3: "syn_recv", 4: "fin_wait1", 5: "fin_wait2", 6: "time_wait",
              7: "close", 8: "close_wait", 9: "last_ack", 10: "listen", 11: "closing", 12: "new_syn_recv"}
_LISTEN = 10


@dataclass
class Figures:
    """One process tree's figures, summed over its members (see the module docstring)."""

    processes: int = 0
    cpu_seconds: float = 0.0
    rss_bytes: int = 0
    vms_bytes: int = 0
    pss_bytes: int | None = None
    uss_bytes: int | None = None
    read_bytes: int = 0
    write_bytes: int = 0
    open_fds: int = 0
    fd_limit: int | None = None
    threads: int = 0
    voluntary_switches: int = 0
    involuntary_switches: int = 0
    tcp: dict[str, int] = field(default_factory=dict)
    listening_ports: set[int] = field(default_factory=set)


@dataclass
class Pass:
    """The result of one pass: each root key's figures, and what it cost."""

    trees: dict[Any, Figures]
    vanished: int = 0   # members that ended while they were read
    errors: int = 0     # reads that failed for another reason (a permission, an unexpected format)


@dataclass
class _Stat:
    ppid: int
    cpu: float
    threads: int
    vms: int
    rss: int


def _stat(pid: str) -> _Stat:
    with open(f"{PROC}/{pid}/stat", "rb") as handle:
        data = handle.read()
    rest = data[data.rindex(b")") + 2:].split()  # the command name may hold spaces and parentheses
    ticks = int(rest[11]) + int(rest[12]) + int(rest[13]) + int(rest[14])  # utime stime cutime cstime
    return _Stat(ppid=int(rest[1]), cpu=ticks / _TICKS, threads=int(rest[17]), vms=int(rest[20]), rss=int(rest[21]) * _PAGE)


def _table() -> dict[int, list[int]]:
    """ppid -> the pids of its children, from every process's stat."""
    children: dict[int, list[int]] = {}
    for name in os.listdir(PROC):
        if not name.isdigit():
            continue
        try:
            with open(f"{PROC}/{name}/stat", "rb") as handle:
                data = handle.read()
        except OSError:
            continue  # gone since the listing
        ppid = int(data[data.rindex(b")") + 2:].split(None, 2)[1])
        children.setdefault(ppid, []).append(int(name))
    return children


def _members(root: int, children: Mapping[int, list[int]]) -> list[int]:
    found, pending = [root], [root]
    while pending:
        for child in children.get(pending.pop(), ()):
            found.append(child)
            pending.append(child)
    return found


def _sockets() -> dict[int, tuple[int, int]]:
    """socket inode -> (TCP state, local port), for the TCP sockets of this network namespace (v4 and v6)."""
    found: dict[int, tuple[int, int]] = {}
    for name in ("tcp", "tcp6"):
        try:
            with open(f"{PROC}/net/{name}", "rb") as handle:
                lines = handle.read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            found[int(cols[9])] = (int(cols[3], 16), int(cols[1].rsplit(b":", 1)[1], 16))
    return found


def _fields(path: str, wanted: Mapping[bytes, int]) -> list[int]:
    """The integers after the `wanted` labels (label -> index into the result) of a `Label: value` file."""
    values = [0] * len(wanted)
    with open(path, "rb") as handle:
        for line in handle:
            label, _, value = line.partition(b":")
            index = wanted.get(label)
            if index is not None:
                values[index] = int(value.split()[0])
    return values


_STATUS = {b"voluntary_ctxt_switches": 0, b"nonvoluntary_ctxt_switches": 1}
_IO = {b"read_bytes": 0, b"write_bytes": 1}
_ROLLUP = {b"Pss": 0, b"Private_Clean": 1, b"Private_Dirty": 2}


def _fd_limit(pid: int) -> int | None:
    with open(f"{PROC}/{pid}/limits", "rb") as handle:
        for line in handle:
            if line.startswith(b"Max open files"):
                soft = line[len(b"Max open files"):].split()[0]
                return None if soft == b"unlimited" else int(soft)
    return None


def sample(roots: Mapping[Any, int], *, pss: bool = False, tree: bool = True) -> Pass:
    """The figures of the tree of each root pid, by key; a root that is gone has no entry.
    `tree` off: of each root's own process only (no walk of the process table)."""
    children = _table() if tree else {}
    sockets = _sockets()
    result = Pass(trees={})
    for key, root in roots.items():
        figures = Figures()
        if pss:
            figures.pss_bytes = figures.uss_bytes = 0
        for pid in _members(root, children):
            try:
                _add(figures, pid, sockets, pss=pss, root=pid == root)
            except (FileNotFoundError, ProcessLookupError):
                result.vanished += 1
            except (OSError, ValueError, IndexError):
                result.errors += 1
        if figures.processes:
            result.trees[key] = figures
    return result


def _add(figures: Figures, pid: int, sockets: Mapping[int, tuple[int, int]], *, pss: bool, root: bool) -> None:
    """Add one member's figures; raises before adding anything when the member is gone (its figures are all or none)."""
    base = f"{PROC}/{pid}"
    stat = _stat(str(pid))
    voluntary, involuntary = _fields(f"{base}/status", _STATUS)
    try:
        read, written = _fields(f"{base}/io", _IO)
    except PermissionError:  # another user's process: its I/O is not ours to read
        read = written = 0
    fds = os.listdir(f"{base}/fd")
    states: list[tuple[int, int]] = []
    for fd in fds:
        try:
            target = os.readlink(f"{base}/fd/{fd}")
        except OSError:
            continue  # closed since the listing
        if target.startswith("socket:["):
            found = sockets.get(int(target[8:-1]))
            if found is not None:
                states.append(found)
    limit = _fd_limit(pid) if root else None
    if pss:
        rollup_pss, clean, dirty = _fields(f"{base}/smaps_rollup", _ROLLUP)  # kB
    figures.processes += 1
    figures.cpu_seconds += stat.cpu
    figures.threads += stat.threads
    figures.vms_bytes += stat.vms
    figures.rss_bytes += stat.rss
    figures.voluntary_switches += voluntary
    figures.involuntary_switches += involuntary
    figures.read_bytes += read
    figures.write_bytes += written
    figures.open_fds += len(fds)
    if root:
        figures.fd_limit = limit
    if pss and figures.pss_bytes is not None and figures.uss_bytes is not None:
        figures.pss_bytes += rollup_pss * 1024
        figures.uss_bytes += (clean + dirty) * 1024
    for state, port in states:
        name = TCP_STATES.get(state, "unknown")
        figures.tcp[name] = figures.tcp.get(name, 0) + 1
        if state == _LISTEN:
            figures.listening_ports.add(port)
