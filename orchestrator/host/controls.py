"""The controls in force on an agent's processes: applied live, and read back from the kernel.

Owned here: changing the live controls (model.LIVE_RESOURCES: niceness, CPU
affinity, and the cgroup limits through host.cgroups) on every thread of
every process of a running agent, without a restart; and reading back what
is in force on a process, from /proc and its cgroup, never from the
manifest: niceness, affinity, its open-files, core and process limits, its
OOM score adjustment, its user and group, whether it has a network and a
mount namespace of its own, and its cgroup's limits and accounting.

Niceness and affinity are per thread in Linux: a process's are changed on
each of its tasks (/proc/PID/task), and read from its main thread.

The launcher (host.launcher) sets the same controls once, at the start of a
process (`set_scheduling`); apply (operations.apply) calls `apply_live` for
an agent whose live controls changed; status and the exporter call `read`.
"""

from __future__ import annotations

import grp
import os
import pwd

from orchestrator.host import cgroups

TYPE_CHECKING = False
if TYPE_CHECKING:   # the launcher imports this module at every agent start (see host.cgroups)
    from collections.abc import Callable, Iterable, Mapping
    from typing import Any

_LIMITS = {"Max open files": "open_files", "Max core file size": "core_dumps", "Max processes": "process_limit"}


def set_scheduling(pid: int, controls: Mapping[str, Any]) -> None:
    """Niceness and CPU affinity of one task (0: this one). Absolute values: a second apply sets, never adds."""
    nice = controls.get("nice")
    if nice is not None:
        os.setpriority(os.PRIO_PROCESS, pid, int(nice))
    affinity = controls.get("cpu_affinity")
    if affinity:
        os.sched_setaffinity(pid, [int(cpu) for cpu in affinity])


def _tasks(pid: int) -> list[int]:
    try:
        return [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return []


def limits_of(controls: Mapping[str, Any]) -> cgroups.Limits:
    return cgroups.Limits(memory_max=controls.get("memory_max"), memory_high=controls.get("memory_high"),
                          cpu_max=controls.get("cpu_max"), max_processes=controls.get("max_processes"))


def apply_live(scope: str, agent: str, controls: Mapping[str, Any], pids: Iterable[int]) -> list[str]:
    """Set `controls` on the running agent: its cgroups' limits, and niceness and affinity on every task of
    `pids` and of its cgroups' members. What could not be set, in words (empty: all of it)."""
    problems = []
    layout = cgroups.detect()
    if any(controls.get(name) is not None for name in ("memory_max", "memory_high", "cpu_max", "max_processes")):
        try:
            reasons = cgroups.update(layout, scope, agent, limits_of(controls))
        except cgroups.CgroupError as exc:
            problems.append(str(exc))
        else:
            problems += [f"{name}: {why}" for name, why in sorted(reasons.items())
                         if why and controls.get(name) is not None]
    members = set(pids) | cgroups.pids(layout, scope, agent)
    for pid in sorted(members):
        for task in _tasks(pid):
            try:
                set_scheduling(task, controls)
            except ProcessLookupError:   # ended meanwhile: nothing to set
                continue
            except OSError as exc:
                problems.append(f"process {pid}: {exc.strerror}")
                break
    return problems


def _proc_limits(pid: int) -> dict[str, Any]:
    found: dict[str, Any] = {}
    try:
        with open(f"/proc/{pid}/limits", encoding="ascii") as handle:
            lines = handle.read().splitlines()[1:]
    except OSError:
        return found
    for line in lines:
        for label, key in _LIMITS.items():
            if line.startswith(label):
                soft = line[len(label):].split()[0]
                found[key] = None if soft == "unlimited" else int(soft)
    if "core_dumps" in found:   # RLIMIT_CORE: 0 forbids them, anything else allows
        found["core_dumps"] = found["core_dumps"] != 0
    return found


def _identity(pid: int) -> dict[str, Any]:
    """Its user and group: the owner of /proc/PID is the process's effective uid and gid (one stat, no read)."""
    try:
        info = os.stat(f"/proc/{pid}")
    except OSError:
        return {}
    return {"user": _named(info.st_uid, _USERS, lambda n: pwd.getpwuid(n).pw_name),
            "group": _named(info.st_gid, _GROUPS, lambda n: grp.getgrgid(n).gr_name)}


_USERS: dict[int, str | int] = {}    # uid -> name: a lookup reads /etc/passwd, and status reads 500 processes
_GROUPS: dict[int, str | int] = {}


def _named(number: int | None, kept: dict[int, str | int], lookup: Callable[[int], str]) -> str | int | None:
    """The name of a uid or gid (the number itself when it has none)."""
    if number is None:
        return None
    if number not in kept:
        try:
            kept[number] = lookup(number)
        except KeyError:
            kept[number] = number
    return kept[number]


_OURS: dict[str, str] = {}   # kind -> the reader's own namespace (read once)


def _own_namespace(pid: int, kind: str) -> bool | None:
    """Whether the process has a namespace of `kind` other than the reader's (status and the exporter run in the
    host's; init's may not be readable, in a container); None: not readable."""
    try:
        if kind not in _OURS:
            _OURS[kind] = os.readlink(f"/proc/self/ns/{kind}")
        return os.readlink(f"/proc/{pid}/ns/{kind}") != _OURS[kind]
    except OSError:
        return None


def read(pid: int, *, scope: str | None = None, agent: str | None = None, process: str | None = None,
         layout: cgroups.Layout | None = None) -> dict[str, Any]:
    """What is in force on process `pid` (and its cgroup, given `scope`, `agent` and `process`), from the kernel.
    Empty when the process is gone."""
    import contextlib   # noqa: PLC0415 - the reading side only: not loaded by the launcher
    found: dict[str, Any] = _identity(pid)
    if not found:   # gone
        return {}
    with contextlib.suppress(OSError):
        found["nice"] = os.getpriority(os.PRIO_PROCESS, pid)
    with contextlib.suppress(OSError):
        found["cpu_affinity"] = sorted(os.sched_getaffinity(pid))
    found.update(_proc_limits(pid))
    with contextlib.suppress(OSError, ValueError), open(f"/proc/{pid}/oom_score_adj", encoding="ascii") as handle:
        found["oom_score_adj"] = int(handle.read().strip())
    found["own_network"] = _own_namespace(pid, "net")
    found["own_mounts"] = _own_namespace(pid, "mnt")
    if scope and agent and process:
        layout = layout or cgroups.detect()
        back = cgroups.read(layout, scope, agent, process)
        if back is not None:
            found["cgroup"] = {"memory_max": back.memory_max, "memory_high": back.memory_high, "cpu_max": back.cpu_max,
                               "max_processes": back.max_processes, "memory_current": back.memory_current,
                               "pids_current": back.pids_current, "oom_kills": back.oom_kills}
        found["inactive"] = {name: why for name, why in cgroups.controls(layout).items() if why}
    return found
