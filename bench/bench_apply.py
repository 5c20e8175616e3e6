"""`orchestrator up` of 200 agents in a 10-level DAG with readiness probes, against the critical-path lower bound.

Each agent is a small Python program that sleeps DELAY (0.3 s), then listens
on its own 127.0.0.1 port; its readiness probe is a TCP connect to that port,
and each depends on 1 to 3 agents of the level before. Measured as users run
it: the whole `orchestrator up` command from a stopped state (Python
start-up, load, render, a fresh supervisord, then the dependency-ordered
start), median of 3 runs, each followed by `down`.

The baseline is a lower bound, not a tool: the critical path, LEVELS x DELAY,
is what a perfect sequencer would reach if spawning a process, starting
supervisord and probing cost nothing. Also printed: the serial sum,
AGENTS x DELAY, what starting one agent at a time would cost.

supervisord alone is not measured: its `priority` starts every program at
once, in priority order, without waiting for anything to be ready (it only
knows RUNNING after `startsecs`), so its start-up time answers a different
question (it would start dependents before what they depend on listens).

Also printed, from the last run's progress events: when the first agent
started, when the last became ready, and the mean start-to-ready time of an
agent against DELAY, to show where the time beyond the lower bound goes.
"""

from __future__ import annotations

import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import check, free_ports, listening_dag_set, stop_everything, terminate_as_interrupt  # noqa: E402
from orchestrator.host import orphans  # noqa: E402
from orchestrator.config.manifest import LoadOptions, load  # noqa: E402

AGENTS, LEVELS, DELAY, RUNS = 200, 10, 0.3, 3
ORCHESTRATOR = str(Path(sys.executable).parent / "orchestrator")
EVENT = re.compile(r"^\[\s*([\d.]+)s\] wave (\d+)/\d+\s+(\S+)\s+(\w+)(?:\s+([\d.]+)s)?")


def main() -> None:
    terminate_as_interrupt()
    tmp = Path(tempfile.mkdtemp(prefix="ob-", dir="/tmp"))  # short: the supervisord socket path must fit
    manifests = listening_dag_set(tmp, ports=free_ports(AGENTS), levels=LEVELS, delay=DELAY, python=sys.executable)
    state_dir = load(LoadOptions(str(manifests))).state_dir
    samples, downs, events = [], [], ""
    try:
        for _ in range(RUNS):
            started = time.perf_counter()
            events = check([ORCHESTRATOR, "-m", str(manifests), "up"], stderr_too=True)
            samples.append(time.perf_counter() - started)
            started = time.perf_counter()
            check([ORCHESTRATOR, "-m", str(manifests), "down", "--yes"])
            downs.append(time.perf_counter() - started)
            left = orphans.find(state_dir)
            if left:
                raise SystemExit(f"down left {len(left)} process(es): {[p.pid for p in left]}")
    finally:
        stop_everything(ORCHESTRATOR, manifests, state_dir)
        shutil.rmtree(tmp, ignore_errors=True)

    apply = statistics.median(samples)
    bound, serial = LEVELS * DELAY, AGENTS * DELAY
    starts, readies, spans = [], [], []
    for line in events.splitlines():
        match = EVENT.match(line)
        if match and match.group(4) == "starting":
            starts.append(float(match.group(1)))
        elif match and match.group(4) == "ready":
            readies.append(float(match.group(1)))
            spans.append(float(match.group(5)))
    runs = ", ".join(f"{s:.2f}" for s in samples)
    print(f"up, {AGENTS} agents in a {LEVELS}-level DAG, each ready {DELAY:g} s after it starts "
          f"(median of {RUNS} runs, whole command, fresh supervisord)")
    print(f"  orchestrator up                    {apply:8.2f} s    runs: {runs}")
    print(f"  lower bound: critical path         {bound:8.2f} s    ({LEVELS} levels x {DELAY:g} s)")
    print(f"  ratio up / lower bound             {apply / bound:8.2f}x")
    print(f"  serial sum                         {serial:8.2f} s    ({AGENTS} agents x {DELAY:g} s)")
    print(f"  ratio up / serial sum              {apply / serial:8.2f}x")
    print(f"  overhead per agent                 {(apply - bound) / AGENTS * 1000:8.1f} ms   ((up - lower bound) / {AGENTS})")
    if starts and readies and len(spans) == AGENTS:
        print(f"  last run, from its progress events: first start at {min(starts):.2f} s, last ready at "
              f"{max(readies):.2f} s of the apply; command {samples[-1]:.2f} s, so about "
              f"{samples[-1] - max(readies):.2f} s outside the start sequence (Python, load, render, supervisord)")
        print(f"  agent start-to-ready: mean {statistics.mean(spans):.2f} s, max {max(spans):.2f} s "
              f"(DELAY {DELAY:g} s: the rest is spawning the process and probing)")
    print(f"  down (not the subject; for scale)  {statistics.median(downs):8.2f} s    "
          f"runs: {', '.join(f'{s:.2f}' for s in downs)}")


if __name__ == "__main__":
    main()
