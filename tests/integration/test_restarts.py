"""Restart policies carried out by orchestrator's listener inside a real supervisord, timed."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import psutil
import pytest

from orchestrator.config.manifest import LoadOptions, load
from orchestrator.operations.apply import client_for
from orchestrator.supervisord.reports import report_limit
from tests.integration.conftest import crasher, free_ports, gaps, logged, stamps, wait_until, within

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


# An agent whose stop waits: it logs its start, every SIGTERM and a heartbeat every 0.1 s, and goes on after SIGTERM,
# so supervisord ends it with SIGKILL once its stop_timeout is over (its last heartbeat is about then).
STUBBORN = """#!/bin/sh
trap 'echo "term $(date +%s.%N) $$" >> "$1"' TERM
echo "start $(date +%s.%N) $$" >> "$1"
while true; do now=$(date +%s.%N) && echo "alive $now $$" >> "$1"; sleep 0.1; done
"""
STOP_TIMEOUT = 6.0


@pytest.mark.parametrize("why", ["liveness", "dependency"])
def test_a_stop_that_waits_never_delays_another_agents_pending_restart(project, why):
    """The keeper stops an agent that ignores SIGTERM (for a failed liveness probe, or because a dependency gave up);
    while that stop waits out its stop_timeout, a crash-looping agent is still restarted on its schedule, and another
    agent's liveness failure is acted on at once.

    Regression: the keeper carried out these stops on its one worker thread, so another agent's liveness failure
    waited behind the stop (4.4 s late here), and with it that agent's restart."""
    stubborn_log = project.root / "stubborn.times"
    script = project.root / "stubborn.sh"
    script.write_text(STUBBORN)
    script.chmod(0o755)
    if why == "liveness":
        # nothing listens on the port: the probe fails once the 1 s warm-up is over; one action per minute at most
        free, sick = free_ports(2)
        trouble = (f'liveness: {{tcp: "127.0.0.1:{free}", period: 0.5s, failures: 1, timeout: 0.5s}}\n'
                   "resources: {warmup: 1s, cooldown: 60s}\n")
        # and a second agent whose liveness fails 2.5 s after it is ready, while the first one's stop still waits
        project.toy("sick", sick, extra=["--close-after", "2.5"],
                    more=f'liveness: {{tcp: "127.0.0.1:{sick}", period: 0.3s, failures: 1, timeout: 0.5s}}\n'
                         "resources: {warmup: 0s, cooldown: 60s}\nrestart: {policy: delayed, delay: 1s, max_attempts: 10}\n")
    else:
        flag = project.root / "feed-healthy"
        flag.write_text("")
        feed_log = crasher(project, "feed", restart="{policy: immediate, max_attempts: 1}", flag=flag)
        trouble = "depends_on: [feed]\non_dependency_failure: stop\n"
    project.write("agents/stubborn.yaml", f'name: stubborn\ncommand: ["{script}", "{stubborn_log}"]\n'
                  f"restart: {{policy: delayed, delay: 1s, max_attempts: 10}}\nstop_timeout: {STOP_TIMEOUT:g}s\n" + trouble)
    log = crasher(project, "crasher", restart="{policy: delayed, delay: 1s, max_attempts: 1000}", extra="min_uptime: 0s\n")
    up = project.run("up")  # may fail or pass: the crasher crashes 0.2 s after each start
    assert stamps(stubborn_log, "start"), up.stdout + up.stderr
    if why == "dependency":
        flag.unlink()
        os.kill(int(logged(feed_log, "start")[0][1]), signal.SIGKILL)  # feed's pid, as it logged it: it fails once, given up
        wait_until(lambda: project.runtime("feed").get("given_up"), 20, message="feed to be given up")
    wait_until(lambda: stamps(stubborn_log, "term"), 20, message="the keeper to stop the stubborn agent")
    term = stamps(stubborn_log, "term")[0]
    first = logged(stubborn_log, "start")[0][1]  # the pid of its first run

    def heartbeats() -> list[float]:
        return [when for when, pid in logged(stubborn_log, "alive") if pid == first]

    wait_until(lambda: (beats := heartbeats()) and beats[-1] < time.time() - 1.0, 30, message="the stubborn agent to be killed")
    killed = heartbeats()[-1]
    listener_log = (project.state / "logs" / "_orchestrator.log").read_text()
    assert killed - term >= STOP_TIMEOUT - 1.5, f"the stop did not wait: TERM at {term}, last heartbeat {killed}"
    # every restart of the crasher decided while the stop waited came about 1 s after its exit, not after the stop
    exits, starts = stamps(log, "exit"), stamps(log, "start")
    during = [(e, next(s for s in starts if s > e)) for e in exits if term <= e <= killed - 2.0 and any(s > e for s in starts)]
    assert len(during) >= 2, f"crasher exits {exits}, starts {starts}; stop {term}..{killed}\n{listener_log}"
    late = [round(s - e, 3) for e, s in during if not 0.9 <= s - e <= 2.0]
    assert not late, f"restarts not 1 s after their exit while the stop waited: {late}\n{listener_log}"
    assert any(term <= s <= killed - 0.5 for _, s in during), "no restart fired while the stop was waiting"
    if why == "liveness":  # and the stubborn agent itself is restarted by its policy once it is down
        wait_until(lambda: len(stamps(stubborn_log, "start")) >= 2, 20, message="the stubborn agent's restart")
        assert stamps(stubborn_log, "start")[1] >= killed, listener_log
        # the other agent's liveness failure, during that stop, was acted on at once: stopped and restarted
        wait_until(lambda: sum(1 for n, w, *_ in project.events() if n == "sick" and w == "start") >= 2, 20,
                   message="the sick agent's restart")
        sick_times = {w: sorted(t for n, what, t, _ in project.events() if n == "sick" and what == w)
                      for w in ("unhealthy", "stop", "start")}
        unhealthy, stopped, restarted = sick_times["unhealthy"][0], sick_times["stop"][0], sick_times["start"][1]
        assert term <= unhealthy <= killed - 3.0, f"not during the stop: {sick_times}; stop {term}..{killed}"
        assert stopped - unhealthy <= 2.5 and restarted - stopped <= 3.0, f"{sick_times}; stop {term}..{killed}\n{listener_log}"


