"""Cgroups of agent processes: the one module that touches /sys/fs/cgroup.

Owned here: where the host's cgroup hierarchies are mounted and which of them
we may use (`detect`, `controls`), the path of each agent process's cgroup
(`path_of`), making it, writing its limits and moving the process in
(`place`), changing limits live (`update`), reading back what the kernel
enforces and counts (`read`), listing (`pids`) and killing (`kill`) every
process of an agent however it forked or detached, and removing the cgroups
(`remove`).

Called by the launcher at every agent start (so: standard library only, cheap
to import), by stop, down and the emergency stop (`kill`, `remove`), by status
and the metrics exporter (`controls`, `read`, `pids`) and by apply (`update`).

Every cgroup of ours lives at `<base>/orchestrator-<scope>/<agent>/<process>`
in each hierarchy used, where `<base>` is the cgroup the detecting process is
in: ours nest inside it, so a host's or container's own accounting and limits
still cover the agents. A caller that itself runs inside one of our cgroups
gets the base that cgroup was made under, so every caller finds the same tree.
`scope` (a short hash of the state directory) keeps two projects apart.

Which hierarchy serves what:

    tracking (kill, pids)   cgroup v2 when its mount is writable, even with no controller: it has cgroup.procs for the
                            whole tree and `cgroup.kill`, which kills a tree at once; else v1 freezer (freeze, kill
                            each member, thaw, so a fork bomb cannot outrun the kill); else v1 pids
    memory_max              v2 memory.max (and memory.swap.max 0, so swap does not stretch it); v1
                            memory.limit_in_bytes and memory.memsw.limit_in_bytes when present (same reason)
    memory_high             v2 memory.high only: v1 has no equivalent
    cpu_max                 v2 cpu.max "quota period"; v1 cpu.cfs_quota_us over cpu.cfs_period_us (100 ms)
    max_processes           v2 or v1 pids.max (the kernel counts tasks, threads included)

A controller is used from v2 when the base offers it (its cgroup.controllers),
else from a v1 hierarchy mounted for it. A process is placed in every usable
hierarchy whatever its limits, so `update` can set a limit later and `read`
always has the figures.

v1 and v2 differ in ways that show here: v1 says "no limit" with a huge
number, v2 with "max"; v1 refuses a memory limit below what it cannot reclaim
(EBUSY, the old limit stays) where v2 takes it and OOM-kills inside the
cgroup; v1 counts OOM kills only on kernels whose memory.oom_control has an
`oom_kill` line (memory.failcnt counts failed charges, not kills).

The "no internal processes" rule of v2: a controller can be enabled in a
cgroup's cgroup.subtree_control only while that cgroup has no member process
(the root excepted). Our intermediate cgroups never hold processes, but the
base holds the caller (often supervisord, in a systemd-delegated subtree):
when the base has not enabled a controller for its children yet and holds
processes, enabling it fails with EBUSY and the controls it serves are
reported inactive with that reason. Nothing here moves other processes around
to make room; run supervisord in a leaf of its own delegated subtree instead.
"""

from __future__ import annotations

import errno
import os
import time
from orchestrator.core.failure import OrchestratorError

TYPE_CHECKING = False
if TYPE_CHECKING:   # the launcher imports this module at every agent start: typing, dataclasses and contextlib are
    # not loaded for it (together they tripled its start-up)
    from collections.abc import Callable, Iterable, Iterator
    from typing import Any

SCOPE_PREFIX = "orchestrator"
CONTROLS = ("memory_max", "memory_high", "cpu_max", "max_processes", "tracking")
V2 = "v2"                        # the name of the v2 hierarchy in Placement.paths and Readback.sources
CPU_PERIOD_US = 100_000          # the kernel's default CFS period: 100 ms
_MIN_QUOTA_US = 1_000            # the kernel refuses a CFS quota under 1 ms
_NO_LIMIT = 1 << 62              # v1 writes "no limit" as PAGE_COUNTER_MAX pages in bytes (9223372036854771712)
_POLL = 0.01                     # seconds between two looks at a cgroup being emptied or frozen
_FREEZE_WAIT = 1.0               # a freeze that takes longer (a task in uninterruptible sleep) is not waited for
_LEFTOVER_TIMEOUT = 5.0          # how long `place` waits for a previous run's leftovers to die
_MOUNTINFO = "/proc/self/mountinfo"
_FALLBACK_ROOT = "/sys/fs/cgroup"  # only when mountinfo cannot be read
_V1_WANTED = ("memory", "cpu", "pids", "freezer")
# controllers a v1 mount option may name (the rest are mount flags such as "rw", "xattr", "name=systemd")
_V1_KNOWN = frozenset({"cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "net_cls", "net_prio", "blkio",
                       "perf_event", "hugetlb", "pids", "rdma", "misc"})
_CONTROLLER = {"memory_max": "memory", "memory_high": "memory", "cpu_max": "cpu", "max_processes": "pids"}


