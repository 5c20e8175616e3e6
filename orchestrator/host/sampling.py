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
    io, fds, threads, tcp sockets    summed per member
    context switches    of each member's main thread (the kernel counts them per thread), summed
    fd_limit            the root's soft limit on open files (what `resources.open_files` sets)

A process that ends while it is read costs its own figures, never the pass:
every read of a member that fails because it is gone is skipped, and counted.

Called by the exporter (daemons.exporter) and the benchmark.
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Mapping
from typing import Any, NamedTuple
from dataclasses import dataclass, field

_PAGE = os.sysconf("SC_PAGE_SIZE")
_TICKS = os.sysconf("SC_CLK_TCK")
PROC = "/proc"

# /proc/net/tcp's st column
TCP_STATES = {1: "established", 2: "syn_sent", 3: "syn_recv", 4: "fin_wait1", 5: "fin_wait2", 6: "time_wait",
              7: "close", 8: "close_wait", 9: "last_ack", 10: "listen", 11: "closing", 12: "new_syn_recv"}
_LISTEN = 10


@dataclass(slots=True)   # slots: one per agent process in every snapshot, and two snapshots at once
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
    context_switches: int = 0
    tcp: dict[str, int] = field(default_factory=dict)
    listening_ports: set[int] = field(default_factory=set)
    socket_inodes: list[int] = field(default_factory=list, repr=False)   # its sockets, until the pass knows their states
    nice: int | None = None   # the root process's niceness (its main thread's)


@dataclass
class Pass:
    """The result of one pass: each root key's figures, and what it cost."""

    trees: dict[Any, Figures]
    vanished: int = 0   # members that ended while they were read
    errors: int = 0     # reads that failed for another reason (a permission, an unexpected format)


class _Stat(NamedTuple):
    ppid: int
    start: int   # clock ticks after boot: with the pid, names one process
    cpu: float
    threads: int
    vms: int
    rss: int
    nice: int


def _parse_stat(data: bytes) -> _Stat:
    rest = data[data.rindex(b")") + 2:].split()  # the command name may hold spaces and parentheses
    ticks = int(rest[11]) + int(rest[12]) + int(rest[13]) + int(rest[14])  # utime stime cutime cstime
    return _Stat(ppid=int(rest[1]), start=int(rest[19]), cpu=ticks / _TICKS, threads=int(rest[17]), vms=int(rest[20]),
                 rss=int(rest[21]) * _PAGE, nice=int(rest[16]))


_CHUNK = 8192   # every file the pass reads per process (stat, schedstat, io, limits) is well under this
_FLAGS = os.O_RDONLY | os.O_CLOEXEC


def _read(path: str, *, records: bool = False) -> bytes:
    """The whole file, with three system calls where a file object takes five (and an object): the pass reads
    some 2,000 files a sample at 500 agents. A process's files are written whole at the first read (a short read
    is the end); a file of many `records` (/proc/net/tcp) may come in parts, and is read to its end."""
    fd = os.open(path, _FLAGS)
    try:
        data = os.read(fd, _CHUNK)
        if len(data) < _CHUNK and not records:
            return data
        parts = [data]
        while data and (chunk := os.read(fd, _CHUNK)):
            parts.append(chunk)
        return b"".join(parts)
    finally:
        os.close(fd)


def _table() -> tuple[dict[int, list[int]], dict[int, bytes]]:
    """ppid -> the pids of its children, and each process's stat as read (the pass reads no stat twice)."""
    children: dict[int, list[int]] = {}
    stats: dict[int, bytes] = {}
    for name in os.listdir(PROC):
        if not name.isdigit():
            continue
        try:
            data = _read(f"{PROC}/{name}/stat")
        except OSError:
            continue  # gone since the listing
        pid = int(name)
        stats[pid] = data
        ppid = int(data[data.rindex(b")") + 2:].split(None, 2)[1])
        children.setdefault(ppid, []).append(pid)
    return children, stats


def _members(root: int, children: Mapping[int, list[int]]) -> list[int]:
    found, pending = [root], [root]
    while pending:
        for child in children.get(pending.pop(), ()):
            found.append(child)
            pending.append(child)
    return found


def _sockets() -> dict[int, tuple[int, int]]:
    """socket inode -> (TCP state, local port), for the TCP sockets of this network namespace (v4 and v6)."""
    try:
        return {**_diag(socket.AF_INET), **_diag(socket.AF_INET6)}
    except OSError:
        return _proc_sockets()


