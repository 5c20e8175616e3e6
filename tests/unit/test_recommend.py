"""Recommendations from evidence: the decaying histogram, and each kind of suggestion with its figures."""

from __future__ import annotations

import json
import random
from dataclasses import replace

import pytest

from orchestrator.core.model import Agent, Resources, Thresholds
from orchestrator.core.recommend import (
    MIN_HISTORY, DecayingHistogram, Evidence, confidence, recommend,
)

HOUR = 3600.0
DAY = 24 * HOUR


def _hist(values, *, t: float = 0.0, **kw) -> DecayingHistogram:
    h = DecayingHistogram(**kw)
    for v in values:
        h.add(v, t)
    return h


def _by_field(recs):
    return {r.field: r for r in recs}


# -- the histogram ----------------------------------------------------------------------------------

def test_percentiles_of_a_uniform_distribution_are_within_bucket_resolution():
    h = _hist(range(1, 1001))
    for q in (0.5, 0.9, 0.95, 0.99):
        assert q * 1000 <= h.percentile(q) <= q * 1000 * 1.05 + 1


def test_percentiles_of_a_normal_distribution_are_within_bucket_resolution():
    rng = random.Random(11)
    values = sorted(rng.gauss(300, 40) for _ in range(20_000))
    h = _hist(values)
    for q in (0.5, 0.9, 0.95):
        exact = values[int(q * len(values))]
        assert exact / 1.05 <= h.percentile(q) <= exact * 1.05


def test_an_empty_histogram_has_no_percentile():
    assert DecayingHistogram().percentile(0.9) is None


def test_old_weight_halves_after_one_half_life():
    h = _hist([100.0], half_life=HOUR)
    assert h.total_weight(0.0) == pytest.approx(1.0)
    assert h.total_weight(HOUR) == pytest.approx(0.5)
    assert h.total_weight(3 * HOUR) == pytest.approx(0.125)


def test_newer_samples_outweigh_older_ones_in_the_percentiles():
    h = DecayingHistogram(half_life=HOUR)
    for _ in range(100):
        h.add(100.0, 0.0)
    for _ in range(100):
        h.add(400.0, 2 * HOUR)   # as many samples, each four times the weight of the old ones
    assert h.percentile(0.25) > 390


def test_the_reference_moves_forward_without_changing_the_percentiles():
    h = DecayingHistogram(half_life=60.0)
    h.add(10.0, 0.0)
    h.add(500.0, 200 * 60.0)     # 2^200 would overflow the weights' useful range: everything is rescaled
    assert h.reference == 200 * 60.0
    assert h.total_weight(200 * 60.0) == pytest.approx(1.0)
    assert h.percentile(0.5) == pytest.approx(500, rel=0.05)


def test_the_histogram_round_trips_through_plain_json():
    h = _hist([1, 5, 50, 500, 5000], half_life=HOUR, first=2.0, ratio=1.1)
    h.add(70, 3 * HOUR, weight=2.5)
    back = DecayingHistogram.from_plain(json.loads(json.dumps(h.to_plain())))
    assert back == h
    assert back.percentile(0.7) == h.percentile(0.7)
    assert back.total_weight(5 * HOUR) == h.total_weight(5 * HOUR)


def test_a_histogram_refuses_buckets_that_cannot_grow():
    with pytest.raises(ValueError):
        DecayingHistogram(ratio=1.0)


# -- recommendations --------------------------------------------------------------------------------

AGENT = Agent(name="strategy-engine", command=("run",),
              resources=Resources(memory_mb=Thresholds(warning=200, critical=300, limit=400),
                                  cpu_percent=Thresholds(warning=70, critical=90)))
MEMORY = _hist([150.0 + i % 50 for i in range(1000)])   # peaks 150..199 MB, evenly
QUIET_CPU = _hist([20.0 + i % 20 for i in range(1000)])  # 20..39%


def test_nothing_is_suggested_below_the_minimum_history():
    evidence = Evidence(since=0.0, memory_peaks=MEMORY, cpu=QUIET_CPU)
    assert recommend(AGENT, evidence, MIN_HISTORY - 1) == []
    assert recommend(AGENT, evidence, 10 * HOUR, min_history=11 * HOUR) == []
    assert recommend(AGENT, evidence, MIN_HISTORY) != []


def test_confidence_grows_with_the_hours_of_history():
    assert confidence(0) == 0
    assert confidence(24) == 0.5
    assert confidence(48) == 0.75
    short = recommend(AGENT, Evidence(since=0.0, memory_peaks=MEMORY), 2 * HOUR)
    long = recommend(AGENT, Evidence(since=0.0, memory_peaks=MEMORY), 7 * DAY)
    assert 0 < short[0].confidence < long[0].confidence < 1
    assert long[0].figures["history_hours"] == 168.0


