"""Drift is a pure function of what the live version recorded, what supervisord holds and runs, and what orchestrator
itself did; the plan carries it, counts it as pending, and replaces an agent whose configuration supervisord holds
edited. Also: the hashes a version records, the files put back, and supervisord's configuration digests."""

from __future__ import annotations

import json
import os

from orchestrator.core.drift import Drift, detect
from orchestrator.core.model import Agent, ManifestSet, RestartPolicy, Settings
from orchestrator.core.plan import Observed, plan, to_lines
from orchestrator.core.policies import AgentHistory
from orchestrator.core.processes import ProcessInfo
from orchestrator.state import rendered


def _agent(name: str, **fields) -> Agent:
    return Agent(name=name, command=("sleep", "60"), **fields)


def _proc(group: str, state: str = "RUNNING", name: str | None = None) -> ProcessInfo:
    return ProcessInfo(name=name or group, group=group, state=state, pid=100, start=1, now=2, exitstatus=0, spawnerr="",
                       description="")


AGENTS = {"feed": _agent("feed"), "calc": _agent("calc")}
FILES = {"supervisord.conf": "m1", "programs/feed.conf": "f1", "programs/calc.conf": "c1"}
DIGESTS = {"feed": "d-feed", "calc": "d-calc"}


def _detect(*, on_disk=FILES, groups=None, held=DIGESTS, histories=None, **kw) -> tuple[Drift, ...]:
    groups = {"feed": (_proc("feed"),), "calc": (_proc("calc"),)} if groups is None else groups
    return detect(version=3, agents=kw.pop("agents", AGENTS), recorded=kw.pop("recorded", FILES), on_disk=on_disk,
                  groups=groups, held=held, applied=kw.pop("applied", DIGESTS), histories=histories or {}, **kw)


def _kinds(found: tuple[Drift, ...]) -> list[tuple[str, str]]:
    return [(d.kind, d.subject) for d in found]


def test_nothing_changed_is_no_drift():
    assert _detect() == ()


def test_an_edited_a_deleted_and_an_added_rendered_file_are_each_drift_with_their_agent():
    on_disk = {"supervisord.conf": "m2", "programs/feed.conf": "f1", "programs/stray.conf": "s"}
    found = _detect(on_disk=on_disk)
    assert _kinds(found) == [("file", "programs/calc.conf"), ("file", "programs/stray.conf"), ("file", "supervisord.conf")]
    calc, stray, main = found
    assert (calc.agent, calc.detail, calc.fix) == ("calc", "deleted since version 3 was applied",
                                                   "apply writes it again from version 3")
    assert (stray.agent, stray.fix) == ("stray", "apply deletes it")
    assert (main.agent, main.detail, main.done) == ("", "edited since version 3 was applied", "rewritten from version 3")


def test_a_version_recorded_without_file_hashes_reports_no_file_drift():
    assert _detect(recorded=None, on_disk={"supervisord.conf": "anything"}) == ()


def test_a_configuration_supervisord_holds_other_than_the_one_apply_gave_it_is_drift():
    found = _detect(held={**DIGESTS, "calc": "d-edited"})
    assert _kinds(found) == [("config", "calc")]
    assert found[0].fix == "apply restarts it with the live configuration"
    assert _detect(held=None) == () and _detect(applied=None, held={"calc": "x"}) == ()   # unknown: not drift


def test_a_group_added_and_an_agent_removed_outside_orchestrator_are_drift_but_internal_groups_are_not():
    groups = {"feed": (_proc("feed"),), "stray": (_proc("stray"),), "_orchestrator": (_proc("_orchestrator"),)}
    found = _detect(groups=groups)
    assert _kinds(found) == [("added", "stray"), ("removed", "calc")]
    assert found[0].fix == "apply stops and removes it" and found[1].fix == "apply adds it back and starts it"
    declared_now = _detect(groups=groups, wanted={"feed", "stray"})
    assert [d.fix for d in declared_now] == ["apply replaces it with the manifests' agent",
                                             "nothing: the manifests no longer declare it"]


def test_an_agent_stopped_outside_orchestrator_is_drift():
    found = _detect(groups={"feed": (_proc("feed"),), "calc": (_proc("calc", "STOPPED"),)})
    assert _kinds(found) == [("stopped", "calc")]
    assert found[0].line() == "calc: stopped outside orchestrator (apply starts it)"


