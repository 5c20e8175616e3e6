"""Grafana's side: every dashboard and alert-rule query run by a real Prometheus scraping a real exporter with agents
running, `grafana push` and apply's annotations against a Grafana HTTP API.

No Grafana server can be installed on these machines (Debian packages none, and nothing may be fetched from
elsewhere), so `grafana push` and the annotations are tested against `grafana_api.GrafanaAPI`, a local HTTP server
on 127.0.0.1 that implements the endpoints they use as Grafana documents them, its error responses included
(401, 404, 409 and 412 version mismatches, 400 validation errors).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from orchestrator.config.manifest import LoadOptions, load
from orchestrator.core import grafana as gf
from orchestrator.core import rules
from orchestrator.operations import dashboards
from tests.integration.conftest import Project, Prometheus, free_ports, wait_until
from tests.integration.grafana_api import GrafanaAPI
from tests.unit.test_rules import PROMETHEUS_OWN, exported_metric_names, metric_names_in

pytestmark = pytest.mark.integration

THRESHOLDS = """
resources:
  cpu_percent: {warning: 70, critical: 90}
  memory_mb: {warning: 200, critical: 300, limit: 400}
  open_files: 512
"""
TOKEN = "glsa_test_token"
# Queries with legitimately no data while the agents run quietly for a minute, and why
NO_DATA = {
    "orchestrator_agent_exhaustion_seconds": "no forecast: its window needs 10 samples spanning a quarter of the horizon",
    "orchestrator_agent_exhaustion_earliest_seconds": "no forecast yet (as above)",
    "orchestrator_agent_exhaustion_latest_seconds": "no forecast yet (as above)",
    "orchestrator_agent_alert": "no threshold alert fires: the toys use little CPU and memory",
}
RATE_INTERVAL = "30s"   # what Grafana would put for $__rate_interval at a 1 s scrape; the test waits that long


@pytest.fixture
def grafana() -> Iterator[GrafanaAPI]:
    server = GrafanaAPI(token=TOKEN)
    try:
        yield server
    finally:
        server.close()


def _agents_in(answer: dict[str, Any]) -> set[str]:
    return {str(row["metric"].get("agent")) for row in answer["data"]["result"] if row["metric"].get("agent")}


def test_every_panel_and_rule_query_runs_on_a_real_prometheus_and_returns_data_for_each_agent(project: Project,
                                                                                              prometheus: Prometheus):
    """Every query of every panel (with `$agent` as each agent, `$__rate_interval` as Grafana would make it) and
    every alert rule's expression is sent to Prometheus: each parses (Prometheus answers `success`, not
    `bad_data`) and names only the exporter's metrics. Each panel query returns data for each agent, but those of
    NO_DATA (no forecast yet, no alert firing: said there). An alert rule's expression has no data while it does
    not fire, which is the case here; that each reads live series is shown by its metrics, each of which has data
    for each agent (the forecast's excepted)."""
    port = int(prometheus.target.rsplit(":", 1)[1])
    feed, calc = free_ports(2)
    project.write("orchestrator.yaml", f"""
        project: test
        exporter: {{listen: "127.0.0.1:{port}", interval: 0.5s}}
    """)
    project.toy("feed", feed, more=THRESHOLDS)
    project.toy("calc", calc, depends_on=["feed"], more=THRESHOLDS)
    project.run("up", check=True)
    names = {"feed", "calc"}
    wait_until(lambda: _agents_in(prometheus.ask(f"rate(orchestrator_process_cpu_seconds_total[{RATE_INTERVAL}])")) >= names,
               60, interval=0.5, message="two samples of each agent in Prometheus")
    manifests = load(LoadOptions(str(project.manifests)))
    exported = exported_metric_names()

    def checked(where: str, expr: str) -> dict[str, Any]:
        answer = prometheus.ask(expr)
        assert answer.get("status") == "success", f"{where}: {expr}: {answer}"
        unknown = metric_names_in(expr) - exported - PROMETHEUS_OWN
        assert not unknown, f"{where}: {sorted(unknown)} are not the exporter's"
        return answer

    def legitimately_empty(expr: str) -> bool:
        return bool(metric_names_in(expr) & set(NO_DATA))

    # each tile turns green once its agent is ready and healthy
    def tiles() -> dict[str, str]:
        return {row["metric"]["agent"]: row["value"][1] for name in names
                for row in prometheus.query(dashboards.agent_status(name))}
    wait_until(lambda: tiles() == {"feed": "2", "calc": "2"}, 60, interval=0.5, message="every tile green")

    boards = dashboards.dashboards(manifests)
    ran = 0
    for file, board in boards.items():
        for title, expr in dashboards.queries(board):
            where = f"{file}: {title}"
            if gf.AGENT_VARIABLE in expr:
                for agent in sorted(names):
                    answer = checked(where, gf.expand(expr, agent=agent, rate_interval=RATE_INTERVAL))
                    assert answer["data"]["result"] or legitimately_empty(expr), f"{where} ({agent}): no data: {expr}"
                    ran += 1
                continue
            answer = checked(where, gf.expand(expr, agent="", rate_interval=RATE_INTERVAL))
            ran += 1
            if legitimately_empty(expr):
                continue
            assert answer["data"]["result"], f"{where}: no data: {expr}"
            if "agent" in expr and "by (reason)" not in expr:
                assert _agents_in(answer) >= names or title in names, f"{where}: not every agent: {expr}: {_agents_in(answer)}"
    assert ran > 25

    by_key = {(r.alert, dict(r.labels).get("agent", "")): r for r in rules.alert_rules(manifests)}
    for rule in gf.alert_rules(manifests):
        expr = rule["data"][0]["model"]["expr"]
        checked(f"rule {rule['title']}", expr)     # not firing: no data, as it should be
        source = by_key[(rule["title"].split(" ")[0], rule["labels"].get("agent", ""))]
        for metric in source.metrics:
            if metric in NO_DATA:
                continue
            agent = rule["labels"].get("agent")
            selector = f'{metric}{{agent="{agent}"}}' if agent and metric != "up" else metric
            assert prometheus.query(selector), f"rule {rule['title']}: {selector} has no data"

    # a stopped agent's tile turns red
    project.run("stop", "calc", "--yes", check=True)
    wait_until(lambda: tiles().get("calc") == "0", 30, interval=0.5, message="calc's tile red")
    assert tiles()["feed"] == "2"


def _push(project: Project, *args: str) -> tuple[int, Any, str]:
    done = project.run("grafana", "push", "--output", "json", *args)
    return done.returncode, json.loads(done.stdout) if done.returncode == 0 else None, done.stderr


def _statuses(rows: list[dict[str, str]]) -> dict[tuple[str, str], str]:
    return {(r["kind"], r["name"]): r["status"] for r in rows}


def test_grafana_push_creates_then_leaves_unchanged_updates_in_place_and_deletes_what_was_removed(project: Project,
                                                                                                   grafana: GrafanaAPI):
    hook = "http://127.0.0.1:9/hooks/desk"
    settings = f"""
        project: test
        grafana: {{url: "{grafana.url}", folder: Test, datasource: Prom}}
        notifications:
          - {{name: desk, url: "{hook}", min_severity: critical}}
          - {{name: pager, type: command, command: [/bin/cat]}}
    """
    project.write("orchestrator.yaml", settings)
    feed, calc = free_ports(2)
    project.toy("feed", feed, more=THRESHOLDS)
    project.toy("calc", calc, more=THRESHOLDS)

    code, rows, err = _push(project, "--token", TOKEN)
    assert code == 0, err
    first = _statuses(rows)
    assert first[("datasource", "Prom")] == "created" and first[("folder", "Test")] == "created"
    assert first[("dashboard", "test: agents")] == "created" and first[("dashboard", "test: agent")] == "created"
    assert first[("contact point", "desk")] == "created" and ("contact point", "pager") not in first
    assert first[("policy", "notification policy tree")] == "changed"
    assert first[("rule group", "orchestrator-agent-calc")] == "created"
    manifests = load(LoadOptions(str(project.manifests)))
    assert {r["uid"] for r in grafana.rules.values()} == {r["uid"] for r in gf.alert_rules(manifests)}
    assert all(r["folderUID"] == gf.Uids("test").folder for r in grafana.rules.values())
    assert grafana.groups[(gf.Uids("test").folder, "orchestrator-agent-feed")] == 10   # the exporter's 5 s, as Grafana's
    assert {r["receiver"] for r in grafana.policy["routes"]} == {"desk"}

    code, rows, err = _push(project, "--token", TOKEN)   # GRAFANA_TOKEN works as well as --token
    assert code == 0, err
    assert set(_statuses(rows).values()) == {"unchanged"}, rows

    # someone saved the overview in Grafana meanwhile: push puts ours back in place, by UID, over their version
    overview = gf.Uids("test").overview
    edited = {**grafana.dashboards[overview]["dashboard"], "title": "edited by hand"}
    grafana.dashboards[overview]["dashboard"] = {**edited, "version": edited["version"] + 1}
    code, rows, err = _push(project, "--token", TOKEN)
    assert code == 0, err
    assert _statuses(rows)[("dashboard", "test: agents")] == "changed"
    assert grafana.dashboards[overview]["dashboard"]["title"] == "test: agents"
    assert grafana.dashboards[overview]["dashboard"]["version"] == 3
    assert grafana.sent("POST", "/api/dashboards/db")[-1]["overwrite"] is True

    # calc and the webhook removed: its rules and the contact point go, the policy no longer routes to it
    project.remove("agents/calc.yaml")
    project.write("orchestrator.yaml", settings.replace(f'          - {{name: desk, url: "{hook}", min_severity: critical}}\n', ""))
    code, rows, err = _push(project, "--token", TOKEN, "--folder", "Test")
    assert code == 0, err
    after = _statuses(rows)
    assert after[("contact point", "desk")] == "deleted" and after[("policy", "notification policy tree")] == "changed"
    assert after[("dashboard", "test: agents")] == "changed" and after[("rule group", "orchestrator-agent-feed")] == "unchanged"
    assert sum(1 for r in rows if r["kind"] == "alert rule" and r["status"] == "deleted") == \
        len([r for r in rules.alert_rules(manifests) if dict(r.labels).get("agent") == "calc"])
    assert not [r for r in grafana.rules.values() if r["labels"].get("agent") == "calc"]
    assert [p["name"] for p in grafana.contact_points] == ["grafana-default-email"]


def test_grafana_push_with_a_refused_token_or_no_grafana_fails_saying_why(project: Project, grafana: GrafanaAPI):
    project.write("orchestrator.yaml", f'project: test\ngrafana: {{url: "{grafana.url}"}}\n')
    project.toy("feed", free_ports(1)[0])
    code, _, err = _push(project, "--token", "wrong")
    assert code == 1 and "refused the credentials (401)" in err and "invalid API key" in err
    closed = free_ports(1)[0]
    code, _, err = _push(project, "--token", TOKEN, "--url", f"http://127.0.0.1:{closed}")
    assert code == 1 and f"grafana push to http://127.0.0.1:{closed} failed" in err


def test_apply_up_and_emergency_stop_annotate_grafana_and_a_grafana_unreachable_or_refusing_is_only_a_warning(
        project: Project, grafana: GrafanaAPI, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("GRAFANA_TOKEN", TOKEN)
    settings = 'project: test\nexporter: {{enabled: false}}\ngrafana: {{url: "{url}"}}\n'
    project.write("orchestrator.yaml", settings.format(url=grafana.url))
    feed, calc = free_ports(2)
    project.toy("feed", feed)
    project.toy("calc", calc, depends_on=["feed"])
    done = project.run("up", check=True)
    assert "warning" not in done.stderr
    wait_until(lambda: grafana.annotations, 5, message="the annotation of up")
    assert grafana.annotations[0]["tags"] == ["orchestrator", "test", "up", "version-1"]
    assert "orchestrator up: version 1 of test" in grafana.annotations[0]["text"]
    assert "agents changed: calc, feed" in grafana.annotations[0]["text"]

    project.toy("calc", calc, depends_on=["feed"], delay=0.001)
    done = project.run("apply", "-M", "calc gets a new argument", "--yes", check=True)
    assert "warning" not in done.stderr
    note = grafana.annotations[-1]
    assert note["tags"] == ["orchestrator", "test", "apply", "version-2"]
    text = note["text"].splitlines()
    assert text[0] == "orchestrator apply: version 2 of test" and text[1] == "calc gets a new argument"
    assert text[2].startswith("by ") and text[3] == "agents changed: calc"
    assert isinstance(note["time"], int) and note["time"] > 1_700_000_000_000   # milliseconds

    # Grafana refusing (a wrong token): the apply succeeds and says so
    monkeypatch.setenv("GRAFANA_TOKEN", "wrong")
    project.toy("calc", calc, depends_on=["feed"], delay=0.002)
    done = project.run("apply", "--yes")
    assert done.returncode == 0, done.stderr
    assert f"warning: Grafana at {grafana.url} did not take the apply annotation: 401 invalid API key" in done.stderr
    # Grafana not there at all
    closed = free_ports(1)[0]
    project.write("orchestrator.yaml", settings.format(url=f"http://127.0.0.1:{closed}"))
    project.toy("calc", calc, depends_on=["feed"], delay=0.003)
    done = project.run("apply", "--yes")
    assert done.returncode == 0, done.stderr
    assert f"warning: Grafana at http://127.0.0.1:{closed} did not take the apply annotation: cannot connect " \
           "(Connection refused)" in done.stderr
    assert "Applied as version 4." in done.stdout

    monkeypatch.setenv("GRAFANA_TOKEN", TOKEN)
    project.write("orchestrator.yaml", settings.format(url=grafana.url))
    done = project.run("emergency-stop", "--reason", "bad prices", "--yes")
    assert done.returncode == 0, done.stderr
    note = grafana.annotations[-1]
    assert note["tags"] == ["orchestrator", "test", "emergency-stop"] and "bad prices" in note["text"]


def test_a_rollback_is_annotated_like_an_apply(project: Project, grafana: GrafanaAPI, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("GRAFANA_TOKEN", TOKEN)
    project.write("orchestrator.yaml", f'project: test\nexporter: {{enabled: false}}\ngrafana: {{url: "{grafana.url}"}}\n')
    feed, calc = free_ports(2)
    project.toy("feed", feed)
    project.toy("calc", calc, depends_on=["feed"])
    project.run("up", check=True)
    project.toy("calc", calc, depends_on=["feed"], delay=0.001)
    project.run("apply", "--yes", check=True)
    done = project.run("rollback", "1", "--yes", check=True)
    assert "warning" not in done.stderr
    note = grafana.annotations[-1]
    assert note["tags"] == ["orchestrator", "test", "rollback", "version-3"], grafana.annotations
    assert note["text"].splitlines()[1] == "rollback to version 1" and "agents changed: calc" in note["text"]
