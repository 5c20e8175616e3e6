"""The Grafana dashboards of a manifest set, built with grafana-foundation-sdk and returned as plain JSON data.

Owned here (the one home of grafana_foundation_sdk): the overview and the per-agent drill-down, their panels
and every PromQL query they run. Pure: no clock, no I/O; the same manifests give the same dashboards, key for
key (UIDs from `core.grafana`, panel ids and positions counted in order). `operations.grafana` writes them for
file provisioning and `interfaces.grafana` pushes them.

    overview   status grid (a tile per agent: red, yellow or green from its state, readiness and health score),
               health score bars, then per agent over time: CPU, memory, open files, disk I/O, TCP connections,
               restarts; the exporter's active alerts, uptimes, the live configuration version
    agent      `$agent` chosen from the manifests' agents: CPU and memory with their warning, critical and limit
               drawn as lines, open files, restarts by reason, readiness and state, health score and its
               penalties, predicted time to exhaustion with its 95% band

Every query names only the exporter's metrics (tests read them against its `describe()`, and run each one
against a real Prometheus scraping a real exporter).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from grafana_foundation_sdk.builders import bargauge, stat, statetimeline, table, timeseries
from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard as builders
from grafana_foundation_sdk.builders import prometheus as prom
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as model
from grafana_foundation_sdk.models import prometheus as prom_model

from orchestrator.core import grafana as gf
from orchestrator.core.model import ManifestSet

WIDTH = 24                 # Grafana's grid is 24 columns wide
TILE_W, TILE_H = 4, 4      # a status tile: six to a row
GRAPH_W, GRAPH_H = 12, 8   # two graphs to a row
REFRESH = "30s"
TAGS = ["orchestrator"]

# status values of a tile, from the worst: down or given up, degraded (not ready, or a health score under
# HEALTHY), healthy
DOWN, DEGRADED, HEALTHY_STATUS = 0, 1, 2
DEGRADED_BELOW = 40        # health score: under it the tile is red
HEALTHY = 80               # under it, yellow

LEVEL_COLORS = {"warning": "yellow", "critical": "orange", "limit": "red"}


def agent_status(agent: str) -> str:
    """The status of a tile: 0 red (down or given up, or a health score under 40), 1 yellow (up but not ready, or
    a score under 80), 2 green. The lower of the state's figure (down 0, up 1, ready 2) and the score's."""
    name = json.dumps(agent)
    state = (f"orchestrator_agent_up{{agent={name}}} * (1 + orchestrator_agent_ready{{agent={name}}})"
             f" * (1 - orchestrator_agent_given_up{{agent={name}}})")
    # floor(score / 40): 0 under 40, 1 under 80 (HEALTHY is twice DEGRADED_BELOW), 2 from 80
    score = f"clamp_max(floor(orchestrator_agent_health_score{{agent={name}}} / {DEGRADED_BELOW}), 2)"
    return f'min by (agent) ({state} or label_replace({score}, "part", "health", "", ""))'


class _Layout:
    """Panel ids and grid positions, counted in the order panels are added: the same build, the same JSON."""

    def __init__(self) -> None:
        self.next_id = 1
        self.x = 0
        self.y = 0
        self.row_height = 0

    def place(self, w: int, h: int) -> tuple[int, model.GridPos]:
        if self.x + w > WIDTH:
            self.x, self.y, self.row_height = 0, self.y + self.row_height, 0
        pos = model.GridPos(h=h, w=w, x=self.x, y=self.y)
        self.x += w
        self.row_height = max(self.row_height, h)
        panel_id = self.next_id
        self.next_id += 1
        return panel_id, pos

    def row(self) -> tuple[int, model.GridPos]:
        if self.x:
            self.x, self.y, self.row_height = 0, self.y + self.row_height, 0
        panel_id, pos = self.place(WIDTH, 1)
        self.x, self.y, self.row_height = 0, self.y + 1, 0
        return panel_id, pos


def _ds(manifests: ManifestSet) -> model.DataSourceRef:
    return model.DataSourceRef(type_val="prometheus", uid=gf.Uids(manifests.settings.project).datasource)


def _query(ds: model.DataSourceRef, ref: str, expr: str, legend: str = "", *, instant: bool = False,
           table_format: bool = False) -> prom.Dataquery:
    query = prom.Dataquery().ref_id(ref).expr(expr).datasource(ds)
    if legend:
        query = query.legend_format(legend)
    if instant:
        query = query.instant().format(prom_model.PromQueryFormat.TABLE if table_format else prom_model.PromQueryFormat.TIME_SERIES)
    return query


def _thresholds(*steps: tuple[float | None, str]) -> builders.ThresholdsConfig:
    return builders.ThresholdsConfig().mode(model.ThresholdsMode.ABSOLUTE).steps(
        [model.Threshold(value=value, color=color) for value, color in steps])


def _selector(manifests: ManifestSet) -> str:
    """This project's agents, as a label matcher (several projects may share a Prometheus)."""
    return "agent=~" + json.dumps("|".join(manifests.names) or "^$")