def test_one_replica_stopped_outside_orchestrator_is_named():
    calc = (_proc("calc", name="calc_0"), _proc("calc", "STOPPED", name="calc_1"))
    found = _detect(groups={"feed": (_proc("feed"),), "calc": calc})
    assert [d.detail for d in found] == ["calc_1 stopped outside orchestrator"]


def test_what_orchestrator_stopped_or_the_restart_keeper_handles_is_not_drift():
    down = {"feed": (_proc("feed", "STOPPED"),), "calc": (_proc("calc", "STOPPED"),)}
    for history in (AgentHistory(stopped=True), AgentHistory(given_up=True), AgentHistory(next_restart_at=5.0),
                    AgentHistory(waiting_for="feed")):
        assert _detect(groups=down, histories={"feed": history, "calc": history}) == (), history
    assert _detect(groups=down, latched=True) == ()          # the emergency stop
    assert _detect(groups=down, standing_down=True) == ()    # down in progress
    crashed = {"feed": (_proc("feed", "EXITED"),), "calc": (_proc("calc", "BACKOFF"),)}
    assert _detect(groups=crashed) == ()                      # exits are the keeper's, and status's to show
    manual = {"calc": _agent("calc", restart=RestartPolicy(policy="manual")), "feed": AGENTS["feed"]}
    assert _detect(groups=down, agents=manual, histories={"calc": AgentHistory(failures=(1.0,)),
                                                          "feed": AgentHistory(stopped=True)}) == ()


def test_an_agent_the_operator_stopped_that_runs_again_is_drift_and_apply_forgets_that_stop():
    found = _detect(histories={"calc": AgentHistory(stopped=True)})
    assert _kinds(found) == [("started", "calc")]
    assert found[0].fix == "apply keeps it running and forgets that stop, so its restart policy applies again"


def test_an_agent_running_under_the_emergency_latch_is_drift_and_apply_stops_it_again():
    found = _detect(groups={"feed": (_proc("feed", "STOPPED"),), "calc": (_proc("calc"),)}, latched=True)
    assert _kinds(found) == [("started", "calc")] and found[0].fix == "apply stops it again"


def test_without_supervisord_only_the_files_are_compared():
    found = detect(version=1, agents=AGENTS, recorded=FILES, on_disk={**FILES, "programs/feed.conf": "x"}, groups=None,
                   held=None, applied=None, histories={})
    assert _kinds(found) == [("file", "programs/feed.conf")]


# -- the plan carries drift ------------------------------------------------------------------------------


def _set(*agents: Agent) -> ManifestSet:
    return ManifestSet(settings=Settings(), agents=agents, manifests_dir="/m", state_dir="/s")


def _programs(*agents: Agent) -> dict[str, str]:
    return {a.name: f"[program:{a.name}]\ncommand={' '.join(a.command)}\n" for a in agents}


def test_drift_makes_the_plan_pending_and_is_shown_and_in_json():
    feed = _agent("feed")
    found = (Drift("file", "programs/feed.conf", "edited since version 1 was applied", "apply rewrites it from version 1",
                   "feed"),)
    result = plan(_set(feed), _programs(feed), Observed.of([_proc("feed")]), {"feed": feed}, _programs(feed), drift=found)
    assert result.pending and not result.changes_config and [a.kind for a in result.actions] == ["unchanged"]
    lines = [line for line, _ in to_lines(result)]
    assert lines[0] == "Drift (changed outside orchestrator):"
    assert lines[1] == "    ! programs/feed.conf: edited since version 1 was applied (apply rewrites it from version 1)"
    assert lines[-1] == "Plan: 1 unchanged, 1 changed outside orchestrator."
    assert json.loads(result.to_json())["drift"] == [{"kind": "file", "subject": "programs/feed.conf", "agent": "feed",
                                                      "detail": "edited since version 1 was applied",
                                                      "fix": "apply rewrites it from version 1"}]
    clean = plan(_set(feed), _programs(feed), Observed.of([_proc("feed")]), {"feed": feed}, _programs(feed))
    assert clean.fingerprint != result.fingerprint and json.loads(clean.to_json())["drift"] == []