@pytest.mark.parametrize("action", ["restart", "stop"])
def test_a_limit_reported_to_the_keeper_restarts_the_agent_through_its_policy_or_stops_it(project, action):
    """What the exporter sends when an agent stays at a limit: the keeper stops it and restarts it as its policy says,
    with the limit as the reason, or (on_limit: stop) leaves it stopped until the operator starts it."""
    project.toy("feed", free_ports(1)[0], more="restart: {policy: delayed, delay: 0.5s, max_attempts: 5}\n"
                                             "resources: {warmup: 0s}\n")
    project.run("up", check=True)
    before = project.pids()["feed"]
    client = client_for(load(LoadOptions(str(project.manifests))))
    report_limit(client, "feed", reason="memory_limit", detail="memory_mb 512 is at or above 500 for 10s", action=action)

    def row() -> dict:
        return json.loads(project.run("status", "--output", "json", "feed").stdout)[0]

    if action == "restart":
        wait_until(lambda: (r := row())["pid"] not in (None, before) and r["state"] == "RUNNING", 20,
                   message="feed restarted after its limit")
        assert row()["restarts"] >= 1
    else:
        wait_until(lambda: row()["state"] == "STOPPED", 20, message="feed stopped at its limit")
        stopped = row()
        assert stopped["reason"].startswith("memory_limit: memory_mb 512")
        assert project.run("status").returncode == 3
        project.run("start", "feed", check=True)  # the operator's start brings it back
        assert row()["state"] == "RUNNING"


def _staying_up(project, name: str) -> int:
    """The pid of crasher `name` once it has seen its flag and stays up (it execs `sleep`): `up` may return before
    its script has looked, with min_uptime 0s, and then it would exit on its own once the flag is gone."""
    pid = project.pids()[name]
    wait_until(lambda: b"sleep" in Path(f"/proc/{pid}/cmdline").read_bytes(), 15, message=f"{name} to stay up")
    return pid