def _graph(ds: model.DataSourceRef, title: str, unit: str, queries: Sequence[tuple[str, str]], *,
           description: str = "") -> timeseries.Panel:
    panel = (timeseries.Panel().title(title).datasource(ds).unit(unit).line_width(1).fill_opacity(10)
             .legend(common_builders.VizLegendOptions().display_mode(common.LegendDisplayMode.LIST)
                     .placement(common.LegendPlacement.BOTTOM).show_legend(True)))
    if description:
        panel = panel.description(description)
    for i, (expr, legend) in enumerate(queries):
        panel = panel.with_target(_query(ds, chr(ord("A") + i), expr, legend))
    return panel


def _plain(built: Any) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(json.dumps(built.to_json(), cls=JSONEncoder, sort_keys=True))
    return data


def _control_room(manifests: ManifestSet, agent: str) -> list[Any]:
    """A link to the agent's card in the control room (`orchestrator web`), when orchestrator.yaml has `web:`."""
    web = manifests.settings.web
    if web is None:
        return []
    host, _, port = web.listen.rpartition(":")
    host = "localhost" if host in ("127.0.0.1", "0.0.0.0", "[::]", "[::1]") else host
    return [builders.DashboardLink(f"{agent} in the control room").type(model.DashboardLinkType.LINK)
            .url(f"http://{host}:{port}/#agent={agent}").target_blank(True)]


