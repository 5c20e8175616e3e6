"""One owner for each agent's life, against a real supervisord: start failures follow the restart policy,
nothing restarts behind `down`, a killed apply or listener loses and doubles nothing.

Times are taken from what the agents themselves log (their own start and exit
stamps), never from when the test looked, so the assertions hold on a slow,
busy machine.
"""

from __future__ import annotations

import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from orchestrator.host import orphans
from tests.integration.conftest import ORCHESTRATOR, Project, crasher, free_ports, gaps, stamps, wait_until, within

pytestmark = pytest.mark.integration

BACKOFF = "{policy: exponential-backoff, delay: 0.5s, multiplier: 2, max_attempts: 4}"


def test_a_crash_at_start_is_retried_on_the_policy_schedule_then_given_up_and_blocks_its_dependent(project):
    ports = free_ports(2)
    log = crasher(project, "crasher", restart=BACKOFF)   # default min_uptime (1 s): each exit is a failed start
    project.toy("after", ports[0], depends_on=["crasher"])
    project.toy("aside", ports[1])
    done = project.run("up")
    assert done.returncode != 0
    assert "crasher did not become ready" in done.stderr and "4 failed attempts" in done.stderr, done.stderr
    assert re.search(r"crasher +retrying  attempt 2/4 in 0\.5s: exited after 0\.[0-9]s \(exit status 1\)", done.stderr), done.stderr
    assert "not started: after" in done.stderr
    starts = stamps(log, "start")
    assert len(starts) == 4, f"starts {starts}\n{done.stderr}"
    seen = gaps(log)
    assert all(within(g, e) for g, e in zip(seen, [0.5, 1.0, 2.0], strict=True)), f"gaps {seen}, expected 0.5, 1, 2"
    assert project.runtime("crasher")["given_up"] is True
    assert "after" not in {name for name, *_ in project.events()}
    aside = [pid for name, what, _, pid in project.events() if name == "aside" and what == "start"]
    assert len(aside) == 1 and project.pids()["aside"] == aside[0]  # the healthy sibling was started once, and kept


def test_the_boot_sequence_follows_the_same_schedule_when_supervisord_restarts_with_no_cli(project):
    flag = project.root / "healthy"
    flag.write_text("")
    log = crasher(project, "crasher", restart=BACKOFF, flag=flag)
    project.run("up", check=True)
    os.kill(project.supervisord_pid(), signal.SIGKILL)
    wait_until(lambda: not orphans.find(str(project.state)), 15, message="the agents to die with supervisord")
    flag.unlink()
    rebooted = time.time()
    subprocess.run([sys.executable, "-m", "supervisor.supervisord", "-c", str(project.state / "supervisord.conf")],
                   cwd=project.state, check=True, timeout=30)
    wait_until(lambda: project.runtime("crasher").get("given_up"), 30, message="the crasher to be given up")
    starts = [t for t in stamps(log, "start") if t >= rebooted]
    assert len(starts) == 4, starts
    seen = gaps(log, after=rebooted)
    assert all(within(g, e) for g, e in zip(seen, [0.5, 1.0, 2.0], strict=True)), f"gaps {seen}"
    listener_log = (project.state / "logs" / "_orchestrator.log").read_text()
    assert "starting 1 agent(s) in dependency order" in listener_log


LOOPER = """
import sys, time
time.sleep(0.1)
sys.exit(1)
"""


@pytest.mark.parametrize("trial", range(10))
def test_down_during_a_crash_loop_of_30_agents_leaves_nothing_running(project, trial):
    script = project.root / "looper.py"
    script.write_text(LOOPER)
    for index in range(30):
        project.write(f"agents/c{index:03d}.yaml", f"""
            name: c{index:03d}
            command: ["{sys.executable}", "{script}"]
            min_uptime: 0s
            restart: {{policy: exponential-backoff, delay: 0.1s, multiplier: 2, max_delay: 1s, max_attempts: 1000}}
            stop_timeout: 2s
        """)
    project.run("up")
    supervisord = project.supervisord_pid()
    assert supervisord is not None
    time.sleep(random.Random(trial).uniform(0.2, 2.0))  # somewhere in the loop; what is tested is down, not timing
    done = project.run("down", "--yes")
    assert done.returncode == 0, done.stderr
    assert not psutil.pid_exists(supervisord) or psutil.Process(supervisord).status() == psutil.STATUS_ZOMBIE
    assert orphans.find(str(project.state)) == []


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


