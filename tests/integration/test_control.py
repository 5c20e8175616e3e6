"""start, stop, restart and the emergency stop against a real supervisord."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import psutil
import pytest

from orchestrator.host import orphans
from tests.integration.conftest import Project, crasher, free_ports, stamps, wait_until

pytestmark = pytest.mark.integration


def _chain(project: Project) -> None:
    ports = free_ports(3)
    project.toy("feed", ports[0])
    project.toy("calc", ports[1], depends_on=["feed"])
    project.toy("report", ports[2], depends_on=["calc"])


def _states(project: Project) -> dict[str, str]:
    """Agent -> state, with STARTING (inside supervisord's startsecs, already ready) counted as RUNNING."""
    rows = json.loads(project.run("status", "--output", "json").stdout)
    return {row["agent"]: "RUNNING" if row["state"] == "STARTING" else row["state"] for row in rows}


def test_stop_takes_dependents_down_first_and_start_brings_dependencies_up_first(project):
    _chain(project)
    project.run("up", check=True)
    mark = time.time()
    done = project.run("stop", "calc", "--yes", check=True)
    assert "Stopped report, calc." in done.stdout
    assert _states(project) == {"feed": "RUNNING", "calc": "STOPPED", "report": "STOPPED"}
    stops = {name: when for name, what, when, _ in project.events() if what == "stop" and when > mark}
    assert stops["report"] <= stops["calc"]

    project.run("stop", "feed", "--yes", check=True)
    mark = time.time()
    project.run("start", "report", check=True)
    events = [e for e in project.events() if e[2] > mark]
    start = {n: w for n, what, w, _ in events if what == "start"}
    ready = {n: w for n, what, w, _ in events if what == "ready"}
    assert start["calc"] >= ready["feed"] and start["report"] >= ready["calc"]
    assert set(_states(project).values()) == {"RUNNING"}


def test_no_deps_limits_a_stop_to_the_agents_named(project):
    _chain(project)
    project.run("up", check=True)
    project.run("stop", "calc", "--no-deps", "--yes", check=True)
    assert _states(project) == {"feed": "RUNNING", "calc": "STOPPED", "report": "RUNNING"}


def test_a_manual_start_clears_a_given_up_agent(project):
    log = crasher(project, "crasher", restart="{policy: immediate, max_attempts: 2}", extra="min_uptime: 0s\n")
    project.run("up")
    wait_until(lambda: project.runtime("crasher").get("given_up"), 20, message="the agent to be given up")
    rows = json.loads(project.run("status", "--output", "json").stdout)
    assert rows[0]["state"] == "GIVEN UP" and rows[0]["given_up"] is True
    assert "GIVEN UP" in project.run("status").stdout
    starts = len(stamps(log, "start"))
    project.run("start", "crasher")
    wait_until(lambda: len(stamps(log, "start")) >= starts + 2, 20, message="restarts after the manual start")
    assert len(stamps(log, "start")) >= starts + 2  # the manual start, then an automatic restart again


FORKER = ["sh", "-c", "sleep 600 & setsid sleep 600 & sleep 600 & wait"]


def test_emergency_stop_ends_every_process_at_once_and_nothing_restarts_until_cleared(project):
    command = ", ".join(f'"{a}"' for a in FORKER)
    for index in range(50):
        project.write(f"agents/a{index:02d}.yaml", f"""
            name: a{index:02d}
            command: [{command}]
            min_uptime: 0s
            stop_timeout: 1s
            restart: {{policy: immediate, max_attempts: 100}}
        """)
    project.run("up", check=True)
    pids = project.pids()
    assert len(pids) == 50
    tree = set()
    for pid in pids.values():
        wait_until(lambda pid=pid: len(psutil.Process(pid).children()) == 3, 10, message="the agent's children")
        tree.update([pid, *(c.pid for c in psutil.Process(pid).children(recursive=True))])
    assert len(tree) == 200
    started = time.monotonic()
    done = project.run("emergency-stop", "--reason", "drill", "--yes")
    took = time.monotonic() - started
    assert done.returncode == 0, done.stderr

    def alive() -> list[int]:
        return [p for p in tree if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]

    assert alive() == [] and took < 10
    time.sleep(2)  # an immediate restart would have happened by now
    rows = json.loads(project.run("status", "--output", "json").stdout)
    assert all(r["pid"] is None for r in rows), [r for r in rows if r["pid"]]
    status = project.run("status")
    assert status.returncode == 3 and "emergency stop latched" in status.stderr and "(drill)" in status.stderr
    refused = project.run("start", "a00")
    assert refused.returncode == 1 and "emergency stop latched" in refused.stderr
    assert project.run("apply").returncode == 1

    assert "Cleared" in project.run("emergency-clear", check=True).stdout
    project.run("start-all", check=True)
    assert len(project.pids()) == 50


def test_the_emergency_latch_holds_across_a_supervisord_restart(project):
    """Regression: the boot listener started every agent after a restart, ignoring a latched emergency stop."""
    import subprocess
    import sys
    _chain(project)
    project.run("up", check=True)
    project.run("emergency-stop", "--reason", "drill", "--yes", check=True)
    project.run("down", "--yes", check=True)
    mark = time.time()
    subprocess.run([sys.executable, "-m", "supervisor.supervisord", "-c", str(project.state / "supervisord.conf")],
                   check=True, cwd=project.state)
    log = project.state / "logs" / "_orchestrator.log"
    wait_until(lambda: "starting nothing" in log.read_text(), 15, message="the boot listener to decline")
    assert not [e for e in project.events() if e[1] == "start" and e[2] > mark]
    assert project.run("status").returncode == 3


def _agent_pids(project) -> list[int]:
    return list(project.pids().values())


def _dead(pids: list[int]) -> bool:
    return all(not psutil.pid_exists(p) or psutil.Process(p).status() == psutil.STATUS_ZOMBIE for p in pids)


def test_an_emergency_stop_ends_every_agent_when_supervisord_hangs(project):
    """Regression: with supervisord stopped (SIGSTOP), emergency-stop said "supervisord is not running" and stopped nothing."""
    _chain(project)
    project.run("up", check=True)
    pids = _agent_pids(project)
    supervisord = project.supervisord_pid()
    os.kill(supervisord, signal.SIGSTOP)
    try:
        done = project.run("emergency-stop", "--reason", "hung", "--yes", timeout=60)
        assert done.returncode == 0, done.stderr
        assert _dead(pids)
        assert "supervisord did not take the stop" in done.stderr and "latched until" in done.stdout
        status = project.run("status", timeout=60)
        assert status.returncode == 1 and f"supervisord (pid {supervisord}) is running but does not answer" in status.stderr, status.stderr
    finally:
        os.kill(supervisord, signal.SIGCONT)
    time.sleep(1.5)  # a restart by the keeper would have come by now
    assert [p for p in _agent_pids(project)] == []


def test_an_emergency_stop_ends_every_agent_when_the_state_directory_is_read_only(project):
    """Regression: on a read-only state directory emergency-stop exited 70 before signalling anything."""
    _chain(project)
    project.run("up", check=True)
    pids = _agent_pids(project)
    state = str(project.state)
    subprocess.run(["mount", "--bind", state, state], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", state], check=True)
        done = project.run("emergency-stop", "--yes", timeout=60)
        assert done.returncode == 0, done.stderr
        assert _dead(pids)
        assert "the latch could not be recorded" in done.stderr and "NOT latched" in done.stdout
        time.sleep(1.5)  # supervisord stopped them on request: nothing restarts them
        assert _agent_pids(project) == []
        start = project.run("start-all")  # cannot record anything there: an error of the machine, said plainly
        assert start.returncode == 1 and "read-only" in start.stderr and "internal error" not in start.stderr, start.stderr
    finally:
        subprocess.run(["umount", state], check=True)


@pytest.mark.parametrize("action", ["stop", "restart", "apply", "emergency-stop"])
def test_a_stop_ends_a_child_that_called_setsid_and_ignores_sigterm_and_says_so(project, action):
    """Regression: a child that left the agent's process group (setsid) and ignored SIGTERM survived stop,
    restart, a replacing apply and emergency-stop; only down swept it. A stop -> start -> restart -> apply
    sequence left 3 such orphans."""
    script = project.root / "escaper.sh"
    script.write_text("#!/bin/sh\nsetsid sh -c 'trap \"\" TERM; exec sleep 600' &\nexec sleep 600\n")
    script.chmod(0o755)
    agent = f"""
        name: escaper
        command: ["{script}"]
        min_uptime: 0s
        stop_timeout: 1s
    """
    project.write("agents/escaper.yaml", agent)
    project.run("up", check=True)
    root = psutil.Process(project.pids()["escaper"])
    wait_until(lambda: root.children(recursive=True), 10, message="the escaping child")
    tree = [p.pid for p in root.children(recursive=True)]
    assert any(os.getsid(p) != os.getsid(root.pid) for p in tree)  # it did leave the agent's session
    if action == "apply":  # a change that replaces the agent
        project.write("agents/escaper.yaml", agent.rstrip(" ") + "        env: {GENERATION: '2'}\n")
        done = project.run("apply", "--yes", check=True)
    else:
        done = project.run(action, *(["escaper"] if action in ("stop", "restart") else []), "--yes", check=True)
    assert _dead(tree), [p for p in tree if psutil.pid_exists(p)]
    said = {"emergency-stop": "killed"}.get(action, "ended 1 process(es) it left behind")
    assert said in done.stdout + done.stderr, done.stdout + done.stderr


@pytest.mark.parametrize("found_by", ["pointer", "markers"])
def test_down_status_and_emergency_stop_find_a_moved_state_directory_when_a_manifest_is_broken(project, found_by):
    """Regression: with `state_dir: ../state` and one typo in an agent file, `down --yes` looked in the default
    state directory, said "Nothing was running." and exited 0 while every agent kept running.

    found_by: the pointer `up` leaves beside the manifests, or (that pointer lost) the markers of the
    running project's processes."""
    (project.manifests / "orchestrator.yaml").write_text("project: test\nstate_dir: ../state\n")
    _chain(project)
    project.run("up", check=True)
    state = project.root / "state"
    pids = [int(p) for p in (state / "supervisord.pid").read_text().split()]
    project.write("agents/zz-broken.yaml", "name: broken\nbogus: [\n")
    if found_by == "markers":
        (project.manifests / ".orchestrator-state").unlink()
    assert project.run("validate").returncode == 1
    status = project.run("status")
    assert status.returncode == 0 and "feed" in status.stdout, status.stderr
    agents = _agent_pids(project)
    stopped = project.run("emergency-stop", "--yes")
    assert stopped.returncode == 0 and "latched until" in stopped.stdout, stopped.stdout + stopped.stderr
    assert _dead(agents)
    assert "emergency stop" in project.run("status").stderr.lower()  # the latch was recorded in the moved state
    done = project.run("down", "--yes")
    assert done.returncode == 0 and "Nothing was running" not in done.stdout, done.stdout + done.stderr
    assert not psutil.pid_exists(pids[0]) or psutil.Process(pids[0]).status() == psutil.STATUS_ZOMBIE
    assert orphans.find(str(state)) == []


def test_an_emergency_stop_ends_every_agent_when_the_state_disk_is_full(project):
    """Regression: on a full state disk emergency-stop exited 70 (ENOSPC writing the latch) before signalling anything."""
    state = project.root / "small"
    state.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(state)], check=True)
    try:
        _chain(project)
        project.run("--state-dir", str(state), "up", check=True)
        pids = _agent_pids(project)
        assert pids
        with open(state / "filler", "wb", buffering=0) as filler:  # fill the disk to the last byte
            for chunk in (65536, 4096, 1):
                try:
                    while True:
                        filler.write(b"\0" * chunk)
                except OSError:
                    pass
        done = project.run("emergency-stop", "--yes", timeout=60)
        assert done.returncode == 0, done.stderr
        assert _dead(pids)
        assert "the latch could not be recorded" in done.stderr and "No space left" in done.stderr
    finally:
        (state / "filler").unlink(missing_ok=True)
        project.run("down", "--yes")
        subprocess.run(["umount", str(state)], check=True)
