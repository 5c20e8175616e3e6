"""The restart keeper's decisions, on a fake clock: what it does about each event, in each phase of an agent's life."""

from __future__ import annotations

from dataclasses import replace

import pytest

from orchestrator.core import keeping
from orchestrator.core.keeping import (
    CancelRestart, Decision, Ended, FailDependents, GiveUp, LimitReached, LivenessFailed, NotReady, RecoverDependents,
    Record,
    RestartDue, Running, ScheduleRestart, Skip, StartOnce, Stop, Stopped, World,
)
from orchestrator.core.model import Agent, Resources, RestartPolicy
from orchestrator.core.policies import AgentHistory, Exit

BACKOFF = RestartPolicy(policy="exponential-backoff", delay=0.5, multiplier=2, max_delay=60, max_attempts=4)
CALM = World()


def agent(name: str = "calc", *, restart: RestartPolicy = BACKOFF, cooldown: float = 60.0, min_uptime: float = 0.0,
          on_dependency_failure: str = "restart", depends_on: tuple[str, ...] = ()) -> Agent:
    return Agent(name=name, command=("true",), restart=restart, resources=Resources(warmup=0.0, cooldown=cooldown),
                 min_uptime=min_uptime, on_dependency_failure=on_dependency_failure, depends_on=depends_on)


def crash(serial: str = "", *, started: float | None = None, status: int = 1, expected: bool = False) -> Ended:
    return Ended("calc", Exit(exitstatus=status, expected=expected), serial=serial, started=started)


def kinds(decision: Decision) -> list[type]:
    return [type(action) for action in decision.actions]


def the(kind: type, decision: Decision):  # noqa: ANN201 - the one action of that kind
    found = [a for a in decision.actions if isinstance(a, kind)]
    assert len(found) == 1, decision.actions
    return found[0]


def run_crash_loop(calc: Agent, crashes: int, *, uptime: float = 0.2, world: World = CALM) -> list[Decision]:
    """Crash `calc` `crashes` times, each `uptime` after it was restarted at its scheduled time."""
    history, now, out = AgentHistory(), 100.0, []
    started = now
    for index in range(crashes):
        now = started + uptime
        decision = keeping.decide(crash(f"1:{index}", started=started), history, calc, now, world=world)
        out.append(decision)
        assert decision.history is not None
        history = decision.history
        restart = [a for a in decision.actions if isinstance(a, ScheduleRestart)]
        if not restart:
            break
        started = restart[0].at
    return out


# -- exits ----------------------------------------------------------------------------------------


def test_an_exit_schedules_a_restart_on_the_backoff_schedule_from_the_exit_then_gives_up_after_max_attempts():
    decisions = run_crash_loop(agent(), 10)
    restarts = [the(ScheduleRestart, d) for d in decisions[:-1]]
    exits_at = [100.2, 100.9, 102.1]   # each 0.2 s after the restart before it: 100, 100.7, 101.9
    assert [round(r.at - e, 6) for r, e in zip(restarts, exits_at, strict=True)] == [0.5, 1.0, 2.0]
    assert kinds(decisions[-1]) == [GiveUp, FailDependents]
    assert "4 failed attempts" in the(GiveUp, decisions[-1]).reason
    final = decisions[-1].history
    assert final is not None and final.given_up and final.next_restart_at is None and final.exits == 4


def test_each_restart_decision_has_its_own_token_and_records_when_it_was_decided():
    decisions = run_crash_loop(agent(), 3)
    tokens = [the(ScheduleRestart, d).token for d in decisions]
    assert tokens == ["calc#1", "calc#2", "calc#3"]
    history = decisions[1].history
    assert history is not None and history.restart_token == "calc#2" and history.decided_at == pytest.approx(100.9)


def test_an_exit_with_dependents_tells_them_and_an_expected_exit_does_not():
    failed = keeping.decide(crash(started=0.0), AgentHistory(), agent(), 5.0, world=CALM)
    assert kinds(failed) == [ScheduleRestart, FailDependents] and the(FailDependents, failed).dependency == "calc"
    calm = agent(restart=replace(BACKOFF, exit_codes=(3,)))
    expected = keeping.decide(crash(started=0.0, status=3, expected=True), AgentHistory(), calm, 5.0, world=CALM)
    assert kinds(expected) == [Record]
    assert expected.history is not None and expected.history.next_restart_at is None and expected.history.exits == 1


