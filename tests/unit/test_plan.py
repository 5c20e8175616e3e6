"""The plan is a pure function of desired state, observed state and the live version."""

from __future__ import annotations

import json

from orchestrator.core.processes import ProcessInfo
from orchestrator.core.model import Agent, ManifestSet, Probe, Settings
from orchestrator.core.errors import Location
from orchestrator.core.plan import Observed, fingerprint, plan, to_lines


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


# --- the fingerprint: what a plan was computed from ----------------------------

def _world(**changes):
    """The arguments of `plan` for two running agents, with `changes` (keyword -> value) replacing some."""
    feed, calc = _agent("feed"), _agent("calc", depends_on=("feed",))
    args = {
        "desired": _set(feed, calc),
        "programs": _programs(feed, calc),
        "observed": Observed.of([_proc("feed"), _proc("calc"), _proc("_orchestrator")], {"feed": "f1", "calc": "c1"}),
        "last_agents": {"feed": feed, "calc": calc},
        "last_programs": _programs(feed, calc),
        "hashes": {"feed": "f1", "calc": "c1"},
    }
    args.update(changes)
    return args


def _fingerprint(**changes) -> str:
    args = _world(**changes)
    hashes = args.pop("hashes")
    return plan(*args.values(), hashes=hashes).fingerprint


def _with_pid(process: ProcessInfo, pid: int, start: int, now: int) -> ProcessInfo:
    return ProcessInfo(name=process.name, group=process.group, state=process.state, pid=pid, start=start, now=now,
                       exitstatus=process.exitstatus, spawnerr=process.spawnerr, description=f"pid {pid}, uptime {now - start}")


def test_a_plan_carries_the_fingerprint_of_its_inputs_and_it_is_stable_across_computations():
    args = _world()
    hashes = args.pop("hashes")
    first = plan(*args.values(), hashes=hashes)
    assert first.fingerprint and first.fingerprint == plan(*args.values(), hashes=hashes).fingerprint
    assert first.fingerprint == fingerprint(*args.values(), hashes=hashes)
    assert json.loads(first.to_json())["fingerprint"] == first.fingerprint


def test_the_fingerprint_ignores_pids_uptimes_exit_statuses_and_orchestrators_own_programs():
    base = _fingerprint()
    noisy = Observed.of([_with_pid(_proc("feed"), 4242, 10, 99), _with_pid(_proc("calc"), 4343, 50, 99),
                         _with_pid(_proc("_orchestrator"), 17, 1, 99)], {"feed": "f1", "calc": "c1", "_orchestrator": "x"})
    assert _fingerprint(observed=noisy) == base
    without_listener = Observed.of([_proc("feed"), _proc("calc")], {"feed": "f1", "calc": "c1"})
    assert _fingerprint(observed=without_listener) == base
    starting = Observed.of([_proc("feed", "STARTING"), _proc("calc")], {"feed": "f1", "calc": "c1"})
    assert _fingerprint(observed=starting) == base  # starting or running: up either way, the plan does not change


def test_the_fingerprint_ignores_where_an_agent_was_read_from_and_comments_in_its_section():
    feed, calc = _agent("feed", source=Location("/elsewhere/feed.yaml", 3, 1)), _agent("calc", depends_on=("feed",))
    programs = {n: "; a comment that moved\n" + p for n, p in _programs(feed, calc).items()}
    assert _fingerprint(desired=_set(feed, calc), programs=programs) == _fingerprint()


def test_the_fingerprint_changes_with_the_observed_state_that_decides_actions():
    base = _fingerprint()
    down = Observed.of([_proc("feed", "EXITED"), _proc("calc")], {"feed": "f1", "calc": "c1"})
    extra = Observed.of([_proc("feed"), _proc("calc"), _proc("stray")], {"feed": "f1", "calc": "c1"})
    missing = Observed.of([_proc("feed")], {"feed": "f1"})
    older = Observed.of([_proc("feed"), _proc("calc")], {"feed": "f0", "calc": "c1"})
    variants = {"an agent went down": down, "a group appeared": extra, "a group went away": missing,
                "supervisord holds another configuration": older, "supervisord stopped": Observed(running=False)}
    for why, observed in variants.items():
        assert _fingerprint(observed=observed) != base, why