def test_a_manual_policy_agent_that_exits_raises_an_alert_that_resolves_once_it_is_started_again(project):
    flag = project.root / "stay-up"
    flag.touch()
    crasher(project, "batch", restart="{policy: manual}", extra="min_uptime: 0s\n", flag=flag)
    project.run("up", check=True)
    pid = _staying_up(project, "batch")
    flag.unlink()
    os.kill(pid, signal.SIGKILL)

    def firing() -> list[dict]:
        return json.loads(project.run("alerts", "--output", "json").stdout)["active"]

    wait_until(lambda: firing(), 15, message="the exit alert")
    alert = firing()[0]
    assert (alert["agent"], alert["metric"], alert["level"]) == ("batch", "exit", "CRITICAL")
    assert "restart policy is manual" in alert["summary"]
    flag.touch()
    project.run("start", "batch", check=True)
    wait_until(lambda: not firing(), 15, message="the exit alert to resolve")
    recent = json.loads(project.run("alerts", "--output", "json").stdout)["recent"]
    assert [a["kind"] for a in recent if a["agent"] == "batch"] == ["firing", "resolved"]


def test_a_manual_policy_agents_exit_alert_and_its_resolution_reach_the_notifications_its_level_reaches(project, webhook):
    """The keeper sends its exit alerts to the live version's `notifications`, with the documented body; a target that
    wants only emergencies gets nothing; after an apply that records new targets, the next exit goes to those."""
    flag = project.root / "stay-up"
    flag.touch()
    listen = f"127.0.0.1:{free_ports(1)[0]}"
    project.write("orchestrator.yaml", f"""
        project: desk
        exporter: {{listen: "{listen}"}}
        notifications:
          - {{name: desk, url: "{webhook.url('/desk')}"}}
          - {{name: pager, url: "{webhook.url('/pager')}", min_severity: emergency}}
    """)
    crasher(project, "batch", restart="{policy: manual}", extra="min_uptime: 0s\n", flag=flag)
    project.run("up", check=True)
    pid = _staying_up(project, "batch")
    flag.unlink()
    os.kill(pid, signal.SIGKILL)

    wait_until(lambda: webhook.received("/desk"), 15, message="the exit alert at the webhook")
    firing = webhook.received("/desk")[0]
    assert set(firing) == {"project", "agent", "metric", "level", "kind", "value", "threshold", "at", "summary"}
    assert (firing["project"], firing["agent"], firing["metric"], firing["level"], firing["kind"]) == (
        "desk", "batch", "exit", "CRITICAL", "firing")
    assert "restart policy is manual" in firing["summary"] and firing["value"] == -1   # killed by a signal

    flag.touch()
    project.run("start", "batch", check=True)
    wait_until(lambda: len(webhook.received("/desk")) >= 2, 15, message="the resolution at the webhook")
    resolved = webhook.received("/desk")[1]
    assert (resolved["project"], resolved["agent"], resolved["level"], resolved["kind"]) == ("desk", "batch", "CRITICAL", "resolved")
    # one thread delivers both, target after target: the firing was offered to `pager` before the resolution was sent
    assert webhook.received("/pager") == []

    project.write("orchestrator.yaml", f"""
        project: desk
        exporter: {{listen: "{listen}"}}
        notifications:
          - {{name: moved, url: "{webhook.url('/moved')}", min_severity: critical}}
    """)
    project.run("apply", check=True)   # the settings alone changed: a version is recorded all the same
    os.kill(project.pids()["batch"], signal.SIGKILL)
    wait_until(lambda: webhook.received("/moved"), 15, message="the next exit alert at the new target")
    assert [(b["agent"], b["kind"]) for b in webhook.received("/moved")] == [("batch", "firing")]
    assert len(webhook.received("/desk")) == 2 and webhook.received("/pager") == []

    # the agent removed while its alert fires: the keeper resolves it (nobody else would)
    project.write("agents/idle.yaml", 'name: idle\ncommand: ["sleep", "600"]\n')   # a project keeps one agent
    project.remove("agents/batch.yaml")
    project.run("apply", "--yes", check=True)
    wait_until(lambda: len(webhook.received("/moved")) >= 2, 15, message="the removed agent's alert to resolve")
    assert [(b["agent"], b["kind"]) for b in webhook.received("/moved")] == [("batch", "firing"), ("batch", "resolved")]
    active = json.loads(project.run("alerts", "--output", "json", check=True).stdout)["active"]
    assert not [a for a in active if a["agent"] == "batch"], active
