"""Restart policies carried out by orchestrator's listener inside a real supervisord, timed."""

from __future__ import annotations

import os
import signal
import sys
import time

import psutil
import pytest

from tests.integration.conftest import Project, wait_until

pytestmark = pytest.mark.integration

CRASHER = """
import sys, time
log = sys.argv[1]
open(log, "a").write(f"start {time.time():.6f}\\n")
time.sleep(0.2)
open(log, "a").write(f"exit {time.time():.6f}\\n")
sys.exit(1)
"""


def _crasher(project: Project, name: str, restart: str) -> str:
    """An agent that exits 1, 0.2 s after each start, logging both times."""
    log = str(project.root / f"{name}.times")
    script = project.root / "crasher.py"
    script.write_text(CRASHER)
    project.write(f"agents/{name}.yaml", f"""
        name: {name}
        command: ["{sys.executable}", "{script}", "{log}"]
        min_uptime: 0s
        restart: {restart}
    """)
    return log


def _times(log: str, what: str) -> list[float]:
    if not os.path.exists(log):
        return []
    return [float(line.split()[1]) for line in open(log).read().splitlines() if line.startswith(what + " ")]


def _gaps(log: str) -> list[float]:
    starts, exits = _times(log, "start"), _times(log, "exit")
    return [round(start - exit, 3) for exit, start in zip(exits, starts[1:], strict=False)]


def _within(actual: float, expected: float) -> bool:
    return abs(actual - expected) <= max(0.15 * expected, 0.1)


@pytest.mark.parametrize("policy, expected", [
    ("{policy: exponential-backoff, delay: 0.5s, multiplier: 2, max_attempts: 4}", [0.5, 1.0, 2.0]),
    ("{policy: delayed, delay: 0.5s, max_attempts: 4}", [0.5, 0.5, 0.5]),
    ("{policy: immediate, max_attempts: 4}", [0.0, 0.0, 0.0]),
])
def test_restarts_follow_the_policy_schedule_then_the_agent_is_given_up(project, policy, expected):
    log = _crasher(project, "crasher", policy)
    project.run("up")  # may fail or pass: the agent crashes 0.2 s after it starts
    wait_until(lambda: len(_times(log, "exit")) >= 4, 30, message="four failed attempts")
    time.sleep(max(expected) + 1.0)  # a fifth start would have come by now
    gaps = _gaps(log)
    assert len(_times(log, "start")) == 4, f"starts: {_times(log, 'start')}"
    assert all(_within(g, e) for g, e in zip(gaps, expected, strict=True)), f"gaps {gaps}, expected {expected}"
    runtime = project.runtime("crasher")
    assert runtime["given_up"] is True and "4 failed attempts" in runtime["reason"]
    assert "GIVEN UP" in (project.state / "logs" / "_orchestrator.log").read_text()


def test_a_restart_pending_when_the_listener_is_killed_still_happens_on_time(project):
    log = _crasher(project, "crasher", "{policy: delayed, delay: 3s, max_attempts: 10}")
    project.run("up")
    wait_until(lambda: len(_times(log, "exit")) >= 1, 15, message="the first crash")
    exit_at = _times(log, "exit")[0]
    listener = next(p for p in psutil.process_iter(["cmdline"])
                    if p.info["cmdline"] and "orchestrator.listener" in p.info["cmdline"]
                    and str(project.state) in p.info["cmdline"])
    time.sleep(max(0.0, exit_at + 1.0 - time.time()))
    os.kill(listener.pid, signal.SIGKILL)  # supervisord restarts it; the restart is due 2 s later
    wait_until(lambda: len(_times(log, "start")) >= 2, 15, message="the pending restart")
    listener_log = (project.state / "logs" / "_orchestrator.log").read_text()
    assert _within(_times(log, "start")[1] - exit_at, 3.0), f"exit {exit_at}, starts {_times(log, 'start')}\n{listener_log}"
    runtime = project.runtime("crasher")
    assert len(runtime["failures"]) >= 1 and runtime["restarts"] >= 1


STEADY_THEN_CRASH = """
import sys, time
log = sys.argv[1]
runs = sum(1 for line in open(log) if line.startswith("start ")) if __import__("os").path.exists(log) else 0
open(log, "a").write(f"start {time.time():.6f}\\n")
time.sleep(2.0 if runs == 1 else 0.2)   # the second run stays up past reset_after
open(log, "a").write(f"exit {time.time():.6f}\\n")
sys.exit(1)
"""


def test_stable_uptime_past_reset_after_makes_the_next_restart_use_the_first_delay(project):
    log = str(project.root / "steady.times")
    script = project.root / "steady.py"
    script.write_text(STEADY_THEN_CRASH)
    project.write("agents/steady.yaml", f"""
        name: steady
        command: ["{sys.executable}", "{script}", "{log}"]
        min_uptime: 0s
        restart: {{policy: exponential-backoff, delay: 0.5s, multiplier: 2, max_attempts: 10, reset_after: 1s}}
    """)
    project.run("up")
    wait_until(lambda: len(_times(log, "start")) >= 4, 30, message="four starts")
    gaps = _gaps(log)[:3]
    # crash after 0.2 s: first delay; up 2 s > reset_after: first delay again; crash after 0.2 s: doubled
    assert all(_within(g, e) for g, e in zip(gaps, [0.5, 0.5, 1.0], strict=True)), gaps