def test_a_configuration_held_edited_is_replaced_without_recording_a_version():
    feed = _agent("feed")
    found = (Drift("config", "feed", "supervisord holds ...", "apply restarts it with the live configuration", "feed"),)
    result = plan(_set(feed), _programs(feed), Observed.of([_proc("feed")]), {"feed": feed}, _programs(feed), drift=found)
    assert [(a.kind, a.reason) for a in result.actions] == [("replace", "configuration changed outside orchestrator")]
    assert result.pending and not result.changes_config


# -- the rendered files as recorded and on disk ------------------------------------------------------------


def _state(tmp_path) -> tuple[str, str, dict[str, str]]:
    state = str(tmp_path)
    version = os.path.join(state, "history", "0001")
    files = {"supervisord.conf": "[supervisord]\n", "programs/feed.conf": "[program:feed]\ncommand=sleep 60\n"}
    for rel, text in files.items():
        os.makedirs(os.path.dirname(os.path.join(version, rel)), exist_ok=True)
        with open(os.path.join(version, rel), "w") as handle:
            handle.write(text)
    rendered.record(version, files)
    os.symlink(os.path.join("history", "0001"), os.path.join(state, "current"))
    os.symlink(os.path.join("current", "supervisord.conf"), os.path.join(state, "supervisord.conf"))
    return state, version, files


def test_the_hashes_recorded_match_the_files_until_one_is_edited_and_put_back(tmp_path):
    state, version, files = _state(tmp_path)
    assert rendered.on_disk(state) == rendered.recorded(version)
    with open(os.path.join(version, "programs", "feed.conf"), "a") as handle:
        handle.write("environment=X=1\n")
    with open(os.path.join(version, "programs", "stray.conf"), "w") as handle:
        handle.write("[program:stray]\n")
    os.unlink(os.path.join(state, "supervisord.conf"))
    with open(os.path.join(state, "supervisord.conf"), "w") as handle:  # a regular file over the link
        handle.write("[supervisord]\nloglevel=debug\n")
    recorded = rendered.recorded(version)
    changed = sorted(rel for rel in set(recorded) | set(rendered.on_disk(state))
                     if recorded.get(rel) != rendered.on_disk(state).get(rel))
    assert changed == ["programs/feed.conf", "programs/stray.conf", "supervisord.conf"]

    done, left = rendered.put_back(state, version, changed, files, recorded)
    assert (sorted(done), left) == (changed, [])
    assert rendered.on_disk(state) == recorded
    assert os.readlink(os.path.join(state, "supervisord.conf")) == os.path.join("current", "supervisord.conf")


def test_a_file_the_manifests_render_differently_is_left_as_it_is(tmp_path):
    state, version, files = _state(tmp_path)
    path = os.path.join(version, "programs", "feed.conf")
    with open(path, "a") as handle:
        handle.write("; edited\n")
    done, left = rendered.put_back(state, version, ["programs/feed.conf"], {"programs/feed.conf": "other"},
                                   rendered.recorded(version))
    assert (done, left) == ([], ["programs/feed.conf"])
    with open(path) as handle:
        assert handle.read().endswith("; edited\n")


def test_the_configuration_digests_apply_saw_are_kept(tmp_path):
    assert rendered.held(str(tmp_path)) is None
    rendered.keep_held(str(tmp_path), {"feed": "abc"})
    assert rendered.held(str(tmp_path)) == {"feed": "abc"}


# -- supervisord's digest of a group's configuration ------------------------------------------------------


def _parsed(tmp_path, extra: str = ""):
    """The process groups supervisord's own parser makes of a configuration."""
    from supervisor.options import ServerOptions

    conf = tmp_path / "supervisord.conf"
    conf.write_text(f"[supervisord]\nlogfile={tmp_path}/s.log\npidfile={tmp_path}/s.pid\n"
                    f"[program:feed]\ncommand=sleep 60\nautostart=false\nenvironment=A=\"1\"{extra}\n"
                    f"stdout_logfile={tmp_path}/feed.log\n")
    options = ServerOptions()
    options.configfile = str(conf)
    options.process_config(do_usage=False)
    return {g.name: g for g in options.process_group_configs}


def test_the_digest_of_a_configuration_is_the_same_in_any_parse_and_changes_with_an_edit(tmp_path):
    from orchestrator.supervisord.extension import _digest

    first, second = _parsed(tmp_path)["feed"], _parsed(tmp_path)["feed"]
    assert first is not second and _digest(first) == _digest(second)
    assert _digest(_parsed(tmp_path, ',B="2"')["feed"]) != _digest(first)
