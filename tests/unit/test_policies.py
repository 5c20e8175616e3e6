"""Restart decisions, driven by a fake clock: the schedules the manifests promise."""

from __future__ import annotations

import pytest

from orchestrator.core.model import RestartPolicy
from orchestrator.core.policies import AgentHistory, Exit, backoff_delay, decide

CRASH = Exit(exitstatus=1)


def _run(policy: RestartPolicy, crashes: int, *, uptime: float = 0.2) -> list[tuple[str, float]]:
    """Crash an agent `crashes` times, each `uptime` after it (re)started; the decisions as (action, delay)."""
    history, now, out = AgentHistory().started(0.0), 0.0, []
    for _ in range(crashes):
        now += uptime
        decision = decide(CRASH, history, policy, now)
        out.append((decision.action, decision.delay))
        history = decision.history
        if decision.action != "restart":
            break
        now += decision.delay
        history = history.started(now)
    return out


def test_exponential_backoff_doubles_each_delay_then_gives_up_after_max_attempts():
    policy = RestartPolicy(policy="exponential-backoff", delay=0.5, multiplier=2, max_delay=60, max_attempts=4)
    assert _run(policy, 10) == [("restart", 0.5), ("restart", 1.0), ("restart", 2.0), ("give-up", 0.0)]


def test_delays_are_capped_at_max_delay():
    policy = RestartPolicy(delay=1, multiplier=10, max_delay=30, max_attempts=10)
    assert [d for _, d in _run(policy, 4)] == [1, 10, 30, 30]


def test_delayed_waits_the_same_each_time_and_immediate_not_at_all():
    assert _run(RestartPolicy(policy="delayed", delay=2, max_attempts=3), 5) == [("restart", 2), ("restart", 2), ("give-up", 0)]
    assert _run(RestartPolicy(policy="immediate", max_attempts=3), 5) == [("restart", 0), ("restart", 0), ("give-up", 0)]


def test_manual_never_restarts_but_records_the_exit():
    decision = decide(CRASH, AgentHistory().started(0), RestartPolicy(policy="manual"), 5.0)
    assert decision.action == "record" and "exited after 5.0s (exit status 1)" in decision.reason


def test_stable_uptime_past_reset_after_starts_the_count_again():
    policy = RestartPolicy(delay=0.5, multiplier=2, max_attempts=4, reset_after=10)
    first = decide(CRASH, AgentHistory().started(0), policy, 0.2)
    second = decide(CRASH, first.history.started(0.7), policy, 0.9)
    assert (first.delay, second.delay) == (0.5, 1.0)
    third = decide(CRASH, second.history.started(1.9), policy, 30.0)   # up 28 s > reset_after
    assert third.delay == 0.5 and third.history.failures == (30.0,)


def test_failures_older_than_the_window_do_not_count():
    policy = RestartPolicy(policy="immediate", max_attempts=2, window=60, reset_after=1000)
    first = decide(CRASH, AgentHistory().started(0), policy, 1.0)
    later = decide(CRASH, first.history.started(1.0), policy, 100.0)
    assert later.action == "restart"  # the first failure fell out of the 60 s window


def test_expected_exit_codes_and_requested_stops_are_not_failures():
    policy = RestartPolicy(policy="immediate", max_attempts=1, exit_codes=(3,))
    assert decide(Exit(exitstatus=3, expected=True), AgentHistory().started(0), policy, 1).action == "record"
    assert decide(Exit(exitstatus=None, requested=True), AgentHistory().started(0), policy, 1).action == "ignore"
    assert decide(CRASH, AgentHistory().started(0), policy, 1).action == "give-up"


def test_a_manual_start_clears_a_given_up_agent():
    given_up = decide(CRASH, AgentHistory().started(0), RestartPolicy(max_attempts=1), 1).history
    assert given_up.given_up and given_up.cleared() == AgentHistory(started_at=0, restarts=0)


@pytest.mark.parametrize("rand", [0.0, 0.25, 0.5, 0.999])
def test_jitter_spreads_a_delay_within_its_fraction(rand):
    policy = RestartPolicy(delay=10, multiplier=1, jitter=0.2, max_delay=60)
    assert 8.0 <= backoff_delay(policy, 1, rand) <= 12.0
    assert backoff_delay(RestartPolicy(delay=10, multiplier=1, max_delay=60), 1, rand) == 10.0  # no jitter, no spread


def test_a_death_by_signal_is_named_as_such():
    decision = decide(Exit(exitstatus=-1), AgentHistory().started(0), RestartPolicy(policy="immediate"), 2.0)
    assert "exited after 2.0s (killed by a signal)" in decision.reason
