"""Versions as values: the semantic version of a change, a diff field by field, and retention that keeps what it must."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType

import pytest

from orchestrator.core.errors import StateError
from orchestrator.core.model import Agent, HistorySettings, ManifestSet, Probe, Settings
from orchestrator.core.plan import Observed, plan
from orchestrator.core.processes import ProcessInfo
from orchestrator.core.versions import (
    Side, agent_changes, between, bump, change_level, check_tag, content_hash, file_diffs, next_semver, to_prune,
)
from orchestrator.state.history import History


def _agent(name: str, **fields) -> Agent:
    return Agent(name=name, command=("sleep", "60"), **fields)


def _programs(*agents: Agent) -> dict[str, str]:
    return {a.name: f"[program:{a.name}]\ncommand={' '.join(a.command)} {sorted(a.env.items())}\n" for a in agents}


def _side(*agents: Agent, label: str = "v", settings: dict | None = None, files: dict | None = None) -> Side:
    return Side(label, {a.name: a for a in agents}, _programs(*agents), settings or {}, files or {})


def _proc(group: str) -> ProcessInfo:
    return ProcessInfo(name=group, group=group, state="RUNNING", pid=100, start=1, now=2, exitstatus=0, spawnerr="",
                       description="")


FEED, CALC = _agent("feed"), _agent("calc")


def _applied(old: tuple[Agent, ...], new: tuple[Agent, ...], **kwargs):
    """The plan apply carries out going from `old` (running) to `new`."""
    desired = ManifestSet(settings=Settings(), agents=new, manifests_dir="/m", state_dir="/s")
    return plan(desired, _programs(*new), Observed.of([_proc(a.name) for a in old]), {a.name: a for a in old},
                _programs(*old), **kwargs)


def test_the_first_version_is_1_0_0():
    first = _applied((), (FEED,))
    assert next_semver(None, first, None) == "1.0.0"


@pytest.mark.parametrize(("old", "new", "level", "semver"), [
    ((FEED,), (FEED, CALC), "major", "3.0.0"),                                   # an agent added
    ((FEED, CALC), (FEED,), "major", "3.0.0"),                                   # an agent removed
    ((FEED,), (replace(FEED, env=MappingProxyType({"A": "1"})),), "minor", "2.5.0"),   # a restart (replace)
    ((FEED,), (replace(FEED, priority=5, readiness=Probe(tcp="127.0.0.1:1")),), "patch", "2.4.8"),  # an update
    ((FEED,), (FEED,), "patch", "2.4.8"),                                        # nothing (comments, a rollback)
])
def test_the_semver_says_how_big_the_change_is(old, new, level, semver):
    carried_out = _applied(old, new)
    assert change_level(carried_out, [a.name for a in old]) == level
    assert next_semver("2.4.7", carried_out, [a.name for a in old]) == semver


def test_a_settings_only_change_is_a_patch():
    carried_out = _applied((FEED,), (FEED,), last_settings={"project": "other", "notifications": [], "exporter": {}})
    assert carried_out.settings and change_level(carried_out, ["feed"]) == "patch"


def test_an_agent_supervisord_lost_is_no_major_change_when_the_versions_hold_the_same_agents():
    """An agent removed from supervisord by hand is planned as an add, but the versions hold the same agents."""
    desired = ManifestSet(settings=Settings(), agents=(FEED,), manifests_dir="/m", state_dir="/s")
    lost = plan(desired, _programs(FEED), Observed(running=True), {"feed": FEED}, _programs(FEED))
    assert lost.names("add") == ("feed",)
    assert change_level(lost, ["feed"]) == "patch" and change_level(lost) == "major"


def test_bump_counts_from_1_0_0_without_a_readable_previous_semver():
    assert [bump(None, "patch"), bump("junk", "minor"), bump("1.9.9", "major")] == ["1.0.1", "1.1.0", "2.0.0"]


def test_a_diff_names_each_changed_field_old_to_new_and_whether_it_restarts():
    old = _side(FEED, _agent("calc", env={"MODE": "one"}), _agent("gone"), label="v1")
    new = _side(replace(FEED, readiness=Probe(tcp="127.0.0.1:1", timeout=5.0)), _agent("calc", env={"MODE": "two"}),
                _agent("extra"), label="v3")
    changes = {c.agent: c for c in agent_changes(old, new)}
    assert {n: (c.change, c.action, c.restarts) for n, c in changes.items()} == {
        "calc": ("changed", "replace", True), "feed": ("changed", "update", False),
        "extra": ("added", "add", False), "gone": ("removed", "remove", False)}
    assert [f.text() for f in changes["calc"].fields] == ["env.MODE: changed (value not shown)"]
    assert changes["calc"].fields[0].as_dict() == {"field": "env.MODE", "old": None, "new": None, "hidden": True}
    feed = {f.path: (f.old, f.new) for f in changes["feed"].fields}
    assert feed["readiness.timeout"] == (None, 5.0) and feed["readiness.tcp"] == (None, "127.0.0.1:1")
    assert between(old, new).fingerprint == ""


def test_settings_that_differ_between_versions_are_named():
    assert between(_side(FEED, settings={"project": "a"}), _side(FEED, settings={"project": "b"})).settings == ("project",)


def test_the_file_diff_is_a_unified_diff_per_changed_file_with_missing_sides_as_dev_null():
    old = _side(label="v1", files={"a.yaml": b"x: 1\n# kept\n", "gone.yaml": b"g\n", "same.yaml": b"s\n"})
    new = _side(label="v2", files={"a.yaml": b"x: 2\n# kept\n", "new.yaml": b"n\n", "same.yaml": b"s\n"})
    diffs = {d.path: d for d in file_diffs(old, new)}
    assert {p: d.status for p, d in diffs.items()} == {"a.yaml": "changed", "gone.yaml": "removed", "new.yaml": "added"}
    assert list(diffs["a.yaml"].lines) == ["--- v1/a.yaml", "+++ v2/a.yaml", "@@ -1,2 +1,2 @@", "-x: 1", "+x: 2", " # kept"]
    assert diffs["gone.yaml"].lines[:2] == ("--- v1/gone.yaml", "+++ /dev/null")


def test_the_content_hash_changes_with_any_byte_or_name():
    base = content_hash({"a": b"1", "b": b"2"})
    assert base == content_hash({"b": b"2", "a": b"1"})
    assert len({base, content_hash({"a": b"1", "b": b"3"}), content_hash({"a": b"1", "c": b"2"})}) == 3


def test_retention_deletes_the_oldest_beyond_keep_but_never_a_protected_version():
    assert to_prune([1, 2, 3, 4, 5], keep=3, protected=()) == [1, 2]
    assert to_prune([1, 2, 3, 4, 5], keep=3, protected={1}) == [2]
    assert to_prune([1, 2, 3], keep=5, protected=()) == []


def test_a_tag_is_a_name_never_a_number():
    assert check_tag("stable") is None and check_tag("release-1.2") is None
    assert check_tag("12") and check_tag("") and check_tag("a b")


# --- History: retention and tags on disk ---------------------------------------------------


class _Rendering:
    def __init__(self, text: str) -> None:
        self.files = {"supervisord.conf": f"; {text}\n", "programs/feed.conf": f"[program:feed]\n; {text}\n"}
        self.launch_files: dict[str, str] = {}
        self.problems: list[str] = []


def _record(history: History, manifests: ManifestSet, text: str, *, status: str = "applied") -> int:
    Path(manifests.manifests_dir, "agents", "feed.yaml").write_text(f"# {text}\nname: feed\n")
    version = history.record(manifests, _Rendering(text), message=text, semver="1.0.0")
    history.mark(version, status)
    return version.number


@pytest.fixture
def recorded(tmp_path):
    manifests_dir = tmp_path / "manifests"
    (manifests_dir / "agents").mkdir(parents=True)
    (manifests_dir / "orchestrator.yaml").write_text("project: t\n")

    def make(keep: int) -> tuple[History, ManifestSet]:
        settings = Settings(history=HistorySettings(keep=keep))
        manifests = ManifestSet(settings=settings, agents=(FEED,), manifests_dir=str(manifests_dir),
                                state_dir=str(tmp_path / "state"))
        return History(manifests.state_dir), manifests

    return make


def test_a_version_records_who_how_and_a_hash_of_what_it_stored(recorded):
    history, manifests = recorded(keep=10)
    number = _record(history, manifests, "one")
    meta = json.loads(Path(history.root, f"{number:04d}", "version.json").read_text())
    assert (meta["semver"], meta["command"], meta["rollback_of"]) == ("1.0.0", "apply", None)
    assert meta["user"] and len(meta["content_hash"]) == 64
    assert history.stored_files(history.get(number)) == {"orchestrator.yaml": b"project: t\n",
                                                         os.path.join("agents", "feed.yaml"): b"# one\nname: feed\n"}


def test_retention_keeps_the_newest_the_tagged_and_the_live_version(recorded):
    history, manifests = recorded(keep=3)
    for index in range(1, 4):
        _record(history, manifests, f"v{index}")
    history.tag(1, "stable")
    for index in range(4, 7):
        _record(history, manifests, f"v{index}")
    assert history.numbers() == [1, 4, 5, 6]          # 2 and 3 deleted; 1 is tagged
    assert history.live_number() == 6 and history.tags() == {"stable": 1}
    assert not [n for n in os.listdir(history.root) if n.startswith(".tmp-")]


def test_retention_never_deletes_the_newest_applied_version_a_rollback_on_failure_returns_to(recorded):
    history, manifests = recorded(keep=1)
    _record(history, manifests, "good")
    _record(history, manifests, "bad", status="failed")
    assert history.numbers() == [1, 2]
    _record(history, manifests, "worse", status="failed")
    assert history.numbers() == [1, 3]


def test_a_tag_on_another_version_moves_only_when_forced(recorded):
    history, manifests = recorded(keep=10)
    _record(history, manifests, "one")
    _record(history, manifests, "two")
    history.tag(1, "stable")
    with pytest.raises(StateError, match="tag 'stable' is on version 1"):
        history.tag(2, "stable")
    assert history.tag(2, "stable", force=True) == 1 and history.tags() == {"stable": 2}
    with pytest.raises(StateError, match="no version 7"):
        history.tag(7, "other")
    with pytest.raises(StateError, match="a tag is a letter"):
        history.tag(1, "42")


def test_history_show_and_tag_read_the_state_directory_and_name_the_versions_there_are(recorded):
    from click.testing import CliRunner

    from orchestrator.interfaces.cli import cli

    history, manifests = recorded(keep=10)
    _record(history, manifests, "one")
    _record(history, manifests, "two")

    def run(*args: str):
        return CliRunner().invoke(cli, ["--state-dir", history.state_dir, *args])

    assert run("tag", "1", "stable").exit_code == 0
    rows = json.loads(run("history", "--output", "json").stdout)
    assert [(r["number"], r["semver"], r["message"], r["tags"], r["live"]) for r in rows] == [
        (1, "1.0.0", "one", ["stable"], False), (2, "1.0.0", "two", [], True)]
    text = run("history").stdout.splitlines()
    assert text[0].split() == ["VERSION", "SEMVER", "TIME", "USER", "COMMAND", "STATUS", "TAGS", "MESSAGE"]
    assert text[2].startswith("*") and text[1].split()[-2:] == ["stable", "one"]
    assert run("show", "stable", "--file", "agents/feed.yaml").stdout == "# one\nname: feed\n"
    assert "agents/feed.yaml" in run("show", "v2").stdout
    for args in (["show", "3"], ["show", "nope"], ["tag", "5", "x"], ["diff", "1", "9"]):
        done = run(*args)
        assert done.exit_code == 1 and "the versions are 1-2; tags: stable=1" in done.stderr, (args, done.output)
