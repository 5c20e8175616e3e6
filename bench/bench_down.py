"""`orchestrator down` of a 300-agent dependency chain, against supervisord's own `stop all` and shutdown.

The goal: `down --yes` of AGENTS agents, each depending on the one before
(agent i depends_on agent i-1, so down stops them one at a time, last
first), under 15 s. The baseline, measured in the same run on the same
machine, is a plain supervisord with the same programs: `supervisorctl -c
CONF stop all` followed by `supervisorctl -c CONF shutdown`, until its pid is
gone (the programs have priority i, so supervisord starts them in chain
order and stops them in reverse; it has no dependencies to wait for, and
stops them all at once).

Each agent runs `sleep 3600` (the command is ["/bin/sleep", "3600"] itself,
no shell), with `min_uptime: 0s` and no readiness probe: it is ready once
RUNNING. Measured as users run them, the whole command, Python start-up
included:

  - orchestrator: `orchestrator -m DIR up` (timed too, and printed), a check
    that supervisord runs all AGENTS agents, then `down --yes`; it must exit
    0 with supervisord gone (down itself fails if anything of the state
    directory is left running);
  - baseline: `supervisord -c CONF` started and all programs RUNNING
    (timed, printed for scale), then `stop all` and `shutdown` as above.

RUNS runs, the two sides alternating; medians printed, with down's cost per
agent. If down misses the goal, the orchestrator side's supervisord.log and
_orchestrator.log of the last run are kept, and their path printed. Exits 1
if down misses the goal, if up or down fails, if not every agent is RUNNING
after up, or if a baseline step fails.
"""

from __future__ import annotations

import contextlib
import shutil
import statistics
import sys
import tempfile
import time
import xmlrpc.client
from pathlib import Path
from typing import Any

import psutil
from supervisor.xmlrpc import SupervisorTransport

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common  # noqa: E402
from bench.common import check, stop_everything, stop_supervisord, sweep_marked, terminate_as_interrupt, up_argv  # noqa: E402
from orchestrator.host import orphans  # noqa: E402
from orchestrator.operations.reach import socket_of  # noqa: E402

AGENTS, RUNS, GOAL = 300, 3, 15.0
SLEEP = "/bin/sleep"
UP_TIMEOUT, DOWN_TIMEOUT = 900.0, 600.0
BIN = Path(sys.executable).parent
ORCHESTRATOR, SUPERVISORD, SUPERVISORCTL = str(BIN / "orchestrator"), str(BIN / "supervisord"), str(BIN / "supervisorctl")
MARK = "DN_BENCH"  # in every baseline program's environment: how the cleanup knows ours

AGENT = """\
name: {name}
command: ["{sleep}", "3600"]
depends_on: [{deps}]
min_uptime: 0s
"""


def proxy(socket: str) -> Any:
    return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=SupervisorTransport(None, None, serverurl=f"unix://{socket}"))


def running(socket: str, names: list[str]) -> int:
    """How many of `names` supervisord reports RUNNING."""
    wanted = set(names)
    return sum(1 for info in proxy(socket).supervisor.getAllProcessInfo()
               if info["group"] in wanted and info["statename"] == "RUNNING")


def pid_in(pid_file: Path) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        return int(pid_file.read_text().strip())
    return None


def gone(pid: int | None, must_name: str) -> bool:
    """No process `pid`, or not ours (its command line does not name `must_name`)."""
    if pid is None:
        return True
    try:
        process = psutil.Process(pid)
        return process.status() == psutil.STATUS_ZOMBIE or not any(must_name in arg for arg in process.cmdline())
    except psutil.Error:
        return True


def orchestrator_run(manifests: Path, state_dir: str, agents: list[str], up_command: list[str]) -> tuple[float, float]:
    """up, check, down: (up seconds, down seconds)."""
    started = time.perf_counter()
    check(up_command, timeout=UP_TIMEOUT)
    up = time.perf_counter() - started
    up_count = running(socket_of(state_dir), agents)
    if up_count != len(agents):
        raise SystemExit(f"after up, {up_count}/{len(agents)} agents RUNNING")
    pid = pid_in(Path(state_dir, "supervisord.pid"))
    started = time.perf_counter()
    check([ORCHESTRATOR, "-m", str(manifests), "down", "--yes"], timeout=DOWN_TIMEOUT)
    down = time.perf_counter() - started
    if not gone(pid, state_dir):
        raise SystemExit(f"supervisord {pid} still runs after down")
    left = orphans.find(state_dir)
    if left:
        raise SystemExit(f"{len(left)} process(es) of the state directory still run after down: {[p.pid for p in left[:10]]}")
    return up, down


