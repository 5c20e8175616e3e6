"""SIGKILL of an agent to its new process running: orchestrator's `immediate` policy against supervisord's `autorestart=true`.

The goal: orchestrator's median under 25 ms, both when no client talks to
supervisord and while one polls it. The baseline, measured in the same run on
the same machine, is supervisord's own `autorestart=true`: a plain
supervisord configuration with the same programs, run beside orchestrator's.

Each side runs AGENTS programs, each a 3-line shell script that appends the
wall-clock time and its own PID to a file of its own, then execs `sleep 3600`
(startsecs 0 on both sides, so its stamp is when it became RUNNING). A restart
is timed without talking to supervisord, which would wake its loop and spoil
the idle case: t0, SIGKILL to the PID on the file's last line, then poll the
file every 2 ms until a line with a new PID appears; latency = its stamp - t0.
After each measurement the new PID is checked against getProcessInfo (RUNNING,
same PID), then QUIET s pass with nothing happening before the next kill.

  - orchestrator: `orchestrator -m DIR up` of AGENTS agents with
    `restart: {policy: immediate}` and `min_uptime: 0s`, no probes: supervisord
    has autorestart=false, orchestrator's event listener restarts the agent and
    its in-process extension (orchestrator/wakeup.py) wakes supervisord's loop;
  - baseline: `supervisord -c CONF` with the same programs, autorestart=true,
    startsecs=0, startretries=1000 (supervisord waits up to 1 s in poll()).

Two modes, KILLS kills each (a different program every kill, the two sides
alternating kill by kill): idle, nothing talks to either supervisord; polled,
a thread per side calls `supervisor.getState` over XML-RPC every 10 ms
throughout, as a client polling would. Also printed: what keeps the loop
responsive costs, the CPU of each supervisord and of orchestrator's listener
over IDLE_CPU s with nothing happening, as % of one core (measured once
the listener has worked through the events of `up`: how long that took is
printed too), and each supervisord's CPU during the polled series. Exits 1 if a restart does not
happen within TIMEOUT s, if a restarted process is not the one supervisord
reports RUNNING, or if orchestrator misses the goal in either mode.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import xmlrpc.client
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from supervisor.xmlrpc import SupervisorTransport

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common  # noqa: E402
from bench.common import check, cpu, listener_of, stop_everything, terminate_as_interrupt  # noqa: E402
from orchestrator.host import cgroups  # noqa: E402
from orchestrator.supervisord import launching, render  # noqa: E402

AGENTS, KILLS, QUIET, POLL_EVERY, FILE_POLL, TIMEOUT, IDLE_CPU, GOAL = 200, 15, 1.5, 0.010, 0.002, 5.0, 10.0, 0.025
BUSY = 0.10  # share of a core under which the listener counts as quiet
MAX_TIMEOUTS = 3  # stop measuring after this many restarts that never came
BIN = Path(sys.executable).parent
ORCHESTRATOR, SUPERVISORD = str(BIN / "orchestrator"), str(BIN / "supervisord")
MARK = "RB_BENCH"  # in every program's environment (it survives the exec): how the cleanup knows ours

SCRIPT = """\
#!/bin/sh
echo "$({date} +%s.%N) $$" >> "$1"
{mark}="{tmp}"; export {mark}
exec {sleep} 3600
"""


AGENT = """\
name: {name}
command: ["{script}", "{stamps}/{name}"]
min_uptime: 0s
stop_timeout: 5s
restart: {{policy: immediate, max_attempts: 1000, window: 1h}}
"""


def proxy(socket: str) -> Any:
    """An XML-RPC proxy on supervisord's unix socket (one per thread: the transport is not shared)."""
    return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=SupervisorTransport(None, None, serverurl=f"unix://{socket}"))


