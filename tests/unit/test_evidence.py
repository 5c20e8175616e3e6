"""What `recommend` learns from survives the exporter's restarts, and `orchestrator recommend` turns it into
suggestions with their figures, silent below the minimum history."""

from __future__ import annotations

import json
import time

from click.testing import CliRunner

from orchestrator.config.manifest import LoadOptions, load
from orchestrator.interfaces.cli import cli
from orchestrator.state import evidence
from orchestrator.state.history import History
from orchestrator.supervisord import render

AGENT = """
name: hungry
command: [sleep, "60"]
resources: {memory_mb: {warning: 100, critical: 150, limit: 200}}
"""


def _store(hours: float, *, peak: float, now: float) -> evidence.EvidenceStore:
    store = evidence.EvidenceStore()
    start = now - hours * 3600
    for minute in range(int(hours * 60)):
        store.observe("hungry", start + minute * 60, memory_mb_peak=peak + (minute % 7), cpu_percent=12.0)
    store.observe_cores({0: 40.0, 1: 35.0}, now)
    return store


def test_the_store_round_trips_through_its_file(tmp_path):
    now = time.time()
    store = _store(3, peak=300, now=now)
    store.limit_restart("hungry", now)
    evidence.save(str(tmp_path), store)
    again = evidence.load(str(tmp_path))
    assert again.to_plain() == store.to_plain()
    seen = again.evidence("hungry")
    assert seen is not None and seen.memory_limit_restarts == 1 and dict(seen.cores_busy).keys() == {0, 1}
    again.keep_only(["other"])
    assert again.evidence("hungry") is None
    assert evidence.load(str(tmp_path / "nothing")).to_plain() == {"agents": {}, "cores": {}}


def _live(manifest_set, tmp_path):
    manifests = load(LoadOptions(str(manifest_set({"agents/hungry.yaml": AGENT})), state_dir=str(tmp_path / "state"),
                                 check_commands=False))
    History(manifests.state_dir).record(manifests, render.render(manifests))
    return manifests


def test_recommend_suggests_a_memory_limit_above_the_observed_peaks_with_its_figures(manifest_set, tmp_path):
    manifests = _live(manifest_set, tmp_path)
    evidence.save(manifests.state_dir, _store(48, peak=300, now=time.time()))
    done = CliRunner().invoke(cli, ["-m", manifests.manifests_dir, "--state-dir", manifests.state_dir, "recommend",
                                    "--output", "json"])
    assert done.exit_code == 0, done.output
    found = {r["field"]: r for r in json.loads(done.stdout)}
    limit = found["resources.memory_mb.limit"]
    assert limit["current"] == 200 and limit["suggested"] > 300 * 1.15
    assert 0.7 < limit["confidence"] < 0.8  # two days of history
    text = CliRunner().invoke(cli, ["-m", manifests.manifests_dir, "--state-dir", manifests.state_dir, "recommend"])
    assert "hungry: resources.memory_mb.limit: 200 ->" in text.stdout


def test_recommend_says_nothing_below_the_minimum_history(manifest_set, tmp_path):
    manifests = _live(manifest_set, tmp_path)
    evidence.save(manifests.state_dir, _store(0.5, peak=300, now=time.time()))
    done = CliRunner().invoke(cli, ["-m", manifests.manifests_dir, "--state-dir", manifests.state_dir, "recommend"])
    assert done.exit_code == 0
    assert "No change to suggest." in done.stdout and "hungry: 30 min of history (suggestions from 60 min)" in done.stderr
    bad = CliRunner().invoke(cli, ["-m", manifests.manifests_dir, "--state-dir", manifests.state_dir, "recommend",
                                   "--min-history", "soon"])
    assert bad.exit_code == 2 and "'soon' is not a duration" in bad.output