def baseline_run(conf: Path, base_dir: Path, programs: list[str]) -> tuple[float, float, float]:
    """supervisord start to all RUNNING, then stop all, then shutdown to its pid gone: the three in seconds."""
    for stale in (base_dir / "supervisord.pid", base_dir / "s.sock"):
        stale.unlink(missing_ok=True)
    started = time.perf_counter()
    check([SUPERVISORD, "-c", str(conf)], timeout=60)
    deadline = time.monotonic() + 120
    while True:
        with contextlib.suppress(OSError, xmlrpc.client.Error):
            if (base_dir / "s.sock").exists() and running(str(base_dir / "s.sock"), programs) == len(programs):
                break
        if time.monotonic() > deadline:
            raise SystemExit(f"baseline: not all {len(programs)} programs RUNNING after 120 s; see {base_dir / 'supervisord.log'}")
        time.sleep(0.05)
    start = time.perf_counter() - started
    pid = pid_in(base_dir / "supervisord.pid")
    if pid is None:
        raise SystemExit("baseline supervisord wrote no pid file")
    process = psutil.Process(pid)
    started = time.perf_counter()
    check([SUPERVISORCTL, "-c", str(conf), "stop", "all"], timeout=DOWN_TIMEOUT)
    stop_all = time.perf_counter() - started
    started = time.perf_counter()
    check([SUPERVISORCTL, "-c", str(conf), "shutdown"], timeout=DOWN_TIMEOUT)
    with contextlib.suppress(psutil.NoSuchProcess):
        process.wait(DOWN_TIMEOUT)
    shutdown = time.perf_counter() - started
    return start, stop_all, shutdown


def main() -> None:
    terminate_as_interrupt()
    if not Path(SLEEP).is_file():
        raise SystemExit(f"no {SLEEP}")
    tmp = Path(tempfile.mkdtemp(prefix="dn-", dir="/tmp"))  # short: the supervisord socket paths must fit
    agents = [f"c-{i:03d}" for i in range(AGENTS)]
    manifests, state_dir = common.agent_set(tmp, {name: AGENT.format(name=name, sleep=SLEEP, deps=agents[index - 1] if index else "")
                                                  for index, name in enumerate(agents)})
    up_command = up_argv(ORCHESTRATOR, manifests)

    programs = [f"p{i:03d}" for i in range(AGENTS)]
    base_dir = tmp / "b"
    conf = common.baseline_set(base_dir, (
        common.baseline_program(name, f"{SLEEP} 3600", base_dir, autorestart=False,
                                settings=[f"priority={index + 1}", f'environment={MARK}="{tmp}"'])
        for index, name in enumerate(programs)), minprocs=400)

    ups: list[float] = []
    downs: list[float] = []
    base: list[tuple[float, float, float]] = []
    kept_logs: Path | None = None
    try:
        for _ in range(RUNS):
            up, down = orchestrator_run(manifests, state_dir, agents, up_command)
            ups.append(up)
            downs.append(down)
            base.append(baseline_run(conf, base_dir, programs))
    finally:
        stop_everything(ORCHESTRATOR, manifests, state_dir)
        stop_supervisord(base_dir / "supervisord.pid", conf, SUPERVISORCTL)
        left = sweep_marked(MARK, str(tmp))
        if left:
            print(f"cleanup: killed {len(left)} baseline process(es) left running: {left[:10]}", file=sys.stderr)
        if downs and statistics.median(downs) >= GOAL:
            kept_logs = Path(tempfile.mkdtemp(prefix="bench_down-logs-", dir="/tmp"))
            for log in ("_orchestrator.log", "supervisord.log"):
                with contextlib.suppress(OSError):
                    shutil.copy(Path(state_dir, "logs", log), kept_logs / log)
        shutil.rmtree(tmp, ignore_errors=True)

    def runs(values: list[float]) -> str:
        return ", ".join(f"{v:.2f}" for v in values)

    down, up = statistics.median(downs), statistics.median(ups)
    base_start = statistics.median(b[0] for b in base)
    base_stop = statistics.median(b[1] for b in base)
    base_shutdown = statistics.median(b[2] for b in base)
    base_total = statistics.median(b[1] + b[2] for b in base)
    print(f"down of a {AGENTS}-agent chain (agent i depends on agent i-1), each `{SLEEP} 3600`, no probe "
          f"(median of {RUNS} run{'s' if RUNS > 1 else ''}, the whole command)")
    print(f"  orchestrator down --yes                        {down:7.2f} s   runs: {runs(downs)}")
    print(f"    per agent                                    {down / AGENTS * 1000:7.1f} ms")
    print(f"  baseline: supervisorctl stop all + shutdown    {base_total:7.2f} s   "
          f"(stop all {base_stop:.2f} s, shutdown to pid gone {base_shutdown:.2f} s)")
    print(f"    per agent                                    {base_total / AGENTS * 1000:7.1f} ms")
    print(f"  ratio orchestrator / supervisord               {down / base_total:7.1f}x")
    print(f"  for scale: orchestrator up {up:.2f} s (runs: {runs(ups)}, {up / AGENTS * 1000:.0f} ms per agent); "
          f"baseline supervisord start to all RUNNING {base_start:.2f} s")
    meets = down < GOAL
    print(f"  {'meets' if meets else 'MISSES'} the goal of {GOAL:g} s")
    if kept_logs is not None:
        print(f"  logs of orchestrator's side (last run) kept in {kept_logs}")
    if not meets:
        sys.exit(1)


if __name__ == "__main__":
    main()
