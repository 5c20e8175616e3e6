"""The ownership table: for every phase of an agent and everything that can happen in it, one actor and one action."""

from __future__ import annotations

import itertools

import pytest

from orchestrator.core import ownership


def test_the_table_answers_for_every_phase_and_event():
    for phase, event in itertools.product(ownership.PHASES, ownership.EVENTS):
        rule = ownership.rule(phase, event)
        assert rule.actor in ("starter", "keeper", "operator", "nobody") and rule.why


@pytest.mark.parametrize("phase", ownership.PHASES)
def test_after_a_process_ends_only_the_keeper_ever_decides_or_restarts(phase):
    for event in ("exited", "not-ready", "restart-due"):
        rule = ownership.rule(phase, event)
        if rule.act in ("decide", "count") or (event == "restart-due" and rule.act == "start"):
            assert rule.actor == "keeper", (phase, event, rule)
        assert not (rule.actor == "starter" and rule.act == "start"), (phase, event, rule)


def test_a_start_that_is_not_ready_is_decided_by_the_keeper_as_an_exit_would_be():
    assert ownership.rule("starting", "not-ready").actor == "keeper" == ownership.rule("starting", "exited").actor
    assert ownership.rule("starting", "not-ready").act == "decide" == ownership.rule("starting", "exited").act


@pytest.mark.parametrize("phase", ["latched", "stopping"])
def test_nothing_restarts_while_latched_or_while_down_is_stopping_everything(phase):
    assert ownership.rule(phase, "restart-due").act == "ignore"
    assert ownership.rule(phase, "exited").act == "count"  # the failure still counts toward give-up


@pytest.mark.parametrize("phase", ["given-up", "operator-stopped"])
def test_an_end_of_a_given_up_or_stopped_agent_is_only_recorded_and_a_start_request_clears_it(phase):
    assert ownership.rule(phase, "exited").act == "record"
    assert ownership.rule(phase, "start-request") == ownership.Rule("starter", "start", ownership.rule(phase, "start-request").why)


def test_the_phase_follows_the_precedence_stand_down_latch_given_up_stopped_pending():
    base = dict(latched=False, standing_down=False, given_up=False, stopped=False, restart_pending=False, up=True, ready=True)
    assert ownership.phase_of(**base) == "running"
    assert ownership.phase_of(**{**base, "ready": False}) == "starting"
    assert ownership.phase_of(**{**base, "up": False, "restart_pending": True}) == "backing-off"
    assert ownership.phase_of(**{**base, "stopped": True, "restart_pending": True}) == "operator-stopped"
    assert ownership.phase_of(**{**base, "given_up": True, "stopped": True}) == "given-up"
    assert ownership.phase_of(**{**base, "latched": True, "given_up": True}) == "latched"
    assert ownership.phase_of(**{**base, "standing_down": True, "latched": True}) == "stopping"
