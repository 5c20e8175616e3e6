"""Versions: each apply is recorded with a semantic version, two versions diff field by field, and a rollback puts
an older version's manifest text back byte for byte and applies it, restarting only what differs."""

from __future__ import annotations

import json

import psutil
import pytest

from orchestrator.state.history import read_manifest_files
from tests.integration.conftest import Project, free_ports, wait_until

pytestmark = pytest.mark.integration


def _commented(project: Project, rel: str, comment: str) -> None:
    """Put an operator's YAML comment (and a blank line) at the top of a manifest: a rollback must bring it back."""
    path = project.manifests / rel
    path.write_text(f"# {comment}\n\n" + path.read_text())


def _history(project: Project) -> list[dict]:
    done = project.run("history", "--output", "json", check=True)
    return json.loads(done.stdout)


def _environ(pid: int) -> dict[str, str]:
    try:
        return psutil.Process(pid).environ()
    except psutil.Error:
        return {}


def _changed_lines(diff: dict) -> list[str]:
    return [line for line in diff["diff"] if line[:1] in "+-" and not line.startswith(("---", "+++"))]


def test_versions_are_recorded_diffed_and_rolled_back_byte_for_byte_restarting_only_what_differs(project):
    ports = dict(zip(["feed", "calc", "risk"], free_ports(3), strict=True))
    project.toy("feed", ports["feed"])
    project.toy("calc", ports["calc"], depends_on=["feed"], more="env: {MODE: one}   # the first mode\n")
    project.toy("risk", ports["risk"], depends_on=["feed"])
    for name in ("feed", "calc", "risk"):
        _commented(project, f"agents/{name}.yaml", f"{name}: kept verbatim, comments and blank lines too")
    project.run("up", check=True)
    v1_files = read_manifest_files(str(project.manifests))
    first = project.pids()
    assert set(first) == {"feed", "calc", "risk"}

    calc = project.manifests / "agents/calc.yaml"            # v2: an env change, which restarts calc alone
    calc.write_text(calc.read_text().replace("MODE: one}   # the first mode", "MODE: two}   # the second mode"))
    done = project.run("apply", "--yes", "-M", "mode two", check=True)
    assert "Applied as version 2" in done.stdout, done.stdout
    second = project.pids()
    assert second["feed"] == first["feed"] and second["risk"] == first["risk"] and second["calc"] != first["calc"]

    risk = project.manifests / "agents/risk.yaml"            # v3: a probe change, which restarts nothing
    risk.write_text(risk.read_text().replace("timeout: 10s", "timeout: 5s"))
    done = project.run("apply", "--yes", "-M", "shorter probe", check=True)
    assert "Applied as version 3" in done.stdout and "update   risk (readiness)" in done.stdout, done.stdout
    assert project.pids() == second

    versions = _history(project)
    assert [(v["number"], v["semver"], v["command"], v["status"], v["live"]) for v in versions] == [
        (1, "1.0.0", "up", "applied", False),      # the first version
        (2, "1.1.0", "apply", "applied", False),   # minor: an agent restarted
        (3, "1.1.1", "apply", "applied", True),    # patch: nothing restarted
    ]
    assert [v["message"] for v in versions][1:] == ["mode two", "shorter probe"]
    assert all(v["user"] and v["content_hash"] and v["rollback_of"] is None for v in versions)
    assert len({v["content_hash"] for v in versions}) == 3

    done = project.run("diff", "1", "3", "--output", "json", check=True)
    diff = json.loads(done.stdout)
    assert (diff["from"], diff["to"], diff["settings"]) == ("v1", "v3", [])
    agents = {a["agent"]: a for a in diff["agents"]}
    assert set(agents) == {"calc", "risk"}                   # feed did not change
    assert (agents["calc"]["change"], agents["calc"]["action"], agents["calc"]["restart"]) == ("changed", "replace", True)
    assert agents["calc"]["fields"] == [{"field": "env.MODE", "old": None, "new": None, "hidden": True}]
    assert (agents["risk"]["action"], agents["risk"]["restart"]) == ("update", False)
    assert agents["risk"]["fields"] == [{"field": "readiness.timeout", "old": 10.0, "new": 5.0}]
    files = {f["path"]: f for f in diff["files"]}
    assert set(files) == {"agents/calc.yaml", "agents/risk.yaml"} and {f["status"] for f in files.values()} == {"changed"}
    assert _changed_lines(files["agents/calc.yaml"]) == ["-env: {MODE: one}   # the first mode",
                                                        "+env: {MODE: two}   # the second mode"]
    risk_lines = _changed_lines(files["agents/risk.yaml"])
    assert len(risk_lines) == 2 and risk_lines[0].startswith("-readiness:") and "timeout: 10s" in risk_lines[0]
    assert risk_lines[1] == risk_lines[0].replace("-", "+", 1).replace("timeout: 10s", "timeout: 5s")
    text = project.run("diff", "1", "3", check=True).stdout
    assert "~ calc: changed, restarts" in text and "env.MODE: changed (value not shown)" in text
    assert "~ risk: changed, updated, no restart" in text and "readiness.timeout: 10 -> 5" in text
    assert "--- v1/agents/calc.yaml" in text and "+++ v3/agents/calc.yaml" in text and "feed.yaml" not in text and " feed:" not in text

    done = project.run("rollback", "1", "--yes")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "restores configuration, not data" in done.stdout
    assert "Rolled back to version 1: recorded as version 4" in done.stdout, done.stdout
    assert read_manifest_files(str(project.manifests)) == v1_files     # the operator's text, byte for byte
    after = project.pids()
    assert after["feed"] == first["feed"] and after["risk"] == first["risk"]   # unchanged v1 -> v3, or updated only
    assert after["calc"] != second["calc"]
    assert wait_until(lambda: _environ(after["calc"]).get("MODE"), 10, message="calc's environment") == "one"
    latest = _history(project)[-1]
    assert (latest["number"], latest["command"], latest["rollback_of"], latest["status"], latest["live"]) == \
        (4, "rollback", 1, "applied", True)
    assert latest["semver"] == "1.2.0"                       # a rollback that restarts calc is a minor change
    assert project.run("plan").returncode == 0               # the running configuration is v1's again
    assert "No difference between v4 and disk" in project.run("diff", check=True).stdout
    assert json.loads(project.run("diff", "1", "4", "--output", "json", check=True).stdout)["same"]

    wrong = project.run("show", "9")
    assert wrong.returncode == 1 and "no version 9: the versions are 1-4" in wrong.stderr, wrong.stderr
    shown = project.run("show", "2", "--file", "agents/calc.yaml", check=True)
    assert "MODE: two}   # the second mode" in shown.stdout