# sock_diag (netlink): the kernel's own dump of its TCP sockets, some 0.4 ms against 4 ms per /proc/net table,
# whose text the kernel formats a page at a time, walking its hash tables again for each.
_NETLINK_SOCK_DIAG, _SOCK_DIAG_BY_FAMILY, _DUMP_REQUEST = 4, 20, 0x301   # NLM_F_REQUEST | NLM_F_DUMP
_NLMSG_ERROR, _NLMSG_DONE = 2, 3
_HEADER = struct.Struct("=IHHII")    # nlmsghdr
# every state but TIME_WAIT and NEW_SYN_RECV: those sockets belong to no process (their inode is 0), and a host
# that is scraped or serves short connections has thousands of them (2,300 seen here, half the pass's socket cost)
_OWNED_STATES = 0xFFFFFFFF & ~(1 << 6) & ~(1 << 12)
_INODE = struct.Struct("=I")


def _diag(family: int) -> dict[int, tuple[int, int]]:
    found: dict[int, tuple[int, int]] = {}
    with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, _NETLINK_SOCK_DIAG) as channel:
        channel.settimeout(5.0)
        # inet_diag_req_v2: family, protocol, extensions, pad, states, then a zeroed inet_diag_sockid (48 bytes)
        request = struct.pack("=BBBBI", family, socket.IPPROTO_TCP, 0, 0, _OWNED_STATES) + bytes(48)
        channel.send(_HEADER.pack(_HEADER.size + len(request), _SOCK_DIAG_BY_FAMILY, _DUMP_REQUEST, 1, 0) + request)
        while True:
            data = channel.recv(1 << 16)
            at = 0
            while at + _HEADER.size <= len(data):
                length, kind = struct.unpack_from("=IH", data, at)
                if kind == _NLMSG_DONE:
                    return found
                if kind == _NLMSG_ERROR or length < _HEADER.size:
                    raise OSError("sock_diag refused the dump")
                # inet_diag_msg: family, state, timer, retrans, then inet_diag_sockid (source port first, big-endian),
                # expires, rqueue, wqueue, uid, inode
                body = at + _HEADER.size
                inode = _INODE.unpack_from(data, body + 68)[0]
                if inode:
                    found[inode] = (data[body + 1], (data[body + 4] << 8) | data[body + 5])   # the port, big-endian
                at += (length + 3) & ~3


def _proc_sockets() -> dict[int, tuple[int, int]]:
    found: dict[int, tuple[int, int]] = {}
    for name in ("tcp", "tcp6"):
        try:
            lines = _read(f"{PROC}/net/{name}", records=True).splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if cols[9] != b"0":   # a TIME_WAIT or a request socket: no process holds it
                found[int(cols[9])] = (int(cols[3], 16), int(cols[1].rsplit(b":", 1)[1], 16))
    return found


def _field(data: bytes, label: bytes) -> int:
    """The integer after `label` (with its colon) in a `Label: value` file's text; 0 when absent."""
    at = data.find(label)
    if at < 0:
        return 0
    start = at + len(label)
    end = data.find(b"\n", start)
    return int(data[start:end].split()[0])


def _fd_limit(data: bytes) -> int | None:
    """The soft limit in /proc/PID/limits' text."""
    at = data.find(b"Max open files")
    soft = data[at + 14:data.find(b"\n", at)].split()[0]
    return None if soft == b"unlimited" else int(soft)


def sample(roots: Mapping[Any, int], *, pss: bool = False, tree: bool = True,
           limits: dict[int, tuple[int, int | None]] | None = None) -> Pass:
    """The figures of the tree of each root pid, by key; a root that is gone has no entry.

    `tree` off: of each root's own process only (no walk of the process table).
    `limits`, kept by the caller from pass to pass: each root's open-files limit by pid, with the process's start
    time (a reused pid is read again); the caller empties it now and then, as a limit may change (prlimit).
    """
    children, stats = _table() if tree else ({}, {})
    result = Pass(trees={})
    for key, root in roots.items():
        figures = Figures()
        if pss:
            figures.pss_bytes = figures.uss_bytes = 0
        for pid in _members(root, children):
            try:
                _add(figures, pid, stats.get(pid), pss=pss, root=pid == root, limits=limits)
            except (FileNotFoundError, ProcessLookupError):
                result.vanished += 1
            except (OSError, ValueError, IndexError):
                result.errors += 1
        if figures.processes:
            result.trees[key] = figures
    # the TCP sockets are listed only when a tree has a socket
    if any(f.socket_inodes for f in result.trees.values()):
        sockets = _sockets()
        for figures in result.trees.values():
            for inode in figures.socket_inodes:
                found = sockets.get(inode)
                if found is None:
                    continue  # not TCP (unix, UDP), or closed since
                state, port = found
                name = TCP_STATES.get(state, "unknown")
                figures.tcp[name] = figures.tcp.get(name, 0) + 1
                if state == _LISTEN:
                    figures.listening_ports.add(port)
            figures.socket_inodes.clear()
    return result


