"""Threshold alerts as pure functions on a fake clock: `for`, hysteresis, warmup, and what a limit asks for."""

from __future__ import annotations

import pytest

from orchestrator.config.manifest import LoadOptions, load
from orchestrator.core.alerts import Rule, RuleState, Transition, evaluate, on_limit, rules_for
from orchestrator.core.errors import ManifestError
from orchestrator.core.model import Resources, Thresholds

MEMORY = Resources(memory_mb=Thresholds(warning=300, critical=400, limit=500, for_seconds=10, hysteresis=0.1))


def _run(rule: Rule, series: list[tuple[float, float | None]], *, warmup_until: float = float("-inf")) -> list[Transition]:
    state, seen = RuleState(), []
    for now, value in series:
        state, transition = evaluate(rule, state, value, now, warming_up=now < warmup_until)
        if transition is not None:
            seen.append(transition)
    return seen


def _rule(level: str) -> Rule:
    return next(r for r in rules_for("leaky", MEMORY) if r.level == level)


def test_thresholds_make_one_rule_per_level_with_its_resolve_level_and_for():
    rules = rules_for("leaky", MEMORY)
    assert [(r.metric, r.level, r.fire_at, r.resolve_at, r.for_seconds) for r in rules] == [
        ("memory_mb", "WARNING", 300, pytest.approx(270), 10),
        ("memory_mb", "CRITICAL", 400, pytest.approx(360), 10),
        ("memory_mb", "EMERGENCY", 500, pytest.approx(450), 10)]
    assert rules_for("quiet", Resources()) == ()


def test_a_spike_that_falls_back_before_for_raises_nothing():
    series = [(0, 100), (1, 350), (5, 390), (9, 380), (10, 200), (11, 310), (15, 200)]
    assert _run(_rule("WARNING"), series) == []


def test_a_value_that_stays_above_the_line_fires_once_its_for_is_over():
    series = [(0, 100), (1, 350), (5, 360), (10, 370), (11, 380), (20, 390)]
    fired = _run(_rule("WARNING"), series)
    assert [(t.kind, t.at, t.value) for t in fired] == [("firing", 11, 380)]
    assert "memory_mb 380 is at or above 300 for 10s" in fired[0].summary


def test_a_firing_alert_resolves_only_below_its_resolve_level_so_a_value_at_the_line_does_not_flap():
    hovering = [(t, 300 + (6 if t % 2 else -6)) for t in range(0, 60)]  # 294..306 around the 300 line
    fired = _run(_rule("WARNING"), [(-20, 320), (-9, 320), *hovering, (61, 280), (62, 269)])
    assert [(t.kind, t.at) for t in fired] == [("firing", -9), ("resolved", 62)]


def test_no_alert_starts_pending_during_warmup_and_the_for_counts_from_its_end():
    series = [(t, 450.0) for t in range(0, 40)]
    fired = _run(_rule("CRITICAL"), series, warmup_until=25)
    assert [(t.kind, t.at) for t in fired] == [("firing", 35)]


def test_a_missing_sample_ends_a_pending_wait_but_not_a_firing_alert():
    rule = _rule("WARNING")
    pending = _run(rule, [(0, 350), (5, None), (8, 350), (15, 350), (18, 350)])
    assert [(t.kind, t.at) for t in pending] == [("firing", 18)]  # counted again from 8
    firing = _run(rule, [(0, 350), (10, 350), (11, None), (12, None), (13, 200)])
    assert [(t.kind, t.at) for t in firing] == [("firing", 10), ("resolved", 13)]


def _fired(level: str, at: float, metric: str = "memory_mb") -> Transition:
    rule = Rule(agent="leaky", metric=metric, level=level, fire_at=500, resolve_at=450)  # type: ignore[arg-type]
    return Transition(rule, "firing", 510.0, at)


def test_a_reached_limit_asks_for_the_manifests_action_with_its_reason():
    action = on_limit(_fired("EMERGENCY", 100), "restart", None, 60)
    assert action is not None and (action.agent, action.action, action.reason) == ("leaky", "restart", "memory_limit")
    assert on_limit(_fired("EMERGENCY", 100, "open_fds"), "stop", None, 60).reason == "fds_limit"  # type: ignore[union-attr]


@pytest.mark.parametrize("transition, action, last", [
    (_fired("CRITICAL", 100), "restart", None),      # only a limit acts
    (_fired("EMERGENCY", 100), "alert", None),       # alert only
    (_fired("EMERGENCY", 100), "restart", 50.0),     # within the 60 s cooldown of the last action
])
def test_a_limit_does_not_act_below_emergency_when_alert_only_or_within_the_cooldown(transition, action, last):
    assert on_limit(transition, action, last, 60) is None


def test_a_limit_acts_again_once_the_cooldown_is_over():
    assert on_limit(_fired("EMERGENCY", 111), "restart", 50.0, 60) is not None


def test_thresholds_are_read_from_a_manifest_with_for_hysteresis_and_on_limit(manifest_set):
    manifests = manifest_set({"agents/a.yaml": """
        name: a
        command: [sleep, "60"]
        resources:
          memory_mb: {warning: 300, limit: 500, for: 10s, hysteresis: 0.2}
          open_fds: {warning: 800, critical: 900}
          on_limit: stop
    """})
    resources = load(LoadOptions(str(manifests))).agent("a").resources
    assert resources.memory_mb == Thresholds(warning=300, limit=500, for_seconds=10.0, hysteresis=0.2)
    assert resources.open_fds == Thresholds(warning=800, critical=900)
    assert resources.on_limit == "stop"


@pytest.mark.parametrize("resources, complaint", [
    ("{on_limit: reboot}", "resources.on_limit"),
    ("{memory_mb: {warning: 300, hysteresis: 2}}", "resources.memory_mb.hysteresis"),
    ("{open_fds: {warning: 900, critical: 800}}", "resources.open_fds.critical: 800 is not above warning 900"),
    ("{cpu_percent: {warning: 50, for: soon}}", "resources.cpu_percent.for"),
])
def test_a_wrong_threshold_setting_is_a_located_error(manifest_set, resources, complaint):
    manifests = manifest_set({"agents/a.yaml": f"name: a\ncommand: [sleep, '60']\nresources: {resources}\n"})
    with pytest.raises(ManifestError) as caught:
        load(LoadOptions(str(manifests)))
    assert any(complaint in str(d) and "agents/a.yaml:3:" in str(d) for d in caught.value.diagnostics), \
        [str(d) for d in caught.value.diagnostics]