def overview(manifests: ManifestSet) -> dict[str, Any]:
    """The overview dashboard of `manifests`, as Grafana's dashboard JSON."""
    project = manifests.settings.project
    ids = gf.Uids(project)
    ds = _ds(manifests)
    agents = _selector(manifests)
    layout = _Layout()
    board = (builders.Dashboard(f"{project}: agents").uid(ids.overview).tags([*TAGS, project]).refresh(REFRESH)
             .time("now-1h", "now").timezone("browser").editable().readonly()
             .description(f"Generated by `orchestrator grafana export` from the manifests of {project}: do not edit here"))

    def add(panel: Any, w: int, h: int) -> None:
        nonlocal board
        panel_id, pos = layout.place(w, h)
        board = board.with_panel(panel.id(panel_id).grid_pos(pos))

    def row(title: str) -> None:
        nonlocal board
        panel_id, pos = layout.row()
        board = board.with_row(builders.Row(title).id(panel_id).grid_pos(pos))

    row("Status")
    mappings: list[model.ValueMapping] = [model.ValueMap(options={
        str(DOWN): model.ValueMappingResult(text="DOWN", color="red", index=0),
        str(DEGRADED): model.ValueMappingResult(text="DEGRADED", color="yellow", index=1),
        str(HEALTHY_STATUS): model.ValueMappingResult(text="OK", color="green", index=2)})]
    for agent in manifests.agents:
        tile = (stat.Panel().title(agent.name).datasource(ds)
                .description(f"{agent.name}: red when down or given up (or a health score under {DEGRADED_BELOW}), "
                             f"yellow when not ready (or a score under {HEALTHY}), green otherwise")
                .with_target(_query(ds, "A", agent_status(agent.name), "{{agent}}", instant=True))
                .mappings(mappings).thresholds(_thresholds((None, "red"), (DEGRADED, "yellow"), (HEALTHY_STATUS, "green")))
                .color_mode(common.BigValueColorMode.BACKGROUND).graph_mode(common.BigValueGraphMode.NONE)
                .text_mode(common.BigValueTextMode.VALUE_AND_NAME)
                .reduce_options(common_builders.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
                .links([builders.DashboardLink(f"{agent.name} in detail").type(model.DashboardLinkType.LINK)
                        .url(f"/d/{ids.agent}?var-agent={agent.name}").keep_time(True), *_control_room(manifests, agent.name)]))
        add(tile, TILE_W, TILE_H)
    add(bargauge.Panel().title("Health score").datasource(ds).unit("none").min(0).max(100)
        .with_target(_query(ds, "A", f"orchestrator_agent_health_score{{{agents}}}", "{{agent}}", instant=True))
        .thresholds(_thresholds((None, "red"), (DEGRADED_BELOW, "yellow"), (HEALTHY, "green")))
        .display_mode(common.BarGaugeDisplayMode.GRADIENT).orientation(common.VizOrientation.HORIZONTAL)
        .reduce_options(common_builders.ReduceDataOptions().calcs(["lastNotNull"]).values(False)),
        WIDTH, max(4, 2 * len(manifests.agents) // 3 + 2))

    row("Resources per agent")
    add(_graph(ds, "CPU", "percentunit", [(f"orchestrator_process_cpu_usage_ratio{{{agents}}}", "{{process}}")],
               description="cores used by each process tree (1 = one core)"), GRAPH_W, GRAPH_H)
    add(_graph(ds, "Memory (RSS)", "bytes", [(f"orchestrator_process_resident_memory_bytes{{{agents}}}", "{{process}}")]),
        GRAPH_W, GRAPH_H)
    add(_graph(ds, "Open files", "none", [(f"orchestrator_process_open_fds{{{agents}}}", "{{process}}")]), GRAPH_W, GRAPH_H)
    add(_graph(ds, "Disk I/O", "Bps", [
        (f"rate(orchestrator_process_read_bytes_total{{{agents}}}[{gf.RATE_INTERVAL}])", "{{process}} read"),
        (f"-rate(orchestrator_process_written_bytes_total{{{agents}}}[{gf.RATE_INTERVAL}])", "{{process}} written")],
        description="bytes read from storage (up) and written (down), per second"), GRAPH_W, GRAPH_H)
    add(_graph(ds, "TCP connections", "none", [
        (f'orchestrator_process_tcp_connections{{{agents},state="established"}}', "{{process}}")],
        description="established TCP connections of each process tree"), GRAPH_W, GRAPH_H)
    add(_graph(ds, "Restarts", "none", [
        (f"sum by (agent) (increase(orchestrator_agent_restarts_total{{{agents}}}[{gf.RATE_INTERVAL}]))", "{{agent}}")],
        description="restarts of each agent, every reason together").draw_style(common.GraphDrawStyle.BARS),
        GRAPH_W, GRAPH_H)

    row("Alerts, uptime and configuration")
    add(table.Panel().title("Active alerts").datasource(ds)
        .description("the exporter's threshold and forecast alerts firing now (Grafana's own alerts: Alerting > Alert rules)")
        .with_target(_query(ds, "A", f"orchestrator_agent_alert{{{agents}}} == 1", instant=True, table_format=True))
        .no_value("none firing"), GRAPH_W, GRAPH_H)
    add(bargauge.Panel().title("Uptime").datasource(ds).unit("s")
        .with_target(_query(ds, "A", f"orchestrator_process_uptime_seconds{{{agents}}}", "{{process}}", instant=True))
        .display_mode(common.BarGaugeDisplayMode.BASIC).orientation(common.VizOrientation.HORIZONTAL)
        .reduce_options(common_builders.ReduceDataOptions().calcs(["lastNotNull"]).values(False)), 8, GRAPH_H)
    add(stat.Panel().title("Live configuration version").datasource(ds)
        .description("the version apply recorded last (orchestrator history), and when")
        .with_target(_query(ds, "A", "orchestrator_config_version", "version", instant=True))
        .with_target(_query(ds, "B", "time() - orchestrator_config_applied_timestamp_seconds", "applied ago", instant=True))
        .override_by_name("applied ago", [model.DynamicConfigValue(id_val="unit", value="s")])
        .color_mode(common.BigValueColorMode.NONE).graph_mode(common.BigValueGraphMode.NONE)
        .text_mode(common.BigValueTextMode.VALUE_AND_NAME)
        .reduce_options(common_builders.ReduceDataOptions().calcs(["lastNotNull"]).values(False)), 4, GRAPH_H)
    return _plain(board.build())


def _threshold_lines(panel: timeseries.Panel) -> timeseries.Panel:
    """The series named warning, critical and limit drawn as dashed lines of their level's color."""
    for level, color in LEVEL_COLORS.items():
        panel = panel.override_by_name(level, [
            model.DynamicConfigValue(id_val="color", value={"mode": "fixed", "fixedColor": color}),
            model.DynamicConfigValue(id_val="custom.lineStyle", value={"fill": "dash", "dash": [10, 10]}),
            model.DynamicConfigValue(id_val="custom.fillOpacity", value=0)])
    return panel


def agent_dashboard(manifests: ManifestSet) -> dict[str, Any]:
    """The drill-down dashboard: one agent at a time, chosen with the `agent` variable."""
    project = manifests.settings.project
    ids = gf.Uids(project)
    ds = _ds(manifests)
    a = f'agent="{gf.AGENT_VARIABLE}"'
    layout = _Layout()
    names = list(manifests.names)
    variable = (builders.CustomVariable("agent").label("Agent").values(",".join(names))
                .current(model.VariableOption(selected=True, text=names[0] if names else "",
                                              value=names[0] if names else "")))
    board = (builders.Dashboard(f"{project}: agent").uid(ids.agent).tags([*TAGS, project]).refresh(REFRESH)
             .time("now-1h", "now").timezone("browser").editable().readonly().with_variable(variable)
             .description(f"Generated by `orchestrator grafana export` from the manifests of {project}: do not edit here"))

    def add(panel: Any, w: int = GRAPH_W, h: int = GRAPH_H) -> None:
        nonlocal board
        panel_id, pos = layout.place(w, h)
        board = board.with_panel(panel.id(panel_id).grid_pos(pos))

    add(_threshold_lines(_graph(ds, "CPU", "percentunit", [
        (f"orchestrator_process_cpu_usage_ratio{{{a}}}", "{{process}}"),
        (f"orchestrator_agent_threshold_cpu_ratio{{{a}}}", "{{severity}}")],
        description="cores used by each process (1 = one core), with resources.cpu_percent's warning, critical and limit")))
    add(_threshold_lines(_graph(ds, "Memory (RSS)", "bytes", [
        (f"orchestrator_process_resident_memory_bytes{{{a}}}", "{{process}}"),
        (f"orchestrator_agent_threshold_memory_bytes{{{a}}}", "{{severity}}")],
        description="resident memory of each process tree, with resources.memory_mb's warning, critical and limit")))
    add(_graph(ds, "Restarts by reason", "none", [
        (f"sum by (reason) (increase(orchestrator_agent_restarts_total{{{a}}}[{gf.RATE_INTERVAL}]))", "{{reason}}")])
        .draw_style(common.GraphDrawStyle.BARS).stacking(common_builders.StackingConfig().mode(common.StackingMode.NORMAL)))
    add(statetimeline.Panel().title("Readiness and state").datasource(ds)
        .description("up: every process RUNNING; ready: up and its readiness probe passes; given up by its restart policy")
        .with_target(_query(ds, "A", f"orchestrator_agent_ready{{{a}}}", "ready"))
        .with_target(_query(ds, "B", f"orchestrator_agent_up{{{a}}}", "up"))
        .with_target(_query(ds, "C", f"orchestrator_agent_given_up{{{a}}}", "given up"))
        .mappings([model.ValueMap(options={"0": model.ValueMappingResult(text="no", color="red", index=0),
                                           "1": model.ValueMappingResult(text="yes", color="green", index=1)})])
        .override_by_name("given up", [model.DynamicConfigValue(id_val="mappings", value=[
            {"type": "value", "options": {"0": {"text": "no", "color": "green", "index": 0},
                                          "1": {"text": "yes", "color": "red", "index": 1}}}])]))
    add(_graph(ds, "Health score", "none", [(f"orchestrator_agent_health_score{{{a}}}", "score")])
        .min(0).max(100).thresholds(_thresholds((None, "red"), (DEGRADED_BELOW, "yellow"), (HEALTHY, "green")))
        .thresholds_style(common_builders.GraphThresholdsStyleConfig().mode(common.GraphThresholdsStyleMode.LINE)))
    add(_graph(ds, "Health penalties", "none", [(f"orchestrator_agent_health_penalty_points{{{a}}}", "{{cause}}")],
               description="the points the score loses, by cause (README: Health)")
        .stacking(common_builders.StackingConfig().mode(common.StackingMode.NORMAL)))
    add(_graph(ds, "Open files", "none", [(f"orchestrator_process_open_fds{{{a}}}", "{{process}}"),
                                          (f"orchestrator_process_max_fds{{{a}}}", "limit {{process}}")]))
    add(_graph(ds, "Predicted time to exhaustion", "s", [
        (f"orchestrator_agent_exhaustion_seconds{{{a}}}", "{{resource}}"),
        (f"orchestrator_agent_exhaustion_earliest_seconds{{{a}}}", "{{resource}} earliest"),
        (f"orchestrator_agent_exhaustion_latest_seconds{{{a}}}", "{{resource}} latest")],
        description="until memory or open files reach their limit on the current trend, with the 95% band; "
                    "no line while there is no forecast or nothing grows")
        .override_by_regexp(".* (earliest|latest)", [
            model.DynamicConfigValue(id_val="custom.lineStyle", value={"fill": "dash", "dash": [4, 4]})]))
    return _plain(board.build())


def dashboards(manifests: ManifestSet) -> dict[str, dict[str, Any]]:
    """File name (below the dashboards folder) -> dashboard JSON, for every dashboard of `manifests`."""
    return {"overview.json": overview(manifests), "agent.json": agent_dashboard(manifests)}


def queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, expr) of every query of every panel of `dashboard`, in order."""
    found = []
    for panel in dashboard.get("panels", []):
        for target in panel.get("targets", []) or []:
            if target.get("expr"):
                found.append((str(panel.get("title", "")), str(target["expr"])))
    return found
