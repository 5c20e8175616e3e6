"""Drift: what was changed outside orchestrator (with supervisorctl, or by editing the rendered configuration) shows
in plan and status, and apply puts it back; what the operator did through orchestrator is not drift."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from tests.integration.conftest import Project, free_ports, wait_until

pytestmark = pytest.mark.integration

SUPERVISORCTL = str(Path(sys.executable).parent / "supervisorctl")


def _ctl(project: Project, *args: str) -> str:
    done = subprocess.run([SUPERVISORCTL, "-c", str(project.state / "supervisord.conf"), *args], capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL)
    return done.stdout + done.stderr


def _pair(project: Project) -> None:
    feed, calc = free_ports(2)
    project.toy("feed", feed)
    project.toy("calc", calc, depends_on=["feed"])
    project.run("up", check=True)


def _plan(project: Project) -> tuple[int, dict, str]:
    """plan's exit status, its JSON, and its text."""
    done = project.run("plan", "--output", "json")
    text = project.run("plan")
    assert text.returncode == done.returncode, text.stdout + text.stderr
    return done.returncode, json.loads(done.stdout), text.stdout


def _drift(plan: dict) -> set[tuple[str, str]]:
    return {(d["kind"], d["subject"]) for d in plan["drift"]}


def _status(project: Project) -> tuple[dict[str, list[str]], str]:
    """Each row's drift by agent, and what status said on stderr."""
    done = project.run("status", "--output", "json")
    assert done.returncode in (0, 3), done.stderr
    return {row["agent"]: row["drift"] for row in json.loads(done.stdout)}, done.stderr


def _state(project: Project, agent: str) -> str:
    rows = json.loads(project.run("status", "--output", "json").stdout)
    return next(row["state"] for row in rows if row["agent"] == agent)


def _environ(pid: int) -> dict[str, str]:
    return psutil.Process(pid).environ()


def test_an_agent_stopped_with_supervisorctl_shows_as_drift_and_apply_starts_it_again(project):
    _pair(project)
    assert "stopped" in _ctl(project, "stop", "calc:calc").lower()
    wait_until(lambda: _state(project, "calc") == "STOPPED", 20, message="calc stopped by supervisorctl")

    code, plan, text = _plan(project)
    assert code == 2
    assert _drift(plan) == {("stopped", "calc")}
    assert "Drift (changed outside orchestrator):" in text
    assert "calc: stopped outside orchestrator (apply starts it)" in text
    rows, warning = _status(project)
    assert rows["calc"] == ["calc: stopped outside orchestrator (apply starts it)"] and rows["feed"] == []
    assert "Drift: 1 change made outside orchestrator" in warning and "calc: stopped outside orchestrator" in warning

    done = project.run("apply", "--yes")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Put back what was changed outside orchestrator:" in done.stderr
    assert "calc: stopped outside orchestrator; started" in done.stderr
    assert _state(project, "calc") in ("RUNNING", "STARTING")
    assert _plan(project)[0] == 0
    assert "Drift" not in project.run("status").stderr


def test_a_hand_edit_loaded_with_supervisorctl_update_shows_as_drift_and_apply_restores_file_and_agent(project):
    _pair(project)
    conf = project.state / "current" / "programs" / "calc.conf"
    original = conf.read_text()
    conf.write_text(re.sub(r"^(environment=.*)$", r'\1,DRIFTED="yes"', original, count=1, flags=re.MULTILINE))
    _ctl(project, "update")
    _ctl(project, "start", "calc:calc")   # update re-adds calc stopped (autostart=false): run it with the edit
    pid = wait_until(lambda: project.pids().get("calc"), 20, message="calc running its edited configuration")
    assert _environ(pid).get("DRIFTED") == "yes"

    code, plan, text = _plan(project)
    assert code == 2
    assert _drift(plan) == {("file", "programs/calc.conf"), ("config", "calc")}
    assert "programs/calc.conf: edited since version 1 was applied (apply rewrites it from version 1)" in text
    assert "calc: supervisord holds a configuration for it that apply did not give it" in text
    assert {a["agent"]: a["action"] for a in plan["actions"]} == {"calc": "replace", "feed": "unchanged"}
    rows, warning = _status(project)
    assert len(rows["calc"]) == 2 and rows["feed"] == []
    assert "programs/calc.conf: edited" in warning

    feed = project.pids()["feed"]
    done = project.run("apply", "--yes")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "programs/calc.conf: edited since version 1 was applied; rewritten from version 1" in done.stderr
    assert conf.read_text() == original
    pid = project.pids()["calc"]
    assert "DRIFTED" not in _environ(pid)
    assert project.pids()["feed"] == feed   # nothing else restarted
    assert _plan(project)[0] == 0
    assert "Applied as version" not in done.stdout    # the live version is put back, not recorded again
    assert sorted(p.name for p in (project.state / "history").iterdir() if p.name.isdigit()) == ["0001"]