def test_an_apply_killed_at_any_point_is_finished_by_the_next_apply(project):
    ports = free_ports(3)
    names = ["feed", "calc", "report"]

    def write(version: int) -> None:
        for index, name in enumerate(names):
            project.toy(name, ports[index], depends_on=names[:index][-1:], more=f"min_uptime: 0s\nenv: {{VERSION: v{version}}}\n")

    write(0)
    project.run("up", check=True)
    started = time.monotonic()
    write(1)
    project.run("apply", "--yes", check=True)
    full = time.monotonic() - started
    rng = random.Random(7)
    for version in range(2, 22):  # 20 seeded kill points
        write(version)
        cli = subprocess.Popen([ORCHESTRATOR, "-m", str(project.manifests), "apply", "--yes"], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.0, full))
        cli.send_signal(signal.SIGKILL)
        cli.wait()
        project.run("apply", "--yes", check=True)
        pids = project.pids()
        for name in names:
            assert _environ(pids[name]).get("VERSION") == f"v{version}", (version, name)
        assert project.run("plan").returncode == 0


def test_a_listener_killed_at_any_point_of_a_crash_loop_loses_and_doubles_no_restart(project):
    logs = {f"crash{i}": crasher(project, f"crash{i}", restart="{policy: delayed, delay: 0.3s, max_attempts: 6}",
                                  extra="min_uptime: 0s\n") for i in range(10)}
    project.run("validate", check=True)
    project.run("up")
    rng = random.Random(11)
    for _ in range(10):  # 10 seeded kill points across the loop (about 6 x 0.5 s)
        time.sleep(rng.uniform(0.05, 0.4))
        listener = _listener(project)
        if listener is not None:
            os.kill(listener, signal.SIGKILL)
    wait_until(lambda: all(project.runtime(name).get("given_up") for name in logs), 60, message="every agent given up")
    counts = {name: len(stamps(log, "start")) for name, log in logs.items()}
    assert counts == {name: 6 for name in logs}, counts


def _listener(project: Project) -> int | None:
    supervisord = project.supervisord_pid()
    if supervisord is None:
        return None
    for child in psutil.Process(supervisord).children():
        try:
            if "orchestrator.listener" in child.cmdline():
                return child.pid
        except psutil.Error:
            continue
    return None


def test_a_port_answered_by_another_process_does_not_make_the_agent_ready(project):
    port = free_ports(1)[0]
    squatter = socket.create_server(("127.0.0.1", port))
    try:
        # RUNNING at once (min_uptime 0s) while the squatter answers the probe; the agent itself binds
        # after 2 s, and dies of EADDRINUSE
        project.toy("feed", port, delay=2.0, timeout="10s", more="min_uptime: 0s\nrestart: {policy: manual}\n")
        done = project.run("up")
        assert done.returncode != 0, done.stdout + done.stderr
        assert "All 1 agents are running and ready" not in done.stdout
        assert "feed did not become ready" in done.stderr
        assert " ready " not in done.stderr.replace("did not become ready", "")
    finally:
        squatter.close()


def test_down_started_while_up_is_still_starting_waits_for_it_and_leaves_nothing(project):
    """Regression: `down` during `up`'s start of supervisord said "Nothing was running." and exited 0; then up started
    everything."""
    ports = free_ports(3)
    for index, name in enumerate(["feed", "calc", "report"]):
        project.toy(name, ports[index], depends_on=["feed"] if index else [], delay=0.5)
    up = subprocess.Popen([ORCHESTRATOR, "-m", str(project.manifests), "up", "--yes"], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    try:
        wait_until(lambda: (project.state / "apply.lock").exists(), 30, message="up to take the lock")
        down = project.run("down", "--yes")
    finally:
        up.communicate(timeout=120)
    assert down.returncode == 0, down.stderr
    assert "Nothing was running" not in down.stdout
    assert project.supervisord_pid() is None
    assert orphans.find(str(project.state)) == []
