"""The generated Grafana objects: dashboards, Grafana-managed alert rules and the provisioning folder.

The dashboards are judged by grafana-foundation-sdk's own dashboard model (Grafana's types for 11.6, with every
panel plugin's options registered): decoded by it and encoded again, nothing we wrote is lost or changed. Every
PromQL expression (each panel's query and each rule's) is parsed by promtool, and names only metrics the
exporter declares; tests/integration/test_grafana.py runs them all against a real Prometheus.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from grafana_foundation_sdk.cog import plugins
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import Dashboard

from orchestrator.config.yamltree import dump, load_file
from orchestrator.core import grafana as gf
from orchestrator.core import rules
from orchestrator.core.model import Agent, Grafana, ManifestSet, Notification, Resources, Settings, Thresholds
from orchestrator.interfaces.cli import cli
from orchestrator.operations import dashboards
from orchestrator.operations import grafana as export
from tests.unit.test_rules import PROMETHEUS_OWN, SETS, demo, exported_metric_names, metric_names_in, rich

DEMO = Path(__file__).resolve().parents[2] / "manifests"


def _with_agents(manifests: ManifestSet, agents: tuple[Agent, ...]) -> ManifestSet:
    return dataclasses.replace(manifests, agents=tuple(sorted(agents, key=lambda a: a.name)))


def _tiles(board: dict[str, Any]) -> list[str]:
    return [p["title"] for p in board["panels"] if p["type"] == "stat" and p.get("links")]   # a tile links to its agent


def _read(path: Path) -> Any:
    loaded = load_file(str(path))
    assert loaded.root is not None, loaded.diagnostics
    return loaded.root.plain()


def _contained(wanted: Any, actual: Any, where: str = "") -> list[str]:
    """Where `actual` does not hold `wanted` (it may add keys: the model's defaults)."""
    if isinstance(wanted, dict):
        if not isinstance(actual, dict):
            return [f"{where}: not a mapping"]
        return [p for k, v in wanted.items() for p in
                ([f"{where}.{k}: lost"] if k not in actual else _contained(v, actual[k], f"{where}.{k}"))]
    if isinstance(wanted, list):
        if not isinstance(actual, list) or len(actual) != len(wanted):
            return [f"{where}: a list of another length"]
        return [p for i, (w, a) in enumerate(zip(wanted, actual, strict=True)) for p in _contained(w, a, f"{where}[{i}]")]
    return [] if wanted == actual else [f"{where}: {wanted!r} became {actual!r}"]


# --- the dashboards ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(SETS))
def test_the_dashboards_are_held_whole_by_grafanas_dashboard_model(name: str) -> None:
    """grafana-foundation-sdk's Dashboard model, every panel plugin registered, decodes each dashboard into typed
    panels and encodes it back with every key we wrote, unchanged (it may add its defaults)."""
    plugins.register_default_plugins()
    for board in dashboards.dashboards(SETS[name]()).values():
        model = Dashboard.from_json(board)
        again = json.loads(json.dumps(model.to_json(), cls=JSONEncoder))
        assert _contained(board, again) == []
        assert {type(p).__module__ for p in model.panels or []} == {"grafana_foundation_sdk.models.dashboard"}
        assert len({p["id"] for p in board["panels"]}) == len(board["panels"])   # ids unique


def test_uids_are_stable_and_derived_from_the_project_name() -> None:
    manifests = demo()
    boards = dashboards.dashboards(manifests)
    assert boards["overview.json"]["uid"] == "trading-overview" and boards["agent.json"]["uid"] == "trading-agent"
    long = "p" * 63
    assert gf.uid(long, "overview") == gf.uid(long, "overview") and len(gf.uid(long, "overview")) <= gf.UID_MAX
    assert gf.uid(long, "overview") != gf.uid(long, "agent")
    assert all(len(r["uid"]) <= gf.UID_MAX for r in gf.alert_rules(manifests))
    assert len({r["uid"] for r in gf.alert_rules(rich())}) == len(gf.alert_rules(rich()))


def test_the_overview_has_a_tile_per_agent_and_the_drill_down_a_choice_per_agent() -> None:
    manifests = rich()
    boards = dashboards.dashboards(manifests)
    assert _tiles(boards["overview.json"]) == list(manifests.names)
    variable = boards["agent.json"]["templating"]["list"][0]
    assert variable["name"] == "agent" and variable["query"].split(",") == list(manifests.names)
    titles = {p["title"] for p in boards["overview.json"]["panels"]}
    assert {"Health score", "CPU", "Memory (RSS)", "Open files", "Disk I/O", "TCP connections", "Restarts",
            "Active alerts", "Uptime", "Live configuration version"} <= titles
    detail = {p["title"] for p in boards["agent.json"]["panels"]}
    assert {"CPU", "Memory (RSS)", "Restarts by reason", "Readiness and state", "Health score", "Health penalties",
            "Predicted time to exhaustion"} <= detail


def test_the_drill_down_draws_each_threshold_as_a_line_of_its_level() -> None:
    board = dashboards.agent_dashboard(demo())
    for title, metric in (("CPU", "orchestrator_agent_threshold_cpu_ratio"), ("Memory (RSS)", "orchestrator_agent_threshold_memory_bytes")):
        panel = next(p for p in board["panels"] if p["title"] == title)
        assert any(metric in t["expr"] and t["legendFormat"] == "{{severity}}" for t in panel["targets"])
        styled = {o["matcher"]["options"]: o["properties"] for o in panel["fieldConfig"]["overrides"]}
        assert set(styled) == {"warning", "critical", "limit"}
        assert all(any(p["id"] == "custom.lineStyle" for p in props) for props in styled.values())


# --- every PromQL expression ---------------------------------------------------------------------------

def all_queries(manifests: ManifestSet) -> list[tuple[str, str]]:
    """(where, expr) of every panel query and every Grafana rule query, as written (with Grafana's variables)."""
    found = [(f"{name}: {title}", expr) for name, board in dashboards.dashboards(manifests).items()
             for title, expr in dashboards.queries(board)]
    found += [(f"rule {r['title']}", d["model"]["expr"]) for r in gf.alert_rules(manifests) for d in r["data"]
              if d["refId"] == "A"]
    return found


@pytest.mark.parametrize("name", sorted(SETS))
def test_every_query_names_only_metrics_the_exporter_exports(name: str) -> None:
    exported = exported_metric_names()
    queries = all_queries(SETS[name]())
    assert len(queries) > 20
    for where, expr in queries:
        read = metric_names_in(expr)
        assert read, (where, expr)
        assert not read - exported - PROMETHEUS_OWN, f"{where}: {sorted(read - exported)} not exported: {expr}"


@pytest.mark.parametrize("name", sorted(SETS))
def test_promtool_parses_every_query(name: str, tmp_path: Path) -> None:
    """Each expression as the expression of a recording rule: `promtool check rules` parses it with Prometheus's
    own parser (the panels' `$agent` and `$__rate_interval` replaced as Grafana replaces them)."""
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: `make test` installs Debian's prometheus package"
    manifests = SETS[name]()
    agent = manifests.agents[0].name
    records = [{"record": f"check:query_{i}", "expr": gf.expand(expr, agent=agent)}
               for i, (_, expr) in enumerate(all_queries(manifests))]
    path = tmp_path / "queries.yml"
    path.write_text(dump({"groups": [{"name": "queries", "rules": records}]}))
    done = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{len(records)} rules found" in done.stdout


# --- alert rules ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(SETS))
def test_the_grafana_rules_are_the_prometheus_rules(name: str) -> None:
    manifests = SETS[name]()
    prometheus = rules.alert_rules(manifests)
    grafana = gf.alert_rules(manifests)
    assert len(grafana) == len(prometheus)
    for mine, theirs in zip(grafana, prometheus, strict=True):
        assert mine["data"][0]["model"]["expr"] == theirs.expr
        assert mine["for"] == (rules.duration(theirs.for_seconds) if theirs.for_seconds else "0s")
        assert mine["labels"] == dict(theirs.labels) and mine["ruleGroup"] == theirs.group
        assert mine["condition"] == "C" and mine["noDataState"] == "OK"
        assert "$value }}" not in mine["annotations"]["summary"]


def test_rule_groups_are_evaluated_at_a_multiple_of_grafanas_ten_seconds() -> None:
    assert [gf.group_interval(s) for s in (0.5, 5, 10, 11, 60)] == [10, 10, 10, 20, 60]


def test_each_webhook_is_a_contact_point_routed_by_severity_and_a_command_is_only_named() -> None:
    manifests = dataclasses.replace(rich(), settings=Settings(project="rich", grafana=Grafana(folder="Rich"), notifications=(
        Notification(name="desk", url="http://127.0.0.1:1/hook", min_severity="critical"),
        Notification(name="pager", type="command", command=("/bin/cat",)))))
    assert [p["name"] for p in gf.contact_points(manifests)] == ["desk"]
    route = gf.policy(manifests)["routes"]
    assert route == [{"receiver": "desk", "object_matchers": [["grafana_folder", "=", "Rich"],
                                                              ["severity", "=~", "critical|emergency"]], "continue": True}]


# --- the export ----------------------------------------------------------------------------------------

def test_exporting_twice_writes_the_same_bytes(tmp_path: Path) -> None:
    first = export.export(demo(), str(tmp_path / "grafana"))
    assert {w.status for w in first} == {"created"}
    snapshot = {p: p.read_bytes() for p in (tmp_path / "grafana").rglob("*") if p.is_file()}
    again = export.export(demo(), str(tmp_path / "grafana"))
    assert {w.status for w in again} == {"unchanged"}
    assert {p: p.read_bytes() for p in (tmp_path / "grafana").rglob("*") if p.is_file()} == snapshot
    assert export.files(demo(), str(tmp_path / "elsewhere")).keys() == export.files(demo(), str(tmp_path / "grafana")).keys()


def test_the_export_is_the_provisioning_layout_grafana_reads(tmp_path: Path) -> None:
    root = tmp_path / "grafana"
    export.export(demo(), str(root))
    provider = _read(root / export.PROVIDER)["providers"][0]
    assert provider["options"]["path"] == str(root / export.DASHBOARDS)
    assert sorted(os.listdir(root / export.DASHBOARDS)) == ["agent.json", "overview.json"]
    source = _read(root / export.DATASOURCES)["datasources"][0]
    assert source["type"] == "prometheus" and source["uid"] == "trading-prometheus"
    alerting = _read(root / export.ALERTING)
    assert [g["name"] for g in alerting["groups"]] == ["orchestrator"]
    assert alerting["policies"][0]["receiver"] == gf.DEFAULT_RECEIVER
    assert [c["name"] for c in alerting["contactPoints"]] == ["trading-desk"]
    groups = {_read(p)["groups"][0]["name"] for p in (root / "provisioning" / "alerting").glob("orchestrator-agent-*.yaml")}
    assert groups == {rules.agent_group(n) for n in demo().names}
    assert oct((root / export.ALERTING).stat().st_mode & 0o777) == "0o644"   # Grafana runs as a user of its own


def test_adding_an_agent_adds_its_tile_and_rules_and_removing_it_deletes_them(tmp_path: Path) -> None:
    root = tmp_path / "grafana"
    base = rich()
    extra = Agent(name="extra", command=("/bin/true",), resources=Resources(memory_mb=Thresholds(limit=64)))
    export.export(base, str(root))
    written = export.export(_with_agents(base, (*base.agents, extra)), str(root))
    extra_file = root / "provisioning" / "alerting" / "orchestrator-agent-extra.yaml"
    assert {w.path: w.status for w in written}[str(extra_file)] == "created"
    overview = json.loads((root / export.DASHBOARDS / "overview.json").read_text())
    assert "extra" in _tiles(overview)
    extra_uids = {r["uid"] for r in _read(extra_file)["groups"][0]["rules"]}
    assert extra_uids

    written = export.export(base, str(root))
    assert {w.path: w.status for w in written}[str(extra_file)] == "removed" and not extra_file.exists()
    overview = json.loads((root / export.DASHBOARDS / "overview.json").read_text())
    assert "extra" not in _tiles(overview)
    deleted = {d["uid"] for d in _read(root / export.ALERTING)["deleteRules"]}
    assert deleted == extra_uids
    # an export before Grafana read that one deletes them still; adding the agent back takes them off the list
    assert {d["uid"] for d in gf.alerting_document(base, export.previous(str(root))).get("deleteRules", [])} == extra_uids
    export.export(_with_agents(base, (*base.agents, extra)), str(root))
    assert "deleteRules" not in _read(root / export.ALERTING)


def test_a_removed_webhook_and_a_renamed_data_source_are_deleted(tmp_path: Path) -> None:
    root = tmp_path / "grafana"
    hooks = (Notification(name="desk", url="http://127.0.0.1:1/a"), Notification(name="ops", url="http://127.0.0.1:1/b"))
    first = dataclasses.replace(rich(), settings=Settings(project="rich", notifications=hooks, grafana=Grafana(datasource="Old")))
    export.export(first, str(root))
    second = dataclasses.replace(first, settings=Settings(project="rich", notifications=hooks[:1], grafana=Grafana(datasource="New")))
    export.export(second, str(root))
    alerting = _read(root / export.ALERTING)
    assert alerting["deleteContactPoints"] == [{"orgId": 1, "uid": gf.Uids("rich").contact_point("ops")}]
    assert _read(root / export.DATASOURCES)["deleteDatasources"] == [{"name": "Old", "orgId": 1}]


def test_the_export_names_a_command_target_it_cannot_make_a_contact_point(tmp_path: Path) -> None:
    manifests = dataclasses.replace(rich(), settings=Settings(project="rich", notifications=(
        Notification(name="pager", type="command", command=("/bin/cat",)),)))
    export.export(manifests, str(tmp_path))
    text = (tmp_path / export.ALERTING).read_text()
    assert "# notifications 'pager' is a command target" in text and "contactPoints" not in text


def test_the_cli_exports_beside_the_manifests_and_says_what_it_wrote(tmp_path: Path) -> None:
    shutil.copytree(DEMO, tmp_path / "manifests")
    runner = CliRunner()
    done = runner.invoke(cli, ["-m", str(tmp_path / "manifests"), "grafana", "export", "--output", "json"])
    assert done.exit_code == 0, done.output
    rows = json.loads(done.output)
    assert {r["status"] for r in rows} == {"created"}
    assert all(r["file"].startswith(str(tmp_path / "grafana" / "provisioning")) for r in rows)
    again = runner.invoke(cli, ["-m", str(tmp_path / "manifests"), "grafana", "export", str(tmp_path / "out")])
    assert again.exit_code == 0, again.output
    assert "created    " in again.output and "paths.provisioning" in again.output