def test_an_exit_before_min_uptime_is_a_failed_start_even_with_an_expected_status():
    calc = agent(min_uptime=1.0)
    clean = Ended("calc", Exit(exitstatus=0, expected=True), started=10.0)
    assert kinds(keeping.decide(clean, AgentHistory(), calc, 10.3, world=CALM)) == [ScheduleRestart, FailDependents]
    assert kinds(keeping.decide(clean, AgentHistory(), calc, 11.5, world=CALM)) == [Record]
    fatal = Ended("calc", Exit(exitstatus=None, during_start=True))
    assert the(ScheduleRestart, keeping.decide(fatal, AgentHistory(), agent(), 1.0, world=CALM)).reason.startswith("failed to start")


def test_an_event_delivered_again_is_not_counted_twice():
    first = keeping.decide(crash("77:5", started=0.0), AgentHistory(), agent(), 1.0, world=CALM)
    assert first.history is not None
    again = keeping.decide(crash("77:5", started=0.0), first.history, agent(), 1.5, world=CALM)
    assert again.history is None and kinds(again) == [Skip]
    other = keeping.decide(crash("77:6", started=0.0), first.history, agent(), 1.5, world=CALM)
    assert other.history is not None and other.history.exits == 2


# -- phases in which the keeper does not restart ---------------------------------------------------


def test_the_latch_overrides_a_restart_but_the_failure_still_counts():
    decision = keeping.decide(crash(started=0.0), AgentHistory(), agent(), 1.0, world=World(latched=True))
    assert kinds(decision) == [Record] and "not restarted: latched" in the(Record, decision).reason
    assert decision.history is not None
    assert decision.history.next_restart_at is None and len(decision.history.failures) == 1 and decision.history.exits == 1


def test_while_down_stands_the_keeper_down_an_exit_restarts_nothing():
    decision = keeping.decide(crash(started=0.0), AgentHistory(), agent(), 1.0, world=World(standing_down=True))
    assert kinds(decision) == [Record] and "not restarted: stopping" in the(Record, decision).reason
    assert decision.history is not None and decision.history.next_restart_at is None


@pytest.mark.parametrize("history", [AgentHistory(stopped=True), AgentHistory(given_up=True)], ids=["stopped", "given-up"])
def test_an_exit_of_an_operator_stopped_or_given_up_agent_is_recorded_and_decides_nothing(history):
    decision = keeping.decide(crash(started=0.0), history, agent(), 1.0, world=CALM)
    assert kinds(decision) == [Record] and "ended while" in the(Record, decision).reason
    assert decision.history is not None
    assert decision.history.failures == () and decision.history.next_restart_at is None and decision.history.exits == 1


def test_an_exit_while_a_restart_is_pending_keeps_the_pending_restart():
    pending = AgentHistory(next_restart_at=50.0, decided_at=40.0, restart_token="calc#1", exits=1)
    decision = keeping.decide(crash(started=30.0), pending, agent(), 41.0, world=CALM)
    assert kinds(decision) == [Record]
    assert decision.history is not None
    assert decision.history.next_restart_at == 50.0 and decision.history.restart_token == "calc#1"


def test_the_end_of_a_process_started_by_a_pending_restart_is_decided_like_any_other():
    """A listener killed after carrying out a restart but before clearing its mark: the next exit is a new failure."""
    pending = AgentHistory(next_restart_at=50.0, decided_at=40.0, restart_token="calc#1", exits=1, failures=(40.0,))
    decision = keeping.decide(crash(started=50.0), pending, agent(), 50.2, world=CALM)
    assert the(ScheduleRestart, decision).token == "calc#2"
    assert the(ScheduleRestart, decision).at == pytest.approx(51.2)   # second failure: 1.0 s


# -- a starter's report that a start was not ready ------------------------------------------------


