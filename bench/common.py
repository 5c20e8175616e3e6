"""Helpers shared by the benchmarks: generated manifest sets and robust timing."""

from __future__ import annotations

import contextlib
import statistics
import subprocess
import time
from pathlib import Path
from collections.abc import Callable, Iterable, Mapping, Sequence

import psutil

from orchestrator.config.manifest import LoadOptions, load

TEMPLATE = """\
command: ["{{ python }}", "-c", "import time; time.sleep(3600)", "{{ name }}", "--port", "{{ vars.port }}"]
readiness: {tcp: "127.0.0.1:{{ vars.port }}", timeout: 10s}
liveness: {http: "http://127.0.0.1:{{ vars.port }}/health", period: 10s, failures: 3}
restart: {policy: exponential-backoff, delay: 1s, multiplier: 2, max_delay: 60s, max_attempts: 5, window: 10m, reset_after: 5m}
resources:
  cpu_percent: {warning: 70, critical: 90}
  memory_mb: {warning: 300, critical: 400, limit: 512}
  warmup: 30s
env: {PYTHONUNBUFFERED: "1", ROLE: "{{ name }}"}
"""


def dag_set(root: Path, *, agents: int, levels: int, base_port: int = 20000) -> Path:
    """Write a manifest set of `agents` agents in `levels` dependency levels; each depends on up to 3 of the level before."""
    manifests = root / "manifests"
    (manifests / "agents").mkdir(parents=True, exist_ok=True)
    (manifests / "templates").mkdir(exist_ok=True)
    (manifests / "templates" / "worker.yaml").write_text(TEMPLATE)
    (manifests / "orchestrator.yaml").write_text("project: bench\n")
    per_level = agents // levels
    for index in range(agents):
        level = min(index // per_level, levels - 1)
        deps = []
        if level:
            start = (level - 1) * per_level
            deps = sorted({f"agent-{start + (index * k) % per_level:04d}" for k in (1, 3, 7)})
        (manifests / "agents" / f"agent-{index:04d}.yaml").write_text(
            f"name: agent-{index:04d}\nextends: worker\nvars: {{port: {base_port + index}}}\n"
            f"priority: {index % 100}\ndepends_on: [{', '.join(deps)}]\n")
    return manifests


def median_seconds(action: Callable[[], object], runs: int) -> tuple[float, list[float]]:
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        action()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples), samples


