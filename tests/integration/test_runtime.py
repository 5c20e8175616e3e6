"""Liveness, warm-up, cooldown and dependency failure, carried out by the listener inside a real supervisord."""

from __future__ import annotations

import os
import signal
import time

import pytest

from tests.integration.conftest import Project, free_ports, wait_until

pytestmark = pytest.mark.integration


def _count(project: Project, name: str, what: str, since: float = 0.0) -> int:
    return sum(1 for n, w, t, _ in project.events() if n == name and w == what and t > since)


def _first(project: Project, name: str, what: str, since: float) -> float:
    return min(t for n, w, t, _ in project.events() if n == name and w == what and t > since)


def test_an_agent_whose_health_fails_is_restarted_after_failures_periods_unless_in_warmup(project):
    sick, warming = free_ports(2)
    liveness = "liveness: {{tcp: \"127.0.0.1:{port}\", period: 0.3s, failures: 3, timeout: 0.5s}}\n"
    project.toy("sick", sick, extra=["--close-after", "1"], more=liveness.format(port=sick) +
                "resources: {warmup: 0s, cooldown: 0s}\nrestart: {policy: immediate, max_attempts: 10}\n")
    project.toy("warming", warming, extra=["--close-after", "1"], more=liveness.format(port=warming) +
                "resources: {warmup: 60s}\nrestart: {policy: immediate, max_attempts: 10}\n")
    project.run("up", check=True)
    wait_until(lambda: _count(project, "sick", "start") >= 2, 20, message="the unhealthy agent to be restarted")
    unhealthy = _first(project, "sick", "unhealthy", 0)
    restarted = sorted(t for n, w, t, _ in project.events() if n == "sick" and w == "start")[1]
    assert 0.6 <= restarted - unhealthy <= 3.0, f"restarted {restarted - unhealthy:.2f}s after it stopped answering"
    log = (project.state / "logs" / "_orchestrator.log").read_text()
    assert "sick: liveness tcp 127.0.0.1:" in log and "failed 3 times in a row" in log
    time.sleep(1.5)
    assert _count(project, "warming", "start") == 1  # in warm-up: failing, but left alone
    assert _count(project, "warming", "unhealthy") == 1


def test_killing_a_dependency_makes_its_dependents_act_by_their_policy_and_come_back_in_order(project):
    ports = dict(zip(["feed", "strategy", "executor", "portfolio"], free_ports(4), strict=True))
    project.toy("feed", ports["feed"], more="restart: {policy: delayed, delay: 1s, max_attempts: 10}\n")
    project.toy("strategy", ports["strategy"], depends_on=["feed"], more="on_dependency_failure: restart\n")
    project.toy("executor", ports["executor"], depends_on=["strategy", "feed"], more="on_dependency_failure: stop\n")
    project.toy("portfolio", ports["portfolio"], depends_on=["feed"], more="on_dependency_failure: ignore\n")
    project.run("up", check=True)
    before = project.pids()
    mark = time.time()
    os.kill(before["feed"], signal.SIGKILL)
    wait_until(lambda: _count(project, "executor", "ready", mark) >= 1, 30, message="the executor to come back")
    feed_ready = _first(project, "feed", "ready", mark)
    strategy_stop, strategy_ready = _first(project, "strategy", "stop", mark), _first(project, "strategy", "ready", mark)
    executor_stop, executor_start = _first(project, "executor", "stop", mark), _first(project, "executor", "start", mark)
    assert executor_stop < feed_ready            # stop: taken down while feed was away
    assert strategy_stop >= feed_ready           # restart: kept running, restarted once feed was back
    assert executor_start >= strategy_ready      # and everything came back in dependency order
    after = project.pids()
    assert after["portfolio"] == before["portfolio"]  # ignore: untouched
    assert after["strategy"] != before["strategy"] and after["executor"] != before["executor"]
    assert project.run("status").returncode == 0