def test_a_not_ready_report_is_decided_as_a_failed_start_once_and_only_for_the_attempt_it_is_about():
    report = NotReady("calc", exits=0, detail="not ready after 10s: connection refused")
    decision = keeping.decide(report, AgentHistory(), agent(), 20.0, world=CALM)
    assert the(ScheduleRestart, decision).reason.startswith("not ready after 10s")
    assert decision.history is not None and decision.history.exits == 1
    stale = keeping.decide(report, decision.history, agent(), 20.1, world=CALM)
    assert stale.history is None and kinds(stale) == [Skip]


# -- liveness ------------------------------------------------------------------------------------


def test_a_liveness_failure_stops_the_agent_then_schedules_its_restart_and_tells_its_dependents():
    decision = keeping.decide(LivenessFailed("calc", "liveness tcp failed"), AgentHistory(started_at=0.0), agent(), 100.0,
                              world=CALM)
    assert kinds(decision) == [Stop, ScheduleRestart, FailDependents]
    assert the(Stop, decision).keeps_restart
    history = decision.history
    assert history is not None and history.last_action_at == 100.0 and history.exits == 1
    assert the(ScheduleRestart, decision).at == 100.5 and the(ScheduleRestart, decision).token == "calc#1"


def test_a_liveness_restart_gets_a_token_of_its_own_not_the_last_exits():
    """Regression: a liveness failure kept the token of the previous restart decision, which supervisord refuses to
    carry out twice, so the agent it stopped was never started again."""
    before = AgentHistory(started_at=0.0, exits=3, restart_token="calc#3", decided_at=1.0)
    decision = keeping.decide(LivenessFailed("calc"), before, agent(), 500.0, world=CALM)
    assert decision.history is not None and decision.history.restart_token == "calc#4"
    assert the(ScheduleRestart, decision).token == "calc#4"


def test_a_second_liveness_failure_within_the_cooldown_does_nothing_and_after_it_acts():
    calc = agent(cooldown=60.0)
    first = keeping.decide(LivenessFailed("calc"), AgentHistory(started_at=0.0), calc, 100.0, world=CALM)
    assert first.history is not None
    during = keeping.decide(LivenessFailed("calc"), first.history, calc, 159.0, world=CALM)
    assert during.history is None and kinds(during) == [Record] and "in cooldown for 60s" in the(Record, during).reason
    after = keeping.decide(LivenessFailed("calc"), first.history, calc, 161.0, world=CALM)
    assert kinds(after)[0] is Stop


@pytest.mark.parametrize("history, world", [
    (AgentHistory(), World(latched=True)),
    (AgentHistory(), World(standing_down=True)),
    (AgentHistory(stopped=True), CALM),
    (AgentHistory(given_up=True), CALM),
], ids=["latched", "standing-down", "operator-stopped", "given-up"])
def test_a_liveness_failure_does_nothing_while_latched_standing_down_stopped_or_given_up(history, world):
    decision = keeping.decide(LivenessFailed("calc"), history, agent(), 100.0, world=world)
    assert decision.history is None and kinds(decision) == [Skip]


def test_a_liveness_failure_past_max_attempts_stops_and_gives_up():
    calc = agent(restart=replace(BACKOFF, max_attempts=1))
    decision = keeping.decide(LivenessFailed("calc"), AgentHistory(started_at=0.0), calc, 100.0, world=CALM)
    assert kinds(decision) == [Stop, GiveUp, FailDependents]
    assert decision.history is not None and decision.history.given_up


# -- a limit reached (from the exporter) -----------------------------------------------------------------

MEMORY = LimitReached("calc", reason="memory_limit", detail="memory_mb 512 is at or above 500 for 10s")


def test_a_limit_that_restarts_stops_the_agent_and_passes_it_through_its_restart_policy_with_its_reason():
    decision = keeping.decide(MEMORY, AgentHistory(started_at=0.0), agent(), 100.0, world=CALM)
    assert kinds(decision) == [Stop, ScheduleRestart, FailDependents]
    assert the(ScheduleRestart, decision).at == 100.5  # the backoff's first delay, as for a crash
    assert decision.history is not None and decision.history.reason.startswith("memory_limit: memory_mb 512")
    gives_up = keeping.decide(MEMORY, AgentHistory(started_at=0.0), agent(restart=replace(BACKOFF, max_attempts=1)), 100.0,
                              world=CALM)
    assert kinds(gives_up) == [Stop, GiveUp, FailDependents]


