"""The health score: 100 for a healthy agent, each cause costing what the formula says, every lost point named."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestrator.core import health
from orchestrator.core.health import Health, HealthInputs, Penalty, score
from orchestrator.core.model import Thresholds

MEMORY = Thresholds(warning=200, critical=300, limit=400)
CPU = Thresholds(warning=70, critical=90)
HEALTHY = HealthInputs(up=True, ready=True, cpu_percent=10, cpu=CPU, memory_mb=120, memory=MEMORY,
                       open_fds=40, fd_limit=1024, uptime=3600, reset_after=300)
README = Path(__file__).resolve().parents[2] / "README.md"


def _points(h: Health) -> dict[str, int]:
    return {p.cause: p.points for p in h.penalties}


def test_a_healthy_agent_scores_100_with_no_penalties():
    assert score(HEALTHY) == Health(100, ())
    assert score(HealthInputs()) == Health(100, ())


def test_a_down_agent_scores_0_and_says_why():
    assert score(HEALTHY._replace(up=False, reason="exit status 1")) == Health(0, (Penalty("down", 100, "exit status 1"),))


def test_a_given_up_agent_scores_0_and_says_why():
    h = score(HEALTHY._replace(given_up=True, reason="5 attempts within 600s"))
    assert h == Health(0, (Penalty("given up", 100, "5 attempts within 600s"),))


@pytest.mark.parametrize(("change", "cause", "points"), [
    ({"ready": False}, "readiness", health.READINESS),
    ({"liveness_failures": 1}, "liveness", 10),
    ({"liveness_failures": 2}, "liveness", 20),
    ({"liveness_failures": 7}, "liveness", health.LIVENESS_MAX),
    ({"restarts_in_window": 1, "max_attempts": 5}, "restarts", 6),
    ({"restarts_in_window": 5, "max_attempts": 5}, "restarts", health.RESTARTS_MAX),
    ({"restarts_in_window": 9, "max_attempts": 5}, "restarts", health.RESTARTS_MAX),
    ({"memory_mb": 200}, "memory", 0),                   # exactly half of the limit: the ramp starts here
    ({"memory_mb": 250}, "memory", 3 + 5),               # ramp 2.5 (25% of the way), above warning 200
    ({"memory_mb": 350}, "memory", 8 + 10),              # ramp 7.5, above critical 300: 17.5 rounds up
    ({"memory_mb": 400}, "memory", 10 + 10),             # at the limit
    ({"memory_mb": 900}, "memory", 10 + 10),             # past it: no more than at it
    ({"cpu_percent": 72}, "cpu", 6 + 5),                 # 80% of critical 90 (the highest): ramp 6; above warning
    ({"open_fds": 768}, "open files", 5),                # 75% of 1024
    ({"alerts": ("WARNING",)}, "alerts", 3),
    ({"alerts": ("PREDICTED",)}, "alerts", 5),
    ({"alerts": ("CRITICAL",)}, "alerts", 10),
    ({"alerts": ("EMERGENCY",)}, "alerts", 25),
    ({"alerts": ("EMERGENCY", "EMERGENCY")}, "alerts", health.ALERTS_MAX),
    ({"uptime": 0}, "uptime", health.UPTIME_MAX),
    ({"uptime": 150}, "uptime", 5),
    ({"uptime": 300}, "uptime", None),
])
def test_each_cause_alone_costs_what_the_formula_says(change, cause, points):
    h = score(HEALTHY._replace(**change))
    if not points:
        assert h == Health(100, ())
        return
    assert _points(h) == {cause: points}
    assert h.score == 100 - points
    assert h.penalties[0].detail


def test_a_threshold_that_is_absent_costs_nothing_and_the_next_highest_sets_the_ramp():
    assert score(HEALTHY._replace(memory_mb=10_000, memory=Thresholds())) == Health(100, ())
    only_warning = score(HEALTHY._replace(memory_mb=300, memory=Thresholds(warning=200)))
    assert _points(only_warning) == {"memory": 10 + 5}
    assert "of its warning 200" in only_warning.penalties[0].detail


def test_penalties_add_up_and_the_score_clamps_at_zero():
    some = HEALTHY._replace(ready=False, liveness_failures=1, uptime=150)
    assert score(some).score == 100 - health.READINESS - 10 - 5
    everything = HEALTHY._replace(ready=False, liveness_failures=3, restarts_in_window=4, memory_mb=399, cpu_percent=95,
                         open_fds=1024, alerts=("EMERGENCY", "CRITICAL"), uptime=1)
    h = score(everything)
    assert h.score == 0
    assert sum(p.points for p in h.penalties) > 100
    assert {p.cause for p in h.penalties} == {"readiness", "liveness", "restarts", "memory", "cpu", "open files", "alerts", "uptime"}


def test_every_lost_point_is_named():
    h = score(HEALTHY._replace(ready=False, memory_mb=310, alerts=("WARNING", "CRITICAL"), uptime=30))
    assert h.score == 100 - sum(p.points for p in h.penalties)
    assert all(p.points > 0 and p.cause and p.detail for p in h.penalties)
    alerts = next(p for p in h.penalties if p.cause == "alerts")
    assert alerts.detail == "1 CRITICAL, 1 WARNING open"


@given(a=st.floats(0, 2000), b=st.floats(0, 2000))
def test_memory_headroom_costs_more_as_usage_approaches_the_limit(a, b):
    low, high = sorted((a, b))
    assert _points(score(HEALTHY._replace(memory_mb=low))).get("memory", 0) <= \
        _points(score(HEALTHY._replace(memory_mb=high))).get("memory", 0)


@given(a=st.floats(0, 200), b=st.floats(0, 200), warning=st.none() | st.floats(1, 100),
       critical=st.none() | st.floats(1, 100), limit=st.none() | st.floats(1, 100))
def test_any_headroom_penalty_is_monotonic_in_usage_and_bounded(a, b, warning, critical, limit):
    thresholds = Thresholds(warning=warning, critical=critical, limit=limit)
    low, high = sorted((a, b))
    p_low, _ = health.headroom_points(low, thresholds)
    p_high, _ = health.headroom_points(high, thresholds)
    assert 0 <= p_low <= p_high <= health.HEADROOM_RAMP + health.ABOVE_CRITICAL


@given(fds=st.integers(0, 5000), more=st.integers(0, 5000))
def test_open_files_headroom_is_monotonic(fds, more):
    def cost(n: int) -> int:
        return _points(score(HEALTHY._replace(open_fds=n))).get("open files", 0)
    assert cost(fds) <= cost(fds + more) <= health.HEADROOM_RAMP


# The worked example of the README, computed here and compared with the numbers written there.
WORKED = HealthInputs(up=True, ready=True, restarts_in_window=1, max_attempts=5,
                      cpu_percent=72, cpu=Thresholds(warning=70, critical=90),
                      memory_mb=350, memory=Thresholds(warning=200, critical=300, limit=400),
                      open_fds=100, fd_limit=1024, alerts=("CRITICAL", "WARNING"), uptime=120, reset_after=300)


def test_the_readme_worked_example_is_what_the_function_computes():
    text = README.read_text(encoding="utf-8")
    section = text[text.index("#### Worked example"):]
    section = section[: section.index("\n#")]
    written = {m.group(1): int(m.group(2)) for m in re.finditer(r"^\| (\w[\w ]*?) \| .*? \| (\d+) \|$", section, re.M)}
    lost, total = map(int, re.search(r"score 100 − (\d+) = (\d+)", section).groups())
    h = score(WORKED)
    assert written == _points(h)
    assert lost == sum(written.values())
    assert total == h.score == 46


@given(st.builds(HealthInputs, ready=st.booleans(), liveness_failures=st.integers(0, 5), restarts_in_window=st.integers(0, 6),
                 cpu_percent=st.none() | st.floats(0, 400), cpu=st.just(Thresholds(warning=70, critical=90)),
                 memory_mb=st.none() | st.floats(0, 1000), memory=st.just(Thresholds(warning=300, critical=400, limit=512)),
                 open_fds=st.none() | st.integers(0, 2000), fd_limit=st.none() | st.integers(1, 1024),
                 alerts=st.lists(st.sampled_from(["WARNING", "CRITICAL", "EMERGENCY", "PREDICTED"]), max_size=4).map(tuple),
                 uptime=st.none() | st.floats(0, 1000)))
def test_a_score_without_its_explanations_has_the_same_points_by_cause(inputs):
    """The exporter scores every agent at every sample without the words (it exports causes and points)."""
    explained, bare = score(inputs), score(inputs, explain=False)
    assert bare.score == explained.score
    assert [(p.cause, p.points) for p in bare.penalties] == [(p.cause, p.points) for p in explained.penalties]
