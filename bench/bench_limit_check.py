"""The CPU of the exporter's 1 s limit check (between two samples longer than a second) at 50, 200 and 500 agents.

Each agent is a `sleep` started by this benchmark, with a memory limit; the
check reads the memory and open files of each tree (host.sampling's pass over
/proc) and evaluates the agents' memory and open-fds rules
(daemons.thresholds). CPU (process time) per check, median of RUNS checks, and
the share of one core that one check a second costs.

Goal: at 500 agents, at most 5% of one core. Exit 1 when it is missed.
"""

from __future__ import annotations

import dataclasses
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from orchestrator.core.model import Agent, Resources, Thresholds as Levels  # noqa: E402
from orchestrator.core.processes import ProcessInfo  # noqa: E402
from orchestrator.daemons.exporter import Sampler  # noqa: E402
from orchestrator.daemons.thresholds import Thresholds  # noqa: E402

SIZES = (50, 200, 500)
RUNS = 30
GOAL = 0.05   # of one core, one check a second, at the largest size


class Stand:
    def __init__(self, pids: list[int]) -> None:
        now = int(time.time())
        self.rows = [ProcessInfo(f"a-{i:04d}", f"a-{i:04d}", "RUNNING", pid, now - 60, now, 0, "", "")
                     for i, pid in enumerate(pids)]

    def processes(self) -> list[ProcessInfo]:
        return list(self.rows)

    def pid(self) -> int:
        return 1


def measure(pids: list[int]) -> float:
    state = tempfile.mkdtemp()
    sampler = Sampler(state, Stand(pids), interval=5.0, probe=False,
                      thresholds=Thresholds(state, report=lambda action: None, log=lambda line: None))
    sampler.sample()
    agent = Resources(memory_mb=Levels(warning=300, limit=500, for_seconds=10))
    snap = sampler.snapshot
    sampler.snapshot = dataclasses.replace(snap, agents=tuple(
        a._replace(up=True, agent=Agent(name=a.name, command=("sleep",), resources=agent)) for a in snap.agents))
    cpu = []
    for _ in range(RUNS):
        started = time.process_time()
        sampler.check_limits()
        cpu.append(time.process_time() - started)
    return statistics.median(cpu)


def main() -> None:
    worst = 0.0
    for size in SIZES:
        sleepers = [subprocess.Popen(["sleep", "3599.4243"]) for _ in range(size)]
        try:
            cost = measure([p.pid for p in sleepers])
        finally:
            for p in sleepers:
                p.terminate()
            for p in sleepers:
                p.wait()
        worst = cost
        print(f"{size:4d} agents: {cost * 1000:6.2f} ms CPU per check, {cost:.1%} of one core at one check a second")
    if worst > GOAL:
        raise SystemExit(f"the limit check costs {worst:.1%} of a core at {SIZES[-1]} agents (goal {GOAL:.0%})")


if __name__ == "__main__":
    main()