def test_a_limit_that_stops_leaves_the_agent_stopped_until_the_operator_starts_it():
    decision = keeping.decide(replace(MEMORY, action="stop"), AgentHistory(started_at=0.0), agent(), 100.0, world=CALM)
    assert kinds(decision) == [Stop, Record, FailDependents]
    assert not the(Stop, decision).keeps_restart
    assert decision.history is not None and decision.history.stopped and decision.history.next_restart_at is None
    assert "orchestrator start calc" in the(Record, decision).reason


def test_each_restart_is_counted_under_its_reason():
    crash = keeping.decide(Ended("calc", Exit(exitstatus=1)), AgentHistory(started_at=0.0), agent(), 100.0, world=CALM).history
    limit = keeping.decide(MEMORY, AgentHistory(started_at=0.0), agent(), 100.0, world=CALM).history
    assert crash is not None and dict(crash.restart_reasons) == {"crash": 1} and crash.restarts == 1
    assert limit is not None and dict(limit.restart_reasons) == {"memory_limit": 1} and limit.restarts == 1


@pytest.mark.parametrize("action", ["restart", "stop"])
def test_a_limit_within_the_cooldown_or_while_latched_does_nothing(action):
    acted = AgentHistory(started_at=0.0, last_action_at=90.0)
    within = keeping.decide(replace(MEMORY, action=action), acted, agent(cooldown=60.0), 100.0, world=CALM)
    assert within.history is None and kinds(within) == [Record]
    latched = keeping.decide(replace(MEMORY, action=action), AgentHistory(), agent(), 100.0, world=World(latched=True))
    assert latched.history is None and kinds(latched) == [Skip]


# -- a due restart, and after it --------------------------------------------------------------------


PENDING = AgentHistory(next_restart_at=10.0, decided_at=9.5, restart_token="calc#2", exits=2)


def test_a_due_restart_starts_once_for_its_decision():
    assert keeping.decide(RestartDue("calc"), PENDING, agent(), 10.0, world=CALM).actions == (StartOnce("calc#2"),)


@pytest.mark.parametrize("history, world", [
    (PENDING, World(latched=True)),
    (PENDING, World(standing_down=True)),
    (PENDING.stopping(), CALM),
    (replace(PENDING, given_up=True), CALM),
    (replace(PENDING, waiting_for="feed"), CALM),
    (replace(PENDING, next_restart_at=None), CALM),
], ids=["latched", "standing-down", "operator-stopped", "given-up", "waiting-for-a-dependency", "not-pending"])
def test_a_due_restart_starts_nothing_when_something_changed_meanwhile(history, world):
    assert kinds(keeping.decide(RestartDue("calc"), history, agent(), 10.0, world=world)) == [Skip]


def test_after_a_restart_the_pending_mark_is_cleared_and_an_operator_stop_meanwhile_wins():
    done = keeping.after_restart(PENDING, PENDING, CALM, started=True)
    assert done.history == replace(PENDING, next_restart_at=None) and kinds(done) == [Record]
    stopped = keeping.after_restart(PENDING, replace(PENDING, stopped=True), CALM, started=True)
    assert kinds(stopped) == [Stop] and not the(Stop, stopped).keeps_restart
    latched = keeping.after_restart(PENDING, PENDING, World(latched=True), started=True)
    assert kinds(latched) == [Stop]
    newer = replace(PENDING, restart_token="calc#3", decided_at=11.0, next_restart_at=12.0)
    assert keeping.after_restart(PENDING, newer, CALM, started=True).history is None  # a newer decision stays pending


# -- started, stopped --------------------------------------------------------------------------------


def test_a_start_clears_waiting_for_a_dependency_and_running_asks_for_the_dependents_to_come_back():
    starting = keeping.decide(Running("calc"), AgentHistory(waiting_for="feed"), agent(), 1.0, world=CALM)
    assert starting.history == AgentHistory() and starting.actions == ()
    running = keeping.decide(Running("calc", running=True), AgentHistory(), agent(), 1.0, world=CALM)
    assert running.history is None and running.actions == (RecoverDependents("calc"),)