def last_start(path: Path) -> tuple[float, int] | None:
    """The (stamp, PID) of the file's last complete line."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    lines = text.split("\n")[:-1]  # a line still being written has no newline yet
    if not lines:
        return None
    stamp, pid = lines[-1].split()
    return float(stamp), int(pid)


@dataclass
class Side:
    label: str
    socket: str
    stamps: Path
    names: list[str]
    supervisord: psutil.Process
    runs: dict[str, list[float]] = field(default_factory=dict)
    timeouts: list[str] = field(default_factory=list)
    mismatches: list[str] = field(default_factory=list)

    def running_pids(self) -> dict[str, int]:
        return {info["name"]: info["pid"] for info in proxy(self.socket).supervisor.getAllProcessInfo()
                if info["group"] in self.names and info["statename"] == "RUNNING"}

    def kill_and_time(self, name: str, mode: str) -> bool:
        """SIGKILL `name`'s process, wait for its stamp file to name a new one; False when none came."""
        stamp_file = self.stamps / name
        last = last_start(stamp_file)
        if last is None or last[1] <= 1:  # never os.kill(0 or -1, ...): that would hit a whole group
            raise SystemExit(f"{self.label}: no PID stamped in {stamp_file}")
        pid = last[1]
        t0 = time.time()
        os.kill(pid, signal.SIGKILL)
        while time.time() - t0 < TIMEOUT:
            time.sleep(FILE_POLL)
            now = last_start(stamp_file)
            if now is not None and now[1] != pid:
                self.runs.setdefault(mode, []).append(now[0] - t0)
                info = proxy(self.socket).supervisor.getProcessInfo(f"{name}:{name}")  # after the figure is taken
                if info["statename"] != "RUNNING" or info["pid"] != now[1]:
                    self.mismatches.append(f"{name}: stamp PID {now[1]}, supervisord {info['statename']} PID {info['pid']}")
                return True
        self.timeouts.append(f"{mode}: {name} (PID {pid})")
        return False


class Poller(threading.Thread):
    """A client polling supervisord: supervisor.getState every POLL_EVERY s until stopped."""

    def __init__(self, socket: str) -> None:
        super().__init__(name=f"poll {socket}", daemon=True)
        self.socket, self.stopping = socket, threading.Event()
        self.calls, self.errors, self.last_error = 0, 0, ""

    def run(self) -> None:
        server = proxy(self.socket)
        while not self.stopping.is_set():
            try:
                server.supervisor.getState()
                self.calls += 1
            except Exception as exc:  # counted and printed: the run goes on
                self.errors, self.last_error = self.errors + 1, repr(exc)
            self.stopping.wait(POLL_EVERY)


def series(sides: list[Side], mode: str, programs: list[int]) -> bool:
    """One kill per program, alternating the sides (and which goes first); False when too many timed out."""
    for turn, index in enumerate(programs):
        for side in sides if turn % 2 == 0 else sides[::-1]:
            time.sleep(QUIET)
            side.kill_and_time(side.names[index], mode)
            if sum(len(s.timeouts) for s in sides) >= MAX_TIMEOUTS:
                return False
    return True


def wait_quiet(process: psutil.Process, limit: float = 120.0) -> None:
    """Until `process` uses under BUSY of a core over a 0.5 s window (the listener works through up's events first)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        before = cpu(process)
        time.sleep(0.5)
        if (cpu(process) - before) / 0.5 < BUSY:
            return
    raise SystemExit(f"process {process.pid} still busy after {limit:g}s")


def wait_all_running(side: Side, limit: float = 120.0) -> None:
    """All of the side's programs RUNNING, each with the PID its stamp file names."""
    deadline = time.monotonic() + limit
    while True:
        pids = side.running_pids()
        stamped = {name: (last_start(side.stamps / name) or (0.0, 0))[1] for name in side.names}
        if len(pids) == len(side.names) and pids == stamped:
            return
        if time.monotonic() > deadline:
            wrong = sorted(name for name in side.names if pids.get(name) != stamped[name])
            raise SystemExit(f"{side.label}: {len(pids)}/{len(side.names)} RUNNING after {limit:g}s; "
                             f"stamp PID differs from supervisord's for {wrong[:10]}")
        time.sleep(0.2)


def stop_baseline(directory: Path) -> None:
    """SIGTERM the baseline supervisord named by its pid file (if it runs our config), SIGKILL after 15 s."""
    with contextlib.suppress(FileNotFoundError, ValueError, psutil.Error):
        process = psutil.Process(int((directory / "supervisord.pid").read_text().strip()))
        if not any(str(directory) in arg for arg in process.cmdline()):
            return
        process.terminate()
        try:
            process.wait(15)
        except psutil.TimeoutExpired:
            process.kill()
            process.wait(5)


def sweep_stamped(stamps: Path, tmp: Path) -> list[int]:
    """SIGKILL every PID the stamp files name that still runs our `sleep` with our marker."""
    killed = []
    for stamp_file in stamps.glob("*"):
        for line in stamp_file.read_text().split("\n")[:-1]:
            with contextlib.suppress(psutil.Error, ValueError, IndexError):
                process = psutil.Process(int(line.split()[1]))
                if process.environ().get(MARK) == str(tmp) and process.cmdline()[:2] == [shutil.which("sleep"), "3600"]:
                    process.kill()
                    killed.append(process.pid)
    return killed


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f}"


