"""One full sample of the exporter at 50, 200 and 500 agent processes, against Debian's prometheus-process-exporter.

The same processes for both, in the same run: N `sleep` processes started by
this benchmark (their argument, a duration no one else uses, is what
process-exporter matches them by).

Each sleeper holds a listening TCP socket (one, shared, as its stdin), so
both read the TCP tables and attribute sockets as they would for agents.

  - orchestrator: a separate Python process imports the exporter as supervisord
    runs it and, in each round, takes one sample (the /proc pass of every tree,
    restart state, the snapshot, and the evaluation of every agent's
    thresholds: alerts, limits, forecasts, health; a live version declares
    each agent with warning, critical and limit thresholds on CPU, memory and
    open files) and renders the scrape (the Collector's families in the text
    format, a family at a time as the server sends them; the bench counts
    what it checks in each). The forecasts are in steady state: first WARM
    samples a window's interval apart (on the thresholds' clock, moved on by
    hand) fill every window, then RUNS rounds 5 s apart, the default
    interval, so each window takes a new sample, and is fitted again, once
    per window interval (2 minutes at the default horizon), as in service.
    CPU (process time) per round, the mean of RUNS rounds (the rounds that
    refit every window count with the others); wall time, the median; and
    the process's peak RSS at the end (VmHWM, as for process-exporter: not
    getrusage's ru_maxrss, which a process started by fork and exec carries
    over from its parent, here the larger bench itself).
    supervisord's answer is given by a stand-in naming the N pids, so the
    figures are the exporter's own, not supervisord's getAllProcessInfo
    (which grows with N squared; see DESIGN.md); readiness probes are off.
  - baseline: `prometheus-process-exporter` with its defaults and one group
    for the N processes (`{{.Comm}}`), scraped RUNS times over HTTP after a
    warm-up; its CPU per scrape is the growth of its utime+stime divided by
    the scrapes (clock ticks: 10 ms; hence many scrapes), and its wall time
    the median HTTP round trip.

Goal: at 500 processes, at most 40% of process-exporter's CPU per sample, and
the exporter's peak RSS under 40 MB. Exit 1 when either is missed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import free_ports, terminate_as_interrupt  # noqa: E402
from orchestrator.config.manifest import LoadOptions, load  # noqa: E402
from orchestrator.state.history import History  # noqa: E402
from orchestrator.supervisord import render  # noqa: E402

SIZES = (50, 200, 500)
RUNS = 30
CPU_GOAL = 0.40          # of process-exporter's CPU per sample, at the largest size
RSS_GOAL = 40 * 2 ** 20  # bytes
MARK = "3599.4242"       # the sleeps' argument: how process-exporter tells them from other processes
TICKS = os.sysconf("SC_CLK_TCK")

# Runs in its own interpreter, so its RSS is the exporter's: argv = pids..., prints JSON.
OURS = """
import json, os, statistics, sys, tempfile, time
from orchestrator.core.processes import ProcessInfo
from orchestrator.daemons.exporter import Sampler, exposition_parts, registry, settle
from orchestrator.daemons.thresholds import WINDOW_SAMPLES, Thresholds
WARM = WINDOW_SAMPLES + 5
STEP = 3600.0 / WINDOW_SAMPLES   # the windows' interval at the default horizon (an hour)

class Stand:
    def __init__(self, pids):
        now = int(time.time())
        self.rows = [ProcessInfo(f"a-{i:04d}", f"a-{i:04d}", "RUNNING", pid, now - 60, now, 0, "", "") for i, pid in enumerate(pids)]
    def processes(self):
        return list(self.rows)
    def pid(self):
        return os.getppid()

runs, alerting, state_dir, pids = int(sys.argv[1]), sys.argv[2] == "alerts", sys.argv[3], [int(p) for p in sys.argv[4:]]
clock = [time.time()]   # the thresholds' wall clock, moved on by hand: forecasts see hours of samples in seconds
thresholds = Thresholds(state_dir, report=lambda action: None, log=lambda line: None, wall=lambda: clock[0])
sampler = Sampler(state_dir, Stand(pids), interval=5.0, probe=False, thresholds=thresholds if alerting else None)
reg = registry(sampler)
settle()  # as the exporter's main does once started
for _ in range(WARM):   # a sample a window interval apart until every forecast window is full
    sampler.sample()
    clock[0] += STEP
