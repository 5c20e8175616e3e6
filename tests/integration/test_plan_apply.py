"""apply carries out the plan it was given: a stored version's manifests apply as the live set, and a plan
that changed before apply took its lock is shown again, never silently replaced."""

from __future__ import annotations

import json
import os
import subprocess

import psutil
import pytest

from orchestrator.config.manifest import LoadOptions, load
from orchestrator.core.model import ManifestSet
from orchestrator.core.plan import Plan
from orchestrator.operations.apply import PlanChangedError, apply, client_for, compute
from tests.integration.conftest import ORCHESTRATOR, Project, free_ports, wait_until

pytestmark = pytest.mark.integration

ROOTED = 'env: {ROOT: "{{ project_dir }}", SET: "{{ manifests_dir }}"}\n'


def _run(manifests: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([ORCHESTRATOR, "-m", manifests, *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "NO_COLOR": "1"}, stdin=subprocess.DEVNULL)


def _live_manifests(project: Project) -> str:
    """The stored manifests of the live version: STATE/current points at history/NNNN."""
    return os.path.join(project.state, os.readlink(project.state / "current"), "manifests")


def _versions(project: Project) -> list[str]:
    return sorted(n for n in os.listdir(project.state / "history") if n.isdigit())


def test_applying_the_live_versions_stored_manifests_restarts_nothing(project):
    """Regression: the manifests history stores (what rollback applies) loaded with their copy as the project
    root: another state directory, other agent directories and template values, so applying them either
    missed the running supervisord or planned the replacement of every agent."""
    feed, calc = free_ports(2)
    project.toy("feed", feed, more=ROOTED)
    project.toy("calc", calc, depends_on=["feed"], more=ROOTED)
    project.run("up", check=True)
    before = project.pids()
    assert set(before) == {"feed", "calc"}
    versions = _versions(project)
    stored = _live_manifests(project)

    pinned = _run(stored, "--state-dir", str(project.state), "plan")   # the agents' directories and environments
    assert pinned.returncode == 0 and "Nothing to do" in pinned.stdout, pinned.stdout + pinned.stderr
    plan = _run(stored, "plan", "--output", "json")                     # and the state directory found from them
    assert plan.returncode == 0, plan.stdout + plan.stderr
    assert {a["action"] for a in json.loads(plan.stdout)["actions"]} == {"unchanged"}

    done = _run(stored, "apply", "--yes")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Nothing to do" in done.stdout
    assert project.pids() == before
    assert _versions(project) == versions
    assert project.run("plan").returncode == 0


def _load(project: Project) -> ManifestSet:
    return load(LoadOptions(str(project.manifests)))


class Asked:
    """A `confirm` that records what apply showed it and answers `answer`."""

    def __init__(self, answer: bool) -> None:
        self.answer = answer
        self.calls: list[tuple[Plan, Plan]] = []

    def __call__(self, shown: Plan, new: Plan) -> bool:
        self.calls.append((shown, new))
        return self.answer


def _kinds(plan: Plan) -> dict[str, str]:
    return {a.agent: a.kind for a in plan.actions}


def test_a_plan_the_running_agents_changed_under_is_shown_again_and_run_only_once_confirmed(project):
    ports = dict(zip(["feed", "calc", "extra"], free_ports(3), strict=True))
    project.toy("feed", ports["feed"])
    project.toy("calc", ports["calc"], depends_on=["feed"])
    project.run("up", check=True)
    project.toy("extra", ports["extra"], depends_on=["feed"])
    manifests = _load(project)
    shown, _ = compute(manifests, client_for(manifests))
    assert _kinds(shown) == {"extra": "add", "feed": "unchanged", "calc": "unchanged"}

    project.run("stop", "calc", "--no-deps", "--yes", check=True)   # the world changes after the plan was shown
    before = project.pids()
    assert set(before) == {"feed"}

    with pytest.raises(PlanChangedError) as caught:                # no one to ask: nothing is done
        apply(manifests, shown)
    assert _kinds(caught.value.plan) == {"extra": "add", "calc": "start", "feed": "unchanged"}
    declined = Asked(False)
    with pytest.raises(PlanChangedError):
        apply(manifests, shown, confirm=declined)
    assert [(s.fingerprint, n.fingerprint) for s, n in declined.calls] == [(shown.fingerprint, caught.value.plan.fingerprint)]
    assert project.pids() == before and not os.path.exists(project.state / "history" / "0002")

    accepted = Asked(True)
    report = apply(manifests, shown, confirm=accepted)
    assert len(accepted.calls) == 1 and report.replanned
    assert _kinds(report.plan) == {"extra": "add", "calc": "start", "feed": "unchanged"}
    after = project.pids()
    assert set(after) == {"feed", "calc", "extra"} and after["feed"] == before["feed"]

    same, _ = compute(manifests, client_for(manifests))             # an unchanged plan is carried out without a question
    silent = Asked(False)
    report = apply(manifests, same, confirm=silent)
    assert not silent.calls and not report.replanned and not report.plan.pending


def test_a_manifest_edited_between_plan_and_apply_is_not_applied_unseen(project):
    ports = dict(zip(["feed", "calc"], free_ports(2), strict=True))
    project.toy("feed", ports["feed"])
    project.toy("calc", ports["calc"], depends_on=["feed"])
    project.run("up", check=True)
    before = project.pids()
    project.toy("calc", ports["calc"], depends_on=["feed"], more="env: {MODE: one}\n")
    first = _load(project)
    shown, _ = compute(first, client_for(first))
    assert _kinds(shown)["calc"] == "replace"

    project.toy("calc", ports["calc"], depends_on=["feed"], more="env: {MODE: two}\n")   # edited again, unseen
    second = _load(project)
    with pytest.raises(PlanChangedError):
        apply(second, shown, confirm=Asked(False))
    assert project.pids() == before

    report = apply(second, shown, confirm=Asked(True))
    assert report.replanned and _kinds(report.plan)["calc"] == "replace"
    after = project.pids()
    assert after["feed"] == before["feed"] and after["calc"] != before["calc"]
    calc = wait_until(lambda: _environ_of(after["calc"]), 10, message="calc's environment")
    assert calc.get("MODE") == "two"


def _environ_of(pid: int) -> dict[str, str]:
    try:
        return psutil.Process(pid).environ()
    except psutil.Error:
        return {}


def test_a_change_of_the_settings_alone_is_planned_applied_as_a_version_and_restarts_only_the_exporter(project):
    """Regression: changing orchestrator.yaml's exporter settings or notifications alone was "Nothing to do", so
    the exporter kept its old settings and the daemons their old notification targets."""
    project.toy("feed", free_ports(1)[0])
    project.run("up", check=True)
    before = project.pids()

    def exporter_pid() -> int:
        return next(p.pid for p in client_for(load(LoadOptions(str(project.manifests)))).processes() if p.group == "_exporter")

    exporter = exporter_pid()
    settings = project.manifests / "orchestrator.yaml"
    settings.write_text(settings.read_text().replace("}", ", interval: 2s}")
                        + "notifications:\n  - {name: desk, url: \"http://127.0.0.1:9/hook\"}\n")
    planned = project.run("plan")
    assert planned.returncode == 2 and "settings (exporter, notifications)" in planned.stdout, planned.stdout
    applied = project.run("apply", check=True)
    assert "Applied as version 2" in applied.stdout, applied.stdout + applied.stderr
    assert json.loads((project.state / "current" / "settings.json").read_text())["exporter"]["interval"] == 2.0
    assert project.pids() == before                    # no agent restarted
    wait_until(lambda: exporter_pid() not in (0, exporter), 20, message="the exporter to restart with its new settings")
    assert project.run("plan").returncode == 0         # and nothing is pending any more
