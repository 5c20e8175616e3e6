"""The runtime state files: the emergency latch fails closed, unknown fields survive, one file per agent."""

from __future__ import annotations

import json

import pytest

from orchestrator.state import runtime
from orchestrator.core.policies import AgentHistory


def test_an_unparseable_runtime_file_counts_as_latched_until_cleared(tmp_path):
    """Regression: an unreadable runtime.json fell back to an empty state, and the latch it held disappeared."""
    (tmp_path / runtime.FILE).write_text('{"latch": {"since": 1, "reason": "bad pri')
    with pytest.raises(runtime.LatchedError, match="unreadable"):
        runtime.refuse_if_latched(str(tmp_path))
    with runtime.changing(str(tmp_path)) as live:  # what emergency-clear does
        assert live.latch is not None
        live.latch = None
    runtime.refuse_if_latched(str(tmp_path))
    assert json.loads((tmp_path / runtime.FILE).read_text())["latch"] is None


def test_a_latch_in_a_form_this_version_cannot_read_still_latches(tmp_path):
    (tmp_path / runtime.FILE).write_text(json.dumps({"latch": "since yesterday"}))
    with pytest.raises(runtime.LatchedError, match="cannot read"):
        runtime.refuse_if_latched(str(tmp_path))


def test_unknown_fields_are_kept_and_never_make_the_state_unreadable(tmp_path):
    """Regression: one unknown field in runtime.json made the loader drop everything, the latch included."""
    (tmp_path / runtime.FILE).write_text(json.dumps({"latch": {"since": 5.0, "reason": "drill", "by": "alice"},
                                                    "written_by": "a newer orchestrator"}))
    (tmp_path / runtime.AGENTS_DIR).mkdir()
    (tmp_path / runtime.AGENTS_DIR / "feed.json").write_text(json.dumps({"restarts": 3, "colour": "blue"}))
    state = runtime.load(str(tmp_path))
    assert state.latch == runtime.Latch(since=5.0, reason="drill")
    assert state.agent("feed").restarts == 3
    with runtime.changing(str(tmp_path)) as live:
        live.stand_down = 42
    assert json.loads((tmp_path / runtime.FILE).read_text())["written_by"] == "a newer orchestrator"


def test_changing_one_agent_writes_only_that_agents_file(tmp_path):
    runtime.save_agent(str(tmp_path), "feed", AgentHistory(restarts=1))
    runtime.save_agent(str(tmp_path), "calc", AgentHistory(restarts=2))
    before = (tmp_path / runtime.AGENTS_DIR / "calc.json").stat().st_mtime_ns
    runtime.update_agent(str(tmp_path), "feed", lambda h, _: AgentHistory(restarts=h.restarts + 1))
    assert runtime.load_agent(str(tmp_path), "feed").restarts == 2
    assert (tmp_path / runtime.AGENTS_DIR / "calc.json").stat().st_mtime_ns == before


def test_restarts_by_reason_are_kept_and_a_file_written_before_them_still_reads(tmp_path):
    history = AgentHistory(restarts=3).restarted("crash").restarted("memory_limit").restarted("crash")
    runtime.save_agent(str(tmp_path), "calc", history)
    assert dict(runtime.load_agent(str(tmp_path), "calc").restart_reasons) == {"crash": 2, "memory_limit": 1}
    (tmp_path / "runtime").mkdir(exist_ok=True)
    older = {"restarts": 4, "failures": [1.0], "given_up": False}
    runtime.save_agent(str(tmp_path), "old", AgentHistory())
    path = next(p for p in (tmp_path / "runtime").rglob("old*"))
    path.write_text(json.dumps(older))
    loaded = runtime.load_agent(str(tmp_path), "old")
    assert loaded.restarts == 4 and dict(loaded.restart_reasons) == {}