def test_the_fingerprint_changes_with_the_desired_state_and_the_live_version():
    base = _fingerprint()
    feed, calc = _agent("feed"), _agent("calc", depends_on=("feed",))
    env_feed = _agent("feed", env={"A": "1"})
    assert _fingerprint(desired=_set(env_feed, calc), programs=_programs(env_feed, calc)) != base, "an edited agent"
    assert _fingerprint(desired=_set(feed), programs=_programs(feed)) != base, "an agent removed from the manifests"
    quick = _agent("feed", priority=1)
    assert _fingerprint(desired=_set(quick, calc)) != base, "a field that needs no restart (an update)"
    assert _fingerprint(hashes={"feed": "f2", "calc": "c1"}) != base, "another configuration hash"
    assert _fingerprint(last_agents={"feed": env_feed, "calc": calc}) != base, "another apply changed the live version"
    assert _fingerprint(last_agents=None, last_programs=None) != base, "no live version"


def test_a_change_of_the_kept_settings_alone_is_pending_restarts_nothing_and_is_recorded():
    """Regression: a change of orchestrator.yaml's notifications (or the exporter's settings) alone was "Nothing to
    do": no version was recorded, so the daemons kept the old notification targets until some agent changed."""
    from dataclasses import replace

    from orchestrator.core.model import Notification, kept_settings
    feed = _agent("feed")
    before = _set(feed)
    after = replace(before, settings=replace(before.settings, notifications=(Notification(name="desk", url="http://127.0.0.1:9/h"),)))
    kept = json.loads(json.dumps(kept_settings(before)))   # as the live version keeps it on disk
    same = plan(before, _programs(feed), Observed.of([_proc("feed")]), {"feed": feed}, _programs(feed), last_settings=kept)
    assert not same.pending and same.settings == ()
    changed = plan(after, _programs(feed), Observed.of([_proc("feed")]), {"feed": feed}, _programs(feed), last_settings=kept)
    assert changed.pending and changed.changes_config and changed.settings == ("notifications",)
    assert [a.kind for a in changed.actions] == ["unchanged"]   # no agent restarts
    assert changed.fingerprint != same.fingerprint
    assert json.loads(changed.to_json())["settings"] == ["notifications"]
    assert any("settings (notifications)" in line for line, _ in to_lines(changed))
    # nothing applied yet: the first apply records everything anyway, and no setting is called changed
    assert plan(after, _programs(feed), Observed.of([]), None, None).settings == ()


def test_an_edit_of_the_text_alone_is_pending_recorded_and_named_only_when_nothing_else_changed():
    feed = _agent("feed")
    result = plan(_set(feed), _programs(feed), Observed.of([_proc("feed")]), {"feed": feed}, _programs(feed),
                  edited=("agents/feed.yaml",))
    assert result.pending and result.changes_config and result.text_only
    assert [a.kind for a in result.actions] == ["unchanged"]
    assert any("~ text of agents/feed.yaml" in line for line, _ in to_lines(result))
    new = _agent("feed", priority=3)
    both = plan(_set(new), _programs(new), Observed.of([_proc("feed")]), {"feed": feed}, _programs(feed),
                edited=("agents/feed.yaml",))
    assert not both.text_only and not any("~ text of" in line for line, _ in to_lines(both))
    assert json.loads(both.to_json())["edited"] == ["agents/feed.yaml"]
    first = plan(_set(feed), _programs(feed), Observed.of([]), None, None, edited=("agents/feed.yaml",))
    assert first.edited == ()   # nothing applied yet: nothing to compare the text with