def run(argv: Sequence[str]) -> None:
    done = subprocess.run(list(argv), capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({done.returncode}):\n{done.stdout}{done.stderr}")


# Helpers for the benchmarks that run a real supervisord (bench_apply, bench_noop).

LISTENER = """\
import signal, socket, sys, time
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
time.sleep(float(sys.argv[2]))
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("127.0.0.1", int(sys.argv[1])))
server.listen(64)
while True:
    server.accept()[0].close()
"""


def free_ports(count: int) -> list[int]:
    """`count` distinct free TCP ports on 127.0.0.1 (each bound to port 0 while all are held)."""
    import socket
    held = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            held.append(sock)
        return [sock.getsockname()[1] for sock in held]
    finally:
        for sock in held:
            sock.close()


def _deps(index: int, per_level: int, prefix: str) -> list[str]:
    """1 to 3 agents of the level before index's (the same pattern as dag_set)."""
    level = index // per_level
    if not level:
        return []
    start = (level - 1) * per_level
    return sorted({f"{prefix}-{start + (index * k) % per_level:04d}" for k in (1, 3, 7)})


def _write_set(root: Path, bodies: list[str]) -> Path:
    manifests = root / "manifests"
    (manifests / "agents").mkdir(parents=True, exist_ok=True)
    (manifests / "templates").mkdir(exist_ok=True)
    (manifests / "orchestrator.yaml").write_text("project: bench\n")
    for index, body in enumerate(bodies):
        (manifests / "agents" / f"a-{index:04d}.yaml").write_text(body)
    return manifests


def listening_dag_set(root: Path, *, ports: Sequence[int], levels: int, delay: float, python: str) -> Path:
    """One agent per port in `levels` levels: it sleeps `delay` s, then listens; ready when its port accepts."""
    program = root / "listener.py"
    program.write_text(LISTENER)
    per_level = len(ports) // levels
    bodies = []
    for index, port in enumerate(ports):
        bodies.append(
            f"name: a-{index:04d}\n"
            f"command: [\"{python}\", \"{program}\", \"{port}\", \"{delay}\"]\n"
            f"depends_on: [{', '.join(_deps(index, per_level, 'a'))}]\n"
            f"readiness: {{tcp: \"127.0.0.1:{port}\", timeout: 60s, period: 50ms}}\n"
            "min_uptime: 0s\nstop_timeout: 5s\n")
    return _write_set(root, bodies)


def sleeping_dag_set(root: Path, *, agents: int, levels: int, sleep: str) -> Path:
    """`agents` agents running `sleep 3600` in `levels` levels, no readiness probe, RUNNING at once."""
    per_level = agents // levels
    return _write_set(root, [
        f"name: a-{index:04d}\ncommand: [\"{sleep}\", \"3600\"]\n"
        f"depends_on: [{', '.join(_deps(index, per_level, 'a'))}]\nmin_uptime: 0s\nstop_timeout: 5s\n"
        for index in range(agents)])


def check(argv: Sequence[str], *, ok: Sequence[int] = (0,), timeout: float = 300, stderr_too: bool = False) -> str:
    """Run argv; its stdout (then its stderr if `stderr_too`), or exit with its output when its code is not in `ok`."""
    done = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    if done.returncode not in ok:
        raise SystemExit(f"{' '.join(argv)} failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    return done.stdout + done.stderr if stderr_too else done.stdout


def stop_everything(orchestrator: str, manifests: Path, state_dir: str) -> None:
    """`down --yes`; then SIGKILL a supervisord still alive, and sweep what it left. Never by name."""
    import contextlib
    import os
    import signal
    from orchestrator.host import orphans
    with contextlib.suppress(Exception):
        subprocess.run([orchestrator, "-m", str(manifests), "down", "--yes"],
                       capture_output=True, text=True, timeout=120)
    with contextlib.suppress(Exception):
        import psutil
        pid = int(Path(state_dir, "supervisord.pid").read_text().strip())
        # The pid file may outlive its supervisord: kill only the process it names if that one runs our config.
        if any(state_dir in arg for arg in psutil.Process(pid).cmdline()):
            os.kill(pid, signal.SIGKILL)
    orphans.sweep(state_dir)


def terminate_as_interrupt() -> None:
    """Turn SIGTERM into SystemExit, so `finally` blocks clean up on kill as on Ctrl-C."""
    import signal
    import sys

    def _exit(signum: int, frame: object) -> None:
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, _exit)


# Helpers for bench_crashloop and bench_down.

def up_argv(orchestrator: str, manifests: Path) -> list[str]:
    """`orchestrator -m DIR up`, with `--yes` when this version's `up` takes it (without a terminal it asks nothing)."""
    usage = subprocess.run([orchestrator, "up", "--help"], capture_output=True, text=True).stdout
    return [orchestrator, "-m", str(manifests), "up", *(["--yes"] if "--yes" in usage else [])]


def percentile(values: Sequence[float], share: float) -> float:
    """The nearest-rank percentile (share in [0, 1]) of a non-empty sequence."""
    import math
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(share * len(ordered)) - 1))]


def sweep_marked(variable: str, value: str) -> list[int]:
    """SIGKILL every process whose environment has `variable`=`value` (a marker only this run sets); the PIDs killed."""
    import contextlib
    import os
    import psutil
    killed = []
    for process in psutil.process_iter(["pid"]):
        with contextlib.suppress(psutil.Error):
            if process.pid != os.getpid() and process.environ().get(variable) == value:
                process.kill()
                killed.append(process.pid)
    return killed


