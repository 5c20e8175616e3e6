"""Restart policies carried out by orchestrator's listener inside a real supervisord, timed."""

from __future__ import annotations

import os
import signal
import time

import psutil
import pytest

from tests.integration.conftest import crasher, gaps, stamps, wait_until, within

pytestmark = pytest.mark.integration

@pytest.mark.parametrize("policy, expected", [
    ("{policy: exponential-backoff, delay: 0.5s, multiplier: 2, max_attempts: 4}", [0.5, 1.0, 2.0]),
    ("{policy: delayed, delay: 0.5s, max_attempts: 4}", [0.5, 0.5, 0.5]),
    ("{policy: immediate, max_attempts: 4}", [0.0, 0.0, 0.0]),
])
def test_restarts_follow_the_policy_schedule_then_the_agent_is_given_up(project, policy, expected):
    log = crasher(project, "crasher", restart=policy, extra="min_uptime: 0s\n")
    project.run("up")  # may fail or pass: the agent crashes 0.2 s after it starts
    wait_until(lambda: len(stamps(log, "exit")) >= 4, 30, message="four failed attempts")
    time.sleep(max(expected) + 1.0)  # a fifth start would have come by now
    seen = gaps(log)
    assert len(stamps(log, "start")) == 4, f"starts: {stamps(log, 'start')}"
    assert all(within(g, e) for g, e in zip(seen, expected, strict=True)), f"gaps {seen}, expected {expected}"
    runtime = project.runtime("crasher")
    assert runtime["given_up"] is True and "4 failed attempts" in runtime["reason"]
    assert "GIVEN UP" in (project.state / "logs" / "_orchestrator.log").read_text()


def test_a_restart_pending_when_the_listener_is_killed_still_happens_on_time(project):
    log = crasher(project, "crasher", restart="{policy: delayed, delay: 3s, max_attempts: 10}", extra="min_uptime: 0s\n")
    project.run("up")
    wait_until(lambda: len(stamps(log, "exit")) >= 1, 15, message="the first crash")
    exit_at = stamps(log, "exit")[0]
    listener = next(p for p in psutil.process_iter(["cmdline"])
                    if p.info["cmdline"] and "orchestrator.listener" in p.info["cmdline"]
                    and str(project.state) in p.info["cmdline"])
    time.sleep(max(0.0, exit_at + 1.0 - time.time()))
    os.kill(listener.pid, signal.SIGKILL)  # supervisord restarts it; the restart is due 2 s later
    wait_until(lambda: len(stamps(log, "start")) >= 2, 15, message="the pending restart")
    listener_log = (project.state / "logs" / "_orchestrator.log").read_text()
    assert within(stamps(log, "start")[1] - exit_at, 3.0), f"exit {exit_at}, starts {stamps(log, 'start')}\n{listener_log}"
    runtime = project.runtime("crasher")
    assert len(runtime["failures"]) >= 1 and runtime["restarts"] >= 1


STEADY_THEN_CRASH = """#!/bin/sh
runs=$(grep -c '^start ' "$1" 2>/dev/null || true)
echo "start $(date +%s.%N) $$" >> "$1"
if [ "$runs" = "1" ]; then sleep 2; else sleep 0.2; fi   # the second run stays up past reset_after
echo "exit $(date +%s.%N) $$" >> "$1"
exit 1
"""


def test_stable_uptime_past_reset_after_makes_the_next_restart_use_the_first_delay(project):
    log = project.root / "steady.times"
    script = project.root / "steady.sh"
    script.write_text(STEADY_THEN_CRASH)
    script.chmod(0o755)
    project.write("agents/steady.yaml", f"""
        name: steady
        command: ["{script}", "{log}"]
        min_uptime: 0s
        restart: {{policy: exponential-backoff, delay: 0.5s, multiplier: 2, max_attempts: 10, reset_after: 1s}}
    """)
    project.run("up")
    wait_until(lambda: len(stamps(log, "start")) >= 4, 30, message="four starts")
    seen = gaps(log)[:3]
    # crash after 0.2 s: first delay; up 2 s > reset_after: first delay again; crash after 0.2 s: doubled
    assert all(within(g, e) for g, e in zip(seen, [0.5, 0.5, 1.0], strict=True)), seen
