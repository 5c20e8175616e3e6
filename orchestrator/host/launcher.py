"""The launcher: what supervisord runs for every agent process, and what it does before the agent's own code runs.

Owned here: reading a launch file (written by `state.launch` at apply, mode
0600, in the state directory) and, in the process supervisord started, in
this order:

    1. the cgroup: the process moves into a cgroup of its own, with the
       kernel-enforced limits in force (host.cgroups); a control the host
       cannot enforce is left off, and `status` says so
    2. limits of the process: open files (RLIMIT_NOFILE), core dumps
       (RLIMIT_CORE), the OOM killer's score, niceness and CPU affinity
    3. the sandbox: a mount namespace with `read_only_paths` read-only, a
       network namespace (`no_network`), a private temporary directory
    4. the user and group (root is needed for 1 to 3, so they come last), the
       umask, and the parent-death signal (a change of user clears it)
    5. exec of the agent's command with exactly the environment of the
       launch file over supervisord's: values are carried as JSON, never
       through supervisord's `environment=` parser, so any value reaches the
       agent byte for byte, and secrets are never in the rendered
       configuration

The agent keeps the launcher's PID (exec, no fork), so supervisord's pid is
the agent's. Every step that cannot be done ends the launch with a line on
stderr (the agent's stderr log) naming the agent and the step, and exit
status 126: supervisord sees a failed start, and the restart policy decides.
An environment value is never printed.

The launch file is immutable (its name carries a digest of its content, so a
changed one is a new file and a changed program section); the controls that
change on a running agent (nice, affinity, cgroup limits: model.LIVE_RESOURCES)
are in a second file beside it, `NAME.controls`, which apply rewrites
and applies to the running processes itself (operations.controls).

Called by supervisord, through the stable entry point `orchestrator.launch`.
Standard library only (and host.cgroups): it runs at every start of every agent.
"""

from __future__ import annotations

import grp
import marshal
import os
import pwd
import resource
import sys

from orchestrator.core.failure import OrchestratorError
from orchestrator.host import cgroups
from orchestrator.host.controls import limits_of, set_scheduling

TYPE_CHECKING = False
if TYPE_CHECKING:   # at run time, only what a start needs is loaded: see `main`
    import ctypes
    from collections.abc import Mapping, Sequence
    from typing import Any

FAILED = 126          # exit status of a launch that could not be done (the shell's "cannot execute")
_CLONE_NEWNS = 0x00020000
_CLONE_NEWNET = 0x40000000
_MS_RDONLY = 1
_MS_REMOUNT = 32
_MS_BIND = 4096
_MS_REC = 16384
_MS_PRIVATE = 1 << 18


class LaunchError(Exception):
    """A step of the launch that could not be done: the message names it."""


def _libc() -> ctypes.CDLL:
    import ctypes   # noqa: PLC0415 - only a sandboxed agent needs it
    return ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        import ctypes   # noqa: PLC0415
        raise LaunchError(f"{what}: {os.strerror(ctypes.get_errno())}")


def _load(path: str) -> object:
    with open(path, "rb") as handle:
        return marshal.load(handle)   # supervisord.launching.encode


def read(path: str) -> dict[str, Any]:
    """The launch file at `path` (supervisord.launching writes it)."""
    data = _load(path)
    if not isinstance(data, dict) or not isinstance(data.get("argv"), list) or not data["argv"]:
        raise LaunchError(f"{path} is not a launch file")
    return data


def read_controls(path: str | None) -> dict[str, Any]:
    """The live controls beside a launch file; none when it is missing (an agent whose apply is not done)."""
    if not path:
        return {}
    try:
        data = _load(path)
    except FileNotFoundError:
        return {}
    return data if isinstance(data, dict) else {}


def _rlimits(spec: Mapping[str, Any], *, pids_enforced: bool, as_root: bool) -> None:
    files = spec.get("open_files")
    if files is not None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (int(files), int(files)))
    core = spec.get("core_dumps")
    if core is not None:
        limit = resource.RLIM_INFINITY if core else 0
        resource.setrlimit(resource.RLIMIT_CORE, (limit, limit))
    processes = spec.get("max_processes")
    # without a pids controller, RLIMIT_NPROC is what is left; it counts the user's processes (not root's: the
    # kernel does not hold root to it), so it is a fallback for an agent with a user of its own
    if processes is not None and not pids_enforced and not as_root:
        resource.setrlimit(resource.RLIMIT_NPROC, (int(processes), int(processes)))


def _oom_score(value: int | None) -> None:
    if value is None:
        return
    with open("/proc/self/oom_score_adj", "w", encoding="ascii") as handle:
        handle.write(str(int(value)))