def stop_supervisord(pid_file: Path, config: Path, supervisorctl: str, *, timeout: float = 60.0) -> float | None:
    """`supervisorctl -c CONFIG shutdown`, then wait for the pid file's process to go; SIGTERM, then SIGKILL, if it lingers.

    Only the process the pid file names, and only if its command line names `config`'s directory.
    Returns the seconds from the shutdown request to the process gone, or None if there was none to stop.
    """
    import contextlib
    import psutil
    try:
        process = psutil.Process(int(pid_file.read_text().strip()))
        if not any(str(config.parent) in arg for arg in process.cmdline()):
            return None
    except (OSError, ValueError, psutil.Error):
        return None
    started = time.perf_counter()
    with contextlib.suppress(Exception):
        subprocess.run([supervisorctl, "-c", str(config), "shutdown"], capture_output=True, text=True, timeout=timeout)
    try:
        process.wait(timeout)
        return time.perf_counter() - started
    except psutil.NoSuchProcess:
        return time.perf_counter() - started
    except psutil.TimeoutExpired:
        with contextlib.suppress(psutil.Error):
            process.terminate()
            process.wait(15)
    with contextlib.suppress(psutil.Error):
        process.kill()
        process.wait(5)
    return None


_BASELINE_CONF = """\
[unix_http_server]
file={dir}/s.sock
chmod=0700

[supervisord]
logfile={dir}/supervisord.log
pidfile={dir}/supervisord.pid
childlogdir={dir}/logs
loglevel=info
minfds=1024
minprocs={minprocs}
umask=022

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl=unix://{dir}/s.sock
"""


def baseline_conf(directory: object, *, minprocs: int) -> str:
    """The main section of a plain supervisord configuration in `directory` (socket, log, pid file there): a baseline's."""
    return _BASELINE_CONF.format(dir=directory, minprocs=minprocs)


def agent_set(root: Path, bodies: Mapping[str, str]) -> tuple[Path, str]:
    """A manifest set in root/m with one agent file per name: (its directory, its state directory)."""
    manifests = root / "m"
    (manifests / "agents").mkdir(parents=True)
    (manifests / "orchestrator.yaml").write_text("project: bench\n")
    for name, body in bodies.items():
        (manifests / "agents" / f"{name}.yaml").write_text(body)
    return manifests, load(LoadOptions(str(manifests))).state_dir


def baseline_set(base_dir: Path, sections: Iterable[str], *, minprocs: int) -> Path:
    """A plain supervisord configuration in `base_dir` (with its logs/) holding `sections`: its path."""
    (base_dir / "logs").mkdir(parents=True)
    conf = base_dir / "supervisord.conf"
    conf.write_text(baseline_conf(base_dir, minprocs=minprocs) + "".join(sections))
    return conf


def baseline_program(name: str, command: str, directory: object, *, autorestart: bool,
                     settings: Sequence[str] = ()) -> str:
    """A plain supervisord program section for a baseline: `command`, logs in `directory`/logs, the whole
    process group signalled on stop; `settings` are further `key=value` lines."""
    lines = [f"[program:{name}]", f"command={command}", "autostart=true", f"autorestart={str(autorestart).lower()}",
             "startsecs=0", *settings, "stopasgroup=true", "killasgroup=true",
             f"stdout_logfile={directory}/logs/{name}.out.log", f"stderr_logfile={directory}/logs/{name}.err.log"]
    return "\n" + "\n".join(lines) + "\n"


def cpu(process: psutil.Process) -> float:
    """CPU seconds (user + system) a process has used."""
    times = process.cpu_times()
    return float(times.user + times.system)


def listener_of(supervisord: psutil.Process) -> psutil.Process:
    """orchestrator's event listener among a supervisord's children."""
    for child in supervisord.children():
        with contextlib.suppress(psutil.Error):
            if any("orchestrator.listener" in arg for arg in child.cmdline()):
                return child
    raise SystemExit(f"no orchestrator.listener child of supervisord {supervisord.pid}")
