"""`orchestrator watch`: each save of the manifests validated, planned and applied; an invalid one touching nothing."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path

from tests.integration.conftest import ORCHESTRATOR, free_ports, wait_until


class Watch:
    """`orchestrator watch` running as a subprocess, its stdout and stderr in one file."""

    def __init__(self, project, *args: str) -> None:
        self.out = project.root / "watch.out"
        with open(self.out, "w") as sink:
            self.process = subprocess.Popen([ORCHESTRATOR, "-m", str(project.manifests), "watch", *args], stdout=sink,
                                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
                                            env={**os.environ, "NO_COLOR": "1"})

    def text(self) -> str:
        return self.out.read_text()

    def wait_for(self, what: str, count: int = 1, timeout: float = 30) -> None:
        wait_until(lambda: self.text().count(what) >= count or self.process.poll() is not None, timeout,
                   message=f"watch to print {what!r}")
        assert self.text().count(what) >= count, self.text()

    def stop(self) -> int:
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise


def _three(project, ports: list[int], variant: str = "a") -> None:
    project.toy("feed", ports[0])
    project.toy("calc", ports[1], depends_on=["feed"], extra=["--variant", variant])
    project.toy("report", ports[2], depends_on=["calc"])


def _notify_to(project, url: str) -> None:
    settings = project.manifests / "orchestrator.yaml"
    settings.write_text(settings.read_text() + f"notifications:\n  - {{name: desk, url: \"{url}\"}}\n")


def _starts(project, agent: str) -> list[tuple[float, int]]:
    return [(when, pid) for name, what, when, pid in project.events() if name == agent and what == "start"]


def test_watch_rejects_an_invalid_save_touching_nothing_and_applies_a_valid_one_within_two_seconds_restarting_only_it(
        project, webhook):
    ports = free_ports(3)
    _three(project, ports)
    _notify_to(project, webhook.url())
    project.run("up", check=True)
    before = project.pids()
    watch = Watch(project)
    try:
        watch.wait_for("Nothing to do")
        calc = project.manifests / "agents" / "calc.yaml"
        valid = calc.read_text()
        calc.write_text(valid.replace("depends_on: [feed]", "depends_on: [feeed]"))
        watch.wait_for("rejected, nothing changed")
        assert f"{calc}:3:14: depends_on[0]: unknown agent 'feeed' (did you mean 'feed'?)" in watch.text()
        assert project.pids() == before, "an invalid save changes nothing running"

        project.toy("calc", ports[1], depends_on=["feed"], extra=["--variant", "b"])   # a save of calc alone
        saved = os.stat(calc).st_mtime
        wait_until(lambda: [s for s in _starts(project, "calc") if s[0] >= saved], 10, message="calc's new process")
        started = min(when for when, _ in _starts(project, "calc") if when >= saved)
        assert started - saved < 2.0, f"applied {started - saved:.2f}s after the save"
        watch.wait_for("applied as version 2: replace calc (command)")
        after = project.pids()
        assert after["feed"] == before["feed"] and after["report"] == before["report"]
        assert after["calc"] != before["calc"]
        wait_until(lambda: len(webhook.received()) >= 2, 15, message="both notifications")
        rejected, applied = webhook.received()[:2]
        assert rejected["kind"] == "config" and rejected["outcome"] == "rejected" and rejected["version"] is None
        assert rejected["files"] == ["agents/calc.yaml"] and "unknown agent 'feeed'" in rejected["errors"][0]
        assert applied["kind"] == "config" and applied["outcome"] == "applied" and applied["version"] == 2
        assert applied["summary"] == "applied as version 2: replace calc (command)" and applied["project"] == "test"
    finally:
        code = watch.stop()
    assert code == 0, watch.text()
    assert "watch: stopped" in watch.text()
    log = (project.state / "logs" / "watch.log").read_text()
    assert "agents/calc.yaml: rejected, nothing changed" in log and "agents/calc.yaml: applied as version 2" in log


def test_watch_with_plan_only_prints_the_plan_of_a_save_and_applies_nothing(project):
    ports = free_ports(3)
    _three(project, ports)
    project.run("up", check=True)
    before = project.pids()
    watch = Watch(project, "--plan-only")
    try:
        watch.wait_for("Nothing to do")
        _three(project, ports, "b")
        watch.wait_for("-/+ replace  calc (command)")
        watch.wait_for("Plan: 1 to replace, 2 unchanged.")
        assert project.pids() == before
    finally:
        code = watch.stop()
    assert code == 0, watch.text()
    assert project.run("plan").returncode == 2, "the change is still pending"
    assert Path(project.state / "history" / "0002").exists() is False