def _namespaces(read_only: Sequence[str], no_network: bool) -> None:
    """A mount namespace with `read_only` paths read-only, and a network namespace without a way out. Done with
    the unshare and mount system calls themselves, in this process: the agent keeps its PID (bubblewrap or
    unshare(1) would stand between it and supervisord), and no shell quotes a path."""
    if not read_only and not no_network:
        return
    libc = _libc()
    flags = (_CLONE_NEWNS if read_only else 0) | (_CLONE_NEWNET if no_network else 0)
    _check(libc.unshare(flags), "cannot make namespaces (sandbox.read_only_paths or no_network needs root)")
    if read_only:
        # our mounts must not propagate back to the host's namespace
        _check(libc.mount(None, b"/", None, _MS_REC | _MS_PRIVATE, None), "cannot make the mounts private")
        for path in read_only:
            target = os.fsencode(path)
            _check(libc.mount(target, target, None, _MS_BIND | _MS_REC, None), f"cannot bind {path}")
            _check(libc.mount(None, target, None, _MS_REMOUNT | _MS_BIND | _MS_RDONLY, None),
                   f"cannot make {path} read-only")


def _private_tmp(base: str, process: str, uid: int | None, gid: int | None) -> str:
    """A temporary directory of the process's own, emptied at every start (what a previous run left is gone)."""
    import shutil   # noqa: PLC0415 - only an agent with a private /tmp needs it
    path = os.path.join(base, process)
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path, mode=0o700)
    os.chmod(path, 0o700)
    if uid is not None:
        os.chown(path, uid, gid if gid is not None else -1)
    return path


def _identity(spec: Mapping[str, Any]) -> tuple[pwd.struct_passwd | None, int | None]:
    user, group = spec.get("user"), spec.get("group")
    entry = None
    if user:
        try:
            entry = pwd.getpwnam(user)
        except KeyError as exc:
            raise LaunchError(f"no user {user!r} on this machine") from exc
    gid = None
    if group:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError as exc:
            raise LaunchError(f"no group {group!r} on this machine") from exc
    elif entry is not None:
        gid = entry.pw_gid
    return entry, gid


def _become(entry: pwd.struct_passwd | None, gid: int | None) -> None:
    changes = gid is not None and os.getegid() != gid or entry is not None and os.geteuid() != entry.pw_uid
    if changes and os.geteuid() != 0:
        raise LaunchError("changing user or group needs supervisord to run as root")
    if entry is not None:
        os.initgroups(entry.pw_name, gid if gid is not None else entry.pw_gid)
    elif gid is not None:
        os.setgroups([gid])
    if gid is not None:
        os.setgid(gid)
    if entry is not None:
        os.setuid(entry.pw_uid)


def launch(spec: Mapping[str, Any], *, environ: Mapping[str, str]) -> tuple[list[str], dict[str, str]]:
    """Every step before exec, in this process; the argv and environment to exec."""
    process = environ.get("SUPERVISOR_PROCESS_NAME") or str(spec.get("agent") or "agent")
    controls = read_controls(spec.get("controls"))
    entry, gid = _identity(spec)
    pids_enforced = False
    scope = spec.get("scope")
    if scope:
        layout = cgroups.detect()
        placement = cgroups.place(layout, str(scope), str(spec["agent"]), process, limits_of(controls), os.getpid())
        pids_enforced = bool(placement.active.get("max_processes"))
    _rlimits({**spec, "max_processes": controls.get("max_processes")}, pids_enforced=pids_enforced,
             as_root=entry is None or entry.pw_uid == 0)
    _oom_score(spec.get("oom_score_adj"))
    set_scheduling(0, controls)
    env = dict(environ)
    if entry is not None:
        env.update(HOME=entry.pw_dir, USER=entry.pw_name, LOGNAME=entry.pw_name)
    if spec.get("private_tmp"):
        env["TMPDIR"] = _private_tmp(str(spec["private_tmp"]), process, entry.pw_uid if entry else None, gid)
    _namespaces(tuple(spec.get("read_only_paths") or ()), bool(spec.get("no_network")))
    env.update({str(k): str(v) for k, v in (spec.get("env") or {}).items()})   # the manifest's, over all the rest
    _become(entry, gid)
    os.umask(int(str(spec.get("umask") or "022"), 8))
    if os.getppid() == 1:   # supervisord died while we started
        raise LaunchError("supervisord is gone")
    argv = [str(a) for a in spec["argv"]]
    # a parent-death signal does not survive a change of user: set after it, by util-linux's setpriv, which then
    # execs the agent in place, so an agent of a supervisord killed with SIGKILL ends instead of holding its port
    # beside a second copy (setting it here would load ctypes at every start, for a third of the launcher's time)
    wrapper = spec.get("pdeathsig")
    return ([str(wrapper), "--pdeathsig", "TERM", "--", *argv] if wrapper else argv), env


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        sys.stderr.write("usage: python -I -S .../orchestrator/launch.py LAUNCH_FILE\n")
        sys.exit(2)
    name = os.path.basename(args[0])
    try:
        spec = read(args[0])
        name = str(spec.get("agent") or name)
        command, env = launch(spec, environ=os.environ)
        os.execvpe(command[0], command, env)
    except (LaunchError, OSError, ValueError, OrchestratorError) as exc:
        sys.stderr.write(f"orchestrator launcher: {name}: {exc}\n")
        sys.stderr.flush()
        os._exit(FAILED)