def scrape():   # as the server sends it: each family's text as it is written; what the checks below count
    counts = dict.fromkeys(CHECKS, 0)
    for part in exposition_parts(reg):
        for key in CHECKS:
            counts[key] += part.count(key)
    return counts

CHECKS = (b"orchestrator_process_resident_memory_bytes{", b'state="listen"} 1.0', b"orchestrator_agent_health_score{",
          b"orchestrator_agent_threshold_memory_bytes{")
scrape()
cpu, wall = [], []
for _ in range(runs):   # then a sample every 5 s, the default interval: each window takes a new sample every STEP s
    c, w = time.process_time(), time.perf_counter()
    sampler.sample()
    text = scrape()
    cpu.append(time.process_time() - c)
    wall.append(time.perf_counter() - w)
    clock[0] += 5.0
assert not alerting or sum(1 for w in thresholds.windows.values() if len(w.samples) == WINDOW_SAMPLES) >= len(pids), \
    "the windows are not full"
assert text[CHECKS[0]] == len(pids), "not every process was sampled"
assert text[CHECKS[1]] == len(pids), "not every process's socket was found"
assert not alerting or text[CHECKS[2]] == len(pids), "not every agent was assessed"
assert text[CHECKS[3]] == 3 * len(pids), "not every agent's thresholds were exported"
print(json.dumps({"cpu": statistics.fmean(cpu), "wall": statistics.median(wall),
                  "rss": next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmHWM:"))}))
"""


# every agent declared with the thresholds a trading agent has: each sample evaluates them all (alerts, limits,
# forecasts, health), as the exporter does
RESOURCES = ("resources: {cpu_percent: {warning: 70, critical: 90}, memory_mb: {warning: 300, critical: 400, limit: 512},"
             " open_fds: {warning: 800, critical: 900, limit: 1000}}\n")


def live_version(tmp: Path, count: int, sleep: str) -> str:
    """A state directory whose live version declares agents a-0000.. for `count` processes; its path."""
    manifests = tmp / f"manifests-{count}"
    (manifests / "agents").mkdir(parents=True)
    (manifests / "orchestrator.yaml").write_text(f"project: bench\nstate_dir: state-{count}\n")
    for index in range(count):
        (manifests / "agents" / f"a-{index:04d}.yaml").write_text(
            f"name: a-{index:04d}\ncommand: [\"{sleep}\", \"{MARK}\"]\n" + RESOURCES)
    loaded = load(LoadOptions(str(manifests)))
    History(loaded.state_dir).record(loaded, render.render(loaded))
    return loaded.state_dir


def ours(state_dir: str, pids: list[int], *, alerts: bool = True) -> dict[str, float]:
    """The exporter's figures; without `alerts`, its metrics alone (no thresholds, forecasts or health), for scale."""
    done = subprocess.run([sys.executable, "-c", OURS, str(RUNS), "alerts" if alerts else "metrics", state_dir,
                           *map(str, pids)], capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise SystemExit(f"the exporter's sample failed:\n{done.stderr}")
    return dict(json.loads(done.stdout))


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat", "rb") as handle:
        rest = handle.read().rsplit(b")", 1)[1].split()
    return (int(rest[11]) + int(rest[12])) / TICKS


def _scrape(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as reply:
        return bytes(reply.read())


def theirs(binary: str, tmp: Path, count: int) -> dict[str, float]:
    config = tmp / "process-exporter.yml"
    config.write_text(json.dumps({"process_names": [{"name": "{{.Comm}}", "cmdline": [MARK.replace(".", r"\.")]}]}))
    port = free_ports(1)[0]
    exporter = subprocess.Popen([binary, "-config.path", str(config), "-web.listen-address", f"127.0.0.1:{port}"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError):
                text = _scrape(url)
                if f'num_procs{{groupname="sleep"}} {count}'.encode() in text:
                    break
            if time.monotonic() > deadline:
                raise SystemExit(f"process-exporter did not count the {count} processes within 30 s")
            time.sleep(0.1)
        for _ in range(3):
            _scrape(url)
        before, walls = _cpu_seconds(exporter.pid), []
        for _ in range(RUNS):
            started = time.perf_counter()
            _scrape(url)
            walls.append(time.perf_counter() - started)
        cpu = (_cpu_seconds(exporter.pid) - before) / RUNS
        with open(f"/proc/{exporter.pid}/status") as handle:
            rss = next(int(line.split()[1]) * 1024 for line in handle if line.startswith("VmHWM:"))
        return {"cpu": cpu, "wall": statistics.median(walls), "rss": rss}
    finally:
        exporter.terminate()
        try:
            exporter.wait(timeout=10)
        except subprocess.TimeoutExpired:
            exporter.kill()
            exporter.wait(timeout=10)


def main() -> None:
    terminate_as_interrupt()
    binary = shutil.which("prometheus-process-exporter")
    sleep = shutil.which("sleep")
    if binary is None or sleep is None:
        raise SystemExit("needs Debian's prometheus-process-exporter and `sleep` (make bench installs the first)")
    tmp = Path(tempfile.mkdtemp(prefix="bench-exporter-"))
    sleepers: list[subprocess.Popen[bytes]] = []
    results = []
    # every sleeper holds a listening TCP socket as its stdin, as an agent holds its port: the exporter reads the
    # TCP tables and finds each one's socket, as it must for real agents
    held = socket.socket()
    held.bind(("127.0.0.1", 0))
    held.listen(1)
    try:
        for size in SIZES:
            while len(sleepers) < size:
                sleepers.append(subprocess.Popen([sleep, MARK], stdin=held.fileno()))
            pids = [p.pid for p in sleepers]
            state_dir = live_version(tmp, size, sleep)
            results.append((size, ours(state_dir, pids), theirs(binary, tmp, size), ours(state_dir, pids, alerts=False)))
    finally:
        for process in sleepers:
            process.kill()
        for process in sleepers:
            process.wait()
        held.close()
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"one full sample (sample + exposition; forecasts in steady state): CPU the mean of {RUNS}, wall the median; "
          f"process-exporter: CPU per scrape over {RUNS} scrapes")
    print(f"  {'processes':>9}  {'ours CPU':>9}  {'ours wall':>9}  {'p-e CPU':>9}  {'p-e wall':>9}  {'CPU ratio':>9}"
          f"  {'metrics alone':>13}")
    for size, mine, base, bare in results:
        print(f"  {size:>9}  {mine['cpu'] * 1000:>6.1f} ms  {mine['wall'] * 1000:>6.1f} ms  {base['cpu'] * 1000:>6.1f} ms  "
              f"{base['wall'] * 1000:>6.1f} ms  {mine['cpu'] / base['cpu'] if base['cpu'] else float('inf'):>8.2f}x"
              f"  {bare['cpu'] * 1000:>6.1f} ms {bare['cpu'] / base['cpu'] if base['cpu'] else float('inf'):>4.2f}x")
    print("  (metrics alone: the same sample without thresholds, forecasts and health, for scale)")
    size, mine, base, bare = results[-1]
    ratio = mine["cpu"] / base["cpu"] if base["cpu"] else float("inf")
    print(f"  peak RSS at {size}: exporter {mine['rss'] / 2 ** 20:.1f} MB, process-exporter {base['rss'] / 2 ** 20:.1f} MB")
    missed = []
    if ratio > CPU_GOAL:
        missed.append(f"CPU per sample at {size} is {ratio:.0%} of process-exporter's (goal: at most {CPU_GOAL:.0%})")
    if mine["rss"] >= RSS_GOAL:
        missed.append(f"the exporter's RSS is {mine['rss'] / 2 ** 20:.1f} MB (goal: under {RSS_GOAL / 2 ** 20:.0f} MB)")
    for line in missed:
        print(f"  MISSED: {line}")
    print(f"  goal: at most {CPU_GOAL:.0%} of process-exporter's CPU at {size}, RSS under {RSS_GOAL / 2 ** 20:.0f} MB: "
          + ("met" if not missed else "missed"))
    if missed:
        sys.exit(1)


if __name__ == "__main__":
    main()