def test_a_hand_edit_supervisord_did_not_load_is_put_back_without_a_restart(project):
    _pair(project)
    conf = project.state / "current" / "programs" / "calc.conf"
    original = conf.read_text()
    conf.write_text(original + "; a note left by hand\n")
    before = project.pids()

    code, plan, text = _plan(project)
    assert code == 2
    assert _drift(plan) == {("file", "programs/calc.conf")}
    assert {a["action"] for a in plan["actions"]} == {"unchanged"}
    assert "programs/calc.conf: edited since version 1 was applied" in _status(project)[1]

    done = project.run("apply", "--yes")
    assert done.returncode == 0, done.stdout + done.stderr
    assert conf.read_text() == original
    assert project.pids() == before
    assert _plan(project)[0] == 0


def test_a_program_added_with_supervisorctl_is_drift_and_apply_removes_it(project):
    _pair(project)
    extra = project.state / "current" / "programs" / "stray.conf"
    extra.write_text("[program:stray]\ncommand=sleep 600\nautostart=true\n")
    _ctl(project, "update")
    wait_until(lambda: "stray" in {row["agent"] for row in json.loads(project.run("status", "--output", "json").stdout)},
               20, message="supervisord to run stray")

    code, plan, text = _plan(project)
    assert code == 2
    assert _drift(plan) == {("file", "programs/stray.conf"), ("added", "stray")}
    assert "stray: supervisord runs it, but version 1 does not declare it (apply stops and removes it)" in text

    done = project.run("apply", "--yes")
    assert done.returncode == 0, done.stdout + done.stderr
    assert not extra.exists()
    assert "stray" not in {row["agent"] for row in json.loads(project.run("status", "--output", "json").stdout)}
    assert _plan(project)[0] == 0


def test_an_agent_removed_with_supervisorctl_is_drift_and_apply_adds_it_back(project):
    _pair(project)
    _ctl(project, "stop", "calc:calc")
    _ctl(project, "remove", "calc")
    code, plan, _ = _plan(project)
    assert code == 2
    assert _drift(plan) == {("removed", "calc")}
    assert project.run("apply", "--yes").returncode == 0
    assert _state(project, "calc") in ("RUNNING", "STARTING")
    assert _plan(project)[0] == 0


def test_a_stop_through_orchestrator_is_not_drift_but_a_start_with_supervisorctl_after_it_is(project):
    _pair(project)
    project.run("stop", "calc", "--yes", check=True)
    code, plan, text = _plan(project)
    assert code == 2 and plan["drift"] == []           # pending: apply would start it, as before
    assert "Drift" not in text
    rows, warning = _status(project)
    assert rows["calc"] == [] and "Drift" not in warning

    _ctl(project, "start", "calc:calc")
    wait_until(lambda: project.pids().get("calc"), 20, message="calc started by supervisorctl")
    code, plan, text = _plan(project)
    assert code == 2
    assert _drift(plan) == {("started", "calc")}
    assert "calc: running (calc), but it was stopped through orchestrator" in text
    assert project.runtime("calc")["stopped"] is True

    done = project.run("apply", "--yes")
    assert done.returncode == 0, done.stdout + done.stderr
    assert project.runtime("calc")["stopped"] is False  # the restart keeper looks after it again
    assert _state(project, "calc") in ("RUNNING", "STARTING")
    assert _plan(project)[0] == 0