def test_an_apply_whose_changed_agent_fails_rolls_back_to_the_last_applied_version_when_asked(project):
    ports = dict(zip(["feed", "calc"], free_ports(2), strict=True))
    project.toy("feed", ports["feed"])
    project.toy("calc", ports["calc"], depends_on=["feed"], more="restart: {policy: immediate, max_attempts: 1}\n")
    _commented(project, "agents/calc.yaml", "calc as it works")
    project.run("up", check=True)
    v1_files = read_manifest_files(str(project.manifests))
    before = project.pids()

    project.toy("calc", ports["calc"], depends_on=["feed"], extra=["--no-such-option"],   # v2 exits at once
                more="restart: {policy: immediate, max_attempts: 1}\n")
    done = project.run("apply", "--yes", "--rollback-on-failure")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "calc did not become ready" in done.stderr and "--no-such-option" in done.stderr
    assert "rolled back to version 1: recorded as version 3" in done.stderr, done.stderr
    assert read_manifest_files(str(project.manifests)) == v1_files
    versions = _history(project)
    assert [(v["number"], v["status"], v["command"], v["rollback_of"]) for v in versions] == [
        (1, "applied", "up", None), (2, "failed", "apply", None), (3, "applied", "rollback", 1)]
    after = project.pids()
    assert after["feed"] == before["feed"] and "calc" in after      # v1's calc runs again; feed was never touched
    assert project.run("plan").returncode == 0


def test_a_comment_alone_is_a_patch_version_that_restarts_nothing(project):
    """The text of the manifests is part of a version (rollback writes it back byte for byte): an edit of a comment
    alone is planned, and recorded as a patch version, with every agent keeping its PID."""
    project.toy("feed", free_ports(1)[0])
    project.run("up", check=True)
    before = project.pids()
    path = project.manifests / "agents" / "feed.yaml"
    path.write_text("# the market-data feed: restart it only in the lunch break\n" + path.read_text())
    planned = project.run("plan")
    assert planned.returncode == 2 and "~ text of agents/feed.yaml" in planned.stdout, planned.stdout
    project.run("apply", check=True)
    versions = json.loads(project.run("history", "--output", "json", check=True).stdout)
    assert [v["semver"] for v in versions][-2:] == ["1.0.0", "1.0.1"], versions
    assert project.pids() == before
    assert project.run("plan").returncode == 0
    assert read_manifest_files(str(project.state / "current" / "manifests"))["agents/feed.yaml"] == path.read_bytes()