class CgroupError(OrchestratorError):
    """A cgroup could not be made, written or joined, or a name cannot be a cgroup's."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.errno = code


class _Plain:
    """A value of named fields (what a frozen dataclass gives, without importing dataclasses): compared, hashed and
    shown by its fields, changed by `replace`."""

    __slots__: tuple[str, ...] = ()

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and all(getattr(self, f) == getattr(other, f) for f in self.__slots__)

    def __hash__(self) -> int:
        return hash(tuple(repr(getattr(self, f)) for f in self.__slots__))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{f}={getattr(self, f)!r}' for f in self.__slots__)})"

    def replace(self, **changes: Any) -> Any:
        return type(self)(**{**{f: getattr(self, f) for f in self.__slots__}, **changes})


class Limits(_Plain):
    """What the kernel enforces on one process's cgroup; None is no limit."""

    __slots__ = ("memory_max", "memory_high", "cpu_max", "max_processes")

    def __init__(self, memory_max: int | None = None, memory_high: int | None = None, cpu_max: float | None = None,
                 max_processes: int | None = None) -> None:
        self.memory_max = memory_max          # bytes: the hard limit (memory plus swap)
        self.memory_high = memory_high        # bytes: above it the kernel throttles and reclaims (v2 only)
        self.cpu_max = cpu_max                # cores: 0.5 is half a core
        self.max_processes = max_processes    # tasks (processes and threads)
        for name in ("memory_max", "memory_high", "max_processes"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise CgroupError(f"{name} must be a positive whole number, not {value!r}")
        if self.cpu_max is not None and not self.cpu_max > 0:
            raise CgroupError(f"cpu_max must be a positive number of cores, not {self.cpu_max!r}")


class Hierarchy(_Plain):
    """One mounted hierarchy and the caller's base cgroup in it."""

    __slots__ = ("name", "mount", "base", "controllers", "writable")

    def __init__(self, name: str, mount: str, base: str, controllers: frozenset[str], writable: bool) -> None:
        self.name = name                  # "v2", or a v1 hierarchy's controllers as mounted ("memory", "cpu,cpuacct")
        self.mount = mount
        self.base = base                  # the base cgroup, "/" or "/a/b", relative to the mount
        self.controllers = controllers    # v1: bound to this hierarchy; v2: those the base offers (cgroup.controllers)
        self.writable = writable

    def dir(self, rel: str = "") -> str:
        return os.path.join(self.mount, self.base.strip("/"), rel).rstrip("/")


class Layout(_Plain):
    """What this host offers, found once: the v2 hierarchy (its mount, whether each controller can be used),
    the v1 hierarchies by controller (mount points), and the base cgroup under which ours are made in each."""

    __slots__ = ("v2", "v1", "v2_enabled", "v2_busy")

    def __init__(self, v2: Hierarchy | None = None, v1: tuple[Hierarchy, ...] = (),
                 v2_enabled: frozenset[str] = frozenset(), v2_busy: bool = False) -> None:
        self.v2 = v2
        self.v1 = v1
        self.v2_enabled = v2_enabled    # controllers the v2 base already enables for its children
        self.v2_busy = v2_busy          # the v2 base holds processes and is not the root (see the docstring)

    def v1_for(self, controller: str) -> Hierarchy | None:
        return next((h for h in self.v1 if controller in h.controllers), None)


class Placement(_Plain):
    """Where a process was placed: each hierarchy's cgroup directory, and which controls are in force."""

    __slots__ = ("paths", "active", "reasons")

    def __init__(self, paths: dict[str, str], active: dict[str, bool], reasons: dict[str, str] | None = None) -> None:
        self.paths = paths
        self.active = active
        self.reasons = reasons if reasons is not None else {}   # why each inactive control is


class Readback(_Plain):
    """What the kernel enforces and counts for one process's cgroup; None is unlimited, or not known here."""

    __slots__ = ("memory_max", "memory_high", "cpu_max", "max_processes", "memory_current", "pids_current",
                 "oom_kills", "sources")

    def __init__(self, memory_max: int | None, memory_high: int | None, cpu_max: float | None,
                 max_processes: int | None, memory_current: int | None, pids_current: int | None,
                 oom_kills: int | None, sources: dict[str, str]) -> None:
        self.memory_max = memory_max
        self.memory_high = memory_high
        self.cpu_max = cpu_max
        self.max_processes = max_processes
        self.memory_current = memory_current
        self.pids_current = pids_current
        self.oom_kills = oom_kills
        self.sources = sources   # field -> the hierarchy it was read from


# -- files ------------------------------------------------------------------------------------------------------

def _read(path: str) -> str:
    # os.read retries on EINTR itself (PEP 475); cgroup files are small but may exceed one read (cgroup.procs)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        parts = []
        while chunk := os.read(fd, 65536):
            parts.append(chunk)
        return b"".join(parts).decode()
    finally:
        os.close(fd)


def _write(path: str, text: str) -> None:
    """One write of `text` (a cgroup file takes each write as one command); CgroupError naming file and value."""
    data = text.encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            while data:   # os.write retries on EINTR itself (PEP 475); a short write is finished, not repeated
                data = data[os.write(fd, data):]
        finally:
            os.close(fd)
    except OSError as e:
        raise CgroupError(f"cannot write {text!r} to {path}: {os.strerror(e.errno or 0)}", e.errno) from e


def _members(directory: str) -> set[int]:
    """The pids in a cgroup and all its descendants; an empty set for a cgroup that is gone."""
    found: set[int] = set()
    for top, _dirs, _files in os.walk(directory):
        try:
            found.update(int(line) for line in _read(os.path.join(top, "cgroup.procs")).split())
        except OSError:
            continue   # removed while walked
    return found


def _living(pids: Iterable[int]) -> set[int]:
    """The pids that have not ended: an ended process its parent has not reaped yet (a zombie) has."""
    alive = set()
    for pid in pids:
        try:
            stat = _read(f"/proc/{pid}/stat")
        except OSError:
            continue
        if stat[stat.rindex(")") + 2] not in "ZX":
            alive.add(pid)
    return alive


# -- detection --------------------------------------------------------------------------------------------------

def detect() -> Layout:
    """The hierarchies of this host and the caller's base cgroup in each, from mountinfo and /proc/self/cgroup.
    Reads only: nothing is made or written."""
    paths = _own_cgroups()
    v2: Hierarchy | None = None
    v1: list[Hierarchy] = []
    for mount, root, fstype, options in _cgroup_mounts():
        if fstype == "cgroup2":
            if v2 is None and (base := _base(root, paths.get(""))) is not None:
                v2 = _v2_hierarchy(mount, base)
            continue
        controllers = [o for o in options if o in _V1_KNOWN]
        if not set(controllers) & set(_V1_WANTED) or any(set(controllers) & h.controllers for h in v1):
            continue   # a hierarchy we have no use for, or a second mount of one already found
        base = _base(root, paths.get(",".join(sorted(controllers))))
        if base is not None:
            v1.append(Hierarchy(",".join(controllers), mount, base, frozenset(controllers), _writable(mount, base)))
    if v2 is None:
        return Layout(v1=tuple(v1))
    enabled = frozenset(_optional(os.path.join(v2.dir(), "cgroup.subtree_control")).split())
    busy = v2.base != "/" and bool(_optional(os.path.join(v2.dir(), "cgroup.procs")).strip())
    return Layout(v2=v2, v1=tuple(v1), v2_enabled=enabled, v2_busy=busy)


def _own_cgroups() -> dict[str, str]:
    """The caller's cgroup path in each hierarchy, keyed by its sorted controllers ("" for v2)."""
    found = {}
    for line in _optional("/proc/self/cgroup").splitlines():
        _id, controllers, path = line.split(":", 2)
        found[",".join(sorted(controllers.split(","))) if controllers else ""] = path
    return found


def _cgroup_mounts() -> Iterator[tuple[str, str, str, list[str]]]:
    """(mount point, root inside the hierarchy, fstype, super options) of each cgroup mount."""
    try:
        lines = _read(_MOUNTINFO).splitlines()
    except OSError:
        yield from _fallback_mounts()
        return
    for line in lines:
        head, _sep, tail = line.partition(" - ")
        fields, rest = head.split(), tail.split()
        if len(fields) >= 5 and len(rest) >= 3 and rest[0] in ("cgroup", "cgroup2"):
            yield _unescape(fields[4]), _unescape(fields[3]), rest[0], rest[2].split(",")


def _fallback_mounts() -> Iterator[tuple[str, str, str, list[str]]]:
    """The usual places, when /proc/self/mountinfo cannot be read."""
    if os.path.exists(os.path.join(_FALLBACK_ROOT, "cgroup.controllers")):
        yield _FALLBACK_ROOT, "/", "cgroup2", []
        return
    unified = os.path.join(_FALLBACK_ROOT, "unified")
    if os.path.exists(os.path.join(unified, "cgroup.controllers")):
        yield unified, "/", "cgroup2", []
    for name in _V1_WANTED:
        if os.path.isdir(os.path.join(_FALLBACK_ROOT, name)):
            yield os.path.join(_FALLBACK_ROOT, name), "/", "cgroup", [name]


def _unescape(text: str) -> str:
    # mountinfo writes space, tab, newline and backslash in paths as three octal digits (\040), and only those
    first, *escaped = text.split("\\")
    return first + "".join(chr(int(part[:3], 8)) + part[3:] for part in escaped)


def _base(root: str, path: str | None) -> str | None:
    """The base cgroup relative to the mount, or None when the caller's cgroup is not below the mount's root."""
    if path is None or "/.." in path:
        return None
    if root != "/":
        if path != root and not path.startswith(root.rstrip("/") + "/"):
            return None
        path = path[len(root.rstrip("/")):] or "/"
    parts = path.strip("/").split("/") if path.strip("/") else []
    ours = next((i for i, part in enumerate(parts) if part.startswith(SCOPE_PREFIX + "-")), len(parts))
    return "/" + "/".join(parts[:ours])


def _v2_hierarchy(mount: str, base: str) -> Hierarchy:
    directory = os.path.join(mount, base.strip("/"))
    offered = frozenset(_optional(os.path.join(directory, "cgroup.controllers")).split())
    return Hierarchy(V2, mount, base, offered, _writable(mount, base))


def _writable(mount: str, base: str) -> bool:
    return os.access(os.path.join(mount, base.strip("/")), os.W_OK)


def _optional(path: str) -> str:
    try:
        return _read(path)
    except OSError:
        return ""


# -- which hierarchy serves what --------------------------------------------------------------------------------

class _Route(_Plain):
    __slots__ = ("hierarchy", "reason")

    def __init__(self, hierarchy: Hierarchy | None, reason: str | None = None) -> None:
        self.hierarchy = hierarchy
        self.reason = reason


def _unwritable(h: Hierarchy) -> str:
    return "not root" if os.geteuid() != 0 else f"{h.dir()} is not writable"


def _controller(layout: Layout, name: str) -> _Route:
    v2 = layout.v2
    if v2 is not None and name in v2.controllers:
        if not v2.writable:
            return _Route(None, _unwritable(v2))
        if layout.v2_busy and name not in layout.v2_enabled:
            return _Route(None, _busy(name, v2))
        return _Route(v2)
    h = layout.v1_for(name)
    if h is None:
        return _Route(None, f"no {name} controller: cgroup v2 has none enabled and no v1 {name} hierarchy is mounted")
    return _Route(h) if h.writable else _Route(None, _unwritable(h))


def _busy(controller: str, v2: Hierarchy) -> str:
    return f"cgroup v2's {controller} controller cannot be enabled below {v2.base}: it holds processes " \
           "(a cgroup with processes cannot enable controllers for its children)"


def _routes(layout: Layout) -> dict[str, _Route]:
    """The hierarchy that serves each control, or why none does."""
    memory, cpu, pids = (_controller(layout, name) for name in ("memory", "cpu", "pids"))
    high = memory
    if memory.hierarchy is not None and memory.hierarchy.name != V2:
        high = _Route(None, "memory.high needs cgroup v2's memory controller (v1 has no equivalent)")
    if cpu.hierarchy is not None and cpu.hierarchy.name != V2 \
            and not os.path.exists(os.path.join(cpu.hierarchy.dir(), "cpu.cfs_quota_us")):
        cpu = _Route(None, "the kernel has no CPU bandwidth control (no cpu.cfs_quota_us)")
    return {"memory_max": memory, "memory_high": high, "cpu_max": cpu, "max_processes": pids,
            "tracking": _tracking(layout)}


def _tracking(layout: Layout) -> _Route:
    if layout.v2 is not None and layout.v2.writable:
        return _Route(layout.v2)
    for name in ("freezer", "pids"):
        h = layout.v1_for(name)
        if h is not None and h.writable:
            return _Route(h)
    if layout.v2 is not None or layout.v1_for("freezer") or layout.v1_for("pids"):
        return _Route(None, "not root" if os.geteuid() != 0 else "no writable cgroup hierarchy to track processes in")
    return _Route(None, "no cgroup v2 hierarchy and no v1 freezer or pids hierarchy is mounted")


def controls(layout: Layout) -> dict[str, str | None]:
    """For each control, None when it can be enforced here, else why not (status shows these)."""
    return {name: route.reason for name, route in _routes(layout).items()}


def _used(layout: Layout) -> dict[str, Hierarchy]:
    """Every hierarchy a process is placed in, by name, the tracking one first."""
    used = {route.hierarchy.name: route.hierarchy for route in _routes(layout).values() if route.hierarchy}
    tracking = _tracking(layout).hierarchy
    return {**({tracking.name: tracking} if tracking else {}), **used}


def _all(layout: Layout) -> list[Hierarchy]:
    """Every hierarchy that may hold cgroups of ours (one made when the host offered more counts too)."""
    return [h for h in (layout.v2, *layout.v1) if h is not None]


# -- names ------------------------------------------------------------------------------------------------------

def path_of(scope: str, agent: str, process: str) -> str:
    """The relative path of a process's cgroup, the same in every hierarchy."""
    return f"{_scope_dir(scope)}/{_name('agent', agent)}/{_name('process', process)}"


def _scope_dir(scope: str) -> str:
    return f"{SCOPE_PREFIX}-{_name('scope', scope)}"


def _name(kind: str, value: str) -> str:
    if not value or "/" in value or "\0" in value or value in (".", ".."):
        raise CgroupError(f"{kind} {value!r} cannot name a cgroup (it must be non-empty, without '/', not '.' or '..')")
    return value


# -- limits -----------------------------------------------------------------------------------------------------

def _set_memory_max(h: Hierarchy, d: str, value: int | None) -> None:
    if h.name == V2:
        _write(f"{d}/memory.max", "max" if value is None else str(value))
        if os.path.exists(f"{d}/memory.swap.max"):
            _write(f"{d}/memory.swap.max", "max" if value is None else "0")
        return
    # memsw (memory + swap) may never be below the memory limit: lift it, set the memory limit, then bring it
    # down to the memory limit now in force (the new one, or the old one when the kernel refused the new)
    memsw = f"{d}/memory.memsw.limit_in_bytes"
    if not os.path.exists(memsw):
        _write(f"{d}/memory.limit_in_bytes", "-1" if value is None else str(value))
        return
    _write(memsw, "-1")
    try:
        _write(f"{d}/memory.limit_in_bytes", "-1" if value is None else str(value))
    finally:
        in_force = _limit(_read(f"{d}/memory.limit_in_bytes"))
        _write(memsw, "-1" if in_force is None else str(in_force))


def _set_memory_high(h: Hierarchy, d: str, value: int | None) -> None:
    _write(f"{d}/memory.high", "max" if value is None else str(value))


def _set_cpu_max(h: Hierarchy, d: str, value: float | None) -> None:
    quota = None if value is None else max(_MIN_QUOTA_US, round(value * CPU_PERIOD_US))
    if h.name == V2:
        _write(f"{d}/cpu.max", f"{'max' if quota is None else quota} {CPU_PERIOD_US}")
        return
    _write(f"{d}/cpu.cfs_quota_us", "-1")   # first, so no old quota is checked against the new period
    _write(f"{d}/cpu.cfs_period_us", str(CPU_PERIOD_US))
    if quota is not None:
        _write(f"{d}/cpu.cfs_quota_us", str(quota))


def _set_max_processes(h: Hierarchy, d: str, value: int | None) -> None:
    _write(f"{d}/pids.max", "max" if value is None else str(value))


_SETTERS: dict[str, Callable[[Hierarchy, str, Any], None]] = {
    "memory_max": _set_memory_max, "memory_high": _set_memory_high, "cpu_max": _set_cpu_max,
    "max_processes": _set_max_processes}


def _write_limits(routes: dict[str, _Route], directory: dict[str, str], limits: Limits) -> dict[str, str]:
    """Write each served limit into the process's cgroups; the controls whose write failed, with why."""
    failed = {}
    for control, setter in _SETTERS.items():
        route = routes.get(control)
        h = route.hierarchy if route else None
        if h is None or h.name not in directory:
            continue
        try:
            setter(h, directory[h.name], getattr(limits, control))
        except CgroupError as e:
            hint = " (usage is above it and could not be reclaimed; the previous limit stays)" \
                if e.errno == errno.EBUSY and h.name != V2 else ""
            failed[control] = f"{e}{hint}"
    return failed


# -- placing ----------------------------------------------------------------------------------------------------

def place(layout: Layout, scope: str, agent: str, process: str, limits: Limits, pid: int) -> Placement:
    """Make the process's cgroups, write the limits, move `pid` in. A cgroup left by a previous run of the
    process is emptied (its leftovers killed) and made anew: what it counts (OOM kills) is this run's.
    An unsupported control is reported inactive; CgroupError
    when a supported limit cannot be written or the process cannot be moved (an agent never runs unlimited
    silently)."""
    rel = path_of(scope, agent, process)
    routes = _routes(layout)
    used = _used(layout)
    left = {name: h.dir(rel) for name, h in used.items() if os.path.isdir(h.dir(rel))}
    if left:   # a previous run's: its leftovers killed, then made anew, so its counts (OOM kills) are this run's
        _empty(left, spare={pid, os.getpid()}, timeout=_LEFTOVER_TIMEOUT)
        for directory in left.values():
            try:  # noqa: SIM105 - contextlib is not loaded for the launcher
                os.rmdir(directory)
            except OSError:   # still busy: reused as it is
                pass
    reused = any(os.path.isdir(h.dir(rel)) for h in used.values())
    paths = {name: _make(h, rel) for name, h in used.items()}
    refused = _enable_v2(layout.v2, rel, routes) if layout.v2 is not None else {}
    reasons = {name: route.reason for name, route in routes.items() if route.reason}
    for control, route in routes.items():
        if route.hierarchy is not None and route.hierarchy.name == V2 and control != "tracking" \
                and not os.path.exists(os.path.join(paths[V2], f"{_CONTROLLER[control]}.max")):
            reasons[control] = refused.get(_CONTROLLER[control], f"cgroup v2's {_CONTROLLER[control]} controller "
                                                                  "is not enabled for this cgroup")
    if reused:
        _empty(paths, spare={pid, os.getpid()}, timeout=_LEFTOVER_TIMEOUT)
    served = {c: r for c, r in routes.items() if c not in reasons}
    failed = _write_limits(served, paths, limits)
    if failed:
        raise CgroupError(f"cannot limit {agent}/{process}: " + "; ".join(failed.values()))
    for directory in paths.values():
        _write(os.path.join(directory, "cgroup.procs"), str(pid))
    return Placement(paths, {c: c not in reasons for c in CONTROLS}, reasons)


def _make(h: Hierarchy, rel: str) -> str:
    directory = h.dir(rel)
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as e:
        raise CgroupError(f"cannot make the cgroup {directory}: {os.strerror(e.errno or 0)}", e.errno) from e
    return directory


def _enable_v2(v2: Hierarchy, rel: str, routes: dict[str, _Route]) -> dict[str, str]:
    """Enable the controllers v2 serves in every cgroup from the base down to the agent's; those refused, with
    why. Only the base can hold processes (ours below it never do), so only there does EBUSY mean the rule."""
    wanted = {_CONTROLLER[c] for c, r in routes.items() if c != "tracking" and r.hierarchy is v2}
    refused: dict[str, str] = {}
    scope_dir, agent, _process = rel.split("/")
    for directory in (v2.dir(), v2.dir(scope_dir), v2.dir(f"{scope_dir}/{agent}")):
        enabled = set(_optional(os.path.join(directory, "cgroup.subtree_control")).split())
        for controller in sorted(wanted - enabled - set(refused)):
            try:   # one controller a write: one refused does not take the others with it
                _write(os.path.join(directory, "cgroup.subtree_control"), f"+{controller}")
            except CgroupError as e:
                refused[controller] = _busy(controller, v2) if e.errno == errno.EBUSY and directory == v2.dir() \
                    else str(e)
    return refused


# -- changing limits live ---------------------------------------------------------------------------------------

def update(layout: Layout, scope: str, agent: str, limits: Limits) -> dict[str, str | None]:
    """Rewrite the limits of every process cgroup of `agent` (all replicas), live; its processes are not
    touched. `limits` replaces all four (None lifts one). A memory limit under current usage is written all the
    same, as the user asked: v2 reclaims or OOM-kills inside the cgroup, v1 may refuse it (reported, the old
    limit stays). controls()-style answer: None for each control now in force, else why not."""
    agent_rel = f"{_scope_dir(scope)}/{_name('agent', agent)}"
    routes = _routes(layout)
    used = _used(layout)
    reasons: dict[str, str | None] = {name: route.reason for name, route in routes.items()}

    def fail(control: str, why: str) -> None:
        reasons[control] = why if reasons[control] is None else f"{reasons[control]}; {why}"

    for process in sorted({p for h in used.values() for p in _subdirs(h.dir(agent_rel))}):
        paths = {name: h.dir(f"{agent_rel}/{process}") for name, h in used.items()}
        paths = {name: d for name, d in paths.items() if os.path.isdir(d)}
        for control, route in routes.items():
            if control != "tracking" and route.hierarchy is not None and route.hierarchy.name not in paths:
                fail(control, f"{process} has no cgroup in the {route.hierarchy.name} hierarchy (placed before it was usable)")
        for control, why in _write_limits(routes, paths, limits).items():
            fail(control, f"{process}: {why}")
    return reasons


def _subdirs(directory: str) -> list[str]:
    try:
        return [entry.name for entry in os.scandir(directory) if entry.is_dir()]
    except OSError:
        return []


# -- members and killing ----------------------------------------------------------------------------------------

def _existing(layout: Layout, rel: str) -> dict[str, str]:
    """The directories of `rel` that exist, tracking hierarchy first."""
    order = [*_used(layout).values(), *_all(layout)]
    found: dict[str, str] = {}
    for h in order:
        if h.name not in found and os.path.isdir(h.dir(rel)):
            found[h.name] = h.dir(rel)
    return found


def pids(layout: Layout, scope: str, agent: str | None = None) -> set[int]:
    """Every process in the agent's cgroups (all replicas), or the scope's when `agent` is None, read from the
    tracking hierarchy (whichever holds the cgroup, when the host changed since)."""
    rel = _scope_dir(scope) if agent is None else f"{_scope_dir(scope)}/{_name('agent', agent)}"
    found = _existing(layout, rel)
    return _members(next(iter(found.values()))) if found else set()


def agents(layout: Layout, scope: str) -> set[str]:
    """The agents that have cgroups in `scope`, in any hierarchy (what an emergency stop empties)."""
    found: set[str] = set()
    for h in _all(layout):
        found.update(_subdirs(h.dir(_scope_dir(scope))))
    return found


def kill(layout: Layout, scope: str, agent: str, *, process: str | None = None, timeout: float = 5.0) -> set[int]:
    """SIGKILL every process in the agent's (or one process's) cgroups and wait until they are gone or are
    zombies, for at most `timeout` seconds; the pids that were killed (a process that outlived the timeout, in
    uninterruptible sleep, is still listed by `pids`). Nothing outside those cgroups is signalled, nor is the
    calling process."""
    rel = f"{_scope_dir(scope)}/{_name('agent', agent)}"
    if process is not None:
        rel = f"{rel}/{_name('process', process)}"
    return _empty(_existing(layout, rel), spare={os.getpid()}, timeout=timeout)


def _empty(paths: dict[str, str], *, spare: set[int], timeout: float) -> set[int]:
    """Kill the members of the cgroups at `paths` (hierarchy -> directory) but `spare`, until none lives."""
    killed: set[int] = set()
    deadline = time.monotonic() + timeout
    while True:
        alive = _living(set().union(*map(_members, paths.values())) - spare)
        if not alive or time.monotonic() >= deadline:
            return killed
        killed |= alive
        _kill_round(paths, spare)
        round_end = min(deadline, time.monotonic() + 0.5)   # then look again for any forked meanwhile
        while _living(alive) and time.monotonic() < round_end:
            time.sleep(_POLL)


def _kill_round(paths: dict[str, str], spare: set[int]) -> None:
    """One SIGKILL of every member: by the tracking hierarchy's own means, then each member it did not cover."""
    done: set[int] = set()
    v2 = paths.get(V2)
    if v2 and os.path.exists(os.path.join(v2, "cgroup.kill")) and not _members(v2) & spare:
        done = _members(v2)
        _write(os.path.join(v2, "cgroup.kill"), "1")   # the kernel kills the whole tree, forks racing it included
    freezer = next((d for name, d in paths.items() if "freezer" in name.split(",")), None)
    if freezer and not _members(freezer) & (spare | done):   # never freeze the caller, nor a process being placed
        _freeze(freezer)   # frozen, a fork bomb cannot fork faster than it is killed
        try:
            done |= _members(freezer)
            _signal(done, freezer)
        finally:
            _write(os.path.join(freezer, "freezer.state"), "THAWED")   # the SIGKILLs take effect once thawed
    for directory in paths.values():
        _signal(_members(directory) - spare - done, directory)


def _freeze(directory: str) -> None:
    """Freeze a v1 freezer cgroup (tree): its members can neither fork nor exit until it is thawed (the caller
    thaws it, whatever happens)."""
    state = os.path.join(directory, "freezer.state")
    _write(state, "FROZEN")
    deadline = time.monotonic() + _FREEZE_WAIT
    while _optional(state).strip() != "FROZEN" and time.monotonic() < deadline:
        time.sleep(_POLL)


_FDS_AT_ONCE = 256   # pidfds held at once, well under the usual limit of 1,024 open files


_SIGKILL = 9   # the number itself: the signal module (and enum with it) is loaded only to kill


def _signal(pids: set[int], directory: str) -> None:
    """SIGKILL those of `pids` that are still members of the cgroup tree at `directory`. Each process is pinned
    with a pidfd and membership is checked after, so a pid reused meanwhile by another process is never hit."""
    import signal   # noqa: PLC0415 - see _SIGKILL
    ordered = sorted(pids)
    for start in range(0, len(ordered), _FDS_AT_ONCE):
        pinned: dict[int, int | None] = {}
        for pid in ordered[start:start + _FDS_AT_ONCE]:
            try:
                pinned[pid] = os.pidfd_open(pid)
            except OSError as e:
                if e.errno == errno.ENOSYS:   # a kernel before 5.3: only the membership check below remains
                    pinned[pid] = None
        try:
            members = _members(directory)
            for pid, fd in pinned.items():
                if pid in members:
                    try:  # noqa: SIM105 - contextlib is not loaded for the launcher
                        os.kill(pid, _SIGKILL) if fd is None else signal.pidfd_send_signal(fd, _SIGKILL)
                    except OSError:   # ended meanwhile
                        pass
        finally:
            for fd in pinned.values():
                if fd is not None:
                    os.close(fd)


# -- reading back -----------------------------------------------------------------------------------------------

def read(layout: Layout, scope: str, agent: str, process: str) -> Readback | None:
    """What is in force for one process's cgroup, read back from the kernel's files; None when it has none."""
    rel = path_of(scope, agent, process)
    # where `place` puts a process (status reads every process's: the hierarchies it does not use are not looked in)
    used = _used_of(layout)
    found = {name: h.dir(rel) for name, h in used.items() if os.path.isdir(h.dir(rel))}
    if not found:
        return None
    values: dict[str, int | float | None] = {}
    sources: dict[str, str] = {}
    for name, directory in found.items():   # the tracking hierarchy first; a figure is taken where first found
        got = _read_v2(directory) if name == V2 else _read_v1(directory, used[name].controllers)
        for key, value in got.items():
            if key not in sources:
                values[key], sources[key] = value, name
    if "pids_current" not in sources:   # no pids controller: count the tracking hierarchy's members
        name, directory = next(iter(found.items()))
        values["pids_current"], sources["pids_current"] = len(_members(directory)), name
    cpu = values.get("cpu_max")
    return Readback(memory_max=_int(values, "memory_max"), memory_high=_int(values, "memory_high"),
                    cpu_max=None if cpu is None else float(cpu), max_processes=_int(values, "max_processes"),
                    memory_current=_int(values, "memory_current"), pids_current=_int(values, "pids_current"),
                    oom_kills=_int(values, "oom_kills"), sources=sources)


def memory_current(layout: Layout, scope: str, agent: str, process: str) -> int | None:
    """The memory one process's cgroup uses now (its whole tree, each page once), from one file: what the
    exporter reads every sample, between two full `read`s. None without a memory controller or cgroup."""
    rel = path_of(scope, agent, process)
    files = [layout.v2.dir(f"{rel}/memory.current")] if layout.v2 is not None else []
    memory = layout.v1_for("memory")
    if memory is not None:
        files.append(memory.dir(f"{rel}/memory.usage_in_bytes"))
    for path in files:
        try:
            return int(_read(path))
        except (OSError, ValueError):
            continue
    return None


def _int(values: dict[str, int | float | None], key: str) -> int | None:
    value = values.get(key)
    return None if value is None else int(value)


def _read_v2(d: str) -> dict[str, int | float | None]:
    got: dict[str, int | float | None] = {}
    if os.path.exists(f"{d}/memory.max"):
        got["memory_max"] = _limit(_read(f"{d}/memory.max"))
        got["memory_high"] = _limit(_read(f"{d}/memory.high"))
        got["memory_current"] = int(_read(f"{d}/memory.current"))
        got["oom_kills"] = _field(_read(f"{d}/memory.events"), "oom_kill")
    if os.path.exists(f"{d}/cpu.max"):
        quota, period = _read(f"{d}/cpu.max").split()
        got["cpu_max"] = None if quota == "max" else int(quota) / int(period)
    if os.path.exists(f"{d}/pids.max"):
        got["max_processes"] = _limit(_read(f"{d}/pids.max"))
        got["pids_current"] = int(_read(f"{d}/pids.current"))
    return got


_USED: dict[int, tuple[Layout, dict[str, Hierarchy]]] = {}   # id(layout) -> (it, _used(it)): one look per layout


def _used_of(layout: Layout) -> dict[str, Hierarchy]:
    kept = _USED.get(id(layout))
    if kept is None or kept[0] is not layout:
        kept = _USED[id(layout)] = (layout, _used(layout))
    return kept[1]


def _read_v1(d: str, controllers: frozenset[str]) -> dict[str, int | float | None]:
    """A v1 cgroup's figures, by what its hierarchy's controllers are (no file is looked for first)."""
    got: dict[str, int | float | None] = {}
    if "memory" in controllers:
        got["memory_max"] = _limit(_read(f"{d}/memory.limit_in_bytes"))
        got["memory_current"] = int(_read(f"{d}/memory.usage_in_bytes"))
        got["oom_kills"] = _field(_read(f"{d}/memory.oom_control"), "oom_kill")
    if "cpu" in controllers:
        quota = int(_read(f"{d}/cpu.cfs_quota_us"))
        got["cpu_max"] = None if quota < 0 else quota / int(_read(f"{d}/cpu.cfs_period_us"))
    if "pids" in controllers:
        got["max_processes"] = _limit(_read(f"{d}/pids.max"))
        got["pids_current"] = int(_read(f"{d}/pids.current"))
    return got


def _limit(text: str) -> int | None:
    text = text.strip()
    return None if text == "max" or int(text) >= _NO_LIMIT else int(text)


def _field(text: str, key: str) -> int | None:
    for line in text.splitlines():
        name, _sep, value = line.partition(" ")
        if name == key:
            return int(value)
    return None


# -- removing ---------------------------------------------------------------------------------------------------

def remove(layout: Layout, scope: str, agent: str | None = None) -> None:
    """rmdir the cgroups of an agent, or of the whole scope, deepest first, in every hierarchy; a cgroup still
    holding processes (or a child cgroup) stays, and is no error."""
    rel = _scope_dir(scope) if agent is None else f"{_scope_dir(scope)}/{_name('agent', agent)}"
    for h in _all(layout):
        top = h.dir(rel)
        for directory, _dirs, _files in os.walk(top, topdown=False):
            try:
                os.rmdir(directory)
            except OSError as e:
                if e.errno not in (errno.EBUSY, errno.ENOTEMPTY, errno.ENOENT):
                    raise CgroupError(f"cannot remove the cgroup {directory}: {os.strerror(e.errno or 0)}",
                                      e.errno) from e
