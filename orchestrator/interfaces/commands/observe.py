"""status and alerts: what runs, how it is doing, and what fired; read from supervisord and the state
directory, never from the manifests (they work when the manifests are broken)."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import replace

import click

from orchestrator.core.plan import Observed
from orchestrator.core.errors import display_path, require_known
from orchestrator.interfaces.options import Options
from orchestrator.operations import drift, status
from orchestrator.operations.reach import require_running, socket_of
from orchestrator.state import alerts as alert_history, runtime, samples
from orchestrator.state.history import History
from orchestrator.supervisord import launching
from orchestrator.supervisord.client import Client


@click.command("status")
@click.option("--output", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="json: an array, one object per process: name, agent, state, pid, uptime_seconds, restarts, "
                   "cpu_percent, memory_rss_bytes, health, ready, score (0-100), penalties (cause, points, detail), "
                   "drift (what was changed outside orchestrator about the agent) and, for a running process, controls: "
                   "what is in force on it, read back from the kernel (nice, cpu_affinity, open_files, process_limit, "
                   "core_dumps, oom_score_adj, user, group, own_network, own_mounts, its cgroup's limits and use, and "
                   "the controls this host cannot enforce, with why).")
@click.argument("names", nargs=-1)
@click.pass_obj
def status_command(options: Options, output: str, names: tuple[str, ...]) -> None:
    """Show each agent's state, PID, uptime, restarts, CPU, memory, readiness and health score.

    With agent NAMEs, also every point each score lost, and why, and the
    controls in force on each process, read back from the kernel.

    What was changed outside orchestrator since the last apply (drift: an
    edited rendered file, a program added, removed, stopped or started with
    supervisorctl) is warned about on stderr, and listed in each row's
    `drift` with --output json; `orchestrator apply` puts it back.

    Exit 0 when every agent of the live version is running and ready, 3 when
    one is not, 1 on error (supervisord not running, for instance).
    """
    state_dir = options.state_dir_only()
    current = History(state_dir).current()
    agents = dict(current.agents) if current else {}
    require_known(names, agents)
    client = Client(socket_of(state_dir))
    require_running(state_dir, client, shown_as=display_path(state_dir))
    live = runtime.load(state_dir)
    opened: dict[str, tuple[str, ...]] = {}
    for alert in alert_history.active(state_dir):
        opened[alert.agent] = (*opened.get(alert.agent, ()), alert.level)
    processes = client.processes()   # once, for the rows and for drift: at 500 agents each list costs supervisord
    rows = status.collect(client, agents, list(names) or None, histories=live.agents, alerts=opened,
                          sampled=samples.read(state_dir, time.time()), processes=processes,
                          scope=launching.scope(state_dir) if names or output == "json" else None)
    found = drift.detect(state_dir, current, client, groups=Observed.of(processes).groups, live=live)
    rows = [replace(r, drift=tuple(d.line() for d in found if d.agent == r.agent)) for r in rows]
    if found:  # on stderr, so the table and the JSON array stay what scripts read
        click.echo(click.style(f"Drift: {len(found)} change{'s' if len(found) != 1 else ''} made outside orchestrator "
                               "since the last apply (`orchestrator plan` shows them; `orchestrator apply` puts them back):",
                               fg="magenta", bold=True), err=True)
        for item in found:
            click.echo(click.style(f"  ! {item.line()}", fg="magenta"), err=True)
    if live.latch is not None and output != "json":
        click.echo(click.style(f"{runtime.describe_latch(live.latch)}; clear it with `orchestrator emergency-clear`",
                               fg="red", bold=True), err=True)
    if output == "json":
        click.echo(json.dumps([r.as_dict() for r in rows], indent=2))
    else:
        cells = status.table(rows)
        widths = [max(len(c[0][i]) for c in cells) for i in range(len(cells[0][0]))]
        for index, (row, color) in enumerate(cells):
            text = "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
            click.echo(click.style(text, bold=True) if index == 0 else text if color is None else
                       click.style(text, fg=color))
        for shown in rows if names else []:  # `status NAME`: every point its score lost
            for penalty in shown.penalties:
                click.echo(f"  {shown.name}: -{penalty['points']} {penalty['cause']}: {penalty['detail']}")
            for line in status.describe_controls(shown.controls) if shown.controls else ():
                click.echo(f"  {shown.name}: {line}")
    desired = {n: a for n, a in agents.items() if not names or n in names}
    sys.exit(0 if status.healthy(rows, desired) else 3)




@click.command("alerts")
@click.option("--output", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="json: {\"active\": [...], \"recent\": [...]}, each alert with key, agent, metric, level, kind, "
                   "value, threshold, at (seconds since the epoch) and summary.")
@click.option("--recent", "count", type=click.IntRange(min=0), default=20, show_default=True,
              help="How many of the latest firings and resolutions to show.")
@click.pass_obj
def alerts_command(options: Options, output: str, count: int) -> None:
    """Show the threshold alerts firing now, and the latest firings and resolutions.

    Read from the state directory's alert history, which the exporter keeps
    (bounded); works when supervisord is down and the manifests are invalid.
    """
    state_dir = options.state_dir_only()
    firing, latest = alert_history.active(state_dir), alert_history.recent(state_dir, count) if count else []
    if output == "json":
        click.echo(json.dumps({"active": [a.as_dict() for a in firing], "recent": [a.as_dict() for a in latest]}, indent=2))
        return
    colors = {"WARNING": "yellow", "PREDICTED": "yellow", "CRITICAL": "red", "EMERGENCY": "red"}
    click.echo(click.style(f"{len(firing)} alert{'s' if len(firing) != 1 else ''} firing", bold=True) if firing
               else "No alert is firing.")
    for alert in firing:
        click.echo(click.style(f"  {_when(alert.at)}  {alert.summary}", fg=colors.get(alert.level)))
    if latest:
        click.echo(click.style("Latest firings and resolutions", bold=True))
        for alert in latest:
            click.echo(f"  {_when(alert.at)}  {alert.summary}")


def _when(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))