def main() -> None:
    terminate_as_interrupt()
    date, sleep = shutil.which("date"), shutil.which("sleep")
    if date is None or sleep is None:
        raise SystemExit("no `date` or `sleep` on PATH")
    tmp = Path(tempfile.mkdtemp(prefix="rb-", dir="/tmp"))  # short: the supervisord socket paths must fit
    script, stamps = tmp / "stamp.sh", tmp / "t"
    script.write_text(SCRIPT.format(date=date, sleep=sleep, mark=MARK, tmp=tmp))
    script.chmod(0o755)
    stamps.mkdir()

    agents = [f"a-{i:03d}" for i in range(AGENTS)]
    manifests, state_dir = common.agent_set(tmp, {name: AGENT.format(name=name, script=script, stamps=stamps) for name in agents})

    programs = [f"p{i:03d}" for i in range(AGENTS)]
    base_dir = tmp / "b"
    conf = common.baseline_set(base_dir, (
        common.baseline_program(name, f"{script} {stamps}/{name}", base_dir, autorestart=True,
                                settings=["startretries=1000"]) for name in programs), minprocs=200)

    pollers: list[Poller] = []
    idle_cpu: dict[str, float] = {}
    polled_cpu: dict[str, float] = {}
    poll_rate: list[str] = []
    complete = False
    try:
        started = time.perf_counter()
        check([ORCHESTRATOR, "-m", str(manifests), "up"])
        up_done = time.perf_counter()
        up = up_done - started
        started = time.perf_counter()
        check([SUPERVISORD, "-c", str(conf)])
        ours = Side("orchestrator", os.path.join(state_dir, "supervisor.sock"), stamps, agents,
                    psutil.Process(int(Path(state_dir, "supervisord.pid").read_text().strip())))
        deadline = time.monotonic() + 30
        while not (base_dir / "supervisord.pid").exists() or not (base_dir / "s.sock").exists():
            if time.monotonic() > deadline:
                raise SystemExit(f"baseline supervisord did not start; see {base_dir / 'supervisord.log'}")
            time.sleep(0.05)
        base = Side("supervisord", str(base_dir / "s.sock"), stamps, programs,
                    psutil.Process(int((base_dir / "supervisord.pid").read_text().strip())))
        wait_all_running(base)
        base_up = time.perf_counter() - started
        wait_all_running(ours)
        listener = listener_of(ours.supervisord)
        wait_quiet(listener)
        settle = time.perf_counter() - up_done
        sides = [ours, base]

        time.sleep(3 * QUIET)  # let both loops, and the listener, go quiet
        watched = {"orchestrator supervisord": ours.supervisord, "orchestrator listener": listener,
                   "baseline supervisord": base.supervisord}
        before = {label: cpu(p) for label, p in watched.items()}
        wall = time.perf_counter()
        time.sleep(IDLE_CPU)
        wall = time.perf_counter() - wall
        idle_cpu = {label: (cpu(p) - before[label]) / wall for label, p in watched.items()}

        step = AGENTS // KILLS
        if series(sides, "idle", [i * step for i in range(KILLS)]):
            pollers = [Poller(side.socket) for side in sides]
            for poller in pollers:
                poller.start()
            time.sleep(QUIET)
            before = {side.label: cpu(side.supervisord) for side in sides}
            calls = [p.calls for p in pollers]
            wall = time.perf_counter()
            complete = series(sides, "polled", [i * step + step // 2 for i in range(KILLS)])
            wall = time.perf_counter() - wall
            polled_cpu = {side.label: (cpu(side.supervisord) - before[side.label]) / wall for side in sides}
            poll_rate = [f"{side.label} {(p.calls - n) / wall:.0f} calls/s, {p.errors} errors{' ' + p.last_error if p.errors else ''}"
                         for side, p, n in zip(sides, pollers, calls, strict=True)]
    finally:
        for poller in pollers:
            poller.stopping.set()
        stop_everything(ORCHESTRATOR, manifests, state_dir)
        stop_baseline(base_dir)
        left = sweep_stamped(stamps, tmp)
        if left:
            print(f"cleanup: killed {len(left)} program(s) left running: {left[:10]}", file=sys.stderr)
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"restart after SIGKILL, {AGENTS} programs a side, {KILLS} kills per mode "
          f"(median; the new process stamps its own start; sides alternate kill by kill, {QUIET:g} s quiet before each)")
    failed = not complete
    for mode, what in (("idle", "no client talks to supervisord"),
                       ("polled", f"a client calls supervisor.getState every {POLL_EVERY * 1000:.0f} ms")):
        mine, theirs = ours.runs.get(mode, []), base.runs.get(mode, [])
        if not mine or not theirs:
            print(f"  {mode}: not measured")
            failed = True
            continue
        median, base_median = statistics.median(mine), statistics.median(theirs)
        print(f"  {mode} ({what}):")
        print(f"    orchestrator immediate             {ms(median):>6} ms   runs: {', '.join(ms(s) for s in mine)}")
        print(f"    baseline: supervisord autorestart  {ms(base_median):>6} ms   runs: {', '.join(ms(s) for s in theirs)}")
        print(f"    ratio orchestrator / supervisord   {median / base_median:6.3f}x")
        meets = median < GOAL and len(mine) == KILLS
        failed |= not meets
        print(f"    {'meets' if meets else 'MISSES'} the goal of {GOAL * 1000:.0f} ms")
    if idle_cpu:
        ours_total = idle_cpu["orchestrator supervisord"] + idle_cpu["orchestrator listener"]
        print(f"  idle CPU over {IDLE_CPU:g} s, % of one core: orchestrator's supervisord "
              f"{idle_cpu['orchestrator supervisord'] * 100:.2f}%, its listener {idle_cpu['orchestrator listener'] * 100:.2f}% "
              f"(together {ours_total * 100:.2f}%); baseline supervisord {idle_cpu['baseline supervisord'] * 100:.2f}%")
    if polled_cpu:
        print(f"  polled series CPU, % of one core (polling plus {KILLS} restarts): orchestrator's supervisord "
              f"{polled_cpu['orchestrator'] * 100:.1f}%, baseline supervisord {polled_cpu['supervisord'] * 100:.1f}%; "
              f"polled at {'; '.join(poll_rate)}")
    print(f"  for scale: orchestrator up {up:.2f} s; baseline supervisord start to all RUNNING {base_up:.2f} s; "
          f"orchestrator's listener quiet (under {BUSY:.0%} of a core) {settle:.1f} s after up returned")
    print(f"  for scale: the launcher's own part of a restart (an interpreter, the cgroup made anew, the limits, the exec; "
          f"/bin/true launched {KILLS} times): median {ms(launcher_start())} ms, against {ms(launcher_start(bare=True))} ms "
          f"for /bin/true alone")
    for side in (ours, base):
        for problem in side.timeouts:
            print(f"  {side.label}: NO RESTART within {TIMEOUT:g} s: {problem}")
        for problem in side.mismatches:
            print(f"  {side.label}: restarted process is not the one supervisord runs: {problem}")
        failed |= bool(side.timeouts or side.mismatches)
    if failed:
        sys.exit(1)


def launcher_start(*, bare: bool = False) -> float:
    """Median seconds from spawning an agent's command through the launcher (with a cgroup and limits, as every
    agent has) to its exit, for /bin/true; `bare`: /bin/true spawned by itself."""
    tmp = Path(tempfile.mkdtemp(prefix="bench-launcher-"))
    scope = f"bench{os.getpid()}"
    spec = tmp / "true.launch"
    controls = tmp / "true.controls"
    controls.write_bytes(launching.encode({"memory_max": 256 * 10 ** 6, "nice": 1}))
    spec.write_bytes(launching.encode({"agent": "true", "argv": ["/bin/true"], "env": {"A": "b"}, "umask": "022",
                                       "scope": scope, "controls": str(controls), "open_files": 1024,
                                       "pdeathsig": shutil.which("setpriv")}))
    command = ["/bin/true"] if bare else [sys.executable, "-I", "-S", render.LAUNCHER, str(spec)]
    runs = []
    try:
        for _ in range(KILLS):
            started = time.perf_counter()
            subprocess.run(command, check=True)
            runs.append(time.perf_counter() - started)
    finally:
        layout = cgroups.detect()
        cgroups.kill(layout, scope, "true")
        cgroups.remove(layout, scope)
        shutil.rmtree(tmp, ignore_errors=True)
    return statistics.median(runs)


if __name__ == "__main__":
    main()
