"""The plan is a pure function of desired state, observed state and the live version."""

from __future__ import annotations

import json

from orchestrator.core.processes import ProcessInfo
from orchestrator.core.model import Agent, ManifestSet, Probe, Settings
from orchestrator.core.plan import Observed, plan, to_lines


def _agent(name: str, **fields) -> Agent:
    return Agent(name=name, command=("sleep", "60"), **fields)


def _set(*agents: Agent) -> ManifestSet:
    return ManifestSet(settings=Settings(), agents=agents, manifests_dir="/m", state_dir="/s")


def _proc(group: str, state: str = "RUNNING", name: str | None = None) -> ProcessInfo:
    return ProcessInfo(name=name or group, group=group, state=state, pid=100, start=1, now=2, exitstatus=0, spawnerr="",
                       description="")


def _programs(*agents: Agent, marker: str = "") -> dict[str, str]:
    return {a.name: f"; agent {a.name}\n[program:{a.name}]\ncommand={' '.join(a.command)}{marker}\n" for a in agents}


def test_nothing_is_pending_when_everything_matches_and_runs():
    feed = _agent("feed")
    result = plan(_set(feed), _programs(feed), Observed.of([_proc("feed")]), {"feed": feed}, _programs(feed))
    assert [a.kind for a in result.actions] == ["unchanged"] and not result.pending
    assert to_lines(result)[-1][0] == "Nothing to do: 1 unchanged."


def test_a_changed_command_replaces_and_names_the_field():
    old, new = _agent("feed"), _agent("feed", env={"A": "1"})
    result = plan(_set(new), _programs(new, marker=" A=1"), Observed.of([_proc("feed")]), {"feed": old}, _programs(old))
    assert [(a.kind, a.fields) for a in result.actions] == [("replace", ("env",))]


def test_a_change_that_renders_the_same_is_an_update_without_restart():
    old = _agent("feed")
    new = _agent("feed", priority=5, readiness=Probe(tcp="127.0.0.1:1"))
    result = plan(_set(new), _programs(new), Observed.of([_proc("feed")]), {"feed": old}, _programs(old))
    assert [(a.kind, a.fields) for a in result.actions] == [("update", ("priority", "readiness"))]


def test_comments_in_the_rendered_section_do_not_count_as_a_change():
    feed = _agent("feed")
    moved = {"feed": _programs(feed)["feed"].replace("; agent feed", "; agent feed, from agents/elsewhere.yaml")}
    result = plan(_set(feed), moved, Observed.of([_proc("feed")]), {"feed": feed}, _programs(feed))
    assert result.actions[0].kind == "unchanged"


def test_new_removed_stopped_and_internal_groups_are_planned_as_such():
    feed, calc = _agent("feed"), _agent("calc")
    observed = Observed.of([_proc("feed", "EXITED"), _proc("gone"), _proc("_orchestrator")])
    result = plan(_set(feed, calc), _programs(feed, calc), observed, {"feed": feed}, _programs(feed))
    assert [(a.kind, a.agent) for a in result.actions] == [("remove", "gone"), ("add", "calc"), ("start", "feed")]
    assert json.loads(result.to_json())["pending"] is True


def test_without_supervisord_every_agent_is_to_add_and_the_plan_says_why():
    feed = _agent("feed")
    result = plan(_set(feed), _programs(feed), Observed(running=False), None, None)
    assert [(a.kind, a.reason) for a in result.actions] == [("add", "supervisord is not running")]
    assert "orchestrator up" in to_lines(result)[0][0]
