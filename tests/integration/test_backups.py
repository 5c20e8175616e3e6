"""backup and restore against a real supervisord: a restore with --apply gives back the backed-up manifests byte for
byte and the agents run them; every apply that records a version keeps the version it replaces in STATE/backups."""

from __future__ import annotations

import json
from pathlib import Path

import psutil
import pytest

from orchestrator.state import backup as archive
from tests.integration.conftest import Project, free_ports, wait_until

pytestmark = pytest.mark.integration


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _flavour(project: Project, agent: str) -> str | None:
    pid = project.pids().get(agent)
    return psutil.Process(pid).environ().get("FLAVOUR") if pid else None


def _live_meta(project: Project) -> dict[str, object]:
    return json.loads((project.state / "current" / "version.json").read_text())


def test_a_restore_with_apply_gives_back_the_backed_up_manifests_and_the_agents_run_them(project):
    feed, calc, extra = free_ports(3)
    project.toy("feed", feed, more="env: {FLAVOUR: one}\n")
    project.toy("calc", calc, depends_on=["feed"])
    project.run("up", check=True)
    saved = project.root / "saved.tar.gz"
    done = project.run("backup", str(saved), check=True)
    assert "Wrote" in done.stdout and "live: 1" in done.stdout, done.stdout
    backed_up = _files(project.manifests)
    assert _flavour(project, "feed") == "one"

    project.toy("feed", feed, more="env: {FLAVOUR: two}\n")
    project.toy("extra", extra)
    project.run("apply", "--yes", check=True)
    assert _flavour(project, "feed") == "two" and "extra" in project.pids()
    assert project.run("backup", str(saved)).returncode == 1  # never overwritten without --force

    restored = project.run("restore", "--yes", "--apply", str(saved), check=True)
    assert "verified" in restored.stdout and "delete" in restored.stdout, restored.stdout
    assert _files(project.manifests) == backed_up
    assert _flavour(project, "feed") == "one"
    wait_until(lambda: "extra" not in project.pids(), 10, message="extra removed")
    meta = _live_meta(project)
    assert meta["number"] == 3 and meta["status"] == "applied"
    assert meta["message"] == f"restored from {saved}"
    assert project.run("plan").returncode == 0  # nothing left to do: the agents run what was restored

    safety = archive.listed(str(project.state), archive.SAFETY_PREFIX)
    assert len(safety) == 1 and "agents/extra.yaml" in archive.verify(safety[0]).manifests


def test_each_apply_that_records_a_version_keeps_the_one_it_replaces_and_the_last_ten_only(project):
    (port,) = free_ports(1)
    project.toy("feed", port)
    project.run("up", check=True)
    assert archive.listed(str(project.state)) == []  # the first version replaced nothing
    pid = project.pids()["feed"]
    settings = (project.manifests / "orchestrator.yaml").read_text()
    for n in range(12):  # a change of the project name alone: a version each time, and no restart
        (project.manifests / "orchestrator.yaml").write_text(settings.replace("project: test", f"project: test-{n}"))
        project.run("apply", "--yes", check=True)
    kept = archive.listed(str(project.state))
    assert len(kept) == archive.KEEP
    # versions 2-13 were recorded, each backing up the one before: 1-12; the backups of 1 and 2 were pruned
    assert [archive.verify(path).current for path in kept] == list(range(3, 13))
    last = archive.verify(kept[-1])
    assert last.versions == [12] and last.project == "test-10"
    assert project.pids()["feed"] == pid
