"""apply, up, down and plan against a real supervisord: order, parallelism, minimal change, failures."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from tests.integration.conftest import Project, free_ports, wait_until

pytestmark = pytest.mark.integration

# 12 agents in 4 levels; each depends on agents of the level before.
DAG = {
    "a1": [], "a2": [], "a3": [],
    "b1": ["a1"], "b2": ["a1", "a2"], "b3": ["a3"],
    "c1": ["b1", "b2"], "c2": ["b2"], "c3": ["b3"],
    "d1": ["c1", "c2"], "d2": ["c3"], "d3": ["c1", "c3"],
}
DELAY = 1.0  # each agent takes this long to become ready


def _dag(project: Project) -> dict[str, int]:
    ports = dict(zip(DAG, free_ports(len(DAG)), strict=True))
    for name, deps in DAG.items():
        project.toy(name, ports[name], depends_on=deps, delay=DELAY)
    return ports


def _first(events, what: str) -> dict[str, float]:
    found: dict[str, float] = {}
    for name, kind, when, _pid in events:
        if kind == what:
            found.setdefault(name, when)
    return found


def test_agents_start_after_their_dependencies_are_ready_levels_in_parallel_and_stop_in_reverse(project):
    _dag(project)
    started = time.monotonic()
    done = project.run("up", check=True)
    took = time.monotonic() - started
    events = project.events()
    start, ready = _first(events, "start"), _first(events, "ready")
    assert set(start) == set(DAG) and set(ready) == set(DAG)
    for name, deps in DAG.items():
        for dep in deps:
            assert start[name] >= ready[dep], f"{name} started before {dep} was ready"
    # Parallel: the three agents of each level were all starting at once, and the whole
    # start took about the critical path (4 levels x DELAY), far from the sum (12 x DELAY).
    for level in "abcd":
        names = [n for n in DAG if n.startswith(level)]
        assert max(start[n] for n in names) < min(ready[n] for n in names), f"level {level} did not overlap"
    critical_path = 4 * DELAY
    assert ready["d1"] - start["a1"] < critical_path + 2.0, f"start took {ready['d1'] - start['a1']:.1f}s"
    assert "All 12 agents are running and ready." in done.stdout, done.stdout
    print(f"up took {took:.1f}s for a critical path of {critical_path:.1f}s (sum of starts {len(DAG) * DELAY:.1f}s)")

    project.run("down", "--yes", check=True)
    stop = _first(project.events(), "stop")
    assert set(stop) == set(DAG)
    for name, deps in DAG.items():
        for dep in deps:
            assert stop[name] <= stop[dep], f"{dep} stopped before its dependent {name}"
    assert project.supervisord_pid() is None
    assert not [p for p in psutil.process_iter(["pid"]) if _marked(p, project)]


def _marked(process: psutil.Process, project: Project) -> bool:
    try:
        return process.environ().get("ORCHESTRATOR_STATE_DIR") == str(project.state)
    except psutil.Error:
        return False


def test_only_what_changed_restarts_and_a_no_op_apply_touches_nothing(project):
    ports = dict(zip(["feed", "calc", "report", "extra"], free_ports(4), strict=True))
    project.toy("feed", ports["feed"])
    project.toy("calc", ports["calc"], depends_on=["feed"])
    project.toy("report", ports["report"], depends_on=["calc"])
    project.run("up", check=True)
    before = project.pids()
    assert set(before) == {"feed", "calc", "report"}

    again = project.run("apply", check=True)
    assert "Nothing to do" in again.stdout
    assert project.pids() == before
    assert project.run("plan").returncode == 0

    project.toy("calc", ports["calc"], depends_on=["feed"], extra=["--variant", "two"])  # a changed command
    plan = project.run("plan", "--output", "json")
    assert plan.returncode == 2
    actions = {a["agent"]: a for a in json.loads(plan.stdout)["actions"]}
    assert actions["calc"]["action"] == "replace" and actions["calc"]["fields"] == ["command"]
    assert actions["feed"]["action"] == actions["report"]["action"] == "unchanged"
    project.run("apply", check=True)
    after = project.pids()
    assert after["calc"] != before["calc"]
    assert after["feed"] == before["feed"] and after["report"] == before["report"]

    project.toy("extra", ports["extra"], depends_on=["feed"])
    project.remove("agents/report.yaml")
    project.run("apply", check=True)
    final = project.pids()
    assert set(final) == {"feed", "calc", "extra"}
    assert final["feed"] == after["feed"] and final["calc"] == after["calc"]
    assert project.run("plan").returncode == 0


def test_a_priority_or_probe_change_is_applied_without_a_restart(project):
    port = free_ports(1)[0]
    project.toy("feed", port)
    project.run("up", check=True)
    before = project.pids()
    text = (project.manifests / "agents" / "feed.yaml").read_text()
    project.write("agents/feed.yaml", text + f"priority: 7\nliveness: {{tcp: \"127.0.0.1:{port}\"}}\n")
    plan = json.loads(project.run("plan", "--output", "json").stdout)
    assert plan["actions"] == [{"action": "update", "agent": "feed", "fields": ["priority", "liveness"], "reason": "no restart needed"}]
    project.run("apply", check=True)
    assert project.pids() == before
    assert project.run("plan").returncode == 0


def test_an_agent_that_never_becomes_ready_fails_the_apply_and_blocks_its_dependents(project):
    ports = dict(zip(["feed", "stuck", "after", "aside"], free_ports(4), strict=True))
    project.toy("feed", ports["feed"])
    # a start that is not ready in time is a failed attempt of the restart policy: two of them give it up
    project.toy("stuck", ports["stuck"], depends_on=["feed"], extra=["--never-ready"], timeout="6s",
                more="restart: {policy: delayed, delay: 0.5s, max_attempts: 2}\n")
    project.toy("after", ports["after"], depends_on=["stuck"])
    project.toy("aside", ports["aside"], depends_on=["feed"])
    started = time.monotonic()
    done = project.run("up")
    took = time.monotonic() - started
    assert done.returncode == 1
    assert "stuck did not become ready: 2 failed attempts" in done.stderr, done.stderr
    assert "last: not ready after 6.0s" in done.stderr
    assert "stuck                    retrying  attempt 2/2 in 0.5s: not ready after 6.0s" in done.stderr
    assert "stuck                    waiting  5s of 6s for tcp 127.0.0.1:" in done.stderr  # progress while it waits
    assert "cache warm-up failed: upstream refused" in done.stderr  # its last stderr lines
    assert "not started: after" in done.stderr
    assert took < 30
    states = {row["agent"]: row["state"] for row in json.loads(project.run("status", "--output", "json").stdout)}
    assert states["feed"] == "RUNNING" and states["aside"] == "RUNNING"
    assert states["stuck"] == "GIVEN UP" and states["after"] == "STOPPED"
    assert "after" not in {name for name, *_ in project.events()}
    status = json.loads(project.run("status", "--output", "json", "stuck").stdout)[0]
    assert "last: not ready after 6.0s" in status["reason"]


def test_after_supervisord_is_killed_starting_it_again_brings_every_agent_back_in_order(project):
    _dag(project)
    project.run("up", check=True)
    first = project.pids()
    pid = project.supervisord_pid()
    os.kill(pid, signal.SIGKILL)
    # the agents do not outlive it (parent-death signal): nothing would hold their ports
    wait_until(lambda: not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
                               for p in first.values()), 10, message="agents to end with supervisord")
    mark = time.time()
    subprocess.run([sys.executable, "-m", "supervisor.supervisord", "-c", str(project.state / "supervisord.conf")],
                   check=True, cwd=project.state)
    wait_until(lambda: len(_first([e for e in project.events() if e[2] > mark], "ready")) == len(DAG), 60,
               message="every agent to be ready again")
    events = [e for e in project.events() if e[2] > mark]
    start, ready = _first(events, "start"), _first(events, "ready")
    for name, deps in DAG.items():
        for dep in deps:
            assert start[name] >= ready[dep], f"after the restart {name} started before {dep} was ready"
    status = project.run("status")
    assert status.returncode == 0, status.stdout + status.stderr
    assert set(project.pids().values()).isdisjoint(first.values())


def test_a_supervisord_that_does_not_answer_is_not_mistaken_for_a_dead_one(project):
    """Regression: up and down swept a live, frozen supervisord's agents as orphans."""
    project.toy("feed", free_ports(1)[0])
    project.run("up", check=True)
    feed = project.pids()["feed"]
    pid = project.supervisord_pid()
    os.kill(pid, signal.SIGSTOP)
    try:
        done = project.run("down", "--yes")
        assert done.returncode == 1
        assert f"supervisord (pid {pid}) is running but does not answer" in done.stderr
        assert psutil.pid_exists(feed) and psutil.Process(feed).status() != psutil.STATUS_ZOMBIE
    finally:
        os.kill(pid, signal.SIGCONT)


def test_nothing_in_the_state_directory_is_readable_by_other_users(project):
    """Agent logs were 0644 (supervisord ran with umask 022), and the versions' manifest copies kept their modes:
    a secret an agent printed, or an environment value, was readable by any local user."""
    _dag(project)
    project.run("up", check=True)
    project.run("apply", check=True)
    seen = []
    for path in [project.state, *project.state.rglob("*")]:
        if path.is_symlink():
            continue
        mode = path.stat().st_mode
        seen.append(path)
        assert mode & 0o007 == 0, f"{path.relative_to(project.root)} is mode {oct(mode & 0o777)}"
    names = {p.name for p in seen}
    assert {"supervisord.log", "_orchestrator.log", "runtime.json.lock", "apply.lock", "version.json"} <= names
    assert any(p.name.endswith(".err.log") for p in seen) and any(p.suffix == ".yaml" for p in seen)