def _add(figures: Figures, pid: int, stat_text: bytes | None, *, pss: bool, root: bool,
         limits: dict[int, tuple[int, int | None]] | None) -> None:
    """Add one member's figures; raises before adding anything when the member is gone (its figures are all or none)."""
    base = f"{PROC}/{pid}"
    stat = _parse_stat(stat_text if stat_text is not None else _read(f"{base}/stat"))
    # schedstat's third figure, the times the task was switched onto a CPU, is the sum of status's voluntary and
    # involuntary switches, at half the cost of reading status
    switches = int(_read(f"{base}/schedstat").split()[2])
    try:
        io = _read(f"{base}/io")
        read, written = _field(io, b"\nread_bytes:"), _field(io, b"\nwrite_bytes:")
    except PermissionError:  # another user's process: its I/O is not ours to read
        read = written = 0
    fds = os.listdir(f"{base}/fd")
    inodes: list[int] = []
    for fd in fds:
        try:
            target = os.readlink(f"{base}/fd/{fd}")
        except OSError:
            continue  # closed since the listing
        if target.startswith("socket:["):
            inodes.append(int(target[8:-1]))
    limit = None
    if root:
        known = limits.get(pid) if limits is not None else None
        if known is not None and known[0] == stat.start:
            limit = known[1]
        else:
            limit = _fd_limit(_read(f"{base}/limits"))
            if limits is not None:
                limits[pid] = (stat.start, limit)
    if pss:
        rollup = _read(f"{base}/smaps_rollup")  # kB
        rollup_pss = _field(rollup, b"\nPss:")
        private = _field(rollup, b"\nPrivate_Clean:") + _field(rollup, b"\nPrivate_Dirty:")
    if root:
        figures.nice = stat.nice
    figures.processes += 1
    figures.cpu_seconds += stat.cpu
    figures.threads += stat.threads
    figures.vms_bytes += stat.vms
    figures.rss_bytes += stat.rss
    figures.context_switches += switches
    figures.read_bytes += read
    figures.write_bytes += written
    figures.open_fds += len(fds)
    if root:
        figures.fd_limit = limit
    if pss and figures.pss_bytes is not None and figures.uss_bytes is not None:
        figures.pss_bytes += rollup_pss * 1024
        figures.uss_bytes += private * 1024
    figures.socket_inodes.extend(inodes)


def core_ticks() -> dict[int, tuple[int, int]]:
    """Each core's (busy, total) clock ticks since boot, from /proc/stat; busy is all but idle and iowait.
    Two reads give each core's busy share between them (the exporter's evidence of how busy cores are)."""
    found: dict[int, tuple[int, int]] = {}
    try:
        with open(f"{PROC}/stat", "rb") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return found
    for line in lines:
        if not line.startswith(b"cpu") or line[3:4] in (b" ", b""):
            continue
        name, *values = line.split()
        ticks = [int(v) for v in values[:8]]
        total = sum(ticks)
        idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)
        found[int(name[3:])] = (total - idle, total)
    return found


def light(roots: Mapping[Any, int], *, fds: frozenset[Any] | set[Any] = frozenset()) -> dict[Any, tuple[int, int | None]]:
    """(RSS bytes, open fds) of the tree of each root, by key, at a fraction of `sample`'s cost: the process table's
    stat files give the trees and their RSS; `fd/` is listed only for the keys in `fds`. For the exporter's limit
    check between two samples; a root that is gone has no entry."""
    children, stats = _table()
    found: dict[Any, tuple[int, int | None]] = {}
    for key, root in roots.items():
        if root not in stats:
            continue
        rss, open_fds = 0, (0 if key in fds else None)
        for pid in _members(root, children):
            data = stats.get(pid)
            if data is None:
                continue
            try:
                rss += int(data[data.rindex(b")") + 2:].split()[21]) * _PAGE
                if open_fds is not None:
                    open_fds += len(os.listdir(f"{PROC}/{pid}/fd"))
            except (OSError, ValueError, IndexError):
                continue  # gone since the table was read
        found[key] = (rss, open_fds)
    return found