def test_memory_limit_is_the_upper_percentile_of_peaks_with_a_margin():
    rec = _by_field(recommend(AGENT, Evidence(since=0.0, memory_peaks=MEMORY), DAY))["resources.memory_mb.limit"]
    p95 = MEMORY.percentile(0.95)
    assert 197 <= p95 <= 199 * 1.05
    assert rec.current == 400 and rec.suggested == pytest.approx(p95 * 1.15, abs=1)
    assert rec.figures["p95_mb"] == p95 and rec.figures["p90_mb"] == MEMORY.percentile(0.90)
    assert rec.figures["margin"] == 0.15
    assert "p95" in rec.reason and rec.agent == "strategy-engine"


def test_a_memory_limit_close_to_the_evidence_is_left_alone():
    fitting = replace(AGENT, resources=replace(AGENT.resources, memory_mb=Thresholds(limit=240)))
    assert "resources.memory_mb.limit" not in _by_field(recommend(fitting, Evidence(since=0.0, memory_peaks=MEMORY), DAY))


def test_a_memory_limit_restart_bumps_the_limit_by_at_least_100_mb_or_20_percent():
    tight = replace(AGENT, resources=replace(AGENT.resources, memory_mb=Thresholds(limit=200)))
    rec = _by_field(recommend(tight, Evidence(since=0.0, memory_peaks=MEMORY, memory_limit_restarts=2), DAY))
    bumped = rec["resources.memory_mb.limit"]
    assert bumped.suggested == 300     # 200 + max(100, 40)
    assert bumped.figures["memory_limit_restarts"] == 2 and "restarted 2x" in bumped.reason
    big = replace(AGENT, resources=replace(AGENT.resources, memory_mb=Thresholds(limit=1000)))
    rec = _by_field(recommend(big, Evidence(since=0.0, memory_peaks=MEMORY, memory_limit_restarts=1), DAY))
    assert rec["resources.memory_mb.limit"].suggested == 1200   # 1000 + max(100, 200)


def test_cpu_thresholds_follow_the_upper_percentiles_with_margins():
    recs = _by_field(recommend(AGENT, Evidence(since=0.0, cpu=QUIET_CPU), DAY))
    warning, critical = recs["resources.cpu_percent.warning"], recs["resources.cpu_percent.critical"]
    p95, p99 = QUIET_CPU.percentile(0.95), QUIET_CPU.percentile(0.99)
    assert warning.current == 70 and warning.suggested == pytest.approx(p95 * 1.15, abs=5) and warning.suggested % 5 == 0
    assert critical.current == 90 and critical.suggested == pytest.approx(p99 * 1.30, abs=5) and critical.suggested % 5 == 0
    assert warning.figures["p95_percent"] == p95 and critical.figures["p99_percent"] == p99
    assert not {"resources.nice", "resources.cpu_affinity", "replicas"} & set(recs)


def test_a_cpu_bound_agent_on_busy_cores_is_moved_to_an_idle_one():
    bound = replace(AGENT, resources=replace(AGENT.resources, cpu_affinity=(0,)))
    evidence = Evidence(since=0.0, cpu=_hist([85.0] * 100), cores_busy={0: 95.0, 1: 30.0, 2: 60.0})
    rec = _by_field(recommend(bound, evidence, DAY))["resources.cpu_affinity"]
    assert rec.current == (0,) and rec.suggested == (1,)
    assert rec.figures["cores_busy"] == {0: 95.0, 1: 30.0, 2: 60.0}
    assert "resources.nice" not in _by_field(recommend(bound, evidence, DAY))


def test_a_cpu_bound_agent_on_cores_all_busy_is_made_nicer():
    evidence = Evidence(since=0.0, cpu=_hist([85.0] * 100), cores_busy={0: 95.0, 1: 90.0})
    recs = _by_field(recommend(AGENT, evidence, DAY))
    assert (recs["resources.nice"].current, recs["resources.nice"].suggested) == (None, 5)
    assert "resources.cpu_affinity" not in recs
    nicest = replace(AGENT, resources=replace(AGENT.resources, nice=19))
    assert "resources.nice" not in _by_field(recommend(nicest, evidence, DAY))


def test_a_cpu_bound_agent_on_cores_that_are_not_busy_is_left_alone():
    evidence = Evidence(since=0.0, cpu=_hist([85.0] * 100), cores_busy={0: 60.0, 1: 20.0})
    assert not {"resources.nice", "resources.cpu_affinity"} & set(_by_field(recommend(AGENT, evidence, DAY)))


def test_a_saturated_agent_is_given_replicas():
    two = replace(AGENT, replicas=2)
    rec = _by_field(recommend(two, Evidence(since=0.0, cpu=_hist([99.0] * 100)), DAY))["replicas"]
    p90 = rec.figures["p90_percent"]
    assert p90 >= 99
    assert (rec.current, rec.suggested) == (2, 4)     # ceil(2 * ~100 / 60)
    assert "saturated" in rec.reason
