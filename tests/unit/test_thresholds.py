"""The exporter's thresholds on a fake clock: alerts recorded and sent, a limit reported once per cooldown, PREDICTED
before the limit, health and evidence (daemons.thresholds)."""

from __future__ import annotations

from pathlib import Path

from orchestrator.core.alerts import LimitAction
from orchestrator.core.model import Agent, Resources, Thresholds as Levels
from orchestrator.daemons.thresholds import Observed, Thresholds
from orchestrator.state import alerts, evidence
from orchestrator.state.alerts import AlertRecord


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def _agent(**resources: object) -> Agent:
    return Agent(name="leaky", command=("true",), resources=Resources(**resources))  # type: ignore[arg-type]


def _setup(tmp_path: Path, **resources: object) -> tuple[Thresholds, Clock, list[LimitAction], list[AlertRecord], Agent]:
    clock, reported, sent = Clock(), [], []
    t = Thresholds(str(tmp_path), report=reported.append, log=lambda line: None, notify=sent.append, wall=clock)
    return t, clock, reported, sent, _agent(**resources)


def _seen(agent: Agent, memory: float, *, started: float = 0.0, run: float = 1.0) -> list[Observed]:
    return [Observed(name=agent.name, agent=agent, up=True, started_at=started, run=run, memory_mb=memory,
                     cpu_percent=5.0, open_fds=10)]


def test_a_limit_held_for_its_for_duration_is_reported_once_within_the_cooldown(tmp_path: Path):
    t, clock, reported, sent, agent = _setup(tmp_path, memory_mb=Levels(warning=100, limit=200, for_seconds=2),
                                             warmup=0.0, cooldown=60.0)
    for memory in (150, 210, 220, 230, 240):
        t.check(_seen(agent, memory))
        clock.now += 1
    assert [a.reason for a in reported] == ["memory_limit"]
    assert [(r.level, r.kind) for r in sent] == [("WARNING", "firing"), ("EMERGENCY", "firing")]
    assert {r.key for r in alerts.active(str(tmp_path))} == {"leaky/memory_mb/WARNING", "leaky/memory_mb/EMERGENCY"}
    assert t.evidence.agents["leaky"].memory_limit_restarts == 1


def test_a_spike_that_falls_back_before_for_raises_nothing(tmp_path: Path):
    t, clock, reported, sent, agent = _setup(tmp_path, memory_mb=Levels(warning=100, limit=200, for_seconds=3), warmup=0.0)
    for memory in (50, 250, 250, 50, 50):
        t.check(_seen(agent, memory))
        clock.now += 1
    assert sent == [] and reported == []


def test_nothing_fires_during_warmup(tmp_path: Path):
    t, clock, reported, sent, agent = _setup(tmp_path, memory_mb=Levels(limit=200), warmup=30.0)
    t.check(_seen(agent, 300, started=clock.now))
    assert sent == [] and reported == []


def test_predicted_fires_before_the_limit_on_a_steady_leak_and_the_forecast_is_kept(tmp_path: Path):
    t, clock, reported, sent, agent = _setup(tmp_path, memory_mb=Levels(limit=200), warmup=0.0)
    t.horizon = 20.0
    memory = 100.0
    while memory < 200 and not any(r.level == "PREDICTED" for r in sent):
        t.assess(_seen(agent, memory), {agent.name: agent}, ready={}, histories={}, uptimes={})
        clock.now += 0.5
        memory += 5.0
    assert any(r.level == "PREDICTED" and r.kind == "firing" for r in sent)
    assert memory < 200
    fc = t.forecasts[("leaky", "memory_mb")]
    assert fc.seconds is not None and 0 < fc.seconds < 20


def test_a_new_process_empties_the_forecast_window(tmp_path: Path):
    t, clock, _, _, agent = _setup(tmp_path, memory_mb=Levels(limit=200), warmup=0.0)
    t.horizon = 20.0
    for i in range(12):
        t.assess(_seen(agent, 100 + i, run=1.0), {agent.name: agent}, ready={}, histories={}, uptimes={})
        clock.now += 0.5
    t.assess(_seen(agent, 20, run=2.0), {agent.name: agent}, ready={}, histories={}, uptimes={})
    assert len(t.windows[("leaky", "memory_mb")].samples) == 1
    assert ("leaky", "memory_mb") not in t.forecasts


def test_health_counts_the_open_alerts_and_the_evidence_survives_a_restart_of_the_exporter(tmp_path: Path):
    t, clock, _, _, agent = _setup(tmp_path, memory_mb=Levels(warning=100, limit=200), warmup=0.0)
    assessment = t.assess(_seen(agent, 150), {agent.name: agent}, ready={"leaky": True}, histories={}, uptimes={"leaky": 1e6})
    assert assessment.health["leaky"].score < 100
    assert "alerts" in {p.cause for p in assessment.health["leaky"].penalties}
    t.save()
    assert evidence.load(str(tmp_path)).agents["leaky"].memory_peaks is not None
    again = Thresholds(str(tmp_path), report=lambda a: None, log=lambda line: None, wall=clock)
    assert "leaky" in again.evidence.agents
    assert "leaky/memory_mb/WARNING" in again.firing


def test_an_alert_of_an_agent_no_longer_declared_resolves(tmp_path: Path):
    t, clock, _, sent, agent = _setup(tmp_path, memory_mb=Levels(warning=100), warmup=0.0)
    t.assess(_seen(agent, 150), {agent.name: agent}, ready={}, histories={}, uptimes={})
    t.assess([], {}, ready={}, histories={}, uptimes={})
    assert [(r.level, r.kind) for r in sent] == [("WARNING", "firing"), ("WARNING", "resolved")]
    assert alerts.active(str(tmp_path)) == []


def test_a_predicted_alert_resolves_when_its_limit_is_removed(tmp_path: Path):
    t, clock, _, sent, agent = _setup(tmp_path, memory_mb=Levels(limit=200), warmup=0.0)
    t.horizon = 20.0
    memory = 100.0
    while not any(r.level == "PREDICTED" for r in sent):
        t.assess(_seen(agent, memory), {agent.name: agent}, ready={}, histories={}, uptimes={})
        clock.now += 0.5
        memory += 5.0
    unlimited = _agent(warmup=0.0)
    t.assess(_seen(unlimited, memory), {agent.name: unlimited}, ready={}, histories={}, uptimes={})
    assert [(r.level, r.kind) for r in sent][-1] == ("PREDICTED", "resolved")
    assert alerts.active(str(tmp_path)) == []
