"""The watcher's pure parts: which saves count, how a plan is summed up, and a change's notification body."""

from __future__ import annotations

import json
import threading

from orchestrator.core.plan import Action, Plan
from orchestrator.daemons.notify import body
from orchestrator.daemons.watcher import ConfigNotice, Watcher, changes_of


class _Silent:
    def say(self, line): pass
    def rejected(self, diagnostics): pass
    def planned(self, plan): pass
    def progress(self, manifests): return lambda event: None


def test_only_manifests_count_as_changes(tmp_path):
    watcher = Watcher(manifests_dir=str(tmp_path), state_dir=str(tmp_path / "state"), load=lambda: None, view=_Silent(),
                      stop=threading.Event())
    counted = {rel: watcher.relevant(None, str(tmp_path / rel)) for rel in (
        "orchestrator.yaml", "agents/calc.yaml", "templates/base.yml", "env/prod.yaml",
        "agents/.calc.yaml.swp", "agents/calc.yaml~", ".orchestrator-state", "notes.yaml", "agents/readme.md")}
    assert [rel for rel, yes in counted.items() if yes] == ["orchestrator.yaml", "agents/calc.yaml", "templates/base.yml",
                                                            "env/prod.yaml"]
    watcher.notifications.close()


def test_a_plan_is_summed_up_one_phrase_per_change():
    plan = Plan(actions=(Action("replace", "calc", ("env", "command")), Action("unchanged", "feed"), Action("add", "new")),
                settings=("notifications",))
    assert changes_of(plan) == ("settings (notifications)", "replace calc (env, command)", "add new")


def test_a_change_is_sent_with_kind_config_its_outcome_and_version():
    notice = ConfigNotice("applied", "applied as version 7: replace calc (env)", version=7, files=("agents/calc.yaml",),
                          changes=("replace calc (env)",), at=1767225600.0)
    assert json.loads(body(notice, "desk")) == {
        "project": "desk", "kind": "config", "outcome": "applied", "version": 7, "level": "WARNING",
        "files": ["agents/calc.yaml"], "changes": ["replace calc (env)"], "errors": [], "at": 1767225600.0,
        "summary": "applied as version 7: replace calc (env)"}
    assert ConfigNotice("rejected", "rejected").level == "CRITICAL"