def test_a_stop_by_someone_else_cancels_the_pending_restart_and_the_keepers_own_stop_keeps_it():
    other = keeping.decide(Stopped("calc"), PENDING, agent(), 10.0, world=CALM)
    assert other.history is not None and other.history.next_restart_at is None and kinds(other) == [CancelRestart]
    own = keeping.decide(Stopped("calc", by_keeper=True), PENDING, agent(), 10.0, world=CALM)
    assert own.history is None and kinds(own) == [Skip]


# -- dependency failure ---------------------------------------------------------------------------


def _dependents() -> dict[str, Agent]:
    return {"feed": agent("feed"),
            "calc": agent("calc", depends_on=("feed",), on_dependency_failure="restart"),
            "hold": agent("hold", depends_on=("feed",), on_dependency_failure="stop"),
            "free": agent("free", depends_on=("feed",), on_dependency_failure="ignore"),
            "off": agent("off", depends_on=("feed",), on_dependency_failure="stop")}


def test_on_dependency_failure_stop_stops_restart_waits_ignore_does_nothing():
    agents = _dependents()
    histories = {"off": AgentHistory(stopped=True)}
    decision = keeping.on_dependency_failure("feed", ["calc", "hold", "free", "off"], agents, histories, world=CALM)
    assert decision.stop == ("hold",) and decision.wait == ("calc",)
    assert {n: h.waiting_for for n, h in decision.histories.items()} == {"calc": "feed", "hold": "feed"}
    assert keeping.acting(agents, ["calc", "hold", "free", "off"]) == ["calc", "hold", "off"]


def test_a_dependent_already_waiting_keeps_what_it_waits_for():
    agents = _dependents()
    decision = keeping.on_dependency_failure("feed", ["calc"], agents, {"calc": AgentHistory(waiting_for="db")}, world=CALM)
    assert decision.wait == ("calc",) and decision.histories == {}


@pytest.mark.parametrize("world", [World(latched=True), World(standing_down=True)], ids=["latched", "standing-down"])
def test_no_dependent_acts_while_latched_or_standing_down(world):
    decision = keeping.on_dependency_failure("feed", ["calc", "hold"], _dependents(), {}, world=world)
    assert decision == keeping.DependentsDecision()


def test_once_the_dependency_is_back_the_waiting_restart_dependents_are_restarted_and_the_stopped_ones_started():
    histories = {"calc": AgentHistory(waiting_for="feed"), "hold": AgentHistory(waiting_for="feed"),
                 "free": AgentHistory(waiting_for="db")}
    waiting = keeping.waiting_for("feed", ["hold", "calc", "free"], histories)
    assert waiting == ["calc", "hold"]
    assert keeping.to_restart_when_back(waiting, _dependents()) == ["calc"]


def test_a_manual_policy_agent_that_exits_raises_an_alert_that_resolves_when_it_runs_again():
    manual = agent(restart=RestartPolicy(policy="manual"))
    exited = keeping.decide(crash(status=3), AgentHistory(started_at=0.0), manual, 100.0, world=CALM)
    alert = the(keeping.RaiseAlert, exited)
    assert "calc exited and its restart policy is manual" in alert.summary and alert.value == 3.0
    assert not any(isinstance(a, ScheduleRestart) for a in exited.actions)
    back = keeping.decide(Running("calc", running=True), AgentHistory(), manual, 200.0, world=CALM)
    assert any(isinstance(a, keeping.ResolveAlert) for a in back.actions)
    expected = keeping.decide(crash(status=0, expected=True), AgentHistory(started_at=0.0), manual, 100.0, world=CALM)
    assert not any(isinstance(a, keeping.RaiseAlert) for a in expected.actions)  # an expected exit is no alert
    backoff = keeping.decide(crash(), AgentHistory(started_at=0.0), agent(), 100.0, world=CALM)
    assert not any(isinstance(a, keeping.RaiseAlert) for a in backoff.actions)
